"""Commands split over controllers as ros2_control does it (``[[command]]`` groups in a robot file): the loader and
its errors, the group rule of sim-robot (fake clock), deploy -> sim-robot over DDS with an arm trajectory controller
and a gripper forward-command controller, and the rosbag import of such a recording."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cyclonedds")
pytest.importorskip("mujoco")

from omnipolicy.robot_bridge.deploy import DeployConfig, Deployer  # noqa: E402
from omnipolicy.robot_bridge.robot_file import CommandGroup, RobotFileError, load_robot_file  # noqa: E402
from omnipolicy.robot_bridge.sim_robot import CommandSlot, NodeProcess  # noqa: E402
from omnipolicy.robot_bridge.wire.dds import DdsTransport  # noqa: E402
from omnipolicy.robot_bridge.wire.loopback import random_domain_id  # noqa: E402
from omnipolicy.robot_bridge.wire.messages import (  # noqa: E402
    Float64MultiArray,
    JointMap,
    JointState,
    JointTrajectory,
    MultiArrayLayout,
    trajectory_from_action,
)
from omnipolicy.robot_bridge.wire.rosbag import merge_ticks  # noqa: E402
from omnipolicy.robot_bridge.wire.transport import QOS_ROS2_CONTROL, wait_for  # noqa: E402

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
ROBOT = ROOT / "tests/data/robots/so101_like_arm_controllers.toml"
ARM_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll")
JOINTS = (*ARM_JOINTS, "gripper")
ARM_TOPIC, GRIPPER_TOPIC = "/arm_controller/joint_trajectory", "/gripper_controller/commands"


# ---------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------


def test_a_file_with_two_controllers_loads_to_its_groups():
    arm = load_robot_file(ROBOT)
    assert arm.commands == arm.command_groups == (
        CommandGroup(ARM_JOINTS, ARM_TOPIC, "trajectory_msgs/msg/JointTrajectory"),
        CommandGroup(("gripper",), GRIPPER_TOPIC, "std_msgs/msg/Float64MultiArray"),
    )
    assert arm.limits.interface == "position" and arm.command_topic == ARM_TOPIC and arm.trajectory_topic == ""
    (g1, traj), (g2, fwd) = arm.split_command(np.arange(6) / 10)
    assert isinstance(traj, JointTrajectory) and traj.joint_names == ARM_JOINTS
    np.testing.assert_allclose(traj.points[0].positions, [0.0, 0.1, 0.2, 0.3, 0.4])
    assert isinstance(fwd, Float64MultiArray) and fwd.data.tolist() == [0.5]
    assert g1.values(traj).tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"command: expected 6 values, one per joint"):
        arm.split_command(np.zeros(5))
    # the one-table [command] is one group of every joint on its topic
    single = load_robot_file(ROOT / "tests/data/robots/so101_like_arm.toml")
    assert single.command_groups == () and single.commands == (
        CommandGroup(JOINTS, "/arm_controller/commands", "std_msgs/msg/Float64MultiArray"),)


GRIPPER_GROUP = 'joints = ["gripper"]\ntopic = "/gripper_controller/commands"'
BAD_GROUPS = {
    "overlap": (GRIPPER_GROUP, 'joints = ["wrist_roll", "gripper"]\ntopic = "/gripper_controller/commands"',
                r"command\[1\].joints: joint 'wrist_roll' is also commanded by command\[0\]; expected every joint in "
                r"exactly one command group"),
    "missing": ('"wrist_flex", "wrist_roll"]\ntopic', '"wrist_flex"]\ntopic',
                r"command: joints \['wrist_roll'\] are in no command group \(the groups command \['shoulder_pan', .*"
                r"'wrist_flex', 'gripper'\]\); expected the groups' `joints` together to cover `joints` \[.*"
                r"'gripper'\] exactly once"),
    "unknown-joint": (GRIPPER_GROUP, 'joints = ["jaw"]\ntopic = "/gripper_controller/commands"',
                      r"command\[1\].joints: unknown joints \['jaw'\]; expected names from `joints` \['shoulder_pan'"),
    "unknown-type": ('type = "std_msgs/msg/Float64MultiArray"', 'type = "std_msgs/msg/Float32MultiArray"',
                     r"command\[1\].type: unknown command message type 'std_msgs/msg/Float32MultiArray'; expected one "
                     r"of \['std_msgs/msg/Float64MultiArray', 'trajectory_msgs/msg/JointTrajectory'\]"),
    "interfaces-differ": ('interface = "position"\njoints = ["gripper"]', 'interface = "velocity"\njoints = ["gripper"]',
                          r"command\[1\].interface: expected 'position', the interface of command\[0\] \(the groups "
                          r"share one command interface\), got 'velocity'"),
    "same-topic": ('topic = "/gripper_controller/commands"', 'topic = "/arm_controller/joint_trajectory"',
                   r"command\[1\].topic: topic /arm_controller/joint_trajectory is also the topic of command\[0\]"),
    "typo": ('joints = ["gripper"]', 'joint = ["gripper"]', r"command\[1\].joint: unknown key; did you mean 'joints'\?"),
    "no-joints": ('joints = ["gripper"]', 'interface = "position"',
                  r"command\[1\].joints: missing; required keys here"),
}


@pytest.mark.parametrize("case", list(BAD_GROUPS))
def test_bad_command_groups_name_the_file_the_key_and_what_was_expected(tmp_path, case):
    old, new, match = BAD_GROUPS[case]
    text = ROBOT.read_text()
    assert old in text, old
    path = tmp_path / "arm.toml"
    path.write_text(text.replace(old, new, 1) if case != "no-joints" else text.replace(old, "", 1))
    shutil.copy(ROOT / "tests/data/robots/so101_like_arm.xml", tmp_path)
    with pytest.raises(RobotFileError, match=match) as info:
        load_robot_file(path)
    assert str(info.value).startswith(f"robot file {str(path)!r}: ") and "\n" not in str(info.value)


# ---------------------------------------------------------------------------
# sim-robot's group rule (fake clock)
# ---------------------------------------------------------------------------


def test_the_arm_holds_until_every_group_has_a_command_then_each_group_keeps_its_newest():
    arm = load_robot_file(ROBOT)
    now = [0.0]
    slot = CommandSlot(JointMap(JOINTS), timeout=0.1, clock=lambda: now[0], interface="position",
                       groups=arm.command_groups)
    q, qd = np.linspace(-0.1, 0.4, 6), np.zeros(6)
    arm_msg = trajectory_from_action([0.1, 0.2, 0.3, 0.4, 0.5], JointMap(ARM_JOINTS))
    slot.on_group(0, arm_msg)
    command, held = slot.effort(q, qd, 5.0, 0.2)
    assert held and command.tolist() == q.tolist() and slot.first_command is None  # the gripper has no command yet
    now[0] = 0.05
    slot.on_group(1, Float64MultiArray(MultiArrayLayout(), [0.9]))
    command, held = slot.effort(q, qd, 5.0, 0.2)
    assert not held and command.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.9]) and slot.first_command == 0.05
    slot.on_group(1, Float64MultiArray(MultiArrayLayout(), [-0.3]))  # the gripper moves, the arm keeps its target
    now[0] = 10.0  # position targets stay in force
    assert slot.effort(q, qd, 5.0, 0.2)[0].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, -0.3])
    slot.on_group(1, Float64MultiArray(MultiArrayLayout(), [0.1, 0.2]))  # two values for a one-joint controller
    slot.on_group(0, trajectory_from_action([0.1, 0.2], JointMap(("shoulder_pan", "gripper"))))
    assert slot.rejected == 2 and slot.received == 3
    assert slot.effort(q, qd, 5.0, 0.2)[0].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, -0.3])


def test_a_cleared_slot_holds_until_every_group_commands_again():
    """What sim-robot does at a new episode: the last scene's command no longer moves the reset arm."""
    arm = load_robot_file(ROBOT)
    slot = CommandSlot(JointMap(JOINTS), timeout=0.1, interface="position", groups=arm.command_groups)
    q, qd = np.linspace(-0.1, 0.4, 6), np.zeros(6)
    slot.on_group(0, trajectory_from_action([0.1, 0.2, 0.3, 0.4, 0.5], JointMap(ARM_JOINTS)))
    slot.on_group(1, Float64MultiArray(MultiArrayLayout(), [0.9]))
    assert slot.effort(q, qd, 5.0, 0.2) == (pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.9]), False)
    slot.clear()
    command, held = slot.effort(q, qd, 5.0, 0.2)
    assert held and command.tolist() == q.tolist()  # holds where it is
    slot.on_group(1, Float64MultiArray(MultiArrayLayout(), [0.2]))
    assert slot.effort(q, qd, 5.0, 0.2)[1]  # the gripper's alone is not a command of the arm
    slot.on_group(0, trajectory_from_action([-0.1, -0.2, -0.3, -0.4, -0.5], JointMap(ARM_JOINTS)))
    assert slot.effort(q, qd, 5.0, 0.2) == (pytest.approx([-0.1, -0.2, -0.3, -0.4, -0.5, 0.2]), False)


