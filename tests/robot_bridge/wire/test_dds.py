"""The ``dds`` transport on 127.0.0.1: ROS names and QoS, exact round trips through another process, bad samples."""

from __future__ import annotations

import os
import queue
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cyclonedds")

from cyclonedds.core import Policy  # noqa: E402
from cyclonedds.domain import DomainParticipant  # noqa: E402
from cyclonedds.idl import make_idl_struct  # noqa: E402
from cyclonedds.idl.types import float64, int32, sequence, uint32  # noqa: E402
from cyclonedds.pub import DataWriter  # noqa: E402
from cyclonedds.sub import DataReader  # noqa: E402
from cyclonedds.topic import Topic  # noqa: E402

from omnipolicy.robot_bridge.wire import cdr  # noqa: E402
from omnipolicy.robot_bridge.wire.dds import DdsTransport, to_cyclone_qos, wire_type  # noqa: E402
from omnipolicy.robot_bridge.wire.echo import EchoProcess, prime  # noqa: E402
from omnipolicy.robot_bridge.wire.loopback import (  # noqa: E402
    CYCLONEDDS_LOOPBACK,
    FASTDDS_LOOPBACK,
    loopback_env,
    random_domain_id,
)
from omnipolicy.robot_bridge.wire.messages import (  # noqa: E402
    Bool,
    Float64MultiArray,
    Header,
    Image,
    JointMap,
    JointState,
    MultiArrayDimension,
    MultiArrayLayout,
    Time,
    array_to_image,
    joint_state,
    trajectory_from_action,
)
from omnipolicy.robot_bridge.wire.transport import (  # noqa: E402
    QOS_DEFAULT,
    QOS_LATCHED,
    QOS_ROS2_CONTROL,
    QOS_SENSOR_DATA,
    QosProfile,
    dds_topic_name,
    make_sink,
    make_transport,
    ros_topic_name,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

DOMAIN = random_domain_id()  # one per test run: concurrent runs do not hear each other


@pytest.fixture(scope="module")
def transport():
    with DdsTransport(network="loopback", domain_id=DOMAIN) as t:
        yield t


# ---------------------------------------------------------------------------
# Names, QoS, configuration
# ---------------------------------------------------------------------------


def test_topic_and_type_names():
    assert ros_topic_name("joint_states") == "/joint_states"
    assert dds_topic_name("/joint_states") == "rt/joint_states"
    assert dds_topic_name("/arm/forward_position_controller/commands") == "rt/arm/forward_position_controller/commands"
    for bad in ("", "/", "/a//b", "/a/", "~/commands", "/1abc", "/a-b", "/{ns}/x"):
        with pytest.raises(ValueError, match="Invalid ROS topic name"):
            ros_topic_name(bad)
    assert wire_type(JointState).__idl_typename__ == "sensor_msgs::msg::dds_::JointState_"
    assert wire_type(Float64MultiArray).__idl_typename__ == "std_msgs::msg::dds_::Float64MultiArray_"


def test_qos_presets_match_ros2_control():
    # ros2_controllers: SystemDefaultsQoS for joint_states / ~/commands / ~/joint_trajectory -> RELIABLE, VOLATILE, KEEP_LAST 1
    assert QOS_ROS2_CONTROL == QosProfile("reliable", "volatile", "keep_last", 1)
    assert QOS_DEFAULT == QosProfile("reliable", "volatile", "keep_last", 10)
    assert QOS_SENSOR_DATA == QosProfile("best_effort", "volatile", "keep_last", 5)
    q = to_cyclone_qos(QOS_ROS2_CONTROL)
    assert Policy.Reliability.Reliable in q and Policy.Durability.Volatile in q and Policy.History.KeepLast(1) in q
    assert Policy.Reliability.BestEffort in to_cyclone_qos(QOS_SENSOR_DATA)
    assert Policy.Durability.TransientLocal in to_cyclone_qos(QOS_LATCHED)
    with pytest.raises(ValueError, match=r"QosProfile.reliability must be one of \['reliable', 'best_effort'\], got 'RELIABLE'"):
        QosProfile("RELIABLE")
    with pytest.raises(ValueError, match="QosProfile.depth must be an int >= 1 with keep_last, got 0"):
        QosProfile(depth=0)


def test_our_command_writer_matches_ros2_control_readers(transport):
    """A forward_command_controller reader (RELIABLE, VOLATILE, KEEP_LAST 1) matches our writer;
    a TRANSIENT_LOCAL reader does not match a VOLATILE writer (durability must match)."""
    topic = "/fwd/commands"
    pub = transport.publisher(topic, Float64MultiArray, QOS_ROS2_CONTROL)
    with DdsTransport(network="loopback", domain_id=DOMAIN) as other:
        got: list = []
        sub = other.subscription(topic, Float64MultiArray, got.append, QOS_ROS2_CONTROL)
        wait_for(lambda: pub.matched() == 1 and sub.matched() == 1, 10, "ros2_control-style reader to match")
        late = other.subscription(topic, Float64MultiArray, got.append, QOS_LATCHED)
        time.sleep(0.5)
        assert late.matched() == 0
        best_effort_writer = other.publisher(topic, Float64MultiArray, QOS_SENSOR_DATA)
        time.sleep(0.3)
        assert sub.matched() == 1  # a RELIABLE reader does not match a BEST_EFFORT writer
    pub.close()


def test_loopback_configs_stay_on_127_0_0_1():
    ns = {"c": "https://cdds.io/config"}
    root = ET.parse(CYCLONEDDS_LOOPBACK).getroot()
    assert [e.get("address") for e in root.findall(".//c:Interfaces/c:NetworkInterface", ns)] == ["127.0.0.1"]
    assert root.find(".//c:AllowMulticast", ns).text == "false"
    assert [e.get("address") for e in root.findall(".//c:Peers/c:Peer", ns)] == ["127.0.0.1"]
    assert root.find(".//c:Compatibility/c:IgnoreTypeInformation", ns).text == "1.15"  # eProsima (Fast DDS)

    fns = {"f": "http://www.eprosima.com"}
    froot = ET.parse(FASTDDS_LOOPBACK).getroot()
    assert [e.text for e in froot.findall(".//f:interfaceWhiteList/f:address", fns)] == ["127.0.0.1"]
    assert froot.find(".//f:useBuiltinTransports", fns).text == "false"
    locators = froot.findall(".//f:locator/f:udpv4/f:address", fns)
    assert locators and {e.text for e in locators} == {"127.0.0.1"}
    assert froot.find(".//f:initialPeersList", fns) is not None

    user = {"ROS_LOCALHOST_ONLY": "1", "ROS_STATIC_PEERS": "10.0.0.7", "FASTRTPS_DEFAULT_PROFILES_FILE": "/etc/f.xml",
            "CYCLONEDDS_URI": "file:///etc/c.xml", "RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp", "PATH": "/bin"}
    assert loopback_env(42, base=user) == {
        "CYCLONEDDS_URI": CYCLONEDDS_LOOPBACK.as_uri(), "FASTDDS_DEFAULT_PROFILES_FILE": str(FASTDDS_LOOPBACK),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "SYSTEM_DEFAULT", "ROS_DOMAIN_ID": "42", "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        "PATH": "/bin",  # the user's static peers and other profiles could reach past 127.0.0.1: removed
    }
    with pytest.raises(ValueError, match=r"ROS domain id must be an int in \[0, 232\], got 233"):
        loopback_env(233)


def test_registry_and_sinks(monkeypatch):
    with pytest.raises(ValueError, match=r"Unknown transport 'zenoh'. Available transports: \['dds', 'rclpy'\]"):
        make_transport("zenoh")
    if "rclpy" not in sys.modules:
        try:
            import rclpy  # noqa: F401
        except ImportError:
            monkeypatch.setattr(os, "environ", dict(os.environ))  # the loopback environment is set before the import
            with pytest.raises(ImportError, match="scripts/make_ros_venv.sh"):
                make_transport("rclpy", network="loopback")
    q: queue.Queue = queue.Queue(maxsize=2)
    put = make_sink(q)
    for i in range(5):
        put(i)
    assert [q.get_nowait(), q.get_nowait()] == [3, 4]  # full queue: oldest dropped, newest kept
    with pytest.raises(TypeError, match="subscription needs a callback or a queue.Queue, got int"):
        make_sink(3)


# ---------------------------------------------------------------------------
# Independent check: cyclonedds-python's own serializer reads what we write
# ---------------------------------------------------------------------------


# cyclonedds-python's own IDL types with the ROS layout (make_idl_struct: the annotations of this
# module are strings under `from __future__ import annotations`, which cyclonedds cannot resolve)
Time_ = make_idl_struct("Time_", "builtin_interfaces::msg::dds_::Time_", {"sec": int32, "nanosec": uint32})
Header_ = make_idl_struct("Header_", "std_msgs::msg::dds_::Header_", {"stamp": Time_, "frame_id": str})
JointState_ = make_idl_struct(
    "JointState_",
    "sensor_msgs::msg::dds_::JointState_",
    {"header": Header_, "name": sequence[str], "position": sequence[float64],
     "velocity": sequence[float64], "effort": sequence[float64]},
)


def test_cyclone_idl_types_interoperate(transport):
    dp = DomainParticipant(DOMAIN)
    topic = Topic(dp, "rt/idl_check/joint_states", JointState_)
    reader = DataReader(dp, topic, to_cyclone_qos(QOS_DEFAULT))
    writer = DataWriter(dp, topic, to_cyclone_qos(QOS_DEFAULT))
    got: queue.Queue = queue.Queue()
    sub = transport.subscription("/idl_check/joint_states", JointState, got, QOS_DEFAULT)
    pub = transport.publisher("/idl_check/joint_states", JointState, QOS_DEFAULT)
    wait_for(lambda: pub.matched() == 2 and sub.matched() == 2, 10, "IDL endpoints to match")
    msg = joint_state(["a", "b"], [0.5, -1.25], [], [3.0, 4.0], stamp=Time(12, 34))
    pub.publish(msg)
    theirs = None
    deadline = time.monotonic() + 5
    while theirs is None and time.monotonic() < deadline:
        samples = [s for s in reader.take(N=10) if getattr(s, "sample_info", None) and s.sample_info.valid_data]
        theirs = samples[0] if samples else time.sleep(0.01)
    assert theirs == JointState_(Header_(Time_(12, 34), ""), ["a", "b"], [0.5, -1.25], [], [3.0, 4.0])
    assert got.get(timeout=5) == msg  # our own sample, loop back through the transport
    writer.write(JointState_(Header_(Time_(5, 6), "w"), ["x"], [1.5], [2.5], [3.5]))
    assert got.get(timeout=5) == JointState(Header(Time(5, 6), "w"), ("x",), [1.5], [2.5], [3.5])
    sub.close()
    pub.close()


# ---------------------------------------------------------------------------
# Round trips through a second process
# ---------------------------------------------------------------------------

PAIRS = {
    JointState: ("/rt/js/in", "/rt/js/out"),
    Float64MultiArray: ("/rt/f64/in", "/rt/f64/out"),
    Image: ("/rt/img/in", "/rt/img/out"),
    Bool: ("/rt/bool/in", "/rt/bool/out"),
}


def round_trip_messages(rng: np.random.Generator) -> dict[type, list]:
    return {
        JointState: [
            joint_state([f"j{i}" for i in range(7)], rng.normal(size=7), rng.normal(size=7), rng.normal(size=7)),
            JointState(Header(Time(1, 2), "f"), ("only",), [np.pi], [], [np.nan]),
            JointState(),
        ],
        Float64MultiArray: [
            Float64MultiArray(MultiArrayLayout((MultiArrayDimension("joints", 6, 6),), 0), rng.normal(size=6)),
            Float64MultiArray(data=[1e-300, -0.0, 7.25]),
        ],
        Image: [
            array_to_image(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), frame_id="camera"),
            array_to_image(rng.integers(0, 256, (3, 5), dtype=np.uint8), encoding="mono8"),
        ],
        Bool: [Bool(data=True), Bool(data=False)],
    }


