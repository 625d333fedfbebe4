"""The simulated arm as a ROS 2 robot: the hold rule, configuration, and the node on the wire (the arm spec and the
observation recipe: test_arms.py)."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cyclonedds")
pytest.importorskip("dm_control")

from omnipolicy.envs import get_task, make_env  # noqa: E402
from omnipolicy.robot_bridge.arms import get_arm, make_sim_arm  # noqa: E402
from omnipolicy.robot_bridge.sim_robot import CommandSlot, NodeProcess, SimRobot, SimRobotConfig  # noqa: E402
from omnipolicy.robot_bridge.wire.loopback import random_domain_id  # noqa: E402
from omnipolicy.robot_bridge.wire.messages import (  # noqa: E402
    Bool,
    Float64MultiArray,
    Image,
    JointMap,
    JointState,
    MultiArrayLayout,
    array_to_image,
    image_to_array,
    trajectory_from_action,
)
from omnipolicy.robot_bridge.wire.transport import QOS_DEFAULT, QOS_SENSOR_DATA, make_transport, wait_for  # noqa: E402

pytestmark = pytest.mark.timeout(180)

TASK = "dmc/reacher-easy"
ARM = get_arm(TASK)
ROOT = Path(__file__).resolve().parents[2]
ROS_PYTHON = ROOT / ".venv-ros" / "bin" / "python"
needs_ros_sim = pytest.mark.skipif(
    not (ROOT / ".venv-ros" / ".omnipolicy-ros-sim-ok").exists(),
    reason="no .venv-ros with simulators; create it with scripts/make_ros_venv.sh --with-sim",
)


# ---------------------------------------------------------------------------
# Commands and the hold rule (fake clock)
# ---------------------------------------------------------------------------


def test_command_slot_hold_rule_trajectory_and_rejects(caplog):
    now = [0.0]
    slot = CommandSlot(JointMap(ARM.joints), timeout=0.1, clock=lambda: now[0])
    q, qd = np.array([0.1, -0.2]), np.array([0.5, 0.0])
    assert slot.effort(q, qd, 5.0, 0.2) == (pytest.approx([0.0, 0.0]), True)  # nothing yet: zero effort
    slot.on_effort(Float64MultiArray(MultiArrayLayout(), [0.3, -0.4]))
    now[0] = 0.1
    effort, held = slot.effort(q, qd, 5.0, 0.5)
    assert effort.tolist() == [0.3, -0.4] and not held
    now[0] = 0.1001  # the command is older than the timeout: zero effort
    effort, held = slot.effort(q, qd, 5.0, 0.5)
    assert effort.tolist() == [0.0, 0.0] and held
    caplog.clear()
    for bad in ([0.3], [0.3, np.nan], [0.1, 0.2, 0.3]):
        slot.on_effort(Float64MultiArray(MultiArrayLayout(), bad))
    assert slot.rejected == 3 and len([r for r in caplog.records if "rejected a Float64MultiArray" in r.message]) == 3
    slot.on_trajectory(trajectory_from_action([1.0, -1.0], JointMap(("wrist", "shoulder"))))  # by name: wrist=1, shoulder=-1
    effort, held = slot.effort(q, qd, 5.0, 0.5)
    assert effort == pytest.approx(np.clip(5.0 * (np.array([-1.0, 1.0]) - q) - 0.5 * qd, -1, 1)) and not held
    now[0] = 100.0  # a trajectory target stays in force
    assert slot.effort(q, qd, 5.0, 0.5)[0] == pytest.approx(effort)
    assert slot.received == 2 and slot.first_command == 0.0


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="must divide the control rate 50 Hz"):
        SimRobot(SimRobotConfig(publish_rate_hz=30.0), transport=object(), sim=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task's episodes last at most 1000 steps"):
        SimRobot(SimRobotConfig(episode_seconds=25.0), transport=object(), sim=make_sim_arm(TASK))  # type: ignore[arg-type]


def test_the_network_is_system_by_default_and_loopback_on_request(monkeypatch):
    import tyro

    from omnipolicy.robot_bridge import sim_robot

    assert tyro.cli(SimRobotConfig, args=[]).network == "system"
    assert tyro.cli(SimRobotConfig, args=["--network", "loopback"]).network == "loopback"
    with pytest.raises(SystemExit):
        tyro.cli(SimRobotConfig, args=["--network", "lan"])
    asked: list = []
    with make_transport("dds", network="loopback", domain_id=random_domain_id()) as t:
        monkeypatch.setattr(sim_robot, "make_transport", lambda name, **kw: asked.append((name, kw)) or t)
        sim = make_sim_arm(TASK)
        SimRobot(SimRobotConfig(), sim=sim)  # no traffic: the loopback test transport answers
        SimRobot(SimRobotConfig(network="loopback", domain_id=7), sim=sim)
    assert asked == [("dds", {"domain_id": None, "network": "system"}), ("dds", {"domain_id": 7, "network": "loopback"})]


# ---------------------------------------------------------------------------
# The node on the wire
# ---------------------------------------------------------------------------


def plain_constant_effort(seed: int, effort, steps: int) -> float:
    arm = make_sim_arm(TASK)
    arm.reset(seed)
    for _ in range(steps):
        arm.step(np.asarray(effort))
    return round(arm.distance(), 5)


def drive_constant(python: str | None, transport: str, effort=(0.4, -0.6)) -> None:
    """Constant effort at 100 Hz for two 0.5 s episodes: the physics must equal plain simulation exactly."""
    domain = random_domain_id()
    args = ["--transport", transport, "--episodes", "2", "--episode-seconds", "0.5", "--seed", "11", "--camera-rate-hz", "10"]
    with make_transport("dds", network="loopback", domain_id=domain) as t, NodeProcess("sim-robot", args, domain, python) as robot:
        states: queue.Queue = queue.Queue()
        images: queue.Queue = queue.Queue()
        successes: list[bool] = []
        starts: list[bool] = []
        t.subscription(ARM.joint_states_topic, JointState, states)
        t.subscription(ARM.camera_topic, Image, images, QOS_SENSOR_DATA)
        t.subscription(ARM.success_topic, Bool, lambda m: successes.append(m.data), QOS_DEFAULT)
        t.subscription(ARM.episode_topic, Bool, lambda m: starts.append(m.data), QOS_DEFAULT)
        pub = t.publisher(ARM.command_topic, Float64MultiArray)
        first = states.get(timeout=30)  # at rest, waiting for the first command
        assert first.name == ARM.joints and np.all(first.velocity == 0)
        wait_for(lambda: pub.matched() > 0, 30, "sim-robot's command subscription")
        while robot.proc.poll() is None:
            pub.publish(Float64MultiArray(MultiArrayLayout(), list(effort)))
            time.sleep(0.01)
        assert robot.wait(10) == 0
        eps = robot.of("episode")
        summary = robot.of("summary")[0]
    assert [e["seed"] for e in eps] == [11, 12] and [e["steps"] for e in eps] == [25, 25]
    assert [e["final_distance"] for e in eps] == [plain_constant_effort(s, effort, 25) for s in (11, 12)]
    assert [e["hold_steps"] for e in eps] == [0, 0]
    assert summary["episodes"] == 2 and summary["transport"] == transport and summary["commands_rejected"] == 0
    wait_for(lambda: len(successes) == 2, 5, "two success messages")
    assert successes == [e["success"] for e in eps] and starts[:2] == [True, True]
    img = image_to_array(images.get(timeout=5))
    assert img.shape == (84, 84, 3) and img.std() > 5  # a rendered scene, not a blank frame
    seen = []
    while not states.empty():
        seen.append(states.get_nowait())
    assert any(np.allclose(m.effort, effort) for m in seen)  # the applied command is reported as effort


def test_sim_robot_over_dds_steps_exactly_like_plain_simulation():
    drive_constant(None, "dds")


@pytest.mark.ros
@needs_ros_sim
def test_sim_robot_as_rclpy_node_steps_exactly_like_plain_simulation():
    drive_constant(str(ROS_PYTHON), "rclpy")


def test_sim_robot_trajectory_command_and_hold_when_commands_stop():
    domain = random_domain_id()
    args = ["--transport", "dds", "--episode-seconds", "10", "--command-timeout", "0.1", "--max-seconds", "30"]
    with make_transport("dds", network="loopback", domain_id=domain) as t, NodeProcess("sim-robot", args, domain) as robot:
        latest: queue.Queue = queue.Queue(maxsize=1)
        t.subscription(ARM.joint_states_topic, JointState, latest)
        traj = t.publisher(ARM.trajectory_topic, type(trajectory_from_action([0, 0], JointMap(ARM.joints))))
        wait_for(lambda: traj.matched() > 0, 30, "sim-robot's trajectory subscription")
        traj.publish(trajectory_from_action([0.8, -1.2], JointMap(ARM.joints)))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            msg = latest.get(timeout=5)
            if np.allclose(msg.position, [0.8, -1.2], atol=0.02) and np.allclose(msg.velocity, 0, atol=0.05):
                break
        else:
            pytest.fail(f"arm did not reach the trajectory target: {msg.position}")
        # effort commands, then silence: the hold rule applies zero effort and the arm comes to rest
        eff = t.publisher(ARM.command_topic, Float64MultiArray)
        wait_for(lambda: eff.matched() > 0, 30, "sim-robot's command subscription")
        for _ in range(20):
            eff.publish(Float64MultiArray(MultiArrayLayout(), [1.0, 1.0]))
            time.sleep(0.02)
        moving = latest.get(timeout=2)
        assert np.abs(moving.velocity).max() > 1.0
        time.sleep(0.8)
        rest = latest.get(timeout=2)
        assert rest.effort.tolist() == [0.0, 0.0]
        assert np.abs(rest.velocity).max() < 0.05 * np.abs(moving.velocity).max()
    assert robot.of("summary")[0]["hold_ticks"] > 30


def test_pixels_arm_camera_message_is_the_plain_simulation_image():
    task = "dmc/reacher-easy-pixels"
    spec, arm_spec = get_task(task).timestep, get_arm(task)
    arm_spec.observation.check_spec(spec)
    (camera,) = arm_spec.cameras
    assert camera.shape == (84, 84, 3) and camera.topic == arm_spec.camera_topic and arm_spec.limits == ARM.limits
    arm, env = make_sim_arm(task), make_env(task)
    arm.reset(4)
    obs, _ = env.reset(seed=4)
    for _ in range(5):
        msg = array_to_image(arm.camera(84, 84), frame_id="camera")
        built = arm_spec.observation.build({arm_spec.camera_topic: msg}, spec)
        assert built["image"].dtype == np.uint8 and np.array_equal(built["image"], obs["image"])
        obs = env.step(np.float32([0.5, -0.5]))[0]
        arm.step(np.array([0.5, -0.5]))
    with pytest.raises(ValueError, match="syncs its simulator from observation keys"):
        from omnipolicy.robot_bridge.deploy import TwinExpertActor

        TwinExpertActor().begin(get_task(task), [None])