def test_an_effort_command_of_groups_expires_with_its_oldest_group():
    groups = (CommandGroup(("a",), "/a"), CommandGroup(("b",), "/b"))
    now = [0.0]
    slot = CommandSlot(JointMap(("a", "b")), timeout=0.1, clock=lambda: now[0], interface="effort", groups=groups)
    slot.on_group(0, Float64MultiArray(MultiArrayLayout(), [0.5]))
    now[0] = 0.08
    slot.on_group(1, Float64MultiArray(MultiArrayLayout(), [-0.5]))
    assert slot.effort(np.zeros(2), np.zeros(2), 5.0, 0.2) == (pytest.approx([0.5, -0.5]), False)
    now[0] = 0.12  # group a's command is 0.12 s old: the whole arm goes to zero effort
    assert slot.effort(np.zeros(2), np.zeros(2), 5.0, 0.2) == (pytest.approx([0.0, 0.0]), True)


# ---------------------------------------------------------------------------
# deploy -> sim-robot over DDS (127.0.0.1)
# ---------------------------------------------------------------------------


class TargetActor:
    """Acts with a fixed target (an ``Actor`` of one environment)."""

    name = "target"

    def __init__(self, action) -> None:
        self.action = np.asarray(action, dtype=np.float32)

    def begin(self, task, envs) -> None:
        pass

    def reset_env(self, index: int, obs: dict) -> None:
        pass

    def act(self, active, observations):
        return [self.action for _ in active]


