"""Safety in the command path: limits, rate limit, watchdog, e-stop latch (pure, no I/O).

Every command a deploy node sends passes :meth:`SafetyFilter.filter`, which
returns the command actually sent after clipping and says which limit clipped
which joint (each clip is counted in :attr:`SafetyFilter.counts`). What a
limit means depends on the robot's command interface:

``effort`` (forward_command_controller on effort interfaces; torques):
    1. clip each effort to ``[-effort_limit, effort_limit]``;
    2. rate limit: move at most ``max_delta`` from the previously sent effort
       (zero before the first command and after a hold: efforts ramp up);
    3. position limits: a joint at or beyond ``position_lower + margin`` /
       ``position_upper - margin`` gets no effort pushing it further out
       (that component becomes 0, the one pulling it back stays);
    4. velocity limit: a joint faster than ``velocity_limit`` gets no effort
       accelerating it further in that direction.
    Steps 3 and 4 only ever shrink an effort toward zero, and they come after
    the rate limit, so they act at once.

``velocity`` (forward_command_controller on velocity interfaces):
    1. clip each velocity to ``[-velocity_limit, velocity_limit]``;
    2. rate limit: move at most ``max_delta`` from the previously sent velocity
       (zero before the first command and after a hold);
    3. position limits: a joint at or beyond a limit (less the margin) gets no
       velocity moving it further out.

``position`` (forward position controller, or a streamed joint trajectory):
    1. clip each target to ``[position_lower, position_upper]``;
    2. velocity limit: move the target at most ``velocity_limit * dt`` from the
       measured position;
    3. rate limit: move at most ``max_delta`` from the previously sent target.

The hold command (:meth:`SafetyFilter.hold`): zero effort for ``effort``
(torque off; the joints' damping brings the arm to rest), zero velocity for
``velocity``, and for ``position`` the last target sent, moved into the
velocity limit's window around the measured position (``velocity_limit * dt``;
the measured position before any target): a position servo holds its target,
while one told to hold where it measures itself sags a little further under
its load at every hold tick, and a gripper squeezing an object lets go. After
the robot side restarts elsewhere, the window keeps the hold next to the
measured position. A deploy node sends it whenever it may not act:
e-stop latched, state stale (:class:`Watchdog`), state rejected.

>>> lim = SafetyLimits(("a", "b"), "effort", effort_limit=(1.0, 1.0), max_delta=(0.5, 0.5))
>>> f = SafetyFilter(lim)
>>> out = f.filter([2.0, -0.2], position=[0.0, 0.0], velocity=[0.0, 0.0])
>>> out.command.tolist(), sorted(out.clipped)   # 2.0 -> 1.0 (effort) -> 0.5 (rate: previous was 0)
([0.5, -0.2], ['effort', 'rate'])
>>> f.counts["effort"].tolist(), f.counts["rate"].tolist()
([1, 0], [1, 0])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

INTERFACES = ("effort", "position", "velocity")
#: Kinds of clip, in the order they are applied (effort interface) / reported.
CLIP_KINDS = ("effort", "position", "velocity", "rate")


def _per_joint(name: str, value: Any, n: int, default: float) -> tuple[float, ...]:
    if value is None:
        return (default,) * n
    if isinstance(value, (int, float)):
        return (float(value),) * n
    out = tuple(float(v) for v in value)
    if len(out) != n:
        raise ValueError(f"SafetyLimits.{name}: expected one value per joint ({n}), got {len(out)}: {list(out)}")
    return out


@dataclass(frozen=True)
class SafetyLimits:
    """Limits of one robot's joints, in the controller's joint order.

    Scalars apply to every joint; ``None`` means no limit (``inf``).

    Attributes:
        joints: joint names in controller order.
        interface: ``effort``, ``position`` or ``velocity`` (what the command values are).
        position_lower, position_upper: joint position limits (rad or m).
        velocity_limit: maximum joint speed (rad/s or m/s), > 0.
        effort_limit: maximum absolute effort command (effort interface), > 0.
        max_delta: maximum change of a command between two consecutive sends, > 0.
        position_margin: the effort interface blocks outward effort this far inside a position limit.
    """

    joints: tuple[str, ...]
    interface: Literal["effort", "position", "velocity"] = "effort"
    position_lower: Any = None
    position_upper: Any = None
    velocity_limit: Any = None
    effort_limit: Any = None
    max_delta: Any = None
    position_margin: float = 0.0

    def __post_init__(self) -> None:
        joints = tuple(str(j) for j in self.joints)
        if not joints or len(set(joints)) != len(joints):
            raise ValueError(f"SafetyLimits.joints: expected unique joint names, got {list(joints)}")
        if self.interface not in INTERFACES:
            raise ValueError(f"SafetyLimits.interface: expected one of {list(INTERFACES)}, got {self.interface!r}")
        n = len(joints)
        object.__setattr__(self, "joints", joints)
        lower = _per_joint("position_lower", self.position_lower, n, -math.inf)
        upper = _per_joint("position_upper", self.position_upper, n, math.inf)
        bad = [j for j, lo, hi in zip(joints, lower, upper) if not lo < hi]
        if bad:
            raise ValueError(f"SafetyLimits: position_lower must be < position_upper, not for joints {bad}")
        object.__setattr__(self, "position_lower", lower)
        object.__setattr__(self, "position_upper", upper)
        for name in ("velocity_limit", "effort_limit", "max_delta"):
            vals = _per_joint(name, getattr(self, name), n, math.inf)
            if any(not v > 0 for v in vals):
                raise ValueError(f"SafetyLimits.{name}: expected values > 0 (None for no limit), got {list(vals)}")
            object.__setattr__(self, name, vals)
        if not self.position_margin >= 0:
            raise ValueError(f"SafetyLimits.position_margin: expected >= 0, got {self.position_margin!r}")

    def replace(self, **changes: Any) -> "SafetyLimits":
        """A copy with some limits replaced (same validation)."""
        values = {f: getattr(self, f) for f in self.__dataclass_fields__}
        values.update(changes)
        return SafetyLimits(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able limits (``inf`` as None)."""
        def js(v: Any) -> Any:
            return [None if math.isinf(x) else x for x in v] if isinstance(v, tuple) and v and isinstance(v[0], float) else v

        return {f: js(getattr(self, f)) for f in self.__dataclass_fields__}


