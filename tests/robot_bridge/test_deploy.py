"""``omnipolicy deploy``: every fault holds or stops the robot, and the expert drives sim-robot like plain simulation.

Part 1 calls the node's callbacks and its per-tick decision directly (a fake clock, a stub actor, no robot).
Part 2 runs the node against ``omnipolicy sim-robot`` on 127.0.0.1 (dds; the rclpy node in ``.venv-ros``) and
provokes the faults on the wire. The policy variants (a checkpoint trained in the fixture) are in
``test_deploy_policy.py`` (slow).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cyclonedds")
pytest.importorskip("dm_control")

from omnipolicy.envs import get_task, make_expert  # noqa: E402
from omnipolicy.envs.rollout import ExpertActor, ScriptedActor  # noqa: E402
from omnipolicy.robot_bridge.arms import get_arm, make_sim_arm  # noqa: E402
from omnipolicy.robot_bridge.deploy import DeployConfig, Deployer  # noqa: E402
from omnipolicy.robot_bridge.sim_robot import NodeProcess, simulate_episodes  # noqa: E402
from omnipolicy.robot_bridge.wire import cdr  # noqa: E402
from omnipolicy.robot_bridge.wire.dds import DdsTransport  # noqa: E402
from omnipolicy.robot_bridge.wire.loopback import random_domain_id  # noqa: E402
from omnipolicy.robot_bridge.wire.messages import Bool, Float64MultiArray, Header, JointState, joint_state  # noqa: E402
from omnipolicy.robot_bridge.wire.transport import QOS_DEFAULT, wait_for  # noqa: E402

pytestmark = pytest.mark.timeout(240)

#: The reacher expert's largest effort change between two control steps (shoulder, wrist), over whole episodes of
#: seeds 0-299 (robot_bridge/robots/dmc_reacher_easy.toml), and the margin its max_delta adds.
REACHER_EXPERT_MAX_CHANGE, RATE_LIMIT_MARGIN = (0.587, 1.464), 1.25

TASK = "dmc/reacher-easy"
ARM = get_arm(TASK)
JS, TS = ARM.joint_states_topic, ARM.task_state_topic
ROOT = Path(__file__).resolve().parents[2]
ROS_PYTHON = ROOT / ".venv-ros" / "bin" / "python"
needs_ros_sim = pytest.mark.skipif(
    not (ROOT / ".venv-ros" / ".omnipolicy-ros-sim-ok").exists(),
    reason="no .venv-ros with simulators; create it with scripts/make_ros_venv.sh --with-sim",
)
#: Episodes of the end-to-end runs and the stated margin: the robot's success rate over real-time ROS 2 may differ
#: from plain simulation's on the same seeds by at most this much (late ticks send the hold command instead).
EPISODES, EPISODE_S, MARGIN = 8, 1.5, 0.25


class StubActor:
    """Acts with a fixed action and records what it saw (an ``Actor`` of one environment)."""

    name = "stub"

    def __init__(self, action=(0.5, -0.5), spec=None) -> None:
        if spec is not None:
            self.spec = spec  # acts with a spec of its own, as a checkpoint does
        self.action = np.asarray(action, dtype=np.float32)
        self.observations: list[dict] = []
        self.resets = 0

    def begin(self, task, envs) -> None:
        assert list(envs) == [None]

    def reset_env(self, index: int, obs: dict) -> None:
        self.resets += 1

    def act(self, active, observations):
        self.observations.extend(observations)
        return [self.action for _ in active]


@pytest.fixture(scope="module")
def transport():
    with DdsTransport(network="loopback", domain_id=random_domain_id()) as t:
        yield t


def node_with(transport, actor=None, **cfg) -> Deployer:
    return Deployer(DeployConfig(task=TASK, actor="expert", **cfg), transport=transport, actor=actor or StubActor())


def feed(node: Deployer, now: float, position=(0.1, 0.2), velocity=(0.0, 0.0), to_target=(0.05, -0.02)) -> None:
    node.on_state(JS, joint_state(ARM.joints, position, velocity), now=now)
    node.on_state(TS, joint_state(ARM.task_state_names, to_target), now=now)


def warnings_with(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# ---------------------------------------------------------------------------
# Part 1: the decision, fault by fault
# ---------------------------------------------------------------------------


def test_acts_on_the_exact_observation_and_checks_the_spec(transport):
    actor = StubActor((0.25, -0.75))
    node = node_with(transport, actor)
    assert node.decide(now=0.0) is not None and node.last_reason == "stale"  # nothing received: hold
    feed(node, 10.0, position=(0.1, 0.2), velocity=(0.3, -0.4), to_target=(0.05, -0.02))
    cmd = node.decide(now=10.01)
    assert cmd.tolist() == [0.25, -0.75] and node.last_reason is None
    obs = actor.observations[-1]
    assert {k: v.dtype for k, v in obs.items()} == {"position": np.float32, "velocity": np.float32, "to_target": np.float32}
    assert obs["position"].tolist() == np.float32([0.1, 0.2]).tolist()
    assert obs["velocity"].tolist() == np.float32([0.3, -0.4]).tolist()
    assert obs["to_target"].tolist() == np.float32([0.05, -0.02]).tolist()
    assert node.acted == 1 and node.holds["stale"] == 1


def test_a_new_message_on_every_topic_makes_an_observation_and_the_tick_takes_it(transport):
    node = node_with(transport, act_on="state")
    node.on_state(JS, joint_state(ARM.joints, (0.1, 0.2), (0.0, 0.0)), now=10.0)
    assert not node.observed.is_set()  # the task state of that instant has not come yet
    node.on_state(TS, joint_state(ARM.task_state_names, (0.05, -0.02)), now=10.002)
    assert node.observed.is_set()  # what --act-on state ticks on
    node.decide(now=10.005)
    assert not node.observed.is_set() and node.last_reason is None
    assert node.observation_age == [pytest.approx(0.005)]  # receive to act, of the newest joint state
    node.on_state(TS, joint_state(ARM.task_state_names, (0.05, -0.02)), now=10.05)
    assert not node.observed.is_set()  # one topic anew is not a new observation
    assert node.report()["act_on"] == "state" and node.report()["observation_age"]["p50_ms"] == pytest.approx(5.0)


def test_observations_faster_than_the_ticks_are_counted_and_said_once(transport, caplog):
    node = node_with(transport, act_on="state")
    for k in range(3):  # three whole observations before any tick
        feed(node, 10.0 + 0.01 * k)
    assert node.observed.is_set() and node.report()["observations_overrun"] == 2
    assert len(warnings_with(caplog, "publishes faster than the control rate")) == 1


def test_a_checkpoint_of_another_observation_spec_is_refused(transport):
    other = get_task("mujoco/reacher-v5").timestep  # one "state" vector: the recipe cannot build it
    with pytest.raises(ValueError, match=r"differ from the checkpoint's observation keys \['state'\]"):
        node_with(transport, StubActor(spec=other))
    with pytest.raises(ValueError, match="needs --checkpoint"):
        DeployConfig(actor="policy")


def test_stale_state_holds_with_one_log_line_and_resumes(transport, caplog):
    actor = StubActor()
    node = node_with(transport, actor, state_timeout=0.1)
    feed(node, 10.0)
    assert node.decide(now=10.05).tolist() == [0.5, -0.5]
    resets = actor.resets
    caplog.set_level(logging.INFO, "omnipolicy.deploy")
    caplog.clear()
    for k in range(5):
        assert node.decide(now=10.2 + k * 0.02).tolist() == [0.0, 0.0]  # zero effort: the hold command
    assert node.holds["stale"] == 5 and len(warnings_with(caplog, "holding: state stale")) == 1
    feed(node, 11.0)
    assert node.decide(now=11.01).tolist() == [0.5, -0.5]
    assert len(warnings_with(caplog, "resumed after holding (stale)")) == 1
    assert actor.resets == resets + 1  # the history broke: the context is reset


@pytest.mark.parametrize(
    "topic, msg, reason",
    [
        (JS, joint_state(ARM.joints, [0.1, np.nan], [0.0, 0.0]), r"non-finite values for joints \['wrist'\]"),
        (JS, joint_state(["shoulder", "elbow"], [0.1, 0.2], [0.0, 0.0]), r"unknown joint names \['elbow'\]"),
        (JS, joint_state(["shoulder"], [0.1], [0.0]), r"missing joint names \['wrist'\]"),
        (JS, JointState(Header(), ARM.joints, [0.1, 0.2, 0.3], [0.0, 0.0], []), "3 values for 2 joint names"),
        (JS, joint_state(ARM.joints, [0.1, 0.2]), "JointState.velocity is empty"),
        (TS, joint_state(["to_target_x"], [0.1]), r"missing joint names \['to_target_y'\]"),
        (TS, joint_state(ARM.task_state_names, [np.inf, 0.0]), r"non-finite values for joints \['to_target_x'\]"),
    ],
    ids=["nan", "unknown-joint", "missing-joint", "wrong-length", "no-velocity", "task-state-missing", "task-state-inf"],
)
def test_rejected_state_holds_until_a_valid_one(transport, caplog, topic, msg, reason):
    node = node_with(transport)
    feed(node, 10.0)
    assert node.decide(now=10.01).tolist() == [0.5, -0.5]
    caplog.clear()
    node.on_state(topic, msg, now=10.02)
    lines = warnings_with(caplog, "rejected a JointState")
    assert len(lines) == 1 and "\n" not in lines[0]
    assert re.search(reason, lines[0]), lines[0]
    assert node.decide(now=10.03).tolist() == [0.0, 0.0] and node.last_reason == "rejected"
    assert node.decide(now=10.04).tolist() == [0.0, 0.0]  # still held: no valid message since
    assert node.report()["rejected"][topic] == 1 and node.holds["rejected"] == 2
    feed(node, 10.05)
    assert node.decide(now=10.06).tolist() == [0.5, -0.5]


def test_a_sender_that_dies_right_after_a_bad_message_is_held_as_stale(transport, caplog):
    node = node_with(transport, state_timeout=0.1)
    feed(node, 10.0)
    node.on_state(JS, joint_state(ARM.joints, [0.1, np.nan], [0.0, 0.0]), now=10.01)
    assert node.decide(now=10.02).tolist() == [0.0, 0.0] and node.last_reason == "rejected"
    caplog.set_level(logging.INFO, "omnipolicy.deploy")
    assert node.decide(now=10.5).tolist() == [0.0, 0.0] and node.last_reason == "stale"  # nothing since: dead sender
    assert node.holds == {**node.holds, "rejected": 1, "stale": 1}
    assert len(warnings_with(caplog, "holding: state stale")) == 1
    feed(node, 11.0)
    assert node.decide(now=11.01).tolist() == [0.5, -0.5]


def test_inconsistent_message_on_the_wire_is_rejected_by_the_transport_and_holds(transport):
    node = node_with(transport)
    with DdsTransport(network="loopback", domain_id=transport.domain_id) as other:
        pub = other.publisher(JS, JointState)
        wait_for(lambda: pub.matched() > 0 and node.subs[JS].matched() > 0, 20, "deploy's joint state subscription")
        feed(node, time.monotonic())
        assert node.decide().tolist() == [0.5, -0.5]
        # valid CDR that is no valid JointState (velocity: 1 value for 2 names): the transport rejects it
        pub.publish_cdr(cdr.encode(JointState(Header(), ARM.joints, [0.1, 0.2], [0.0])))
        wait_for(lambda: node.subs[JS].rejected == 1, 10, "the transport to reject the message")
    assert node.decide().tolist() == [0.0, 0.0] and node.last_reason == "rejected"
    assert node.report()["rejected"][JS] == 1


def test_estop_latches_until_cleared(transport, caplog):
    actor = StubActor()
    node = node_with(transport, actor)
    feed(node, 10.0)
    assert node.decide(now=10.01).tolist() == [0.5, -0.5]
    node.on_estop(Bool(True))
    assert node.decide(now=10.02).tolist() == [0.0, 0.0] and node.last_reason == "estop"
    node.on_estop(Bool(False))  # releasing the button does not release the latch
    feed(node, 10.03)
    assert node.decide(now=10.04).tolist() == [0.0, 0.0] and node.last_reason == "estop"
    assert len(warnings_with(caplog, "e-stop False on /estop ignored")) == 1
    node.on_estop_clear(Bool(False))
    assert node.decide(now=10.05).tolist() == [0.0, 0.0]
    node.on_estop_clear(Bool(True))
    assert node.decide(now=10.06).tolist() == [0.5, -0.5]
    rep = node.report()["estop"]
    assert rep == {"engagements": 1, "clears": 1, "ignored_releases": 1, "engaged": False}
    assert node.holds["estop"] == 3


def test_limits_clamp_and_are_counted(transport):
    node = node_with(transport, StubActor((1.0, 1.0)), effort_limit=0.3, max_delta=0.2, position_limit=("wrist:-0.5:0.5",))
    feed(node, 10.0, position=(0.0, 0.0))
    assert node.tick(now=10.01) == pytest.approx([0.2, 0.2])  # ramps from zero: max change 0.2 per tick
    assert node.decide(now=10.015) == pytest.approx([0.3, 0.3])  # decided but never sent (a late tick) ...
    assert node.tick(now=10.02) == pytest.approx([0.3, 0.3])  # ... so the ramp continues from what was sent
    feed(node, 10.03, position=(0.0, 0.48))  # wrist within the 5 degree margin of its tightened limit
    assert node.tick(now=10.04) == pytest.approx([0.3, 0.0])
    clipped = node.report()["safety"]["clipped"]
    assert clipped["rate"] == {"shoulder": 1, "wrist": 1}
    assert clipped["effort"] == {"shoulder": 4, "wrist": 4}
    assert clipped["position"] == {"shoulder": 0, "wrist": 1}
    with pytest.raises(ValueError, match="loosens the arm's limit"):
        node_with(transport, effort_limit=2.0)
    with pytest.raises(ValueError, match=r"unknown joint 'elbow'"):
        node_with(transport, position_limit=("elbow:-1:1",))


def test_the_arms_rate_limit_is_on_by_default_and_printed(transport, caplog):
    caplog.set_level(logging.INFO, "omnipolicy.deploy")
    actor = StubActor((1.0, -1.0))
    node = node_with(transport, actor)
    assert node.max_delta == {"shoulder": 0.73375, "wrist": 1.83} == node.report()["max_delta"]  # 1.25 x (0.587, 1.464)
    assert warnings_with(caplog, "rate limit: each joint's command changes by at most shoulder 0.73375, wrist 1.83 "
                                 "per tick (the arm's default: its expert's largest change per tick with a margin")
    feed(node, 10.0)
    assert node.tick(now=10.01) == pytest.approx([0.73375, -1.0])  # from rest: the shoulder ramps
    assert node.tick(now=10.02) == pytest.approx([1.0, -1.0])
    actor.action = np.float32([-1.0, 1.0])  # full reversal: 2.0 per joint asked
    assert node.tick(now=10.03) == pytest.approx([1.0 - 0.73375, -1.0 + 1.83])
    assert node.report()["safety"]["clipped"]["rate"] == {"shoulder": 2, "wrist": 1}


def test_turning_the_rate_limit_off_takes_a_flag_and_warns(transport, caplog):
    caplog.set_level(logging.INFO, "omnipolicy.deploy")
    node = node_with(transport, StubActor((1.0, -1.0)), no_rate_limit=True)
    assert node.max_delta is None and node.report()["max_delta"] is None
    assert [r.levelname for r in caplog.records if "rate limit OFF (--no-rate-limit)" in r.getMessage()] == ["WARNING"]
    feed(node, 10.0)
    assert node.tick(now=10.01).tolist() == [1.0, -1.0]
    assert node_with(transport, max_delta=0.5).max_delta == {"shoulder": 0.5, "wrist": 0.5}
    with pytest.raises(ValueError, match=r"--max-delta 1.0 loosens the arm's limit \[0.73375, 1.83\]; --no-rate-limit turns "
                                         r"the rate limit off"):
        node_with(transport, max_delta=1.0)
    with pytest.raises(ValueError, match="--max-delta 0.5 and --no-rate-limit contradict each other; give one of them"):
        DeployConfig(actor="expert", max_delta=0.5, no_rate_limit=True)


def test_the_arms_rate_limit_is_its_experts_largest_change_with_a_margin():
    """The figure in the arm's robot file comes back from its seeds (the largest changes are in an episode's first
    steps), and the expert under the arm's default limits reaches the same targets at the same times as without them."""
    from omnipolicy.robot_bridge.sim_robot import largest_command_change
    from omnipolicy.robot_bridge.wire.safety import SafetyFilter

    measured = largest_command_change(TASK, [28, 204], episode_seconds=0.2)  # the seeds of the shoulder's and wrist's maxima
    assert np.round(measured, 3).tolist() == list(REACHER_EXPERT_MAX_CHANGE) == [0.587, 1.464]
    assert ARM.limits.max_delta == pytest.approx(tuple(RATE_LIMIT_MARGIN * d for d in REACHER_EXPERT_MAX_CHANGE))
    assert get_arm("dmc/reacher-easy-pixels").limits == ARM.limits
    expert = make_expert(TASK)
    safety = SafetyFilter(ARM.limits, ARM.control_period)
    arm = make_sim_arm(TASK)

    class Limited:  # the expert through deploy's safety filter
        def reset(self, env, obs):
            safety.last_sent = None
            expert.reset(env, obs)

        def act(self, env, obs):
            position, velocity, _ = arm.joint_state()
            return safety.filter(expert.act(env, obs), position, velocity).command

    seeds = list(range(8))
    plain = simulate_episodes(TASK, ExpertActor(), seeds, EPISODE_S)
    safe = simulate_episodes(TASK, ScriptedActor([Limited()]), seeds, EPISODE_S, arm=arm)
    assert [e["first_reach_s"] for e in safe] == [e["first_reach_s"] for e in plain]
    assert [e["success"] for e in safe] == [e["success"] for e in plain] and sum(e["success"] for e in plain) >= 6
    assert 0 < safety.counts["rate"].sum() <= len(seeds)  # at most the ramp from rest at each episode's start