def test_deploy_drives_sim_robot_over_two_controllers():
    """deploy splits each filtered command into a JointTrajectory of the five arm joints and a Float64MultiArray of
    the gripper; sim-robot applies them together; the arm reaches the target within the file's limits."""
    domain = random_domain_id()
    arm = load_robot_file(ROBOT)
    target = np.array([0.5, -0.4, 0.3, -0.2, 0.6, 0.8])
    cfg = DeployConfig(robot=ROBOT, task="arm/so101-like-v0", checkpoint=Path("unused"), network="loopback",
                       domain_id=domain)
    args = ["--robot", str(ROBOT), "--transport", "dds", "--episode-seconds", "600"]  # one episode, until stopped
    with DdsTransport(network="loopback", domain_id=domain) as t, NodeProcess("sim-robot", args, domain) as robot, \
            Deployer(cfg, actor=TargetActor(target)) as node:
        trajectories: list = []
        grippers: list = []
        states: list = []
        t.subscription(ARM_TOPIC, JointTrajectory, trajectories.append, QOS_ROS2_CONTROL)
        t.subscription(GRIPPER_TOPIC, Float64MultiArray, grippers.append, QOS_ROS2_CONTROL)
        t.subscription("/joint_states", JointState, states.append, QOS_ROS2_CONTROL)
        report: dict = {}
        th = threading.Thread(target=lambda: report.update(node.run()), daemon=True)
        th.start()
        try:
            wait_for(lambda: node.acted >= 50, 60, "50 ticks of acting")  # 2.5 s at 20 Hz: the arm has got there
        finally:
            node.stop()
            th.join(15)
        final = states[-1]
        robot.close()  # SIGTERM: sim-robot writes its summary
    summary = robot.of("summary")[0]
    published = report["commands_published"]
    assert report["acted"] >= 50 and published % 2 == 0 and published >= 2 * report["acted"]  # one message per group
    assert summary["commands_rejected"] == 0 and summary["commands_received"] > 60
    assert robot.of("ready")[0]["command_topics"] == [ARM_TOPIC, GRIPPER_TOPIC]
    assert len(trajectories) > 30 and len(grippers) > 30
    assert all(m.joint_names == ARM_JOINTS and len(m.points) == 1 for m in trajectories)
    arm_cmds = np.array([m.points[0].positions for m in trajectories])
    grip_cmds = np.array([m.data for m in grippers])[:, 0]
    assert np.all(np.abs(np.diff(arm_cmds, axis=0)) <= arm.limits.max_delta[0] + 1e-9)  # the rate limit, per group
    assert np.all(np.abs(np.diff(grip_cmds)) <= arm.limits.max_delta[5] + 1e-9)
    np.testing.assert_allclose(arm_cmds[-2], target[:5], atol=1e-6)  # (the last one is the final hold command)
    assert grip_cmds[-2] == pytest.approx(target[5])
    # both controllers' targets reached the actuators (kp 8 position servos: the shoulder sags under gravity)
    np.testing.assert_allclose(final.position, target, atol=0.08)
    assert final.position[5] == pytest.approx(target[5], abs=0.01)


