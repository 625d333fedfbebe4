"""``omnipolicy record``: the expert drives sim-robot over DDS on 127.0.0.1 while the recorder writes one bag per
episode, and ``dataset from-rosbag`` imports every bag as one episode of the run."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cyclonedds")
pytest.importorskip("dm_control")

from omnipolicy.datasets.store import EpisodeStore  # noqa: E402
from omnipolicy.robot_bridge.arms import get_arm  # noqa: E402
from omnipolicy.robot_bridge.deploy import DeployConfig, Deployer  # noqa: E402
from omnipolicy.robot_bridge.recorder import BagRecorder, arm_topics  # noqa: E402
from omnipolicy.robot_bridge.rosbag_import import bag_topics  # noqa: E402
from omnipolicy.robot_bridge.sim_robot import NodeProcess  # noqa: E402
from omnipolicy.robot_bridge.wire.dds import DdsTransport  # noqa: E402
from omnipolicy.robot_bridge.wire.loopback import random_domain_id  # noqa: E402

pytestmark = pytest.mark.timeout(240)

TASK = "dmc/reacher-easy"
EPISODES, EPISODE_S = 3, 1.0


def test_the_topics_of_an_arm_with_their_types():
    topics = {t: cls.ROS_TYPE for t, (cls, _) in arm_topics(get_arm(TASK)).items()}
    assert topics == {
        "/joint_states": "sensor_msgs/msg/JointState",
        "/sim_robot/task_state": "sensor_msgs/msg/JointState",
        "/effort_controller/commands": "std_msgs/msg/Float64MultiArray",
        "/joint_trajectory_controller/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
        "/sim_robot/episode_start": "std_msgs/msg/Bool",
        "/sim_robot/success": "std_msgs/msg/Bool",
    }


def test_one_bag_per_episode_of_the_expert_driving_sim_robot_imports_as_one_episode_each(tmp_path: Path):
    from omnipolicy.commands import dataset_command

    domain = random_domain_id()
    args = ["--episodes", str(EPISODES), "--episode-seconds", str(EPISODE_S)]
    with DdsTransport(domain_id=domain, network="loopback") as t:
        recorder = BagRecorder(get_arm(TASK), tmp_path / "bags", t, episodes=EPISODES)
        with NodeProcess("sim-robot", args, domain) as robot, \
                Deployer(DeployConfig(task=TASK, actor="expert", network="loopback", domain_id=domain)) as node:
            th = threading.Thread(target=node.run, daemon=True)
            th.start()
            try:
                assert robot.wait(EPISODES * EPISODE_S + 60) == 0
                assert recorder.done.wait(10)
            finally:
                node.stop()
                th.join(15)
        bags = recorder.close()
    assert [b.name for b in bags] == [f"episode-{i:04d}" for i in range(EPISODES)]
    assert not list((tmp_path / "bags").glob(".*"))  # no half-written bag left
    topics = bag_topics(bags[0])
    assert topics["/effort_controller/commands"] == "std_msgs/msg/Float64MultiArray"
    assert topics["/sim_robot/success"] == "std_msgs/msg/Bool"
    dataset_command(["from-rosbag", *map(str, bags), "--out", str(tmp_path / "ds"), "--task", TASK],
                    "omnipolicy dataset")
    store = EpisodeStore(tmp_path / "ds")
    assert store.num_episodes == EPISODES
    steps = int(round(EPISODE_S * get_arm(TASK).rate_hz))  # 50 control ticks an episode at 50 Hz
    lengths = [store.load_episode(i).length for i in range(EPISODES)]
    # at most each tick's command; fewer where the deploy node held on a late state (under load: up to half)
    assert all(0.3 * steps <= n <= steps + 1 for n in lengths), lengths
    ep = store.load_episode(1)
    assert np.all(np.abs(ep.actions) <= 1.0) and np.ptp(ep.observations["position"], axis=0).max() > 0.05