def test_an_empty_velocity_the_recipe_needs_holds_and_is_said_once(transport, caplog):
    """ROS allows an empty JointState.velocity; dmc/reacher-easy observes the joint velocities: hold, one line."""
    node = node_with(transport)
    feed(node, 10.0)
    assert node.decide(now=10.01).tolist() == [0.5, -0.5]
    caplog.clear()
    reasons = []
    for k in range(10):
        node.on_state(JS, joint_state(ARM.joints, [0.1, 0.2]), now=10.02 + 0.02 * k)
        node.on_state(TS, joint_state(ARM.task_state_names, [0.05, -0.02]), now=10.02 + 0.02 * k)
        assert node.decide(now=10.03 + 0.02 * k).tolist() == [0.0, 0.0]  # zero effort: held
        reasons.append(node.last_reason)
    assert reasons == ["rejected"] * 4 + ["stale"] * 6  # no valid joint state for 0.1 s: stale outranks rejected
    lines = warnings_with(caplog, "rejected a JointState")
    assert lines == ["rejected a JointState on /joint_states: JointState.velocity is empty but needed by observation "
                     "'velocity'; said once, until a JointState on /joint_states carries velocity "
                     "(robot held until a valid one)"]
    assert node.report()["rejected"][JS] == 10
    feed(node, 10.2)
    assert node.decide(now=10.21).tolist() == [0.5, -0.5]
    node.on_state(JS, joint_state(ARM.joints, [0.1, 0.2]), now=10.22)  # gone again: said again
    assert len(warnings_with(caplog, "JointState.velocity is empty")) == 2