@dataclass
class SafeCommand:
    """What :meth:`SafetyFilter.filter` returns.

    Attributes:
        command: float64 (J,) the command to send (controller joint order).
        requested: float64 (J,) the command asked for.
        clipped: kind -> bool (J,) which joints that limit changed (only kinds that changed something).
    """

    command: np.ndarray
    requested: np.ndarray
    clipped: dict[str, np.ndarray] = field(default_factory=dict)


class SafetyFilter:
    """Clip commands to a robot's limits, remember the last sent command, count every clip.

    Args:
        limits: the robot's :class:`SafetyLimits`.
        dt: control period in seconds (the position interface's velocity limit per step).

    Raises:
        ValueError: ``dt`` not > 0.
    """

    def __init__(self, limits: SafetyLimits, dt: float = 0.02) -> None:
        if not dt > 0:
            raise ValueError(f"SafetyFilter: dt must be > 0 seconds, got {dt!r}")
        self.limits = limits
        self.dt = float(dt)
        n = len(limits.joints)
        self._lower = np.asarray(limits.position_lower)  # (J,)
        self._upper = np.asarray(limits.position_upper)
        self._vmax = np.asarray(limits.velocity_limit)
        self._umax = np.asarray(limits.effort_limit)
        self._delta = np.asarray(limits.max_delta)
        self._margin = float(limits.position_margin)
        self.counts: dict[str, np.ndarray] = {k: np.zeros(n, np.int64) for k in CLIP_KINDS}
        self.filtered = 0
        self.last_sent: np.ndarray | None = None

    def _vector(self, name: str, value: Any) -> np.ndarray:
        v = np.asarray(value, dtype=np.float64).reshape(-1)
        n = len(self.limits.joints)
        if v.shape != (n,):
            raise ValueError(f"SafetyFilter: {name} has {v.size} values, expected {n} for joints {list(self.limits.joints)}")
        if not np.all(np.isfinite(v)):
            bad = [j for j, x in zip(self.limits.joints, v) if not np.isfinite(x)]
            raise ValueError(f"SafetyFilter: {name} is not finite for joints {bad}: {v.tolist()}")
        return v

    def filter(self, command: Any, position: Any, velocity: Any, commit: bool = True) -> SafeCommand:
        """The command to send for ``command`` given the measured joint state, and what was clipped.

        Args:
            command: (J,) requested effort or position targets, controller joint order.
            position: (J,) measured joint positions.
            velocity: (J,) measured joint velocities.
            commit: make the result :attr:`last_sent` (the rate limit's reference). Pass False when the
                caller may still drop the command (a late control tick) and set ``last_sent`` when it is sent.

        Returns:
            The :class:`SafeCommand`.

        Raises:
            ValueError: wrong lengths or non-finite values (nothing is sent; the caller holds).
        """
        req = self._vector("command", command)
        q = self._vector("position", position)
        qd = self._vector("velocity", velocity)
        prev = self.last_sent
        out = req.copy()
        clipped: dict[str, np.ndarray] = {}

        def apply(kind: str, new: np.ndarray) -> None:
            nonlocal out
            changed = new != out
            if changed.any():
                clipped[kind] = changed
                self.counts[kind] += changed
            out = new

        if self.limits.interface == "effort":
            apply("effort", np.clip(out, -self._umax, self._umax))
            prev = np.zeros_like(out) if prev is None else prev  # nothing sent yet: the robot applies no effort
            apply("rate", np.clip(out, prev - self._delta, prev + self._delta))
            outward_hi = (q >= self._upper - self._margin) & (out > 0)
            outward_lo = (q <= self._lower + self._margin) & (out < 0)
            apply("position", np.where(outward_hi | outward_lo, 0.0, out))
            too_fast = ((qd > self._vmax) & (out > 0)) | ((qd < -self._vmax) & (out < 0))
            apply("velocity", np.where(too_fast, 0.0, out))
        elif self.limits.interface == "velocity":
            apply("velocity", np.clip(out, -self._vmax, self._vmax))
            prev = np.zeros_like(out) if prev is None else prev  # nothing sent yet: the joints stand still
            apply("rate", np.clip(out, prev - self._delta, prev + self._delta))
            outward = ((q >= self._upper - self._margin) & (out > 0)) | ((q <= self._lower + self._margin) & (out < 0))
            apply("position", np.where(outward, 0.0, out))
        else:
            apply("position", np.clip(out, self._lower, self._upper))
            step = self._vmax * self.dt
            apply("velocity", np.clip(out, q - step, q + step))
            if prev is not None:
                apply("rate", np.clip(out, prev - self._delta, prev + self._delta))
        self.filtered += 1
        if commit:
            self.last_sent = out
        return SafeCommand(out, req, clipped)

    def hold(self, position: Any = None, commit: bool = True) -> np.ndarray | None:
        """The hold command: zero effort or velocity; for a position interface the last target sent, within
        ``velocity_limit * dt`` of the measured ``position`` (before any target: the measured position; None if the
        position is unknown: send nothing). See the module docstring.

        With ``commit`` it becomes :attr:`last_sent` (a resumed effort command is then rate limited from zero).
        """
        if self.limits.interface in ("effort", "velocity"):
            out = np.zeros(len(self.limits.joints))
        else:
            if position is None:
                return None
            q = np.asarray(position, dtype=np.float64).reshape(-1)  # (J,)
            if q.shape != (len(self.limits.joints),) or not np.all(np.isfinite(q)):
                return None
            step = self._vmax * self.dt
            out = q if self.last_sent is None else np.clip(self.last_sent, q - step, q + step)
            out = np.clip(out, self._lower, self._upper)
        if commit:
            self.last_sent = out
        return out.copy()

    def report(self) -> dict[str, Any]:
        """Clip counts per kind and joint, and the number of filtered commands (JSON-able)."""
        return {
            "filtered": self.filtered,
            "clipped": {k: dict(zip(self.limits.joints, v.tolist())) for k, v in self.counts.items()},
        }


