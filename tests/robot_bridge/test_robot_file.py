"""Robot files: the loader (round trip, every bad input named by file and key), the shipped arms as files, the
policy-robot mismatch refusal, and an arm described only by its file on the wire: ``sim-robot --robot FILE``
simulating its MJCF model, ``deploy --robot FILE`` driving it, ``dataset from-rosbag --robot FILE``."""

from __future__ import annotations

import dataclasses
import math
import queue
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cyclonedds")
pytest.importorskip("mujoco")

from omnipolicy.robot_bridge.arms import ARMS, get_arm, make_sim_arm  # noqa: E402
from omnipolicy.robot_bridge.deploy import DeployConfig, Deployer  # noqa: E402
from omnipolicy.robot_bridge.robot_file import (  # noqa: E402
    MJCF_SIM,
    ArmSpec,
    CameraSpec,
    ImageSource,
    NamedSource,
    ObservationRecipe,
    RobotFileError,
    load_robot_file,
)
from omnipolicy.robot_bridge.sim_robot import NodeProcess  # noqa: E402
from omnipolicy.robot_bridge.wire.dds import DdsTransport  # noqa: E402
from omnipolicy.robot_bridge.wire.loopback import random_domain_id  # noqa: E402
from omnipolicy.robot_bridge.wire.messages import (  # noqa: E402
    Float64MultiArray,
    Image,
    JointState,
    MultiArrayLayout,
    image_to_array,
)
from omnipolicy.robot_bridge.wire.safety import SafetyLimits  # noqa: E402
from omnipolicy.robot_bridge.wire.transport import QOS_ROS2_CONTROL, QOS_SENSOR_DATA, QosProfile, wait_for  # noqa: E402

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
ROBOT = ROOT / "tests/data/robots/two_joint_arm.toml"
MODEL = ROOT / "tests/data/robots/two_joint_arm.xml"
CMD, JS, CAM = "/forward_position_controller/commands", "/joint_states", "/camera/image_raw"


# ---------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------


def test_the_example_file_loads_to_its_spec():
    arm = load_robot_file(ROBOT)
    assert arm.name == "two_joint_arm" and arm.task_id == "" and arm.label == "two_joint_arm"
    assert arm.joints == ("shoulder", "elbow") and arm.control_period == 0.02 and arm.rate_hz == 50.0
    assert arm.limits == SafetyLimits(("shoulder", "elbow"), "position", position_lower=(-1.5, -2.0),
                                      position_upper=(1.5, 2.0), velocity_limit=(3.0, 4.0), effort_limit=(5.0, 5.0),
                                      max_delta=(0.05, 0.08))
    assert arm.command_topic == CMD and arm.command_class is Float64MultiArray and arm.trajectory_topic == ""
    assert arm.cameras == (CameraSpec("image", CAM, 64, 64, 3, "overhead"),)
    assert arm.observation == ObservationRecipe((
        NamedSource("position", JS, "position", ("shoulder", "elbow")),
        NamedSource("velocity", JS, "velocity", ("shoulder", "elbow")),
        ImageSource("image", CAM, (64, 64, 3)),
    ))
    assert arm.instruction_topic == "/instruction"
    assert arm.qos_of(CMD, QOS_SENSOR_DATA) == QosProfile("reliable", "volatile", "keep_last", 1)
    assert arm.qos_of(JS, QOS_SENSOR_DATA) == QOS_ROS2_CONTROL and arm.qos_of(CAM, QOS_ROS2_CONTROL) == QOS_SENSOR_DATA
    assert arm.qos_of("/elsewhere", QOS_SENSOR_DATA) == QOS_SENSOR_DATA
    assert arm.mjcf == str(MODEL) and arm.sim == MJCF_SIM and arm.source == str(ROBOT)
    spec = arm.timestep_spec()
    assert [(f.name, f.kind, f.shape) for f in spec.observation] == [
        ("position", "continuous", (2,)), ("velocity", "continuous", (2,)), ("image", "image", (64, 64, 3))]
    assert spec.action.shape == (2,) and spec.action.low == (-1.5, -2.0) and spec.action.high == (1.5, 2.0)
    arm.check_spec(spec)
    assert load_robot_file(ROBOT) == arm  # the same file, the same spec