def test_an_empty_velocity_the_recipe_does_not_need_is_estimated_for_the_safety_filter(transport, caplog):
    """The pixels task observes only the camera: joint states without velocity are used, their velocity estimated
    from consecutive positions (header stamps) for the velocity limit."""
    from omnipolicy.robot_bridge.wire.messages import Time, array_to_image

    task = "dmc/reacher-easy-pixels"
    arm = get_arm(task)
    caplog.set_level(logging.INFO, "omnipolicy.deploy")
    node = Deployer(DeployConfig(task=task, actor="expert", velocity_limit=0.45), transport=transport,
                    actor=StubActor((0.6, -0.6)))
    image = array_to_image(np.zeros((84, 84, 3), np.uint8))

    def state(now: float, stamp: Time, position) -> None:
        node.on_state(arm.joint_states_topic, joint_state(arm.joints, position, stamp=stamp), now=now)
        node.on_state(arm.camera_topic, image, now=now)

    state(10.0, Time(100, 0), [0.10, 0.20])
    assert node.decide(now=10.01).tolist() == [0.0, 0.0] and node.last_reason == "stale"  # no estimate from one message
    state(10.05, Time(100, 20_000_000), [0.11, 0.18])  # 0.02 s later by the stamps (0.05 s by the receive times)
    assert node.decide(now=10.06).tolist() == [0.0, 0.0] and node.last_reason is None  # acted: 0.5 and -1 rad/s > 0.45
    assert node.report()["safety"]["clipped"]["velocity"] == {"shoulder": 1, "wrist": 1}
    state(10.07, Time(100, 40_000_000), [0.115, 0.175])  # 0.25 and -0.25 rad/s: within the limit
    assert node.decide(now=10.08) == pytest.approx([0.6, -0.6])
    assert node.report()["rejected"] == {arm.joint_states_topic: 0, arm.camera_topic: 0}
    assert len(warnings_with(caplog, "/joint_states carries no velocity: estimating it from consecutive positions")) == 1


