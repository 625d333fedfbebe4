"""Which network a node talks on: ``system`` (the ROS 2 environment, as ``ros2 run`` reads it) or ``loopback``.

``system`` is what users run: the node joins whatever ROS 2 graph its
environment describes, exactly as a node started with ``ros2 run`` would:
``ROS_DOMAIN_ID``, ``ROS_AUTOMATIC_DISCOVERY_RANGE`` (or the deprecated
``ROS_LOCALHOST_ONLY=1``), ``ROS_STATIC_PEERS``, ``RMW_IMPLEMENTATION``,
``CYCLONEDDS_URI`` and ``FASTRTPS_DEFAULT_PROFILES_FILE`` /
``FASTDDS_DEFAULT_PROFILES_FILE``. The ``rclpy`` transport leaves them to rcl
and the RMW; the ``dds`` transport (Cyclone DDS without ROS) reads them here
with the rules of rcl (:meth:`RosDiscovery.from_env`) and turns them into a
Cyclone configuration with the rules of rmw_cyclonedds
(:func:`cyclone_discovery_fragment`), followed by ``CYCLONEDDS_URI``.

``loopback`` keeps every packet on 127.0.0.1 with the shipped configurations of
:mod:`omnipolicy.robot_bridge.wire.loopback`, whatever the environment says. Tests
and benchmarks always ask for it.

>>> d = RosDiscovery.from_env({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_STATIC_PEERS": "10.0.0.7;robot"})
>>> d.range, d.static_peers
('LOCALHOST', ('10.0.0.7', 'robot'))
>>> RosDiscovery.from_env({"ROS_LOCALHOST_ONLY": "1", "ROS_STATIC_PEERS": "10.0.0.7"})
RosDiscovery(range='LOCALHOST', static_peers=())
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

Network = Literal["system", "loopback"]
NETWORKS: tuple[str, ...] = ("system", "loopback")

#: ``ROS_AUTOMATIC_DISCOVERY_RANGE`` values (rcl's ``rmw_automatic_discovery_range_t``).
DISCOVERY_RANGES: tuple[str, ...] = ("SUBNET", "LOCALHOST", "OFF", "SYSTEM_DEFAULT")

#: rmw_cyclonedds' number of participant indices probed on each peer (about one per ROS 2 process on a host).
MAX_AUTO_PARTICIPANT_INDEX = 32

#: Fast DDS 3 peers (rmw_fastrtps, ROS 2's default RMW) send XTypes type information Cyclone cannot
#: resolve; ignore it for eProsima's vendor id (1.15) and match on type names, as rmw_cyclonedds peers do.
IGNORE_TYPE_INFORMATION = "1.15"


def check_network(network: str) -> str:
    """Return ``network`` if it is one of :data:`NETWORKS`.

    Raises:
        ValueError: anything else (the message lists the choices).
    """
    if network not in NETWORKS:
        raise ValueError(f"Unknown network {network!r}. Expected one of {list(NETWORKS)}")
    return network


@dataclass(frozen=True)
class RosDiscovery:
    """ROS 2's discovery options, as rcl reads them from the environment at ``rclpy.init``.

    Attributes:
        range: one of :data:`DISCOVERY_RANGES`.
        static_peers: hosts to contact by unicast (``ROS_STATIC_PEERS``, ``;``-separated).
    """

    range: str = "SUBNET"
    static_peers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.range not in DISCOVERY_RANGES:
            raise ValueError(f"RosDiscovery.range must be one of {list(DISCOVERY_RANGES)}, got {self.range!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RosDiscovery":
        """The options rcl derives from ``env`` (default ``os.environ``).

        rcl's rules: ``ROS_LOCALHOST_ONLY`` starting with ``1`` (deprecated) means ``LOCALHOST`` and no static
        peers; else ``ROS_AUTOMATIC_DISCOVERY_RANGE`` (unset or empty: ``SUBNET``; an unknown value is warned
        about and taken as ``LOCALHOST``), and ``ROS_STATIC_PEERS`` unless the range is ``OFF``.
        """
        env = os.environ if env is None else env
        if env.get("ROS_LOCALHOST_ONLY", "").startswith("1"):
            log.warning("ROS_LOCALHOST_ONLY=1 is deprecated but honoured: discovery range LOCALHOST, "
                        "ROS_AUTOMATIC_DISCOVERY_RANGE and ROS_STATIC_PEERS ignored")
            return cls("LOCALHOST")
        raw = env.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "")
        if raw == "":
            rng = "SUBNET"
        elif raw in DISCOVERY_RANGES:
            rng = raw
        else:
            log.warning("ROS_AUTOMATIC_DISCOVERY_RANGE=%r is not one of %s; assuming LOCALHOST (as rcl does)",
                        raw, list(DISCOVERY_RANGES))
            rng = "LOCALHOST"
        if rng == "OFF":
            if env.get("ROS_STATIC_PEERS", "").strip(";"):
                log.warning("ROS_AUTOMATIC_DISCOVERY_RANGE is OFF: ROS_STATIC_PEERS is ignored")
            return cls("OFF")
        peers = tuple(p.strip() for p in env.get("ROS_STATIC_PEERS", "").split(";") if p.strip())
        return cls(rng, peers)


def cyclone_discovery_fragment(discovery: RosDiscovery, pid: int | None = None) -> str:
    """The Cyclone DDS configuration rmw_cyclonedds makes of the discovery options ("" for none).

    rmw_cyclonedds (``rmw_node.cpp``, ``check_create_domain``):

    - ``SUBNET``: multicast discovery as Cyclone does by default, plus the static peers; participant
      indices ``auto`` (at most 32 per host);
    - ``LOCALHOST``: no multicast; ``localhost`` and the static peers as peers; indices ``auto``;
    - ``OFF``: no multicast, no peers, no participant index, and a discovery tag unique to this process
      (``ros_discovery_off_<pid>``) so that nothing else matches;
    - ``SYSTEM_DEFAULT``: nothing (the DDS configuration decides; static peers are ignored with a warning).

    Args:
        discovery: the options.
        pid: process id for ``OFF``'s tag (default: this process).
    """
    if discovery.range == "SYSTEM_DEFAULT":
        if discovery.static_peers:
            log.warning("ROS_AUTOMATIC_DISCOVERY_RANGE=SYSTEM_DEFAULT: ROS_STATIC_PEERS %s ignored (as rmw_cyclonedds does)",
                        list(discovery.static_peers))
        return ""
    root = ET.Element("CycloneDDS")
    domain = ET.SubElement(root, "Domain")
    if discovery.range in ("LOCALHOST", "OFF"):
        ET.SubElement(ET.SubElement(domain, "General"), "AllowMulticast").text = "false"
    disc = ET.SubElement(domain, "Discovery")
    if discovery.range == "OFF":
        ET.SubElement(disc, "ParticipantIndex").text = "none"
        ET.SubElement(disc, "Tag").text = f"ros_discovery_off_{os.getpid() if pid is None else pid}"
    else:
        ET.SubElement(disc, "ParticipantIndex").text = "auto"
        ET.SubElement(disc, "MaxAutoParticipantIndex").text = str(MAX_AUTO_PARTICIPANT_INDEX)
        peers = (("localhost",) if discovery.range == "LOCALHOST" else ()) + discovery.static_peers
        if peers:
            peer_list = ET.SubElement(disc, "Peers")
            for p in peers:
                ET.SubElement(peer_list, "Peer", address=p)
    return ET.tostring(root, encoding="unicode")


def cyclone_system_config(env: Mapping[str, str] | None = None, pid: int | None = None) -> str:
    """The ``dds`` transport's Cyclone configuration on the ``system`` network, from ``env`` (default ``os.environ``).

    A comma-separated list, as Cyclone reads ``CYCLONEDDS_URI``: our fragment (ignore Fast DDS' type
    information, so ROS 2 nodes on the default RMW match), rmw_cyclonedds' discovery fragment
    (:func:`cyclone_discovery_fragment`), then ``CYCLONEDDS_URI`` itself, which is read last and so
    overrides both, exactly as it overrides rmw_cyclonedds' fragment.
    """
    env = os.environ if env is None else env
    compat = ET.Element("CycloneDDS")
    ET.SubElement(ET.SubElement(ET.SubElement(compat, "Domain"), "Compatibility"),
                  "IgnoreTypeInformation").text = IGNORE_TYPE_INFORMATION
    parts = [ET.tostring(compat, encoding="unicode"), cyclone_discovery_fragment(RosDiscovery.from_env(env), pid),
             env.get("CYCLONEDDS_URI", "")]
    return ",".join(p for p in parts if p)