def echo_round_trip(t, pairs: dict, messages: dict[type, list], timeout: float = 10.0) -> None:
    """Send each message to the echo node and check the reply equals it exactly."""
    for cls, msgs in messages.items():
        src, dst = pairs[cls]
        replies: queue.Queue = queue.Queue()
        t.subscription(dst, cls, replies, QOS_DEFAULT)
        pub = t.publisher(src, cls, QOS_DEFAULT)
        ping = msgs[-1]
        prime(lambda: pub.publish(ping), replies)
        for msg in msgs:
            pub.publish(msg)
            got = replies.get(timeout=timeout)
            while got == ping and msg != ping:  # a late answer to a priming ping
                got = replies.get(timeout=timeout)
            assert got == msg, f"{cls.__name__} changed in the round trip"


def test_dds_round_trip_through_dds_echo_process():
    domain = random_domain_id()
    pairs = [f"{cls.__name__}:{src}:{dst}" for cls, (src, dst) in PAIRS.items()]
    with EchoProcess(sys.executable, "dds", domain, pairs), DdsTransport(network="loopback", domain_id=domain) as t:
        echo_round_trip(t, PAIRS, round_trip_messages(np.random.default_rng(1)))


# ---------------------------------------------------------------------------
# Bad input on the wire
# ---------------------------------------------------------------------------