def test_the_network_is_system_by_default_and_loopback_on_request(transport, monkeypatch):
    import tyro

    from omnipolicy.robot_bridge import deploy

    assert tyro.cli(DeployConfig, args=["--actor", "expert"]).network == "system"
    assert tyro.cli(DeployConfig, args=["--actor", "expert", "--network", "loopback"]).network == "loopback"
    with pytest.raises(SystemExit):
        tyro.cli(DeployConfig, args=["--actor", "expert", "--network", "lan"])
    asked: list = []
    monkeypatch.setattr(deploy, "make_transport", lambda name, **kw: asked.append((name, kw)) or transport)
    Deployer(DeployConfig(actor="expert"), actor=StubActor())  # no traffic: the loopback test transport answers
    Deployer(DeployConfig(actor="expert", network="loopback", domain_id=7), actor=StubActor())
    assert asked == [("dds", {"domain_id": None, "network": "system"}), ("dds", {"domain_id": 7, "network": "loopback"})]


def test_new_episode_resets_the_context(transport):
    actor = StubActor()
    node = node_with(transport, actor)
    feed(node, 10.0)
    node.decide(now=10.01)
    resets = actor.resets
    node.decide(now=10.02)
    assert actor.resets == resets
    node.on_episode(Bool(True))
    node.decide(now=10.03)
    assert actor.resets == resets + 1


