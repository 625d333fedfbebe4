"""An echo node: republishes every message of some topics on other topics, unchanged.

Used by the tests and ``scripts/bench_bridge.py`` as the far end of a round
trip, in its own process (and, for ``rclpy``, in its own virtual
environment), always on the loopback network. Three implementations:

- ``dds`` / ``rclpy``: this package's transports (decode, re-encode);
- ``rclpy-native``: plain rclpy with ROS' generated message classes, so ROS'
  own type support parses and re-serialises what our transports sent: an
  independent check of the wire format.

``python -m omnipolicy.robot_bridge.wire.echo --impl rclpy-native --domain-id 7 \\
--pairs JointState:/bench/ping:/bench/pong`` prints ``READY`` once its
endpoints exist and exits when stdin closes or after ``--max-seconds``.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import tyro

from omnipolicy.robot_bridge.wire.loopback import apply_loopback_env, loopback_env
from omnipolicy.robot_bridge.wire.messages import MESSAGE_TYPES, message_type
from omnipolicy.robot_bridge.wire.rclpy_transport import ros_message_class, to_rclpy_qos
from omnipolicy.robot_bridge.wire.transport import QOS_DEFAULT, QosProfile, make_transport

IMPLS = ("dds", "rclpy", "rclpy-native")


@dataclass(frozen=True)
class EchoPair:
    """Republish messages of ``msg_type`` from ``source`` on ``target``."""

    msg_type: str
    source: str
    target: str

    @classmethod
    def parse(cls, text: str) -> "EchoPair":
        """From ``"JointState:/in:/out"`` (type name as in ``messages``, or ``pkg/msg/Name``).

        Raises:
            ValueError: not three ``:``-separated parts.
        """
        parts = text.split(":")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"echo pair must be 'Type:/source:/target', got {text!r}")
        return cls(*parts)


@dataclass
class EchoConfig:
    """Echo node options."""

    impl: Literal["dds", "rclpy", "rclpy-native"] = "dds"
    """Implementation: this package's dds or rclpy transport, or plain rclpy with ROS message classes."""
    domain_id: int = 0
    """ROS domain id."""
    pairs: tuple[str, ...] = ("JointState:/echo/in:/echo/out",)
    """Topics to echo, each 'Type:/source:/target' (Type: JointState, Image, Float64MultiArray, Bool, ...)."""
    max_seconds: float = 300.0
    """Exit after this long even if stdin stays open."""


def _message_class(name: str) -> Any:

    if "/" in name:
        return message_type(name)
    found = [cls for cls in MESSAGE_TYPES.values() if cls.__name__ == name]
    if not found:
        raise ValueError(f"Unknown message type {name!r}; known: {sorted(c.__name__ for c in MESSAGE_TYPES.values())}")
    return found[0]


def _run_transport(cfg: EchoConfig, pairs: list[EchoPair], done: threading.Event, qos: QosProfile) -> None:

    kwargs: dict[str, Any] = {"domain_id": cfg.domain_id, "network": "loopback"}  # a test helper: 127.0.0.1 only
    if cfg.impl == "rclpy":
        kwargs["node_name"] = "omnipolicy_echo"
    with make_transport(cfg.impl, **kwargs) as t:
        for p in pairs:
            cls = _message_class(p.msg_type)
            pub = t.publisher(p.target, cls, qos)
            t.subscription(p.source, cls, pub.publish, qos)
        print("READY", flush=True)
        done.wait(cfg.max_seconds)


def _run_rclpy_native(cfg: EchoConfig, pairs: list[EchoPair], done: threading.Event, qos: QosProfile) -> None:
    import rclpy  # noqa: PLC0415  (only this implementation needs a ROS install's rclpy)
    from rclpy.executors import SingleThreadedExecutor  # noqa: PLC0415
    from rclpy.signals import SignalHandlerOptions  # noqa: PLC0415


    apply_loopback_env(cfg.domain_id)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=cfg.domain_id, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("omnipolicy_native_echo", context=ctx)
    for p in pairs:
        ros_cls = ros_message_class(_message_class(p.msg_type))
        pub = node.create_publisher(ros_cls, p.target, to_rclpy_qos(qos))
        node.create_subscription(ros_cls, p.source, pub.publish, to_rclpy_qos(qos))  # typed: ROS parses it
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    print("READY", flush=True)

    def spin() -> None:
        while not done.is_set():
            executor.spin_once(timeout_sec=0.05)

    spin_thread = threading.Thread(target=spin)
    spin_thread.start()
    done.wait(cfg.max_seconds)
    done.set()
    spin_thread.join()
    executor.shutdown()
    node.destroy_node()
    ctx.try_shutdown()


def run(cfg: EchoConfig) -> None:
    """Run the echo node until stdin closes or ``cfg.max_seconds`` pass.

    Raises:
        ValueError: unknown implementation, bad pair or message type.
    """
    if cfg.impl not in IMPLS:
        raise ValueError(f"Unknown echo implementation {cfg.impl!r}; expected one of {list(IMPLS)}")
    pairs = [EchoPair.parse(p) for p in cfg.pairs]
    for p in pairs:
        _message_class(p.msg_type)
    done = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    if cfg.impl == "rclpy-native":
        _run_rclpy_native(cfg, pairs, done, QOS_DEFAULT)
    else:
        _run_transport(cfg, pairs, done, QOS_DEFAULT)


class EchoProcess:
    """An echo node in a child process with the loopback environment; a context manager.

    Args:
        python: interpreter to run (``.venv-ros/bin/python`` for the rclpy implementations).
        impl: ``dds``, ``rclpy`` or ``rclpy-native``.
        domain_id: ROS domain id.
        pairs: ``"Type:/source:/target"`` strings.
        ready_timeout: seconds to wait for ``READY``.

    Raises:
        RuntimeError: the child exited or did not print ``READY`` in time (its stderr is in the message).
    """

    def __init__(self, python: str, impl: str, domain_id: int, pairs: Sequence[str], ready_timeout: float = 30.0) -> None:
        cmd = [python, "-m", "omnipolicy.robot_bridge.wire.echo", "--impl", impl, "--domain-id", str(domain_id), "--pairs", *pairs]
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=loopback_env(domain_id)
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.proc.stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=ready_timeout)
        except queue.Empty:
            line = ""
        if line.strip() != "READY":
            self.close()
            raise RuntimeError(f"echo node ({impl}, {python}) did not start: {self.stderr_tail()}")

    def stderr_tail(self, n: int = 2000) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-n:]

    def close(self) -> None:
        """Close stdin (the node exits), then terminate/kill if it lingers."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (subprocess.TimeoutExpired, OSError):
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self._stderr.close()

    def __enter__(self) -> "EchoProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prime(publish: Callable[[], None], replies: queue.Queue, timeout: float = 15.0) -> None:
    """Publish until a first reply arrives, then empty ``replies``.

    Discovery is asymmetric: our writer can match the echo's reader before the
    echo's writer matches our reader, and a volatile sample sent then is lost.
    One answered ping proves both directions are up.

    Raises:
        TimeoutError: no reply within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        publish()
        try:
            replies.get(timeout=0.1)
            break
        except queue.Empty:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no echo reply within {timeout:.0f} s") from None
    time.sleep(0.1)
    while not replies.empty():
        replies.get_nowait()


def main(argv: list[str] | None = None) -> None:
    run(tyro.cli(EchoConfig, args=argv, prog="python -m omnipolicy.robot_bridge.wire.echo"))


if __name__ == "__main__":
    main()
