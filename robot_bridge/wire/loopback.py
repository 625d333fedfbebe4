"""Keep ROS 2 / DDS traffic on 127.0.0.1: the shipped configurations and the environment that selects them.

``config/cyclonedds-loopback.xml`` (Cyclone DDS: the ``dds`` transport and
rmw_cyclonedds) and ``config/fastdds-loopback.xml`` (Fast DDS: rmw_fastrtps,
as in PyPI's ros-rclpy wheels) bind to 127.0.0.1, use no multicast and
discover peers by unicast on 127.0.0.1. Every test and benchmark runs its
processes with :func:`loopback_env`.

``ROS_AUTOMATIC_DISCOVERY_RANGE`` is set to ``SYSTEM_DEFAULT``: "leave the
middleware's discovery settings alone", so the files above decide. Measured
with the ros-rclpy wheels (Kilted, rmw_fastrtps_cpp): with ``LOCALHOST`` the
RMW adds its own transport on top of the profile and the node binds UDP
sockets on the machine's other interface and on 0.0.0.0; with
``SYSTEM_DEFAULT`` every socket it opens is bound to 127.0.0.1.
(Cyclone DDS 11.0.1 binds its two unicast receive sockets to 0.0.0.0 whatever
its configuration says: its UDP transport binds every unicast receive socket
to INADDR_ANY. It sends only from a socket bound to 127.0.0.1 and advertises
127.0.0.1 only, so no packet leaves the host; tests/robot_bridge/wire/test_dds.py pins
exactly which sockets are bound where.)
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "config"
CYCLONEDDS_LOOPBACK = CONFIG_DIR / "cyclonedds-loopback.xml"
FASTDDS_LOOPBACK = CONFIG_DIR / "fastdds-loopback.xml"

#: Variables of a user's ROS 2 environment that could reach past 127.0.0.1 and that the loopback files do not
#: override: removed (ROS_LOCALHOST_ONLY is deprecated and conflicts with the discovery range on newer ROS;
#: FASTRTPS_DEFAULT_PROFILES_FILE is Fast DDS' older name of the profiles file).
SYSTEM_ONLY_VARIABLES = ("ROS_LOCALHOST_ONLY", "ROS_STATIC_PEERS", "FASTRTPS_DEFAULT_PROFILES_FILE")

#: Largest domain id whose RTPS ports (7400 + 250 * id + offsets) fit in 16 bits.
MAX_DOMAIN_ID = 232


def check_domain_id(domain_id: int) -> int:
    """Return ``domain_id`` if it is a usable DDS domain id.

    Raises:
        ValueError: outside ``[0, 232]``.
    """
    if isinstance(domain_id, bool) or not isinstance(domain_id, int) or not 0 <= domain_id <= MAX_DOMAIN_ID:
        raise ValueError(f"ROS domain id must be an int in [0, {MAX_DOMAIN_ID}], got {domain_id!r}")
    return domain_id


def loopback_env(
    domain_id: int | None = None, *, rmw: str | None = "rmw_fastrtps_cpp", base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a process whose ROS 2 / DDS traffic stays on 127.0.0.1.

    Sets ``CYCLONEDDS_URI`` and ``FASTDDS_DEFAULT_PROFILES_FILE`` to the shipped
    loopback configurations, ``ROS_AUTOMATIC_DISCOVERY_RANGE=SYSTEM_DEFAULT``
    (the files decide; see the module docstring), and, when given,
    ``ROS_DOMAIN_ID`` and ``RMW_IMPLEMENTATION``; removes
    :data:`SYSTEM_ONLY_VARIABLES`.

    Args:
        domain_id: ``ROS_DOMAIN_ID`` to set, or None to keep the base's.
        rmw: ``RMW_IMPLEMENTATION`` to set, or None to keep the base's.
        base: environment to start from; default ``os.environ``.

    Returns:
        A new dict (``base`` is not modified).
    """
    env = dict(os.environ if base is None else base)
    env["CYCLONEDDS_URI"] = CYCLONEDDS_LOOPBACK.as_uri()
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(FASTDDS_LOOPBACK)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SYSTEM_DEFAULT"
    for name in SYSTEM_ONLY_VARIABLES:
        env.pop(name, None)
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(check_domain_id(domain_id))
    if rmw is not None:
        env["RMW_IMPLEMENTATION"] = rmw
    return env


def apply_loopback_env(domain_id: int | None = None, *, rmw: str | None = "rmw_fastrtps_cpp") -> None:
    """Set :func:`loopback_env`'s variables in this process (before any DDS participant is created)."""
    env = loopback_env(domain_id, rmw=rmw, base={})
    for name in SYSTEM_ONLY_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(env)


def domain_id_from_env(default: int = 0) -> int:
    """``ROS_DOMAIN_ID`` from the environment, or ``default``.

    Raises:
        ValueError: set but not an int in ``[0, 232]``.
    """
    raw = os.environ.get("ROS_DOMAIN_ID", "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"ROS_DOMAIN_ID must be an int in [0, {MAX_DOMAIN_ID}], got {raw!r}") from None
    return check_domain_id(value)


def random_domain_id(low: int = 100, high: int = MAX_DOMAIN_ID) -> int:
    """A random domain id in ``[low, high]``: one per test run or benchmark keeps runs from hearing each other."""
    return random.SystemRandom().randint(check_domain_id(low), check_domain_id(high))