def test_a_new_episode_starts_the_rate_limit_afresh(transport):
    """The arm was reset at a new episode: the rate limit ramps from zero effort, as at start-up, not from the last
    scene's last command (which held every SO-101 policy's first steps of a new scene near the old pose)."""
    node = node_with(transport, StubActor((1.0, 1.0)), max_delta=0.2)
    feed(node, 10.0, position=(0.0, 0.0))
    assert node.tick(now=10.01) == pytest.approx([0.2, 0.2])
    assert node.tick(now=10.02) == pytest.approx([0.4, 0.4])
    node.on_episode(Bool(True))
    feed(node, 10.025, position=(0.0, 0.0))
    assert node.tick(now=10.03) == pytest.approx([0.2, 0.2])  # from zero again
    assert node.tick(now=10.04) == pytest.approx([0.4, 0.4])


class ResumingActor(StubActor):
    """An actor whose state is the scene's (the expert twin): it goes on after a hold."""

    def __init__(self) -> None:
        super().__init__()
        self.resumes = 0

    def resume(self, index: int, obs: dict) -> None:
        self.resumes += 1


def test_an_actor_that_resumes_goes_on_after_a_hold_and_starts_afresh_at_a_new_episode(transport):
    actor = ResumingActor()
    node = node_with(transport, actor)
    feed(node, 10.0)
    assert node.decide(now=10.01) is not None and (actor.resets, actor.resumes) == (1, 0)  # the first act: a start
    assert node.last_reason is None and node.decide(now=10.5) is not None and node.last_reason == "stale"
    feed(node, 10.6)
    node.decide(now=10.61)
    assert node.last_reason is None and (actor.resets, actor.resumes) == (1, 1)  # after the hold: resumed
    node.on_episode(Bool(True))  # a new episode while holding: the start waits for the next act
    node.decide(now=11.5)
    assert node.last_reason == "stale" and (actor.resets, actor.resumes) == (1, 1)
    feed(node, 11.6)
    node.decide(now=11.61)
    assert (actor.resets, actor.resumes) == (2, 1)


# ---------------------------------------------------------------------------
# Part 2: against sim-robot on 127.0.0.1
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def running(node: Deployer):
    """Run the node's control loop in a thread; stop it on exit. Yields the dict its report lands in."""
    out: dict = {}
    th = threading.Thread(target=lambda: out.update(node.run()), daemon=True)
    th.start()
    try:
        yield out
    finally:
        node.stop()
        th.join(15)
        assert not th.is_alive()


def sim_robot(domain: int, python: str | None = None, transport: str = "dds", episodes: int = EPISODES, seed: int = 0):
    args = ["--transport", transport, "--episodes", str(episodes), "--episode-seconds", str(EPISODE_S), "--seed", str(seed)]
    return NodeProcess("sim-robot", args, domain, python)


