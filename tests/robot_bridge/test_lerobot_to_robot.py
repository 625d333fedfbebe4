"""End to end as a user with their own data and arm: a dataset written by LeRobot (an arm not in the task registry)
is imported, a policy trains on it, and deploy drives that arm known only by its robot file (sim-robot simulates
its MJCF model over DDS on 127.0.0.1); a recording of the run comes back through ``dataset from-rosbag --robot``
with the dataset's features."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cyclonedds")
pytest.importorskip("mujoco")
pytest.importorskip("av")
pytest.importorskip("torch")

from omnipolicy.datasets import EpisodeStore  # noqa: E402
from omnipolicy.datasets.lerobot import import_lerobot  # noqa: E402
from omnipolicy.robot_bridge.deploy import DeployConfig, Deployer  # noqa: E402
from omnipolicy.robot_bridge.robot_file import load_robot_file  # noqa: E402
from omnipolicy.robot_bridge.sim_robot import NodeProcess  # noqa: E402
from omnipolicy.robot_bridge.wire.dds import DdsTransport  # noqa: E402
from omnipolicy.robot_bridge.wire.loopback import random_domain_id  # noqa: E402
from omnipolicy.robot_bridge.wire.messages import Float64MultiArray, Image, JointState, String  # noqa: E402
from omnipolicy.robot_bridge.wire.transport import QOS_DEFAULT, QOS_ROS2_CONTROL, QOS_SENSOR_DATA, wait_for  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
FIXTURE = DATA / "lerobot_so101_v30"
ROBOT = DATA / "robots" / "so101_like_arm.toml"
TASK = "lerobot/so101_fixture"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from omnipolicy.agent import TrainConfig, train  # torch: the policy trains here

    out = tmp_path_factory.mktemp("lerobot_to_robot")
    import_lerobot(FIXTURE, out / "store", task_id=TASK, progress=False)
    train(TrainConfig(data=(out / "store",), out=out / "run", preset="cpu-tiny", steps=5, batch_size=4, context=128,
                      progress=False, tensorboard=False))
    return out / "run"


@pytest.fixture(scope="module")
def run(checkpoint: Path) -> dict:
    """deploy --robot FILE with the checkpoint against sim-robot --robot FILE for 4 s, everything on the wire kept."""
    arm = load_robot_file(ROBOT)
    domain = random_domain_id()
    cfg = DeployConfig(robot=ROBOT, task=TASK, checkpoint=checkpoint, transport="dds", network="loopback",
                       domain_id=domain, instruction="pick up the red cube")
    recorded: list = []  # (topic, message) in arrival order: the run as `ros2 bag record` would keep it
    with DdsTransport(network="loopback", domain_id=domain) as t, \
            NodeProcess("sim-robot", ["--robot", str(ROBOT), "--transport", "dds"], domain) as robot, \
            Deployer(cfg) as node:
        assert node.task_id == TASK and [f.name for f in node.spec.observation if f.kind == "text"] == ["instruction"]
        topics = {arm.joint_states_topic: JointState, arm.command_topic: Float64MultiArray,
                  **{c.topic: Image for c in arm.cameras}}
        for topic, kind in topics.items():  # with the QoS the robot publishes with (cameras: best effort)
            qos = arm.qos_of(topic, QOS_SENSOR_DATA if kind is Image else QOS_ROS2_CONTROL)
            t.subscription(topic, kind, lambda m, topic=topic: recorded.append((topic, m)), qos)
        steps: list = []  # (the rate limit's reference, the policy's command) of every tick the policy acted
        decide = node.decide

        def watch(*args, **kwargs):  # an episode start restarts the rate limit (as at start-up): no reference then
            reference = None if node._new_episode else node.safety.last_sent
            command = decide(*args, **kwargs)
            if node.last_reason is None and reference is not None:
                steps.append((np.array(reference), np.array(command)))
            return command

        node.decide = watch  # type: ignore[method-assign]
        report = node.run(duration=4.0)
        assert robot.of("ready")[0]["network"] == "loopback"
    return {"arm": arm, "report": report, "recorded": recorded, "steps": steps}


def test_a_lerobot_policy_drives_an_arm_known_only_by_its_file(run: dict) -> None:
    arm, report, recorded, steps = run["arm"], run["report"], run["recorded"], run["steps"]
    assert report["acted"] >= 20, report  # 10 Hz for 4 s, the first ticks wait for the cameras
    on_wire = np.array([m.data for topic, m in recorded if topic == arm.command_topic])
    lo, hi = np.array(arm.limits.position_lower), np.array(arm.limits.position_upper)
    assert len(on_wire) >= 20 and np.all((on_wire >= lo - 1e-9) & (on_wire <= hi + 1e-9))
    # each policy command within max_delta of the last command sent (a hold command among them)
    assert len(steps) >= 15 and all(np.all(np.abs(c - r) <= np.array(arm.limits.max_delta) + 1e-9) for r, c in steps)


def test_the_recorded_run_imports_with_the_datasets_features(run: dict, checkpoint: Path, tmp_path: Path) -> None:
    from omnipolicy.commands import dataset_command
    from omnipolicy.robot_bridge.wire.rosbag import write_bag

    stamped = [(topic, int(m.header.stamp.to_ns()) if hasattr(m, "header") else None, m)
               for topic, m in run["recorded"]]
    last = 0
    msgs = []
    for topic, stamp, m in stamped:  # commands carry no stamp: they take the newest state's time plus 1 ms
        last = stamp if stamp is not None else last
        msgs.append((topic, stamp if stamp is not None else last + 1_000_000, m))
    bag = write_bag(tmp_path / "run-0", msgs)
    dataset_command(["from-rosbag", str(bag), "--out", str(tmp_path / "ds"), "--robot", str(ROBOT), "--task", TASK],
                    "omnipolicy dataset")
    ours, theirs = EpisodeStore(tmp_path / "ds"), EpisodeStore(checkpoint.parent / "store")
    got, want = ours.timestep_spec(TASK), theirs.timestep_spec(TASK)
    shape = {f.name: (f.kind, f.shape) for f in got.observation}
    assert shape == {f.name: (f.kind, f.shape) for f in want.observation if f.kind != "text"}
    assert (got.action.kind, got.action.shape) == (want.action.kind, want.action.shape)
    assert ours.load_episode(0).length > 10


def test_instructions_arrive_on_the_robots_instruction_topic(checkpoint: Path) -> None:
    """Without --instruction deploy holds until a std_msgs/String arrives on the file's [instruction] topic; it then
    acts, and a new instruction starts a new context."""
    import threading

    domain = random_domain_id()
    cfg = DeployConfig(robot=ROBOT, task=TASK, checkpoint=checkpoint, transport="dds", network="loopback",
                       domain_id=domain)
    with DdsTransport(network="loopback", domain_id=domain) as t, \
            NodeProcess("sim-robot", ["--robot", str(ROBOT), "--transport", "dds"], domain), Deployer(cfg) as node:
        pub = t.publisher("/instruction", String, QOS_DEFAULT)
        out: dict = {}
        th = threading.Thread(target=lambda: out.update(node.run(duration=5.0)), daemon=True)
        th.start()
        time.sleep(1.5)
        assert node.acted == 0 and node.holds["observation"] > 0  # no instruction yet: held
        wait_for(lambda: pub.matched() > 0, 5.0, "deploy's instruction subscription")
        pub.publish(String(data="pick up the red cube"))
        wait_for(lambda: node.acted > 3, 5.0, "the policy to act on the instruction")
        resets = node.context_resets
        pub.publish(String(data="push the blue cube to the zone"))
        wait_for(lambda: node.text == {"instruction": "push the blue cube to the zone"}, 3.0, "the new instruction")
        wait_for(lambda: node.context_resets > resets, 3.0, "a fresh context")
        th.join(15)
    assert out["acted"] > 5
