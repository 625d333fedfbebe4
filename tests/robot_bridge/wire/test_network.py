"""The ``system`` and ``loopback`` networks: the ROS 2 environment read as rcl and rmw_cyclonedds read it, and
the transports leaving it alone (system) or replacing it (loopback). No packet leaves 127.0.0.1."""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import types
import xml.etree.ElementTree as ET

import pytest

from omnipolicy.robot_bridge.wire.loopback import CYCLONEDDS_LOOPBACK, FASTDDS_LOOPBACK, random_domain_id
from omnipolicy.robot_bridge.wire.network import (
    RosDiscovery,
    check_network,
    cyclone_discovery_fragment,
    cyclone_system_config,
)

# ---------------------------------------------------------------------------
# The environment -> discovery options (rcl's rules)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, expected, warning",
    [
        ({}, RosDiscovery("SUBNET", ()), None),
        ({"ROS_AUTOMATIC_DISCOVERY_RANGE": "", "ROS_STATIC_PEERS": "10.0.0.7"}, RosDiscovery("SUBNET", ("10.0.0.7",)), None),
        ({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_STATIC_PEERS": "192.168.1.5; robot.local;;"},
         RosDiscovery("LOCALHOST", ("192.168.1.5", "robot.local")), None),
        ({"ROS_AUTOMATIC_DISCOVERY_RANGE": "SYSTEM_DEFAULT", "ROS_STATIC_PEERS": "10.0.0.7"},
         RosDiscovery("SYSTEM_DEFAULT", ("10.0.0.7",)), None),
        ({"ROS_AUTOMATIC_DISCOVERY_RANGE": "OFF", "ROS_STATIC_PEERS": "10.0.0.7"}, RosDiscovery("OFF", ()),
         "OFF: ROS_STATIC_PEERS is ignored"),
        ({"ROS_LOCALHOST_ONLY": "1", "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET", "ROS_STATIC_PEERS": "10.0.0.7"},
         RosDiscovery("LOCALHOST", ()), "ROS_LOCALHOST_ONLY=1 is deprecated but honoured"),
        ({"ROS_LOCALHOST_ONLY": "0", "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}, RosDiscovery("SUBNET", ()), None),
        ({"ROS_AUTOMATIC_DISCOVERY_RANGE": "localhost"}, RosDiscovery("LOCALHOST", ()),
         "ROS_AUTOMATIC_DISCOVERY_RANGE='localhost' is not one of ['SUBNET', 'LOCALHOST', 'OFF', 'SYSTEM_DEFAULT']; "
         "assuming LOCALHOST"),
    ],
    ids=["unset", "empty-range", "localhost-peers", "system-default", "off", "localhost-only", "localhost-only-0",
         "bad-range"],
)
def test_discovery_options_from_the_environment(caplog, env, expected, warning):
    with caplog.at_level(logging.WARNING, "omnipolicy.robot_bridge.wire.network"):
        assert RosDiscovery.from_env(env) == expected
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ([] if warning is None else [lines[0]]) and (warning is None or warning in lines[0]), lines


# ---------------------------------------------------------------------------
# Discovery options -> Cyclone configuration (rmw_cyclonedds' rules)
# ---------------------------------------------------------------------------


def parse(fragment: str) -> dict:
    """The settings of a Cyclone XML fragment that rmw_cyclonedds writes."""
    root = ET.fromstring(fragment)
    assert root.tag == "CycloneDDS" and [d.tag for d in root] == ["Domain"]

    def text(path: str):
        e = root.find(path)
        return None if e is None else e.text

    return {
        "AllowMulticast": text("Domain/General/AllowMulticast"),
        "ParticipantIndex": text("Domain/Discovery/ParticipantIndex"),
        "MaxAutoParticipantIndex": text("Domain/Discovery/MaxAutoParticipantIndex"),
        "Tag": text("Domain/Discovery/Tag"),
        "Peers": [p.get("address") for p in root.findall("Domain/Discovery/Peers/Peer")],
    }


@pytest.mark.parametrize(
    "discovery, expected",
    [
        (RosDiscovery("SUBNET"), dict(AllowMulticast=None, ParticipantIndex="auto", MaxAutoParticipantIndex="32", Tag=None,
                                      Peers=[])),
        (RosDiscovery("SUBNET", ("10.0.0.7", "robot")),
         dict(AllowMulticast=None, ParticipantIndex="auto", MaxAutoParticipantIndex="32", Tag=None, Peers=["10.0.0.7", "robot"])),
        (RosDiscovery("LOCALHOST", ("10.0.0.7",)),
         dict(AllowMulticast="false", ParticipantIndex="auto", MaxAutoParticipantIndex="32", Tag=None,
              Peers=["localhost", "10.0.0.7"])),
        (RosDiscovery("OFF"), dict(AllowMulticast="false", ParticipantIndex="none", MaxAutoParticipantIndex=None,
                                   Tag="ros_discovery_off_4242", Peers=[])),
    ],
    ids=["subnet", "subnet-peers", "localhost", "off"],
)
def test_cyclone_discovery_fragment_as_rmw_cyclonedds_writes_it(discovery, expected):
    assert parse(cyclone_discovery_fragment(discovery, pid=4242)) == expected


def test_system_default_leaves_cyclone_alone_and_says_the_peers_are_ignored(caplog):
    with caplog.at_level(logging.WARNING, "omnipolicy.robot_bridge.wire.network"):
        assert cyclone_discovery_fragment(RosDiscovery("SYSTEM_DEFAULT", ("10.0.0.7",))) == ""
    assert [r.getMessage() for r in caplog.records] == [
        "ROS_AUTOMATIC_DISCOVERY_RANGE=SYSTEM_DEFAULT: ROS_STATIC_PEERS ['10.0.0.7'] ignored (as rmw_cyclonedds does)"]
    with pytest.raises(ValueError, match=r"RosDiscovery.range must be one of \['SUBNET', 'LOCALHOST', 'OFF', "
                                         r"'SYSTEM_DEFAULT'\], got 'LAN'"):
        RosDiscovery("LAN")
    with pytest.raises(ValueError, match=r"Unknown network 'lan'. Expected one of \['system', 'loopback'\]"):
        check_network("lan")


def test_system_config_is_ours_then_rmw_cyclonedds_then_cyclonedds_uri():
    env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_STATIC_PEERS": "10.0.0.7",
           "CYCLONEDDS_URI": "file:///etc/robot/cyclonedds.xml"}
    ours, rmw, uri = cyclone_system_config(env, pid=1).split(",")
    assert ET.fromstring(ours).find("Domain/Compatibility/IgnoreTypeInformation").text == "1.15"  # Fast DDS peers
    assert parse(rmw)["Peers"] == ["localhost", "10.0.0.7"] and parse(rmw)["AllowMulticast"] == "false"
    assert uri == "file:///etc/robot/cyclonedds.xml"  # last: it overrides both, as under rmw_cyclonedds
    only_ours = cyclone_system_config({"ROS_AUTOMATIC_DISCOVERY_RANGE": "SYSTEM_DEFAULT"})
    assert "," not in only_ours and ET.fromstring(only_ours).find("Domain/Discovery") is None


# ---------------------------------------------------------------------------
# The transports
# ---------------------------------------------------------------------------


def test_dds_transport_on_the_system_network_reads_ros_domain_id_and_cyclonedds_uri(monkeypatch):
    """A system-network transport joins the domain of ROS_DOMAIN_ID with the configuration CYCLONEDDS_URI names
    (here the loopback file, so the traffic stays on 127.0.0.1) and talks to a loopback node there."""
    pytest.importorskip("cyclonedds")
    from omnipolicy.robot_bridge.wire import dds
    from omnipolicy.robot_bridge.wire.echo import EchoProcess, prime
    from omnipolicy.robot_bridge.wire.messages import Bool

    domain = random_domain_id()
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    monkeypatch.setenv("CYCLONEDDS_URI", CYCLONEDDS_LOOPBACK.as_uri())
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    for name in ("ROS_STATIC_PEERS", "ROS_LOCALHOST_ONLY"):
        monkeypatch.delenv(name, raising=False)
    with EchoProcess(sys.executable, "dds", domain, ["Bool:/net/a:/net/b"]), dds.DdsTransport(network="system") as t:
        assert (t.network, t.domain_id) == ("system", domain)
        assert dds._DOMAINS[domain][1] == cyclone_system_config()  # ... which ends with CYCLONEDDS_URI
        replies: queue.Queue = queue.Queue()
        t.subscription("/net/b", Bool, replies)
        pub = t.publisher("/net/a", Bool)
        prime(lambda: pub.publish(Bool(False)), replies)
        pub.publish(Bool(True))
        assert replies.get(timeout=10) == Bool(True)


class _FakeRclpy:
    """Just enough of rclpy for RclpyTransport: records the environment and domain id at ``rclpy.init``."""

    def __init__(self) -> None:
        self.inits: list[tuple[dict, int]] = []
        outer = self

        class Context:
            def __init__(self) -> None:
                self._ok = True

            def ok(self) -> bool:
                return self._ok

            def try_shutdown(self) -> None:
                self._ok = False

        class Executor:
            def __init__(self, context) -> None:
                self._stop = threading.Event()

            def add_node(self, node) -> None:
                pass

            def spin_once(self, timeout_sec: float) -> None:
                self._stop.wait(timeout_sec)

            def shutdown(self) -> None:
                self._stop.set()

        class Node:
            def destroy_node(self) -> None:
                pass

        def init(*, context, domain_id, signal_handler_options) -> None:
            outer.inits.append((dict(os.environ), domain_id))

        self.rclpy = types.ModuleType("rclpy")
        self.rclpy.Context, self.rclpy.init = Context, init
        self.rclpy.create_node = lambda name, context: Node()
        self.executors = types.ModuleType("rclpy.executors")
        self.executors.SingleThreadedExecutor = Executor
        self.signals = types.ModuleType("rclpy.signals")
        self.signals.SignalHandlerOptions = types.SimpleNamespace(NO="no")


USER_ENV = {
    "ROS_DOMAIN_ID": "17", "RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp", "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
    "ROS_STATIC_PEERS": "10.0.0.7", "CYCLONEDDS_URI": "file:///etc/robot/cyclonedds.xml",
    "FASTRTPS_DEFAULT_PROFILES_FILE": "/etc/robot/fastdds.xml", "PATH": "/usr/bin",
}


def test_rclpy_transport_leaves_the_environment_to_ros_on_the_system_network(monkeypatch):
    from omnipolicy.robot_bridge.wire.rclpy_transport import RclpyTransport

    fake = _FakeRclpy()
    for name, module in (("rclpy", fake.rclpy), ("rclpy.executors", fake.executors), ("rclpy.signals", fake.signals)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(os, "environ", dict(USER_ENV))
    with RclpyTransport(network="system") as t:
        assert (t.network, t.domain_id) == ("system", 17)
    assert fake.inits == [(USER_ENV, 17)] and os.environ == USER_ENV  # nothing set, nothing removed

    with RclpyTransport(network="loopback", domain_id=42):
        pass
    env, domain = fake.inits[1]
    assert domain == 42 and env == os.environ
    assert {k: env.get(k) for k in (*USER_ENV, "FASTDDS_DEFAULT_PROFILES_FILE")} == {
        "ROS_DOMAIN_ID": "42", "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp", "ROS_AUTOMATIC_DISCOVERY_RANGE": "SYSTEM_DEFAULT",
        "ROS_STATIC_PEERS": None, "CYCLONEDDS_URI": CYCLONEDDS_LOOPBACK.as_uri(), "FASTRTPS_DEFAULT_PROFILES_FILE": None,
        "PATH": "/usr/bin", "FASTDDS_DEFAULT_PROFILES_FILE": str(FASTDDS_LOOPBACK),
    }
    with pytest.raises(ValueError, match=r"Unknown network 'lan'. Expected one of \['system', 'loopback'\]"):
        RclpyTransport(network="lan")