def plain_expert_success(seeds) -> list[bool]:
    return [e["success"] for e in simulate_episodes(TASK, ExpertActor(), list(seeds), EPISODE_S)]


def check_against_plain(robot: NodeProcess, seed: int = 0) -> dict:
    summary = robot.of("summary")[0]
    plain = plain_expert_success(range(seed, seed + summary["episodes"]))
    rate, plain_rate = summary["success_rate"], float(np.mean(plain))
    assert abs(rate - plain_rate) <= MARGIN, (summary["successes"], plain)
    assert plain_rate >= 0.75  # the comparison means something: the expert reaches most targets
    return summary


@pytest.mark.parametrize("act_on", ["clock", "state"])
def test_expert_drives_sim_robot_over_dds_like_plain_simulation(act_on):
    domain = random_domain_id()
    cfg = DeployConfig(task=TASK, actor="expert", network="loopback", domain_id=domain, act_on=act_on)
    with sim_robot(domain) as robot, Deployer(cfg) as node:
        with running(node) as report:
            assert robot.wait(EPISODES * EPISODE_S + 60) == 0
    check_against_plain(robot)  # under the arm's default rate limit
    if act_on == "state":  # each state acted on as it arrives, not when deploy's clock next ticks (up to a period)
        assert report["observation_age"]["p50_ms"] < 0.4 * 1000 * ARM.control_period, report["observation_age"]
    assert report["acted"] > EPISODES * EPISODE_S * 40 and report["loop"]["steps"] > 0
    assert report["max_delta"] == {"shoulder": 0.73375, "wrist": 1.83}
    assert robot.of("ready")[0]["network"] == "loopback"  # NodeProcess asks for it
    assert sum(report["rejected"].values()) == 0 and report["holds"]["estop"] == 0


def test_estop_over_the_wire_stops_the_robot_until_cleared():
    domain = random_domain_id()
    with sim_robot(domain, episodes=0) as robot, Deployer(DeployConfig(task=TASK, actor="expert", network="loopback", domain_id=domain)) as node, \
            DdsTransport(network="loopback", domain_id=domain) as t, running(node):
        states: queue.Queue = queue.Queue(maxsize=1)
        commands: queue.Queue = queue.Queue(maxsize=1)
        t.subscription(JS, JointState, states)
        t.subscription(ARM.command_topic, Float64MultiArray, commands)
        estop, clear = t.publisher("/estop", Bool, QOS_DEFAULT), t.publisher("/estop/clear", Bool, QOS_DEFAULT)
        wait_for(lambda: node.acted > 20, 30, "the expert to act")
        wait_for(lambda: estop.matched() > 0 and clear.matched() > 0, 20, "deploy's e-stop subscriptions")
        estop.publish(Bool(True))
        wait_for(lambda: node.estop.engaged, 5, "the e-stop to latch")
        estop.publish(Bool(False))  # released button: still stopped
        time.sleep(1.0)
        assert commands.get(timeout=2).data.tolist() == [0.0, 0.0]
        rest = states.get(timeout=2)
        assert rest.effort.tolist() == [0.0, 0.0] and np.abs(rest.velocity).max() < 0.05  # the arm has stopped
        assert node.estop.engaged and node.holds["estop"] > 30
        acted = node.acted
        clear.publish(Bool(True))
        wait_for(lambda: node.acted > acted + 10, 5, "acting to resume after the clear")
        assert not node.estop.engaged
    assert robot.of("summary")  # stopped cleanly by SIGTERM


def test_faulty_messages_and_a_robot_restart_hold_then_resume(caplog):
    caplog.set_level(logging.INFO, "omnipolicy.deploy")
    domain = random_domain_id()
    with Deployer(DeployConfig(task=TASK, actor="expert", network="loopback", domain_id=domain)) as node, running(node), \
            DdsTransport(network="loopback", domain_id=domain) as t:
        bad = t.publisher(JS, JointState)
        with sim_robot(domain, episodes=0) as first:
            wait_for(lambda: node.acted > 20, 30, "the expert to act")
            wait_for(lambda: bad.matched() > 0, 20, "deploy's joint state subscription")
            for msg in (joint_state(ARM.joints, [0.0, np.nan], [0.0, 0.0]), joint_state(["shoulder", "elbow"], [0.0, 0.0], [0.0, 0.0])):
                bad.publish(msg)
            wait_for(lambda: node.report()["rejected"][JS] == 2, 5, "both bad states rejected")
            wait_for(lambda: node.holds["rejected"] >= 1, 2, "the robot held for a rejected state")
            first.close(signal.SIGKILL)  # the robot side dies
        held = node.holds["stale"]
        wait_for(lambda: node.holds["stale"] >= held + 15, 5, "15 stale holds (0.3 s at 50 Hz after the 0.1 s timeout)")
        assert node.last_reason == "stale"
        assert node.last_command.tolist() == [0.0, 0.0]
        acted = node.acted
        with sim_robot(domain, episodes=3) as second:  # the robot comes back: the node resumes by itself
            assert second.wait(3 * EPISODE_S + 60) == 0
        assert node.acted > acted + 100
    lines = warnings_with(caplog, "rejected a JointState on /joint_states")
    assert len(lines) == 2 and "non-finite" in lines[0] and "unknown joint names ['elbow']" in lines[1]
    assert len(warnings_with(caplog, "holding: state stale")) >= 1 and warnings_with(caplog, "resumed after holding (stale)")
    assert sum(e["success"] for e in second.of("episode")) >= 2


