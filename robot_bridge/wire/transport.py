"""The small interface every ROS 2 transport implements, and the QoS it speaks.

A :class:`Transport` is a context manager that makes publishers and
subscriptions of the message dataclasses of ``omnipolicy.robot_bridge.wire.messages``:

.. code-block:: python

    with make_transport("dds", domain_id=7) as t:
        pub = t.publisher("/forward_position_controller/commands", Float64MultiArray)
        states = queue.Queue(maxsize=1)
        t.subscription("/joint_states", JointState, states)
        pub.publish(command_from_action(action, joints))

Transports register a lazy entry point here (``"module:Class"``), so
choosing ``dds`` never imports rclpy and choosing ``rclpy`` never needs
cyclonedds. Subscriptions deliver decoded messages from the transport's own
thread to a callback, or into a ``queue.Queue`` (when the queue is full the
oldest message is dropped: a controller wants the newest state). Messages
that fail to decode are counted in ``Subscription.rejected`` and logged, one
line each; they never reach the callback.
"""

from __future__ import annotations

import abc
import importlib
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from omnipolicy.robot_bridge.wire.messages import RosMessage

log = logging.getLogger(__name__)

M = TypeVar("M", bound=RosMessage)

# ---------------------------------------------------------------------------
# QoS
# ---------------------------------------------------------------------------

RELIABILITY = ("reliable", "best_effort")
DURABILITY = ("volatile", "transient_local")
HISTORY = ("keep_last", "keep_all")


@dataclass(frozen=True)
class QosProfile:
    """The QoS policies that decide whether two ROS 2 endpoints match and what they keep.

    Attributes:
        reliability: ``reliable`` (retransmit) or ``best_effort``.
        durability: ``volatile`` (no history for late joiners) or ``transient_local``.
        history: ``keep_last`` (``depth`` samples) or ``keep_all``.
        depth: samples kept per writer/reader under ``keep_last``.
    """

    reliability: str = "reliable"
    durability: str = "volatile"
    history: str = "keep_last"
    depth: int = 10

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("reliability", self.reliability, RELIABILITY),
            ("durability", self.durability, DURABILITY),
            ("history", self.history, HISTORY),
        ):
            if value not in choices:
                raise ValueError(f"QosProfile.{name} must be one of {list(choices)}, got {value!r}")
        if self.history == "keep_last" and not (isinstance(self.depth, int) and self.depth >= 1):
            raise ValueError(f"QosProfile.depth must be an int >= 1 with keep_last, got {self.depth!r}")


#: What ros2_controllers use for ``joint_states`` (joint_state_broadcaster),
#: ``~/commands`` (forward_command_controller) and ``~/joint_trajectory``
#: (joint_trajectory_controller): ``rclcpp::SystemDefaultsQoS()``, which the
#: DDS layer resolves to RELIABLE, VOLATILE, KEEP_LAST 1. A command writer
#: must therefore be RELIABLE and VOLATILE to match those readers.
QOS_ROS2_CONTROL = QosProfile("reliable", "volatile", "keep_last", 1)
#: ``rclcpp``/``rclpy``'s default profile (``QoSProfile(depth=10)``).
QOS_DEFAULT = QosProfile("reliable", "volatile", "keep_last", 10)
#: ``rmw_qos_profile_sensor_data``: camera images and other high-rate sensors.
QOS_SENSOR_DATA = QosProfile("best_effort", "volatile", "keep_last", 5)
#: Latched topics (a robot description, an e-stop state that late joiners must see).
QOS_LATCHED = QosProfile("reliable", "transient_local", "keep_last", 1)

QOS_PRESETS: dict[str, QosProfile] = {
    "ros2_control": QOS_ROS2_CONTROL,
    "default": QOS_DEFAULT,
    "sensor_data": QOS_SENSOR_DATA,
    "latched": QOS_LATCHED,
}

# ---------------------------------------------------------------------------
# Topic names
# ---------------------------------------------------------------------------

_TOKEN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def ros_topic_name(name: str) -> str:
    """The fully qualified ROS 2 name of a topic (``joint_states`` -> ``/joint_states``).

    Transports have no node namespace, so relative names resolve against ``/``.

    Raises:
        ValueError: not a valid ROS 2 topic name (tokens of ``[A-Za-z0-9_]`` not
            starting with a digit, separated by single ``/``; no ``~`` or ``{}``
            substitutions).
    """
    if not isinstance(name, str) or not name.strip("/"):
        raise ValueError(f"Invalid ROS topic name {name!r}: expected e.g. '/joint_states'")
    tokens = name[1:].split("/") if name.startswith("/") else name.split("/")
    bad = [t for t in tokens if not _TOKEN.match(t)]
    if bad:
        raise ValueError(
            f"Invalid ROS topic name {name!r}: tokens {bad} must match [A-Za-z_][A-Za-z0-9_]* "
            "(no empty tokens, trailing '/', '~' or '{}' substitutions)"
        )
    return "/" + "/".join(tokens)


def dds_topic_name(name: str) -> str:
    """The DDS topic name ROS 2 uses for a ROS topic: ``/joint_states`` -> ``rt/joint_states``."""
    return "rt" + ros_topic_name(name)


# ---------------------------------------------------------------------------
# Endpoints
# ---------------------------------------------------------------------------

