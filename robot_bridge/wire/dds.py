"""The ``dds`` transport: ROS 2's wire protocol over pure Cyclone DDS (no ROS install).

A ROS 2 topic ``/joint_states`` of type ``sensor_msgs/msg/JointState`` is the
DDS topic ``rt/joint_states`` of type ``sensor_msgs::msg::dds_::JointState_``,
keyless, plain CDR (XCDR1). For each message class this module builds a
cyclonedds ``IdlStruct`` with exactly the ROS field layout (so discovery
announces the same type as a ROS 2 node would), but the samples it writes
and takes are the CDR bytes of :mod:`omnipolicy.robot_bridge.wire.cdr`: numpy
copies instead of cyclonedds-python's per-element machinery, which makes a
640x480 RGB image about a thousand times cheaper to (de)serialise.

The Cyclone configuration of the transport's domain follows its network
(:mod:`omnipolicy.robot_bridge.wire.network`): ``system`` (default) reads the ROS 2
environment as rmw_cyclonedds does, ``loopback`` is
``config/cyclonedds-loopback.xml`` (127.0.0.1, no multicast, peers listed).

>>> from omnipolicy.robot_bridge.wire.messages import Bool
>>> with DdsTransport(domain_id=7, network="loopback") as t:      # doctest: +SKIP
...     got = queue.Queue()
...     t.subscription("/estop", Bool, got)
...     t.publisher("/estop", Bool).publish(Bool(data=True))
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, TypeVar

from cyclonedds.core import DDSException, Listener, Policy, Qos
from cyclonedds.domain import Domain, DomainParticipant
from cyclonedds.idl import make_idl_struct
from cyclonedds.idl import types as idl
from cyclonedds.internal import InvalidSample
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration

from omnipolicy.robot_bridge.wire import cdr
from omnipolicy.robot_bridge.wire.loopback import CYCLONEDDS_LOOPBACK, check_domain_id, domain_id_from_env
from omnipolicy.robot_bridge.wire.messages import RosMessage, validate
from omnipolicy.robot_bridge.wire.network import check_network, cyclone_system_config
from omnipolicy.robot_bridge.wire.transport import (
    Publisher,
    QosProfile,
    Subscription,
    Transport,
    dds_topic_name,
)

log = logging.getLogger(__name__)

M = TypeVar("M", bound=RosMessage)

# ---------------------------------------------------------------------------
# Wire types
# ---------------------------------------------------------------------------


def _serialize(self: Any, buffer: Any = None, endianness: Any = None, use_version_2: bool | None = None) -> bytes:
    return self._cdr


def _deserialize(cls: type, data: bytes, has_header: bool = True, use_version_2: bool | None = None) -> Any:
    sample = cls.__new__(cls)
    sample._cdr = data
    return sample


def _deserialize_key(cls: type, data: bytes, has_header: bool = True, use_version_2: bool | None = None) -> Any:
    return _deserialize(cls, b"")


def _make_cdr_sample(cls: type) -> type:
    """Make the wire struct's samples *be* their CDR bytes, produced and read by our codec.

    ``DataWriter.write`` calls ``sample.serialize()`` and ``DataReader.take``
    calls ``Type.deserialize(data)``; replacing both skips cyclonedds' Python
    serializer while the topic keeps the IDL type description. (Set on the
    class after creation: a mixin base would read as IDL inheritance.)
    """
    cls.serialize = _serialize
    cls.deserialize = classmethod(_deserialize)
    cls.deserialize_key = classmethod(_deserialize_key)
    return cls


def _wrap(wire: type, data: bytes) -> Any:
    return _deserialize(wire, data)


_PRIMITIVE_IDL: dict[str, Any] = {
    "bool": bool,
    "int8": idl.int8,
    "uint8": idl.uint8,
    "int16": idl.int16,
    "uint16": idl.uint16,
    "int32": idl.int32,
    "uint32": idl.uint32,
    "int64": idl.int64,
    "uint64": idl.uint64,
    "float32": idl.float32,
    "float64": idl.float64,
    "string": str,
}

_WIRE_TYPES: dict[type, type] = {}
_WIRE_LOCK = threading.Lock()


def wire_type(msg_type: type[RosMessage]) -> type:
    """The cyclonedds ``IdlStruct`` of a message class: ROS typename and field layout, CDR passthrough."""
    with _WIRE_LOCK:
        return _wire_type(msg_type)


def _wire_type(msg_type: type[RosMessage]) -> type:
    cls = _WIRE_TYPES.get(msg_type)
    if cls is None:
        fields = {}
        for f in msg_type.__ros_fields__:
            base = _wire_type(f.kind) if isinstance(f.kind, type) else _PRIMITIVE_IDL[f.kind]
            fields[f.name] = idl.sequence[base] if f.seq else base
        pkg, _, name = msg_type.ROS_TYPE.split("/")
        cls = _make_cdr_sample(make_idl_struct(f"{name}_", msg_type.dds_typename(), fields))
        _WIRE_TYPES[msg_type] = cls
    return cls


def to_cyclone_qos(qos: QosProfile) -> Qos:
    """The cyclonedds ``Qos`` of a profile (reliable writers block at most 100 ms on a full history)."""
    policies = [
        Policy.Reliability.Reliable(duration(milliseconds=100))
        if qos.reliability == "reliable"
        else Policy.Reliability.BestEffort,
        Policy.Durability.TransientLocal if qos.durability == "transient_local" else Policy.Durability.Volatile,
        Policy.History.KeepLast(qos.depth) if qos.history == "keep_last" else Policy.History.KeepAll,
        # ROS 2 endpoints speak XCDR1; say so explicitly.
        Policy.DataRepresentation(use_cdrv0_representation=True),
    ]
    return Qos(*policies)


# ---------------------------------------------------------------------------
# Domains: one Cyclone domain per id per process, with the configuration we chose
# ---------------------------------------------------------------------------

_DOMAINS: dict[int, list[Any]] = {}  # id -> [Domain, config, refcount]
_DOMAINS_LOCK = threading.Lock()


def _config_text(network: str, config: str | Path | None) -> str:
    if config is None:
        return CYCLONEDDS_LOOPBACK.read_text() if check_network(network) == "loopback" else cyclone_system_config()
    text = str(config)
    if text.lstrip().startswith("<"):
        return text
    path = Path(text.removeprefix("file://"))
    if not path.is_file():
        raise ValueError(f"Cyclone DDS config {config!r}: expected an XML string or an existing file")
    return path.read_text()


def _acquire_domain(domain_id: int, config: str) -> None:
    with _DOMAINS_LOCK:
        entry = _DOMAINS.get(domain_id)
        if entry is None:
            try:
                dom = Domain(domain_id, config)
            except DDSException as e:
                raise ValueError(
                    f"Cyclone DDS rejected the configuration of domain {domain_id} (its log lines above say why): {e}"
                ) from None
            _DOMAINS[domain_id] = [dom, config, 1]
            return
        if entry[1] != config:
            raise ValueError(
                f"Cyclone DDS domain {domain_id} is already open in this process with another configuration; "
                "use one configuration per domain id"
            )
        entry[2] += 1


def _release_domain(domain_id: int) -> None:
    with _DOMAINS_LOCK:
        entry = _DOMAINS.get(domain_id)
        if entry is None:
            return
        entry[2] -= 1
        if entry[2] == 0:
            del _DOMAINS[domain_id]
            _delete(entry[0])


def _delete(entity: Any) -> None:
    # cyclonedds-python deletes an entity (and its children) in __del__; call it now
    # rather than waiting for the garbage collector. A second call is a no-op.
    entity.__del__()


# ---------------------------------------------------------------------------
# Endpoints
# ---------------------------------------------------------------------------


class DdsPublisher(Publisher[M]):
    """A DataWriter of one message type on ``rt/<topic>``."""

    def __init__(self, transport: "DdsTransport", topic: str, msg_type: type[M], qos: QosProfile) -> None:
        super().__init__(topic, msg_type, qos)
        self._wire = wire_type(msg_type)
        self._writer: DataWriter | None = DataWriter(transport._participant, transport._topic(self.topic, msg_type), to_cyclone_qos(qos))

    def _publish(self, msg: M) -> None:
        if self._writer is None:
            raise RuntimeError(f"publisher on {self.topic} is closed")
        self._writer.write(_wrap(self._wire, cdr.encode(msg)))

    def publish_cdr(self, data: bytes) -> None:
        """Send already-serialized CDR bytes (header included) as one message."""
        if self._writer is None:
            raise RuntimeError(f"publisher on {self.topic} is closed")
        self._writer.write(_wrap(self._wire, bytes(data)))
        self.published += 1

    def matched(self) -> int:
        return 0 if self._writer is None else int(self._writer.get_publication_matched_status().current_count)

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            _delete(writer)


class DdsSubscription(Subscription[M]):
    """A DataReader of one message type on ``rt/<topic>``; Cyclone's listener thread delivers."""

    def __init__(self, transport: "DdsTransport", topic: str, msg_type: type[M], target: Any, qos: QosProfile) -> None:
        super().__init__(topic, msg_type, target, qos)
        self.invalid_samples = 0  # samples without data (a writer left), never delivered
        self._listener = Listener(on_data_available=self._on_data_available)
        self._reader: DataReader | None = DataReader(
            transport._participant, transport._topic(self.topic, msg_type), to_cyclone_qos(qos), self._listener
        )

    def _on_data_available(self, reader: DataReader) -> None:
        while True:
            samples = reader.take(N=64)
            if not samples:
                return
            for s in samples:
                # a writer leaving (dispose/unregister) yields a sample without data
                if isinstance(s, InvalidSample) or not s.sample_info.valid_data:
                    self.invalid_samples += 1
                    continue
                try:
                    msg = validate(cdr.decode(self.msg_type, s._cdr))
                except ValueError as e:
                    self._reject(str(e))
                    continue
                self._deliver(msg)  # type: ignore[arg-type]

    def matched(self) -> int:
        return 0 if self._reader is None else int(self._reader.get_subscription_matched_status().current_count)

    def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            _delete(reader)