def test_deploy_cli_runs_a_checkpoint_and_stops_cleanly_on_sigterm_leaving_the_hold_command(tmp_path, random_checkpoint):
    domain = random_domain_id()
    summary = tmp_path / "deploy.json"
    args = ["--checkpoint", str(random_checkpoint), "--transport", "dds", "--summary", str(summary)]
    with sim_robot(domain, episodes=0) as robot, DdsTransport(network="loopback", domain_id=domain) as t:
        commands: list = []
        t.subscription(ARM.command_topic, Float64MultiArray, lambda m: commands.append(m.data.tolist()))
        with NodeProcess("deploy", args, domain) as dep:
            wait_for(lambda: len(commands) > 30 and any(c != [0.0, 0.0] for c in commands[-10:]), 30, "the policy's commands")
            dep.proc.send_signal(signal.SIGTERM)
            assert dep.wait(10) == 0
            report = dep.of("summary")[0]
            ready = dep.of("ready")[0]
        time.sleep(0.2)
        assert commands[-1] == [0.0, 0.0]  # the last command on the wire is the hold command
    assert report["loop"]["stopped_by"] == "stop" and report["acted"] > 20 and report["actor"] == "policy"
    assert ready["network"] == "loopback" and ready["max_delta"] == {"shoulder": 0.73375, "wrist": 1.83}
    assert report["act_time"]["p50_ms"] < 20  # the KV-cached session fits a 50 Hz period
    assert '"acted"' in summary.read_text() and robot.of("summary")[0]["commands_received"] > 30


def test_sigint_stops_the_control_loop_and_holds(transport):
    """SIGINT (Ctrl-C) in the main thread: the loop ends within a period, the last command sent is the hold command."""
    node = node_with(transport, StubActor((0.5, 0.5)))
    sent: list = []
    send = node.send
    node.send = lambda c: (sent.append(np.asarray(c).tolist()), send(c))  # type: ignore[method-assign]
    feeder = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    before = signal.getsignal(signal.SIGINT)
    feeder.start()
    t0 = time.monotonic()
    report = node.run(duration=10.0, handle_signals=True)
    assert time.monotonic() - t0 < 2.0 and report["loop"]["stopped_by"] == "stop"
    assert sent[-1] == [0.0, 0.0] and signal.getsignal(signal.SIGINT) is before


@pytest.mark.ros
@needs_ros_sim
@pytest.mark.parametrize("deploy_transport", ["dds", "rclpy"])
def test_expert_drives_the_rclpy_sim_robot_like_plain_simulation(deploy_transport):
    """sim-robot is a real rclpy node (.venv-ros); deploy talks to it over dds (here) or as an rclpy node (.venv-ros)."""
    domain = random_domain_id()
    with sim_robot(domain, str(ROS_PYTHON), "rclpy") as robot:
        if deploy_transport == "dds":
            with Deployer(DeployConfig(task=TASK, actor="expert", network="loopback", domain_id=domain)) as node, running(node):
                assert robot.wait(EPISODES * EPISODE_S + 60) == 0
        else:
            with NodeProcess("deploy", ["--actor", "expert", "--transport", "rclpy"], domain, str(ROS_PYTHON)) as dep:
                assert robot.wait(EPISODES * EPISODE_S + 60) == 0
                dep.close()
                assert dep.of("summary")[0]["transport"] == "rclpy"
    summary = check_against_plain(robot)
    assert summary["transport"] == "rclpy"


def test_camera_observation_over_the_wire():
    """The pixels task: sim-robot publishes its camera every control step; deploy acts on the images (and reads the
    joint states for the safety filter)."""
    task = "dmc/reacher-easy-pixels"
    domain = random_domain_id()
    actor = StubActor((0.6, -0.6))
    args = ["--task", task, "--transport", "dds", "--episodes", "1", "--episode-seconds", "2"]
    with NodeProcess("sim-robot", args, domain) as robot, \
            Deployer(DeployConfig(task=task, actor="expert", network="loopback", domain_id=domain), actor=actor) as node, running(node):
        assert robot.wait(60) == 0
    images = [o["image"] for o in actor.observations]
    assert len(images) > 50 and all(i.shape == (84, 84, 3) and i.dtype == np.uint8 for i in images)
    assert not np.array_equal(images[0], images[-1])  # the arm moved in the camera's view
    assert node.report()["rejected"] == {JS: 0, ARM.camera_topic: 0}
    assert robot.of("summary")[0]["hold_ticks"] < 20


# ---------------------------------------------------------------------------
# The policy path with an untrained checkpoint (fast; the trained one is in test_deploy_policy.py)
# ---------------------------------------------------------------------------


