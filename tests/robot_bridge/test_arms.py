"""Arm specs against the simulator's model, and the observation recipe: messages -> exactly the plain simulation's
observation, bad messages refused with one-line reasons, an expert twin synced from observations."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("dm_control")

from omnipolicy.envs import get_task, make_env, make_expert  # noqa: E402
from omnipolicy.robot_bridge.arms import ARMS, get_arm, make_sim_arm  # noqa: E402
from omnipolicy.robot_bridge.robot_file import ImageSource, NamedSource, ObservationRecipe  # noqa: E402
from omnipolicy.robot_bridge.wire.messages import Header, JointState, joint_state  # noqa: E402
from omnipolicy.tokenizers import check_observation  # noqa: E402

TASK = "dmc/reacher-easy"
ARM = get_arm(TASK)


def messages_of(arm) -> dict[str, JointState]:
    """The messages the robot publishes for its current state (as SimRobot.publish_state builds them)."""
    pos, vel, eff = arm.joint_state()
    return {
        ARM.joint_states_topic: joint_state(ARM.joints, pos, vel, eff),
        ARM.task_state_topic: joint_state(ARM.task_state_names, arm.task_state()),
    }


def test_arm_limits_and_joint_order_match_the_model():
    arm = make_sim_arm(TASK)
    m = arm.physics.named.model
    assert list(arm.physics.model.joint(i).name for i in range(2)) == list(ARM.joints)  # qpos order = controller order
    lim = ARM.limits
    assert not m.jnt_limited["shoulder"] and lim.position_lower[0] == -math.inf and lim.position_upper[0] == math.inf
    assert m.jnt_limited["wrist"]
    np.testing.assert_allclose([lim.position_lower[1], lim.position_upper[1]], m.jnt_range["wrist"], atol=1e-12)
    np.testing.assert_allclose(np.c_[-np.asarray(lim.effort_limit), lim.effort_limit], m.actuator_ctrlrange[list(ARM.joints)])
    assert ARM.control_period == pytest.approx(arm.physics.timestep() * arm.env.n_sub_steps)
    assert ARM.command_topic == "/effort_controller/commands" and ARM.trajectory_topic == "/joint_trajectory_controller/joint_trajectory"
    assert TASK in ARMS


def test_recipe_rebuilds_the_exact_plain_simulation_observation():
    """Messages -> recipe gives, value for value, what env.step returns (float32), over a whole episode."""
    spec = get_task(TASK).timestep
    ARM.observation.check_spec(spec)
    arm = make_sim_arm(TASK)
    env = make_env(TASK)
    expert = make_expert(TASK)
    arm.reset(5)
    obs, _ = env.reset(seed=5)
    for t in range(60):
        built = ARM.observation.build(messages_of(arm), spec)
        check_observation(spec, built)
        assert sorted(built) == sorted(obs)
        for k in obs:
            assert built[k].dtype == obs[k].dtype and np.array_equal(built[k], obs[k]), (t, k)
        action = expert.act(env, obs)
        obs = env.step(action)[0]
        arm.step(action)


def test_recipe_rejects_bad_messages_with_one_line_reasons():
    spec = get_task(TASK).timestep
    arm = make_sim_arm(TASK)
    arm.reset(0)
    msgs = messages_of(arm)
    bad = {
        "unknown joint names \\['elbow'\\]": joint_state(["shoulder", "elbow"], [0.0, 0.0], [0.0, 0.0]),
        "missing joint names \\['wrist'\\]": joint_state(["shoulder"], [0.0], [0.0]),
        r"non-finite values for joints \['wrist'\]": joint_state(ARM.joints, [0.0, np.nan], [0.0, 0.0]),
        "JointState.velocity is empty": joint_state(ARM.joints, [0.0, 0.0]),
        "velocity has 1 values for 2 joint names": JointState(Header(), ARM.joints, [0.0, 0.0], [0.0], []),
    }
    for match, msg in bad.items():
        with pytest.raises(ValueError, match=match) as info:
            ARM.observation.build({**msgs, ARM.joint_states_topic: msg}, spec)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="no message on /sim_robot/task_state yet"):
        ARM.observation.build({ARM.joint_states_topic: msgs[ARM.joint_states_topic]}, spec)


def test_recipe_spec_mismatch_is_refused():
    spec = get_task(TASK).timestep
    wrong = ObservationRecipe((NamedSource("position", "/joint_states", "position", ("shoulder",)),))
    with pytest.raises(ValueError, match=r"missing: \['to_target', 'velocity'\]"):
        wrong.check_spec(spec)
    short = ObservationRecipe(ARM.observation.sources[:2] + (NamedSource("to_target", "/t", "position", ("x",)),))
    with pytest.raises(ValueError, match=r"'to_target' gives a continuous vector of shape \(1,\), the spec's field is continuous \(2,\)"):
        short.check_spec(spec)
    pixels = ObservationRecipe((ImageSource("position", "/cam"),) + ARM.observation.sources[1:])
    with pytest.raises(ValueError, match="'position' comes from an Image"):
        pixels.check_spec(spec)
    with pytest.raises(KeyError, match=r"No robot arm for task 'dmc/reacher-hard'.*dmc/reacher-easy"):
        get_arm("dmc/reacher-hard")


def test_expert_twin_synced_from_the_observation_acts_like_the_expert_on_the_real_simulator():
    spec = get_task(TASK).timestep
    real, twin = make_sim_arm(TASK), make_sim_arm(TASK)
    real.reset(3)
    twin.reset(77)  # another target and arm pose: sync_to must overwrite all of it
    expert = make_expert(TASK)
    for _ in range(40):
        obs = ARM.observation.build(messages_of(real), spec)  # float32, as deploy sees it
        twin.sync_to(obs)
        np.testing.assert_allclose(twin.task_state(), obs["to_target"], atol=1e-6)
        a_real, a_twin = expert.act(real.env, real.obs), expert.act(twin.env, obs)
        np.testing.assert_allclose(a_twin, a_real, atol=1e-4)
        real.step(a_real)