class DdsTransport(Transport):
    """ROS 2 topics over Cyclone DDS, without ROS.

    Args:
        domain_id: the ROS domain id; default ``ROS_DOMAIN_ID`` or 0.
        network: ``"system"`` (default): the ROS 2 environment as rmw_cyclonedds reads it
            (:func:`~omnipolicy.robot_bridge.wire.network.cyclone_system_config`); ``"loopback"``:
            the shipped 127.0.0.1-only file, whatever the environment says (tests, benchmarks).
        config: a Cyclone configuration (XML string or file path) to use instead of the network's.

    Raises:
        ValueError: bad domain id, network or config, or the domain is already open in
            this process with another config.
    """

    name = "dds"

    def __init__(self, domain_id: int | None = None, network: str = "system", config: str | Path | None = None) -> None:
        super().__init__()
        self.network = check_network(network)
        self.domain_id = check_domain_id(domain_id_from_env() if domain_id is None else domain_id)
        _acquire_domain(self.domain_id, _config_text(network, config))
        try:
            self._participant = DomainParticipant(self.domain_id)
        except Exception:
            _release_domain(self.domain_id)
            raise
        self._topics: dict[str, tuple[type, Topic]] = {}

    def _topic(self, ros_name: str, msg_type: type[RosMessage]) -> Topic:
        with self._lock:
            known = self._topics.get(ros_name)
            if known is not None:
                if known[0] is not msg_type:
                    raise ValueError(
                        f"topic {ros_name} already has type {known[0].ROS_TYPE} in this transport, got {msg_type.ROS_TYPE}"
                    )
                return known[1]
            topic = Topic(self._participant, dds_topic_name(ros_name), wire_type(msg_type))
            self._topics[ros_name] = (msg_type, topic)
            return topic

    def _publisher(self, topic: str, msg_type: type[M], qos: QosProfile) -> DdsPublisher[M]:
        return DdsPublisher(self, topic, msg_type, qos)

    def _subscription(self, topic: str, msg_type: type[M], target: Any, qos: QosProfile) -> DdsSubscription[M]:
        return DdsSubscription(self, topic, msg_type, target, qos)

    def _close(self) -> None:
        self._topics.clear()
        _delete(self._participant)
        _release_domain(self.domain_id)