# ---------------------------------------------------------------------------
# rosbag import
# ---------------------------------------------------------------------------


def test_merge_ticks_completes_a_tick_when_every_group_has_delivered():
    a = (np.array([10, 20, 30, 40]), [np.array([1.0]), np.array([2.0]), np.array([3.0]), np.array([4.0])])
    b = (np.array([11, 21, 41]), [np.array([-1.0]), np.array([-2.0]), np.array([-4.0])])  # tick 30's message lost
    times, values = merge_ticks([a, b])
    assert times.tolist() == [11, 21, 41]
    assert [[float(v[0]) for v in tick] for tick in values] == [[1.0, -1.0], [2.0, -2.0], [4.0, -4.0]]


def test_from_rosbag_rebuilds_the_action_from_both_controllers(tmp_path):
    pytest.importorskip("rosbags")
    from omnipolicy.commands import dataset_command
    from omnipolicy.datasets import EpisodeStore
    from omnipolicy.robot_bridge.wire.messages import Time, array_to_image, joint_state
    from omnipolicy.robot_bridge.wire.rosbag import write_bag

    t0, ms = 1_000_000_000, 1_000_000
    msgs = []
    for k in range(20):  # 20 Hz: state and image, then the arm's trajectory (+2 ms) and the gripper's command (+3 ms)
        t = t0 + k * 50 * ms
        msgs.append(("/joint_states", t, joint_state(JOINTS, 0.01 * k * np.ones(6), np.zeros(6), stamp=Time.from_ns(t))))
        msgs.append(("/front/image_raw", t, array_to_image(np.full((32, 32, 3), k, np.uint8), stamp=Time.from_ns(t))))
        msgs.append((ARM_TOPIC, t + 2 * ms, trajectory_from_action(0.01 * k * np.arange(1, 6), JointMap(ARM_JOINTS))))
        if k != 7:  # one gripper command lost: tick 7 merges into tick 8
            msgs.append((GRIPPER_TOPIC, t + 3 * ms, Float64MultiArray(MultiArrayLayout(), [-0.05 * k])))
    bag = write_bag(tmp_path / "run-0", msgs)
    dataset_command(["from-rosbag", str(bag), "--out", str(tmp_path / "ds"), "--robot", str(ROBOT)], "omnipolicy dataset")
    ep = EpisodeStore(tmp_path / "ds").load_episode(0)
    ticks = [k for k in range(20) if k != 7]
    assert ep.task_id == "so101_like_arm_controllers" and len(ep.actions) == 19
    want = np.array([[0.01 * k * j for j in range(1, 6)] + [-0.05 * k] for k in ticks])
    np.testing.assert_allclose(ep.actions, want, atol=1e-6)  # the gripper's value joined each tick's arm command
    np.testing.assert_allclose(ep.observations["state"][:, 0], 0.01 * np.array(ticks), atol=1e-6)
    assert ep.observations["front"][7].max() == 8  # row 7 is tick 8 (tick 7 merged into it)
    with pytest.raises(SystemExit, match=r"--command-topic /cmd is ambiguous: .* over 2 controllers"):
        dataset_command(["from-rosbag", str(bag), "--out", str(tmp_path / "ds2"), "--robot", str(ROBOT),
                         "--command-topic", "/cmd"], "omnipolicy dataset")