def test_malformed_and_invalid_samples_are_not_delivered(transport):
    topic = "/bad/joint_states"
    got: list = []
    sub = transport.subscription(topic, JointState, got.append, QOS_DEFAULT)
    with DdsTransport(network="loopback", domain_id=DOMAIN) as other:
        pub = other.publisher(topic, JointState, QOS_DEFAULT)
        wait_for(lambda: pub.matched() == 1 and sub.matched() == 1, 10, "endpoints to match")
        # Cyclone itself refuses to write (and drops on receive) bytes that are not valid CDR of the type
        from cyclonedds.core import DDSException

        with pytest.raises(DDSException, match="BAD_PARAMETER"):
            pub.publish_cdr(b"\x00\x01\x00\x00\x05\x00")
        # valid CDR that is not a valid message reaches our decoder, which rejects it with one log line
        bad_lengths = JointState(Header(), ("a", "b"), [1.0, 2.0], [1.0])  # velocity: 1 value for 2 names
        pub.publish_cdr(cdr.encode(bad_lengths))
        bad_utf8 = cdr.encode(JointState(Header(), ("ab",), [1.0])).replace(b"ab\x00", b"\xff\xfe\x00")
        pub.publish_cdr(bad_utf8)
        bad_time = cdr.encode(JointState(Header(Time(0, 2_000_000_000), ""), ("a",), [1.0]))
        pub.publish_cdr(bad_time)
        good = joint_state(["a"], [1.0])
        pub.publish(good)
        wait_for(lambda: len(got) == 1 and sub.rejected == 3, 5, "one good message and three rejects")
    # the writer left: Cyclone hands the reader a sample without data, which must not reach the callback
    wait_for(lambda: sub.matched() == 0, 10, "the writer to leave")
    time.sleep(0.2)
    assert got == [good] and sub.received == 1 and sub.rejected == 3
    assert sub.invalid_samples >= 1
    sub.close()


