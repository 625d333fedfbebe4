"""The ``rclpy`` transport: a real ROS 2 node (a ROS 2 install, or PyPI's ``ros-rclpy`` wheels).

rclpy is imported when the transport is created, never at module import, so
this file can be imported where ROS 2 is absent. Messages cross the rclpy
boundary as CDR bytes: publishers send ``cdr.encode(msg)`` with
``Publisher.publish(bytes)`` and subscriptions are created with
``raw=True`` and decode with :mod:`omnipolicy.robot_bridge.wire.cdr`, so the
message dataclasses are the same for both transports and rclpy's generated
Python classes are only used for their type support.

The node spins in a background thread on its own ``rclpy.Context`` (several
transports may live in one process) and installs no signal handlers: the
application owns SIGINT/SIGTERM. On the ``system`` network the environment is
left exactly as it is, for rcl and the RMW to read as under ``ros2 run``; on
``loopback`` the 127.0.0.1-only environment is set first.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, TypeVar

from omnipolicy.robot_bridge.wire import cdr
from omnipolicy.robot_bridge.wire.loopback import apply_loopback_env, check_domain_id, domain_id_from_env
from omnipolicy.robot_bridge.wire.messages import RosMessage, validate
from omnipolicy.robot_bridge.wire.network import check_network
from omnipolicy.robot_bridge.wire.transport import Publisher, QosProfile, Subscription, Transport

M = TypeVar("M", bound=RosMessage)


def _import_rclpy() -> Any:
    try:
        import rclpy  # noqa: PLC0415
    except ImportError as e:
        raise ImportError(
            "The rclpy transport needs rclpy: source a ROS 2 installation, or create the wheel-based "
            f"environment with scripts/make_ros_venv.sh and run from its python ({e})"
        ) from None
    return rclpy


def ros_message_class(msg_type: type[RosMessage]) -> type:
    """rclpy's generated class for a message dataclass (``sensor_msgs.msg.JointState``).

    Raises:
        ImportError: the ROS package of the message is not installed.
    """
    pkg, sub, name = msg_type.ROS_TYPE.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.{sub}"), name)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"ROS message {msg_type.ROS_TYPE} is not installed ({e}); install the {pkg} package") from None


def to_rclpy_qos(qos: QosProfile) -> Any:
    """rclpy's ``QoSProfile`` for a profile."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: PLC0415

    return QoSProfile(
        reliability=ReliabilityPolicy.RELIABLE if qos.reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if qos.durability == "transient_local" else DurabilityPolicy.VOLATILE,
        history=HistoryPolicy.KEEP_LAST if qos.history == "keep_last" else HistoryPolicy.KEEP_ALL,
        depth=qos.depth if qos.history == "keep_last" else 0,
    )


class RclpyPublisher(Publisher[M]):
    def __init__(self, transport: "RclpyTransport", topic: str, msg_type: type[M], qos: QosProfile) -> None:
        super().__init__(topic, msg_type, qos)
        self._node = transport._node
        self._pub: Any = self._node.create_publisher(ros_message_class(msg_type), self.topic, to_rclpy_qos(qos))

    def _publish(self, msg: M) -> None:
        if self._pub is None:
            raise RuntimeError(f"publisher on {self.topic} is closed")
        self._pub.publish(cdr.encode(msg))

    def matched(self) -> int:
        return 0 if self._pub is None else int(self._pub.get_subscription_count())

    def close(self) -> None:
        pub, self._pub = self._pub, None
        if pub is not None:
            self._node.destroy_publisher(pub)


class RclpySubscription(Subscription[M]):
    def __init__(self, transport: "RclpyTransport", topic: str, msg_type: type[M], target: Any, qos: QosProfile) -> None:
        super().__init__(topic, msg_type, target, qos)
        self._node = transport._node
        self._sub: Any = self._node.create_subscription(
            ros_message_class(msg_type), self.topic, self._on_message, to_rclpy_qos(qos), raw=True
        )

    def _on_message(self, data: bytes) -> None:
        try:
            msg = validate(cdr.decode(self.msg_type, data))
        except ValueError as e:
            self._reject(str(e))
            return
        self._deliver(msg)  # type: ignore[arg-type]

    def matched(self) -> int:
        return 0 if self._sub is None else int(self._node.count_publishers(self.topic))

    def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            self._node.destroy_subscription(sub)


class RclpyTransport(Transport):
    """ROS 2 topics through an rclpy node spinning in a background thread.

    Args:
        node_name: the node's name in the ROS graph.
        domain_id: ROS domain id; default ``ROS_DOMAIN_ID`` or 0.
        network: ``"system"`` (default): leave the environment to rcl and the RMW
            (``RMW_IMPLEMENTATION``, ``ROS_AUTOMATIC_DISCOVERY_RANGE``, ``ROS_STATIC_PEERS``,
            ``CYCLONEDDS_URI``, ``FASTRTPS_DEFAULT_PROFILES_FILE``, ...); ``"loopback"``: set the
            127.0.0.1-only environment (:func:`apply_loopback_env`, Fast DDS RMW) in this process
            first. The DDS layer reads it once per process, so choose before the first node.

    Raises:
        ValueError: bad domain id or network.
        ImportError: rclpy is not importable (the message says how to get it).
    """

    name = "rclpy"

    def __init__(self, node_name: str = "omnipolicy_bridge", domain_id: int | None = None, network: str = "system") -> None:
        super().__init__()
        self.network = check_network(network)
        self.domain_id = check_domain_id(domain_id_from_env() if domain_id is None else domain_id)
        if network == "loopback":
            apply_loopback_env(self.domain_id)
        rclpy = _import_rclpy()
        from rclpy.executors import SingleThreadedExecutor  # noqa: PLC0415
        from rclpy.signals import SignalHandlerOptions  # noqa: PLC0415

        self._context = rclpy.Context()
        rclpy.init(context=self._context, domain_id=self.domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self._node = rclpy.create_node(node_name, context=self._context)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name=f"rclpy-{node_name}", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self._context.ok():
            try:
                self._executor.spin_once(timeout_sec=0.05)
            except Exception:  # context shut down under us while closing
                if self._stop.is_set() or not self._context.ok():
                    return
                raise

    def _publisher(self, topic: str, msg_type: type[M], qos: QosProfile) -> RclpyPublisher[M]:
        return RclpyPublisher(self, topic, msg_type, qos)

    def _subscription(self, topic: str, msg_type: type[M], target: Any, qos: QosProfile) -> RclpySubscription[M]:
        return RclpySubscription(self, topic, msg_type, target, qos)

    def _close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._executor.shutdown()
        self._node.destroy_node()
        self._context.try_shutdown()