def test_the_shipped_arms_are_files_equal_to_the_specs_python_built():
    """The ArmSpecs arms.py registered in Python before the robot files, from the same constants."""
    joints, task_state = ("shoulder", "wrist"), ("to_target_x", "to_target_y")
    limits = SafetyLimits(
        joints, "effort",
        position_lower=(-math.inf, math.radians(-160)), position_upper=(math.inf, math.radians(160)),
        velocity_limit=(40.0, 60.0), effort_limit=(1.0, 1.0),
        max_delta=tuple(round(1.25 * d, 6) for d in (0.587, 1.464)), position_margin=math.radians(5),
    )
    sim = "omnipolicy.robot_bridge.arms:DmcReacherArm"
    state = ArmSpec(
        task_id="dmc/reacher-easy", limits=limits, sim=sim, name="dmc_reacher_easy",
        observation=ObservationRecipe((
            NamedSource("position", "/joint_states", "position", joints),
            NamedSource("velocity", "/joint_states", "velocity", joints),
            NamedSource("to_target", "/sim_robot/task_state", "position", task_state),
        )),
        task_state_names=task_state, control_period=0.02,
        description="dm_control's two-link planar reacher (effort-driven); success: fingertip inside the target sphere",
    )
    pixels = ArmSpec(
        task_id="dmc/reacher-easy-pixels", limits=limits, sim=sim, name="dmc_reacher_easy_pixels",
        observation=ObservationRecipe((ImageSource("image", "/sim_robot/camera/image_raw", (84, 84, 3)),)),
        cameras=(CameraSpec("image", "/sim_robot/camera/image_raw", 84, 84),), control_period=0.02,
        description="the same reacher observed only through its 84x84 camera (camera 0, every control step)",
    )
    assert get_arm("dmc/reacher-easy") == state and get_arm("dmc/reacher-easy-pixels") == pixels
    assert sorted(t for t in ARMS if t.startswith("dmc/")) == ["dmc/reacher-easy", "dmc/reacher-easy-pixels"]
    assert state.command_topic == "/effort_controller/commands"
    assert state.trajectory_topic == "/joint_trajectory_controller/joint_trajectory"
    assert Path(get_arm("dmc/reacher-easy").source).parent == ROOT / "robot_bridge" / "robots"


def edited(tmp_path: Path, old: str, new: str, model: bool = True) -> Path:
    """The example robot file with one edit (and its model next to it)."""
    text = ROBOT.read_text()
    assert old in text, old
    path = tmp_path / "arm.toml"
    path.write_text(text.replace(old, new, 1))
    if model:
        shutil.copy(MODEL, tmp_path / MODEL.name)
    return path