def save_random_checkpoint(path: Path, train_state: dict | None = None) -> Path:
    """An untrained one-layer model for TASK saved at ``path`` (with ``train_state`` as its training record)."""
    torch = pytest.importorskip("torch")
    from omnipolicy.agent import CheckpointMeta, GatoModel, ModelConfig, save_checkpoint
    from omnipolicy.tokenizers import Tokenizer

    layout = Tokenizer.default().layout
    cfg = ModelConfig(n_layer=1, n_embd=32, n_head=2, d_ff=64, context=90, local_positions=32, patch_channels=8,
                      patch_stride=4).with_vocab(layout.vocab_size)
    torch.manual_seed(0)
    meta = CheckpointMeta(cfg, layout, {TASK: get_task(TASK).timestep}, train_state or {})
    save_checkpoint(path, GatoModel(cfg), meta)
    return path


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory) -> Path:
    return save_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "step_0000001")


def test_policy_actor_decodes_valid_actions_like_policy_act(random_checkpoint):
    from omnipolicy.agent import Policy
    from omnipolicy.robot_bridge.deploy import policy_actor

    actor = policy_actor(DeployConfig(task=TASK, checkpoint=random_checkpoint))
    actor.begin(get_task(TASK), [None])
    policy = Policy.from_checkpoint(random_checkpoint)
    policy.reset(1)
    eps = []

    class Both:  # the deploy actor, checked against the recomputing policy on every step
        def reset(self, env, obs):
            pass

        def act(self, env, obs):
            actor.reset_env(0, obs)  # one timestep from an empty context each: the two decoders see the same tokens
            policy.reset_env(0)
            a, b = actor.act([0], [obs])[0], policy.act(TASK, [obs])[0]
            assert a.shape == (2,) and a.dtype == np.float32 and np.all(np.abs(a) <= 1.0)
            eps.append(np.abs(a - b).max())
            return a

    simulate_episodes(TASK, ScriptedActor([Both()]), [0], 0.5)
    # the KV-cached session and the full recomputation agree (to a bin or two where logits nearly tie)
    assert len(eps) == 25 and max(eps) <= 2 * 2.0 / 1023
    with pytest.raises(KeyError, match=r"Unknown task 'dmc/cartpole-balance' for this checkpoint"):
        actor.begin(get_task("dmc/cartpole-balance"), [None])


def test_deploy_decodes_as_the_checkpoint_prefers_unless_told(tmp_path):
    from omnipolicy.robot_bridge.deploy import policy_actor

    # trained with Gaussian bin targets (auto alone: mean) and told to prefer mode
    path = save_random_checkpoint(tmp_path / "step_0000001", {"config": {"bin_sigma": 8.0, "decoding": "mode"}})
    assert policy_actor(DeployConfig(task=TASK, checkpoint=path)).policy.continuous_decoding == "mode"
    told = policy_actor(DeployConfig(task=TASK, checkpoint=path, continuous_decoding="mean"))
    assert told.policy.continuous_decoding == "mean"


def test_limits_hold_on_the_wire():
    """Tightened limits: every command on the wire within the effort limit and the maximum change per tick,
    and the real arm's wrist kept near its tightened position limit while the expert pushes past it."""
    domain = random_domain_id()
    cfg = DeployConfig(task=TASK, actor="expert", network="loopback", domain_id=domain, effort_limit=0.5, max_delta=0.1,
                       position_limit=("wrist:-0.6:0.6",))
    # seeds 16-18 start with the wrist inside +-0.5 rad and the expert's solutions bend it past +-1.5 rad
    with DdsTransport(network="loopback", domain_id=domain) as t, sim_robot(domain, episodes=3, seed=16) as robot, Deployer(cfg) as node:
        on_wire: list = []
        wrist: list = []
        t.subscription(ARM.command_topic, Float64MultiArray, lambda m: on_wire.append(m.data.copy()))
        t.subscription(JS, JointState, lambda m: wrist.append(float(m.position[1])))
        sent: list = []
        send = node.send
        node.send = lambda cmd: (sent.append(np.array(cmd)), send(cmd))  # type: ignore[method-assign]
        with running(node):
            assert robot.wait(3 * EPISODE_S + 60) == 0
    assert len(on_wire) > 200 and np.abs(np.array(on_wire)).max() <= 0.5 + 1e-12
    c = np.array(sent)  # every command sent, in order (a KEEP_LAST 1 reader may miss some)
    # each joint's command moves at most 0.1 per tick, except to exactly zero (a hold, or a position/velocity guard);
    # at a new episode (two in three) the ramp starts from zero effort again, as at start-up
    ramps = ((np.abs(np.diff(c, axis=0)) <= 0.1 + 1e-9) | (c[1:] == 0.0)).all(axis=1)
    restarts = ~ramps & (np.abs(c[1:]) <= 0.1 + 1e-9).all(axis=1)
    bad = np.flatnonzero(~(ramps | restarts))
    assert len(bad) == 0 and restarts.sum() <= 2, [(c[i].tolist(), c[i + 1].tolist()) for i in bad[:5]]
    clipped = node.report()["safety"]["clipped"]
    assert clipped["effort"]["shoulder"] + clipped["effort"]["wrist"] > 0 and clipped["rate"]["wrist"] > 0
    assert clipped["position"]["wrist"] > 0  # the expert wanted the wrist past 0.6 rad
    assert len(wrist) > 100 and max(abs(w) for w in wrist) <= 0.6 + 0.1  # coasting past the margin, then held