def make_sink(target: Any) -> Callable[[Any], None]:
    """A delivery function for a callback or a ``queue.Queue`` (full queue: drop the oldest).

    Raises:
        TypeError: neither callable nor a ``queue.Queue``.
    """
    if isinstance(target, queue.Queue):

        def put(msg: Any) -> None:
            while True:
                try:
                    target.put_nowait(msg)
                    return
                except queue.Full:
                    try:
                        target.get_nowait()
                    except queue.Empty:
                        pass

        return put
    if callable(target):
        return target
    raise TypeError(f"subscription needs a callback or a queue.Queue, got {type(target).__name__}")


class Publisher(abc.ABC, Generic[M]):
    """Sends messages of one type on one topic."""

    def __init__(self, topic: str, msg_type: type[M], qos: QosProfile) -> None:
        self.topic = ros_topic_name(topic)
        self.msg_type = msg_type
        self.qos = qos
        self.published = 0

    def publish(self, msg: M) -> None:
        """Send one message.

        Raises:
            TypeError: a message of another type than the publisher's.
        """
        if type(msg) is not self.msg_type:
            raise TypeError(f"Publisher on {self.topic} sends {self.msg_type.__name__}, got {type(msg).__name__}")
        self._publish(msg)
        self.published += 1

    @abc.abstractmethod
    def _publish(self, msg: M) -> None: ...

    @abc.abstractmethod
    def matched(self) -> int:
        """Number of matched subscriptions (other processes included)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Remove the endpoint (idempotent)."""


class Subscription(abc.ABC, Generic[M]):
    """Receives messages of one type on one topic and hands them to a sink."""

    def __init__(self, topic: str, msg_type: type[M], target: Any, qos: QosProfile) -> None:
        self.topic = ros_topic_name(topic)
        self.msg_type = msg_type
        self.qos = qos
        self._sink = make_sink(target)
        self.received = 0
        self.rejected = 0

    def _deliver(self, msg: M) -> None:
        self.received += 1
        try:
            self._sink(msg)
        except Exception:  # a user callback must not kill the transport's thread
            log.exception("subscription %s: callback raised", self.topic)

    def _reject(self, reason: str) -> None:
        self.rejected += 1
        log.warning("subscription %s: rejected a %s: %s", self.topic, self.msg_type.__name__, reason)

    @abc.abstractmethod
    def matched(self) -> int:
        """Number of matched publishers (other processes included)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Remove the endpoint (idempotent)."""


class Transport(abc.ABC):
    """A connection to a ROS 2 graph, used as a context manager."""

    name: str = ""
    network: str = ""  # "system" or "loopback" (omnipolicy.robot_bridge.wire.network), set by each transport

    def __init__(self) -> None:
        self._endpoints: list[Publisher | Subscription] = []
        self._lock = threading.Lock()
        self._closed = False

    def publisher(self, topic: str, msg_type: type[M], qos: QosProfile = QOS_ROS2_CONTROL) -> Publisher[M]:
        """A publisher of ``msg_type`` on ``topic`` (a ROS name such as ``/joint_states``).

        Raises:
            ValueError: invalid topic name. RuntimeError: the transport is closed.
        """
        self._check_open()
        pub = self._publisher(topic, msg_type, qos)
        with self._lock:
            self._endpoints.append(pub)
        return pub

    def subscription(self, topic: str, msg_type: type[M], target: Any, qos: QosProfile = QOS_ROS2_CONTROL) -> Subscription[M]:
        """Deliver every ``msg_type`` message on ``topic`` to ``target`` (callback or ``queue.Queue``).

        Raises:
            ValueError: invalid topic name. TypeError: bad target. RuntimeError: the transport is closed.
        """
        self._check_open()
        sub = self._subscription(topic, msg_type, target, qos)
        with self._lock:
            self._endpoints.append(sub)
        return sub

    def close(self) -> None:
        """Close every endpoint and the connection (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            endpoints, self._endpoints = self._endpoints, []
        for e in endpoints:
            e.close()
        self._close()

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")

    @abc.abstractmethod
    def _publisher(self, topic: str, msg_type: type[M], qos: QosProfile) -> Publisher[M]: ...

    @abc.abstractmethod
    def _subscription(self, topic: str, msg_type: type[M], target: Any, qos: QosProfile) -> Subscription[M]: ...

    @abc.abstractmethod
    def _close(self) -> None: ...


def wait_for(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.01) -> None:
    """Poll ``condition`` until true.

    Raises:
        TimeoutError: not true after ``timeout`` seconds; the message says ``what`` was awaited.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(poll)


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

TRANSPORTS: dict[str, str] = {}


def register_transport(name: str, entry_point: str) -> None:
    """Register a transport class under ``name`` by its lazy ``"module:Class"`` path."""
    if name in TRANSPORTS:
        raise ValueError(f"Transport {name!r} is already registered as {TRANSPORTS[name]}")
    if ":" not in entry_point:
        raise ValueError(f"Transport entry point must be 'module:Class', got {entry_point!r}")
    TRANSPORTS[name] = entry_point


register_transport("dds", "omnipolicy.robot_bridge.wire.dds:DdsTransport")
register_transport("rclpy", "omnipolicy.robot_bridge.wire.rclpy_transport:RclpyTransport")


def make_transport(name: str, **kwargs: Any) -> Transport:
    """Create a registered transport (``dds`` or ``rclpy``) with its keyword arguments.

    Raises:
        ValueError: unknown name; the message lists the registered ones.
    """
    if name not in TRANSPORTS:
        raise ValueError(f"Unknown transport {name!r}. Available transports: {sorted(TRANSPORTS)}")
    module, cls = TRANSPORTS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)