BAD = {
    "typo": ('rate_hz = 50.0', 'rate_hx = 50.0', r"rate_hx: unknown key; did you mean 'rate_hz'\?"),
    "typo-in-table": ('max_delta = [0.05, 0.08]', 'max_detla = [0.05, 0.08]',
                      r"limits.max_detla: unknown key; did you mean 'max_delta'\?"),
    "missing-limit": ('max_delta = [0.05, 0.08]', '', r"limits.max_delta: missing limit; a position interface needs"),
    "limit-length": ('velocity = [3.0, 4.0]', 'velocity = [3.0, 4.0, 5.0]',
                     r"limits.velocity: expected 2 values, one per joint \['shoulder', 'elbow'\], got 3"),
    "interface": ('interface = "position"', 'interface = "torque"',
                  r"command.interface: unknown interface 'torque'; expected one of \['effort', 'position', 'velocity'\]"),
    "message-type": ('type = "std_msgs/msg/Float64MultiArray"', 'type = "std_msgs/msg/Float32MultiArray"',
                     r"command.type: unknown command message type 'std_msgs/msg/Float32MultiArray'; expected one of"),
    "topic-type": ('topic = "/camera/image_raw"', 'topic = "/joint_states"',
                   r"cameras\[0\].topic: topic /joint_states carries sensor_msgs/msg/Image here, but joint_states.topic "
                   r"makes it a sensor_msgs/msg/JointState topic"),
    "rate": ('rate_hz = 50.0', 'rate_hz = 0', r"rate_hz: expected a positive number, got 0"),
    "camera-size": ('height = 64', 'height = -64', r"cameras\[0\].height: expected a positive integer, got -64"),
    "unknown-joint": ('names = ["shoulder", "elbow"]          # element order of the observation vector',
                      'names = ["shoulder", "wrist"]',
                      r"observation.position.names: unknown names \['wrist'\] on /joint_states; expected names from "
                      r"joints \['shoulder', 'elbow'\]"),
    "missing-key": ('name = "two_joint_arm"', '', r"name: missing; required keys here"),
    "qos": ('qos = "sensor_data"', 'qos = "fast"', r"cameras\[0\].qos: unknown QoS preset 'fast'"),
    "syntax": ('rate_hz = 50.0', 'rate_hz = ', r"\(syntax\): not valid TOML"),
    "field": ('field = "velocity"', 'field = "speed"', r"observation.velocity.field: expected position, velocity or effort"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_robot_files_name_the_file_and_the_key(tmp_path, case):
    old, new, match = BAD[case]
    path = edited(tmp_path, old, new)
    with pytest.raises(RobotFileError, match=match) as info:
        load_robot_file(path)
    assert str(info.value).startswith(f"robot file {str(path)!r}: ") and "\n" not in str(info.value)


def test_more_bad_robot_files(tmp_path):
    with pytest.raises(RobotFileError, match=r"mjcf: expected an MJCF model file .* does not exist"):
        load_robot_file(edited(tmp_path, "x", "x", model=False))
    text = ROBOT.read_text().replace('interface = "position"', 'interface = "effort"').replace("effort = [5.0, 5.0]", "")
    (tmp_path / "effort.toml").write_text(text)
    with pytest.raises(RobotFileError, match=r"limits.effort: missing limit; a effort interface needs"):
        load_robot_file(tmp_path / "effort.toml")
    (tmp_path / "trajectory.toml").write_text(text.replace('type = "std_msgs/msg/Float64MultiArray"',
                                                          'type = "trajectory_msgs/msg/JointTrajectory"'))
    with pytest.raises(RobotFileError, match=r"command.type: a JointTrajectory carries positions; the interface is 'effort'"):
        load_robot_file(tmp_path / "trajectory.toml")
    with pytest.raises(FileNotFoundError, match="robot file 'nowhere.toml' does not exist"):
        load_robot_file("nowhere.toml")
    with pytest.raises(ValueError, match="names no simulator: give its robot file an `mjcf` model"):
        make_sim_arm(dataclasses.replace(load_robot_file(ROBOT), sim=""))


# ---------------------------------------------------------------------------
# The policy must match the robot
# ---------------------------------------------------------------------------


def respec(spec, key: str, **changes):
    """A TimestepSpec with one field changed."""
    if key == "action":
        return dataclasses.replace(spec, action=dataclasses.replace(spec.action, **changes))
    return dataclasses.replace(spec, observation=tuple(dataclasses.replace(f, **changes) if f.name == key else f
                                                       for f in spec.observation))


def test_a_policy_that_does_not_match_the_robot_is_refused():
    arm = load_robot_file(ROBOT)
    spec = arm.timestep_spec()
    cases = {
        r"action: the policy's action is continuous \(3,\), the robot takes one continuous position command per joint: "
        r"\(2,\) for \['shoulder', 'elbow'\]": respec(spec, "action", shape=(3,), low=None, high=None, names=None),
        r"action: the policy's element names \['elbow', 'shoulder'\] differ from the robot's \['shoulder', 'elbow'\] "
        r".*same names in another order": respec(spec, "action", names=("elbow", "shoulder")),
        r"observation 'position': the policy's element names \['shoulder', 'wrist'\] differ from the robot's "
        r"\['shoulder', 'elbow'\] \(/joint_states position; missing on the robot: \['wrist'\]":
            respec(spec, "position", names=("shoulder", "wrist")),
        r"'image' comes from a camera of \(height, width, channels\) \(64, 64, 3\) on /camera/image_raw, the spec's "
        r"image is \(84, 84, 3\)": respec(spec, "image", shape=(84, 84, 3)),
        r"missing: \['wrist_camera'\]": dataclasses.replace(
            spec, observation=spec.observation + (dataclasses.replace(spec.observation[2], name="wrist_camera"),)),
    }
    for match, wrong in cases.items():
        with pytest.raises(ValueError, match=match):
            arm.check_spec(wrong)
    arm.check_spec(respec(spec, "action", names=None))  # a spec without names: nothing to compare


class StubActor:
    """Acts with a fixed action and records what it saw (an ``Actor`` of one environment)."""

    name = "stub"

    def __init__(self, action, spec=None) -> None:
        if spec is not None:
            self.spec = spec
        self.action = np.asarray(action, dtype=np.float32)
        self.observations: list[dict] = []

    def begin(self, task, envs) -> None:
        self.task = task

    def reset_env(self, index: int, obs: dict) -> None:
        pass

    def act(self, active, observations):
        self.observations.extend(observations)
        return [self.action for _ in active]


def robot_cfg(domain: int, **kw) -> DeployConfig:
    """deploy --robot FILE with an actor passed in (the checkpoint path is never read)."""
    return DeployConfig(robot=ROBOT, task="arm/two-joint-v0", checkpoint=Path("unused"), network="loopback",
                        domain_id=domain, **kw)


def test_deploy_refuses_a_mismatched_policy_and_a_file_without_a_task(tmp_path):
    domain = random_domain_id()
    wrong = respec(load_robot_file(ROBOT).timestep_spec(), "action", names=("shoulder", "wrist"))
    with pytest.raises(ValueError, match=r"the policy for 'arm/two-joint-v0' does not match robot 'two_joint_arm' "
                                         r"\(.*two_joint_arm.toml\): action: the policy's element names"):
        Deployer(robot_cfg(domain), actor=StubActor((0.0, 0.0), spec=wrong))
    with pytest.raises(ValueError, match=r"names no `task`: give --task, a task id of the checkpoint"):
        Deployer(dataclasses.replace(robot_cfg(domain), task=None), actor=StubActor((0.0, 0.0)))
    with pytest.raises(ValueError, match=r"--actor expert needs a registered task"):
        Deployer(dataclasses.replace(robot_cfg(domain), actor="expert"), actor=StubActor((0.0, 0.0)))


# ---------------------------------------------------------------------------
# An arm known only by its file, on the wire
# ---------------------------------------------------------------------------


def test_sim_robot_simulates_the_mjcf_arm_of_a_robot_file():
    """Joint states from the named joints, the camera at the file's size, position commands reaching the actuators,
    episodes of fixed length without success."""
    domain = random_domain_id()
    args = ["--robot", str(ROBOT), "--transport", "dds", "--episodes", "1", "--episode-seconds", "1.0"]
    with DdsTransport(network="loopback", domain_id=domain) as t, NodeProcess("sim-robot", args, domain) as robot:
        states: queue.Queue = queue.Queue(maxsize=1)
        images: queue.Queue = queue.Queue(maxsize=1)
        t.subscription(JS, JointState, states)
        t.subscription(CAM, Image, images, QOS_SENSOR_DATA)
        pub = t.publisher(CMD, Float64MultiArray, QOS_ROS2_CONTROL)
        first = states.get(timeout=20)
        assert first.name == ("shoulder", "elbow") and np.allclose(first.position, 0.0)
        image = image_to_array(images.get(timeout=20))
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and image.std() > 0
        wait_for(lambda: pub.matched() > 0, 20, "sim-robot's command subscription")
        while robot.proc.poll() is None:
            pub.publish(Float64MultiArray(MultiArrayLayout(), [0.5, -0.5]))  # position targets
            time.sleep(0.02)
        assert robot.wait(10) == 0
        last = states.get(timeout=2)
        np.testing.assert_allclose(last.position, [0.5, -0.5], atol=0.02)  # the position actuators got there
    ready, summary = robot.of("ready")[0], robot.of("summary")[0]
    assert ready["task"] == "two_joint_arm" and ready["interface"] == "position" and ready["command_topic"] == CMD
    assert robot.of("episode")[0]["success"] is None and summary["success_rate"] is None and summary["episodes"] == 1
    assert summary["commands_received"] > 20 and summary["commands_rejected"] == 0


def test_deploy_drives_an_arm_known_only_by_its_file_within_its_limits():
    """deploy --robot FILE (a checkpoint task the registry does not know) against sim-robot --robot FILE: the
    observation is the file's recipe, every command on the wire within the file's position limits and max_delta."""
    domain = random_domain_id()
    arm = load_robot_file(ROBOT)
    actor = StubActor((1.4, -1.9))  # near the position limits: the rate and velocity limits ramp the targets there
    args = ["--robot", str(ROBOT), "--transport", "dds"]
    with DdsTransport(network="loopback", domain_id=domain) as t, NodeProcess("sim-robot", args, domain) as robot, \
            Deployer(robot_cfg(domain), actor=actor) as node:
        assert actor.task.id == "arm/two-joint-v0" and node.spec == arm.timestep_spec()
        on_wire: list = []
        t.subscription(CMD, Float64MultiArray, lambda m: on_wire.append(m.data.copy()))
        sent: list = []
        send = node.send
        node.send = lambda cmd: (sent.append(np.array(cmd)), send(cmd))  # type: ignore[method-assign]
        report = node.run(duration=1.5)
    assert report["acted"] > 30 and report["task"] == "arm/two-joint-v0"
    obs = actor.observations[-1]
    assert obs["image"].shape == (64, 64, 3) and obs["position"].shape == (2,) and obs["position"].dtype == np.float32
    c = np.array(sent)  # every command sent, in order
    lo, hi = np.array(arm.limits.position_lower), np.array(arm.limits.position_upper)
    assert len(on_wire) > 30 and np.all((np.array(on_wire) >= lo) & (np.array(on_wire) <= hi))
    assert np.all(np.abs(np.diff(c, axis=0)) <= np.array(arm.limits.max_delta) + 1e-9)
    assert c[-1][0] > 0.5 and c[-1][1] < -0.5  # ramping toward the policy's targets
    assert robot.of("ready")[0]["network"] == "loopback"


def test_from_rosbag_reads_a_recording_of_an_arm_known_only_by_its_file(tmp_path):
    pytest.importorskip("rosbags")
    from omnipolicy.commands import dataset_command
    from omnipolicy.datasets import EpisodeStore
    from omnipolicy.robot_bridge.wire.messages import Time, array_to_image, joint_state
    from omnipolicy.robot_bridge.wire.rosbag import write_bag

    t0, ms = 1_000_000_000, 1_000_000
    msgs = []
    for k in range(20):
        t = t0 + k * 20 * ms
        msgs.append((JS, t, joint_state(("shoulder", "elbow"), [0.01 * k, -0.01 * k], [0.5, -0.5], stamp=Time.from_ns(t))))
        msgs.append((CAM, t, array_to_image(np.full((64, 64, 3), k, np.uint8), stamp=Time.from_ns(t))))
        msgs.append((CMD, t + 2 * ms, Float64MultiArray(MultiArrayLayout(), [0.02 * k, -0.02 * k])))
    bag = write_bag(tmp_path / "run-0", msgs)
    dataset_command(["from-rosbag", str(bag), "--out", str(tmp_path / "ds"), "--robot", str(ROBOT)], "omnipolicy dataset")
    ep = EpisodeStore(tmp_path / "ds").load_episode(0)
    assert ep.task_id == "two_joint_arm" and len(ep.actions) == 20
    np.testing.assert_allclose(ep.observations["position"][:, 0], 0.01 * np.arange(20), atol=1e-6)
    assert ep.observations["image"].shape == (20, 64, 64, 3) and ep.observations["image"][7].max() == 7
    np.testing.assert_allclose(ep.actions[:, 1], -0.02 * np.arange(20), atol=1e-6)