def test_closed_transport_refuses_endpoints():
    t = DdsTransport(network="loopback", domain_id=DOMAIN)
    pub = t.publisher("/closed/x", Bool)
    t.close()
    t.close()  # idempotent
    with pytest.raises(RuntimeError, match="DdsTransport is closed"):
        t.publisher("/closed/y", Bool)
    with pytest.raises(RuntimeError, match="publisher on /closed/x is closed"):
        pub.publish(Bool(data=True))
    with DdsTransport(network="loopback", domain_id=DOMAIN) as t2:
        with pytest.raises(TypeError, match="Publisher on /closed/z sends Bool, got JointState"):
            t2.publisher("/closed/z", Bool).publish(JointState())
        with pytest.raises(ValueError, match="another configuration"):
            DdsTransport(network="loopback", domain_id=DOMAIN, config="<CycloneDDS/>")


# ---------------------------------------------------------------------------
# Cross-implementation: real rclpy nodes (PyPI ros-rclpy wheels, Fast DDS) in their own venv
# ---------------------------------------------------------------------------

ROS_PYTHON = Path(__file__).resolve().parents[3] / ".venv-ros" / "bin" / "python"
needs_ros_venv = pytest.mark.skipif(
    not ROS_PYTHON.exists(), reason=f"no rclpy virtual environment at {ROS_PYTHON}; create it with scripts/make_ros_venv.sh"
)