class Watchdog:
    """Says whether the newest state is fresh enough to act on.

    Args:
        timeout: state older than this many seconds is stale.

    >>> w = Watchdog(0.1)
    >>> w.fresh(now=5.0)         # nothing received yet
    False
    >>> w.feed(5.0); w.fresh(now=5.05), w.fresh(now=5.2)
    (True, False)
    """

    def __init__(self, timeout: float) -> None:
        if not timeout > 0:
            raise ValueError(f"Watchdog: timeout must be > 0 seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self.last: float | None = None

    def feed(self, t: float) -> None:
        """A state arrived at monotonic time ``t``."""
        self.last = t

    def age(self, now: float) -> float:
        """Seconds since the last state (``inf`` if none)."""
        return math.inf if self.last is None else now - self.last

    def fresh(self, now: float) -> bool:
        return self.age(now) <= self.timeout


class EStopLatch:
    """An emergency stop that stays engaged until explicitly cleared.

    ``engage()`` (an e-stop message saying True) latches the stop; an e-stop
    message saying False does not release it; only ``clear()`` (a message on
    the separate clear topic) does, and an e-stop that is still asserted
    latches again on its next message.

    >>> e = EStopLatch()
    >>> _ = e.engage(); e.release_request(); e.engaged
    True
    >>> _ = e.clear(); e.engaged, e.engagements, e.clears
    (False, 1, 1)
    """

    def __init__(self) -> None:
        self.engaged = False
        self.engagements = 0
        self.clears = 0
        self.ignored_releases = 0

    def engage(self) -> bool:
        """Latch the stop; True if it was not engaged before."""
        new = not self.engaged
        self.engaged = True
        self.engagements += new
        return new

    def release_request(self) -> None:
        """An e-stop message saying False: ignored (counted), the stop stays latched."""
        if self.engaged:
            self.ignored_releases += 1

    def clear(self) -> bool:
        """Clear the latch; True if it was engaged."""
        was = self.engaged
        self.engaged = False
        self.clears += was
        return was


def parse_joint_limits(specs: Sequence[str], joints: Sequence[str]) -> dict[str, tuple[float, float]]:
    """``"wrist:-0.5:0.5"`` strings -> ``{joint: (lower, upper)}`` (for command-line overrides).

    Raises:
        ValueError: bad syntax or an unknown joint (the message lists the joints).
    """
    out: dict[str, tuple[float, float]] = {}
    for s in specs:
        parts = s.split(":")
        if len(parts) != 3:
            raise ValueError(f"joint limit must be 'joint:lower:upper', got {s!r}")
        name, lo, hi = parts
        if name not in joints:
            raise ValueError(f"joint limit {s!r}: unknown joint {name!r}; joints are {list(joints)}")
        try:
            out[name] = (float(lo), float(hi))
        except ValueError:
            raise ValueError(f"joint limit {s!r}: lower and upper must be numbers") from None
    return out
