"""Safety in the command path (pure): limits per interface, rate limit, counting, hold, watchdog, e-stop latch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from omnipolicy.robot_bridge.wire.safety import EStopLatch, SafetyFilter, SafetyLimits, Watchdog, parse_joint_limits

J = ("shoulder", "wrist")


def effort_filter(**kw) -> SafetyFilter:
    base = dict(position_lower=(-math.inf, -1.0), position_upper=(math.inf, 1.0), velocity_limit=(10.0, 10.0),
                effort_limit=(1.0, 0.5), position_margin=0.1)
    base.update(kw)
    return SafetyFilter(SafetyLimits(J, "effort", **base), dt=0.02)


def test_effort_limit_clips_and_counts_per_joint():
    f = effort_filter()
    out = f.filter([3.0, -0.7], position=[0, 0], velocity=[0, 0])
    assert out.command.tolist() == [1.0, -0.5]
    assert out.requested.tolist() == [3.0, -0.7]
    assert out.clipped["effort"].tolist() == [True, True]
    out = f.filter([0.2, -0.7], position=[0, 0], velocity=[0, 0])
    assert out.command.tolist() == [0.2, -0.5]
    assert f.counts["effort"].tolist() == [1, 2]
    assert f.report()["clipped"]["effort"] == {"shoulder": 1, "wrist": 2}
    assert f.report()["filtered"] == 2


def test_position_limit_blocks_only_outward_effort_inside_the_margin():
    f = effort_filter()
    # wrist at 0.95 (upper 1.0, margin 0.1): pushing up is blocked, pulling back is allowed
    assert f.filter([0.3, 0.4], position=[5.0, 0.95], velocity=[0, 0]).command.tolist() == [0.3, 0.0]
    assert f.filter([0.3, -0.4], position=[5.0, 0.95], velocity=[0, 0]).command.tolist() == [0.3, -0.4]
    # beyond the lower limit: negative effort blocked
    out = f.filter([0.0, -0.4], position=[0.0, -1.2], velocity=[0, 0])
    assert out.command.tolist() == [0.0, 0.0] and out.clipped["position"].tolist() == [False, True]
    assert f.counts["position"].tolist() == [0, 2]
    # the shoulder is unlimited
    assert f.filter([1.0, 0.0], position=[1e6, 0.0], velocity=[0, 0]).command.tolist() == [1.0, 0.0]


def test_velocity_limit_blocks_effort_that_accelerates_further():
    f = effort_filter()
    assert f.filter([0.5, 0.5], position=[0, 0], velocity=[12.0, -12.0]).command.tolist() == [0.0, 0.5]
    assert f.filter([-0.5, -0.5], position=[0, 0], velocity=[12.0, -12.0]).command.tolist() == [-0.5, 0.0]
    assert f.counts["velocity"].tolist() == [1, 1]


def test_rate_limit_from_the_previous_command_and_after_a_hold():
    f = effort_filter(max_delta=0.25)
    assert f.filter([1.0, 0.0], [0, 0], [0, 0]).command.tolist() == [0.25, 0.0]  # nothing sent before: ramps from 0
    assert f.filter([1.0, 0.0], [0, 0], [0, 0]).command.tolist() == [0.5, 0.0]
    assert f.filter([0.0, 0.5], [0, 0], [0, 0]).command.tolist() == [0.25, 0.25]
    assert f.hold().tolist() == [0.0, 0.0]  # zero effort, and the ramp restarts from it
    assert f.filter([1.0, -1.0], [0, 0], [0, 0]).command.tolist() == [0.25, -0.25]
    assert f.counts["rate"].tolist() == [4, 2]


def test_position_and_velocity_guards_act_after_the_rate_limit():
    f = effort_filter(max_delta=0.1)
    for _ in range(5):
        f.filter([0.5, 0.5], [0, 0], [0, 0])
    # at the wrist's upper limit the outward 0.5 goes to 0 at once, not in 0.1 steps
    assert f.filter([0.5, 0.5], [0, 0.99], [0, 0]).command.tolist() == [0.5, 0.0]


def test_position_interface_clips_targets():
    lim = SafetyLimits(J, "position", position_lower=(-1.0, -1.0), position_upper=(1.0, 1.0), velocity_limit=(5.0, 5.0),
                       max_delta=0.05)
    f = SafetyFilter(lim, dt=0.02)  # velocity 5 rad/s -> at most 0.1 rad from the measured position
    out = f.filter([2.0, 0.05], position=[0.95, 0.0], velocity=[0, 0])
    assert out.command.tolist() == pytest.approx([1.0, 0.05])
    assert sorted(out.clipped) == ["position"]
    out = f.filter([0.5, 0.5], position=[0.95, 0.0], velocity=[0, 0])
    assert out.command.tolist() == pytest.approx([0.95, 0.1])  # velocity window [0.85, 1.05] then rate from 1.0
    assert sorted(out.clipped) == ["rate", "velocity"]
    # hold = the last target sent ([0.95, 0.1]) within 0.1 of the measured position, inside the limits
    assert f.hold(position=[1.5, 0.2], commit=False).tolist() == pytest.approx([1.0, 0.1])
    assert f.hold(position=[0.9, 0.5], commit=False).tolist() == pytest.approx([0.95, 0.4])
    assert SafetyFilter(lim, dt=0.02).hold(position=[0.3, 0.2]).tolist() == [0.3, 0.2]  # nothing sent: where it is
    assert f.hold(position=None) is None and f.hold(position=[np.nan, 0.0]) is None


def test_velocity_interface_clips_ramps_and_stops_at_the_position_limits():
    lim = SafetyLimits(J, "velocity", position_lower=(-1.0, -1.0), position_upper=(1.0, 1.0), velocity_limit=(2.0, 2.0),
                       max_delta=0.5, position_margin=0.1)
    f = SafetyFilter(lim, dt=0.02)
    out = f.filter([3.0, -0.2], position=[0.0, 0.0], velocity=[0, 0])
    assert out.command.tolist() == pytest.approx([0.5, -0.2])  # 3 -> 2 (velocity limit) -> 0.5 (rate: from rest)
    assert sorted(out.clipped) == ["rate", "velocity"]
    out = f.filter([1.0, -1.0], position=[0.95, -0.5], velocity=[0, 0])
    assert out.command.tolist() == pytest.approx([0.0, -0.7])  # the shoulder is within the margin: no outward velocity
    assert sorted(out.clipped) == ["position", "rate"]
    assert f.hold(position=None).tolist() == [0.0, 0.0]  # hold: stand still


@pytest.mark.parametrize(
    "command, position, match",
    [
        ([0.1], [0, 0], "command has 1 values, expected 2"),
        ([0.1, np.nan], [0, 0], r"command is not finite for joints \['wrist'\]"),
        ([0.1, 0.1], [np.inf, 0], r"position is not finite for joints \['shoulder'\]"),
    ],
)
def test_bad_inputs_raise_and_send_nothing(command, position, match):
    f = effort_filter()
    with pytest.raises(ValueError, match=match):
        f.filter(command, position, [0, 0])
    assert f.last_sent is None and f.filtered == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(joints=("a", "a")), "unique joint names"),
        (dict(joints=("a",), interface="torque"), r"interface: expected one of \['effort', 'position', 'velocity'\]"),
        (dict(joints=("a", "b"), effort_limit=(1.0,)), r"effort_limit: expected one value per joint \(2\), got 1"),
        (dict(joints=("a",), velocity_limit=0.0), "velocity_limit: expected values > 0"),
        (dict(joints=("a",), position_lower=1.0, position_upper=0.0), r"position_lower must be < position_upper, not for joints \['a'\]"),
    ],
)
def test_limits_validation_names_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SafetyLimits(**kwargs)


def test_replace_and_to_dict():
    lim = SafetyLimits(J, "effort", effort_limit=1.0)
    tight = lim.replace(effort_limit=0.3, max_delta=0.1)
    assert tight.effort_limit == (0.3, 0.3) and tight.max_delta == (0.1, 0.1) and lim.effort_limit == (1.0, 1.0)
    d = tight.to_dict()
    assert d["position_lower"] == [None, None] and d["effort_limit"] == [0.3, 0.3]


def test_watchdog():
    w = Watchdog(0.1)
    assert not w.fresh(0.0) and w.age(0.0) == math.inf
    w.feed(1.0)
    assert w.fresh(1.09) and not w.fresh(1.11)
    with pytest.raises(ValueError, match="timeout must be > 0"):
        Watchdog(0)


def test_estop_latches_until_cleared():
    e = EStopLatch()
    assert e.engage() and not e.engage()  # second True while engaged: not a new engagement
    e.release_request()
    e.release_request()
    assert e.engaged and e.ignored_releases == 2
    assert e.clear() and not e.engaged and not e.clear()
    assert e.engage() and (e.engagements, e.clears) == (2, 1)


def test_parse_joint_limits():
    assert parse_joint_limits(["wrist:-0.5:0.5"], J) == {"wrist": (-0.5, 0.5)}
    with pytest.raises(ValueError, match=r"unknown joint 'elbow'; joints are \['shoulder', 'wrist'\]"):
        parse_joint_limits(["elbow:0:1"], J)
    with pytest.raises(ValueError, match="must be 'joint:lower:upper'"):
        parse_joint_limits(["wrist:0"], J)


def test_uncommitted_commands_do_not_move_the_rate_reference():
    f = effort_filter(max_delta=0.25)
    assert f.filter([1.0, 0.0], [0, 0], [0, 0], commit=False).command.tolist() == [0.25, 0.0]
    assert f.last_sent is None  # dropped (a late tick): the next one ramps from zero again
    assert f.filter([1.0, 0.0], [0, 0], [0, 0]).command.tolist() == [0.25, 0.0]
    assert f.hold(commit=False).tolist() == [0.0, 0.0] and f.last_sent.tolist() == [0.25, 0.0]