@pytest.mark.ros
@needs_ros_venv
@pytest.mark.parametrize("impl", ["rclpy-native", "rclpy"])
def test_round_trip_through_rclpy_node(impl):
    """Our dds transport -> an rclpy node (Fast DDS) that republishes -> our dds transport, values exact.

    ``rclpy-native`` parses with ROS' own generated classes (independent of our codec);
    ``rclpy`` is this package's rclpy transport.
    """
    domain = random_domain_id()
    pairs = [f"{cls.__name__}:{src}:{dst}" for cls, (src, dst) in PAIRS.items()]
    with EchoProcess(str(ROS_PYTHON), impl, domain, pairs), DdsTransport(network="loopback", domain_id=domain) as t:
        echo_round_trip(t, PAIRS, round_trip_messages(np.random.default_rng(2)))


_ROS_CHECK = r"""
import json, sys
from rclpy.serialization import deserialize_message, serialize_message
from rclpy.qos import DurabilityPolicy, HistoryPolicy, ReliabilityPolicy
from omnipolicy.robot_bridge.wire.messages import message_type
from omnipolicy.robot_bridge.wire.rclpy_transport import ros_message_class, to_rclpy_qos
from omnipolicy.robot_bridge.wire.transport import QOS_ROS2_CONTROL
out = []
for line in sys.stdin:
    ros_type, hexdata = line.split()
    cls = ros_message_class(message_type(ros_type))
    msg = deserialize_message(bytes.fromhex(hexdata), cls)
    out.append({"hex": serialize_message(msg).hex(), "repr": repr(msg)})
q = to_rclpy_qos(QOS_ROS2_CONTROL)
out.append([q.reliability == ReliabilityPolicy.RELIABLE, q.durability == DurabilityPolicy.VOLATILE,
            q.history == HistoryPolicy.KEEP_LAST, q.depth])
print(json.dumps(out))
"""


@pytest.mark.ros
@needs_ros_venv
def test_ros_type_support_reads_and_writes_our_bytes():
    """rclpy's own type support parses our CDR, and its serialization decodes back to the same message."""
    import json
    import subprocess

    rng = np.random.default_rng(3)
    msgs = [
        joint_state(["shoulder", "elbow", "wrist"], rng.normal(size=3), [], rng.normal(size=3), stamp=Time(7, 8)),
        array_to_image(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8), frame_id="cam", stamp=Time(1, 2)),
        trajectory_from_action([0.1, 0.2], JointMap(("a", "b")), time_from_start=0.5),
        Float64MultiArray(MultiArrayLayout((MultiArrayDimension("joints", 2, 2),), 0), [1.5, -2.5]),
        Bool(data=True),
        Time(-5, 999_999_999),
    ]
    stdin = "".join(f"{m.ROS_TYPE} {cdr.encode(m).hex()}\n" for m in msgs)
    res = subprocess.run([str(ROS_PYTHON), "-c", _ROS_CHECK], input=stdin, capture_output=True, text=True, timeout=120,
                         env=loopback_env(DOMAIN))
    assert res.returncode == 0, res.stderr[-2000:]
    *decoded, qos = json.loads(res.stdout.strip().splitlines()[-1])
    for m, d in zip(msgs, decoded, strict=True):
        theirs = bytes.fromhex(d["hex"])
        # same values; padding bytes are unspecified (Fast CDR leaves them uninitialised) and
        # rmw_fastrtps may hand back a few bytes past the end of the message
        assert len(theirs) >= len(cdr.encode(m)), f"{m.ROS_TYPE}: ROS serialized a shorter message"
        assert cdr.decode(type(m), theirs) == m
    assert "name=['shoulder', 'elbow', 'wrist']" in decoded[0]["repr"] and "frame_id='cam'" in decoded[1]["repr"]
    assert qos == [True, True, True, 1]


def local_sockets(pid: int) -> dict[str, set[tuple[str, int]]]:
    """(address, port) of the sockets of process ``pid``, per /proc/net table (udp, udp6, tcp, tcp6; IPv6 as hex)."""
    import socket
    import struct

    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    out: dict[str, set[tuple[str, int]]] = {}
    for table in ("udp", "udp6", "tcp", "tcp6"):
        out[table] = set()
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[9] in inodes:
                    addr, port = cols[1].split(":")
                    if table in ("udp", "tcp"):
                        addr = socket.inet_ntoa(struct.pack("<I", int(addr, 16)))
                    out[table].add((addr, int(port, 16)))
    return out


def udp_local_addresses(pid: int) -> set[str]:
    """IPv4 addresses the UDP sockets of process ``pid`` are bound to; no IPv6 or TCP socket may be open."""
    sockets = local_sockets(pid)
    assert not sockets["udp6"] and not sockets["tcp"] and not sockets["tcp6"], sockets
    return {addr for addr, _ in sockets["udp"]}


@pytest.mark.skipif(not Path("/proc/self/net/udp").exists(), reason="needs Linux /proc")
def test_dds_transport_sockets_stay_on_loopback():
    """A loopback transport sends from 127.0.0.1 only, and no socket is bound to another interface.

    Cyclone DDS 11.0.1 binds its unicast *receive* sockets to 0.0.0.0 whatever its configuration says (its UDP
    transport binds every unicast receive socket to INADDR_ANY; there is no setting for it): they must be exactly
    the two at this participant's RTPS unicast ports (discovery 7410 + 250 * domain + 2 * index, user data one
    above), and nothing is sent from them; every other socket is bound to 127.0.0.1.
    """
    domain = random_domain_id()
    while domain == DOMAIN:
        domain = random_domain_id()
    before = local_sockets(os.getpid())
    with DdsTransport(network="loopback", domain_id=domain) as t:
        t.publisher("/sockets/x", Bool)
        t.subscription("/sockets/y", Bool, lambda m: None)
        now = local_sockets(os.getpid())
    new = {table: now[table] - before[table] for table in now}
    assert not new["udp6"] and not new["tcp"] and not new["tcp6"], new
    any_addr = sorted(port for addr, port in new["udp"] if addr == "0.0.0.0")
    index, odd = divmod(any_addr[0] - (7410 + 250 * domain), 2) if any_addr else (-1, 1)
    assert len(any_addr) == 2 and odd == 0 and 0 <= index <= 20 and any_addr[1] == any_addr[0] + 1, new["udp"]
    others = {addr for addr, port in new["udp"] if port not in any_addr}
    assert others == {"127.0.0.1"}, new["udp"]  # the transmit socket
    assert not (local_sockets(os.getpid())["udp"] - before["udp"])  # closing the last transport of a domain frees them


@pytest.mark.ros
@needs_ros_venv
@pytest.mark.skipif(not Path("/proc/self/net/udp").exists(), reason="needs Linux /proc")
def test_rclpy_node_sockets_stay_on_loopback():
    with EchoProcess(str(ROS_PYTHON), "rclpy-native", random_domain_id(), ["Bool:/s/a:/s/b"]) as echo:
        assert udp_local_addresses(echo.proc.pid) == {"127.0.0.1"}
