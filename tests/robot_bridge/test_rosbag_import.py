"""`omnipolicy dataset from-rosbag`: bags written by rosbags come back as stored episodes with the same values.

The expected episode is computed here by a plain loop over the documented rule (each command is a timestep;
observation = latest message of each state/image topic at or before the command's receive time, dropped if
none or older than the max age), independent of the vectorised import.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")

from omnipolicy.commands import dataset_command  # noqa: E402
from omnipolicy.datasets import EpisodeStore  # noqa: E402
from omnipolicy.datasets.cli import verify_dataset  # noqa: E402
from omnipolicy.robot_bridge.wire.messages import (  # noqa: E402
    Float64MultiArray,
    Header,
    JointMap,
    JointState,
    MultiArrayLayout,
    Time,
    array_to_image,
    joint_state,
    trajectory_from_action,
)
from omnipolicy.robot_bridge.wire.rosbag import write_bag  # noqa: E402

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000
JOINTS = ("shoulder", "wrist")
CMD = "/effort_controller/commands"
PROG = "omnipolicy dataset"


def latest_at_or_before(stream: list[tuple[int, object]], t: int, max_age_ns: int) -> object | None:
    """The rule, spelled out: the newest (time, value) with time <= t, if not older than max_age_ns."""
    best = None
    for ts, v in stream:
        if ts <= t and (best is None or ts >= best[0]):
            best = (ts, v)
    return None if best is None or t - best[0] > max_age_ns else best[1]


def reacher_recording(seed: int, storage_gap: bool = True):
    """Joint states at 100 Hz, task state at 50 Hz (1 ms later), commands at 40 Hz (+3 ms); each state stalls 200 ms."""
    rng = np.random.default_rng(seed)
    msgs, states, targets, cmds = [], [], [], []
    for k in range(100):
        t = T0 + k * 10 * MS
        if storage_gap and 40 <= k < 60:
            continue  # the robot's state publisher stalls for 200 ms
        q, qd = rng.normal(size=2), rng.normal(size=2)
        # published in another order than the task's, as a robot may
        msgs.append(("/joint_states", t, joint_state(JOINTS[::-1], [q[1], q[0]], [qd[1], qd[0]], stamp=Time.from_ns(t))))
        states.append((t, (q, qd)))
        if k % 2 == 0 and not (storage_gap and 70 <= k < 90):  # the task state stalls later, on its own
            tt = rng.normal(size=2)
            msgs.append(("/sim_robot/task_state", t + MS,
                         joint_state(("to_target_x", "to_target_y"), tt, stamp=Time.from_ns(t))))
            targets.append((t + MS, tt))
    for k in range(-1, 40):  # the first command comes before any state
        t = T0 + k * 25 * MS + 3 * MS
        a = rng.uniform(-1, 1, size=2)
        msgs.append((CMD, t, Float64MultiArray(layout=MultiArrayLayout(), data=a)))
        cmds.append((t, a))
    return msgs, states, targets, cmds


def expected_reacher(states, targets, cmds, max_age_ns=100 * MS):
    obs = {"position": [], "velocity": [], "to_target": []}
    actions, dropped = [], 0
    for t, a in cmds:
        s, tt = latest_at_or_before(states, t, max_age_ns), latest_at_or_before(targets, t, max_age_ns)
        if s is None or tt is None:
            dropped += 1
            continue
        obs["position"].append(s[0])
        obs["velocity"].append(s[1])
        obs["to_target"].append(tt)
        actions.append(a)
    return {k: np.array(v, np.float32) for k, v in obs.items()}, np.array(actions, np.float32), dropped


def test_reacher_bags_round_trip_into_the_store(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    msgs, states, targets, cmds = reacher_recording(0)
    bag = write_bag(tmp_path / "run-0", msgs)
    out = tmp_path / "ds"
    dataset_command(["from-rosbag", str(bag), "--out", str(out), "--task", "dmc/reacher-easy"], PROG)
    obs, actions, dropped = expected_reacher(states, targets, cmds)
    # 1 before any state; 4 joint states and 4 task states older than 100 ms during their stalls
    assert dropped == 9
    t = len(actions)
    assert t == 41 - dropped
    printed = capsys.readouterr().out
    assert f"imported 1 episodes ({t} frames; {dropped} commands dropped, 0 messages rejected) of dmc/reacher-easy" in printed
    assert "to_target <- /sim_robot/task_state position['to_target_x', 'to_target_y']" in printed

    store = EpisodeStore(out)
    assert store.num_episodes == 1 and store.fps == 40  # the commands' rate
    ep = store.load_episode(0)
    assert ep.task_id == "dmc/reacher-easy" and ep.success is None and ep.seed is None
    for key, want in obs.items():
        assert ep.observations[key].dtype == np.float32
        np.testing.assert_array_equal(ep.observations[key], want)  # exact: the float32 of the recorded float64
    np.testing.assert_array_equal(ep.actions, actions)
    np.testing.assert_array_equal(ep.rewards, np.zeros(t, np.float32))
    notes = json.loads((out / "meta/rosbag_imports.json").read_text())
    assert notes[0]["episodes"] == [0] and notes[0]["dropped_commands"] == [dropped]
    assert notes[0]["rewards"].startswith("unknown") and notes[0]["success"].startswith("unknown")

    # the training path accepts it: the token cache holds T timesteps of 3 x 2 values + separator + 2 actions
    from omnipolicy.datasets import TokenCache
    from omnipolicy.tokenizers import Tokenizer

    cache = TokenCache.build(out, Tokenizer.default(), tmp_path / "cache", progress=False)
    cached = cache.episode(0)
    assert (cached.num_timesteps, cached.tokens_per_timestep) == (t, 9)

    # several bags (a folder of bags, one of them SQLite3) append as one episode each
    more = tmp_path / "more"
    recs = [reacher_recording(s, storage_gap=False) for s in (1, 2)]
    write_bag(more / "a", recs[0][0])
    write_bag(more / "b", recs[1][0], storage="sqlite3")
    dataset_command(["from-rosbag", str(more), "--out", str(out), "--task", "dmc/reacher-easy"], PROG)
    assert "as episodes 1..2 (3 in total)" in capsys.readouterr().out
    store = EpisodeStore(out)
    assert store.num_episodes == 3
    for i, (_, st, tg, cm) in enumerate(recs, start=1):
        obs, actions, dropped = expected_reacher(st, tg, cm)
        assert dropped == 1
        ep = store.load_episode(i)
        np.testing.assert_array_equal(ep.actions, actions)
        for key, want in obs.items():
            np.testing.assert_array_equal(ep.observations[key], want)
    assert [n["episodes"] for n in json.loads((out / "meta/rosbag_imports.json").read_text())] == [[0], [1, 2]]
    report = verify_dataset(out)
    assert report.ok and not report.warnings, report


@pytest.mark.parametrize("mode", ["arm", "explicit"])
def test_camera_bag_with_trajectory_commands(tmp_path: Path, mode: str) -> None:
    """dmc/reacher-easy-pixels: images at 25 Hz, joint states at 100 Hz, JointTrajectory commands at 50 Hz."""
    rng = np.random.default_rng(5)
    msgs, states, images, cmds = [], [], [], []
    for k in range(60):
        t = T0 + k * 10 * MS
        msgs.append(("/joint_states", t, joint_state(JOINTS, rng.normal(size=2), rng.normal(size=2), stamp=Time.from_ns(t))))
        states.append((t, True))
        if k % 4 == 1:
            img = rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)
            msgs.append(("/camera/image_raw", t + 2 * MS, array_to_image(img, stamp=Time.from_ns(t))))
            images.append((t + 2 * MS, img))
    for k in range(30):
        t = T0 + k * 20 * MS + 5 * MS
        a = rng.uniform(-1, 1, size=2)
        msgs.append(("/arm/joint_trajectory", t, trajectory_from_action(a, JointMap(JOINTS))))
        cmds.append((t, a))
    bag = write_bag(tmp_path / "cam", msgs)
    args = ["from-rosbag", str(bag), "--out", str(tmp_path / "ds"), "--task", "dmc/reacher-easy-pixels",
            "--command-topic", "/arm/joint_trajectory", "--image-topic", "/camera/image_raw"]
    if mode == "explicit":
        args += ["--joints", *JOINTS]
    dataset_command(args, PROG)
    want_img, want_act = [], []
    for t, a in cmds:
        img = latest_at_or_before(images, t, 200 * MS)
        if img is None or latest_at_or_before(states, t, 100 * MS) is None:
            continue
        want_img.append(img)
        want_act.append(a)
    assert len(want_act) == 30 - 1  # the first command (5 ms) comes before the first image (12 ms)
    ep = EpisodeStore(tmp_path / "ds").load_episode(0)
    assert ep.observations["image"].shape == (29, 84, 84, 3) and ep.observations["image"].dtype == np.uint8
    np.testing.assert_array_equal(ep.observations["image"], np.stack(want_img))  # lossless PNG round trip
    np.testing.assert_array_equal(ep.actions, np.array(want_act, np.float32))


def test_errors_name_what_was_expected_and_what_came(tmp_path: Path) -> None:
    msgs, *_ = reacher_recording(3, storage_gap=False)
    bag = write_bag(tmp_path / "bag", msgs)
    out = tmp_path / "ds"
    base = ["from-rosbag", str(bag), "--out", str(out)]
    with pytest.raises(SystemExit, match=(
        r"^omnipolicy dataset from-rosbag: rosbag '.*/bag': topic /effort/cmd \(--command-topic\) not found; the bag has: "
        r"/effort_controller/commands \[std_msgs/msg/Float64MultiArray\], /joint_states \[sensor_msgs/msg/JointState\], "
        r"/sim_robot/task_state \[sensor_msgs/msg/JointState\]$")):
        dataset_command([*base, "--task", "dmc/reacher-easy", "--command-topic", "/effort/cmd"], PROG)
    with pytest.raises(SystemExit, match=r"rosbag '.*/nope' does not exist"):
        dataset_command(["from-rosbag", str(tmp_path / "nope"), "--out", str(out), "--task", "dmc/reacher-easy"], PROG)
    with pytest.raises(SystemExit, match=(
        r"task 'dmc/reacher-easy' expects observation keys \['position', 'to_target', 'velocity'\], the bag import "
        r"gives \['position', 'velocity'\] \(missing: \['to_target'\], extra: \[\]\)")):
        dataset_command([*base, "--task", "dmc/reacher-easy", "--joints", *JOINTS], PROG)
    with pytest.raises(SystemExit, match=r"task 'dmc/reacher-easy-pixels': action expected continuous \(2,\), got "
                                         r"continuous \(3,\) from /effort_controller/commands joints \['a', 'b', 'c'\]"):
        dataset_command([*base, "--task", "dmc/reacher-easy-pixels", "--joints", "a", "b", "c"], PROG)
    with pytest.raises(SystemExit, match=r"task 'classic/cartpole-v1' has no robot arm \(tasks with one: \[.*'dmc/reacher-easy'"):
        dataset_command([*base, "--task", "classic/cartpole-v1"], PROG)
    with pytest.raises(SystemExit, match=r"No task 'dmc/reacher-hard'|Unknown task 'dmc/reacher-hard'|'dmc/reacher-hard'"):
        dataset_command([*base, "--task", "dmc/reacher-hard"], PROG)
    # an image of the wrong size for the task's spec
    small = [("/joint_states", T0, joint_state(JOINTS, [0.0, 0.0], [0.0, 0.0], stamp=Time.from_ns(T0))),
             ("/cam", T0, array_to_image(np.zeros((64, 64, 3), np.uint8), stamp=Time.from_ns(T0))),
             (CMD, T0 + MS, Float64MultiArray(layout=MultiArrayLayout(), data=np.zeros(2)))]
    with pytest.raises(SystemExit, match=r"observation 'image' of task 'dmc/reacher-easy-pixels' expected shape "
                                         r"\(84, 84, 3\), got \(64, 64, 3\) from /cam"):
        dataset_command(["from-rosbag", str(write_bag(tmp_path / "small", small)), "--out", str(out),
                         "--task", "dmc/reacher-easy-pixels", "--image-topic", "/cam"], PROG)
    # every command stale: nothing to import
    with pytest.raises(SystemExit, match=r"no timestep left after alignment \(41 commands on /effort_controller/commands "
                                         r"dropped: .*--max-state-age 0.001 s\)"):
        dataset_command([*base, "--task", "dmc/reacher-easy", "--max-state-age", "0.001"], PROG)
    assert not out.exists()  # nothing written by a failed import


def test_malformed_task_state_fails_or_is_skipped_with_lenient(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    msgs, states, targets, cmds = reacher_recording(4, storage_gap=False)
    bad_t = T0 + 51 * MS  # between the task states of 40 and 60 ms
    msgs.append(("/sim_robot/task_state", bad_t, JointState(Header(), ("to_target_x", "to_target_y"), [np.nan, 0.0])))
    bag = write_bag(tmp_path / "bag", msgs)
    args = ["from-rosbag", str(bag), "--out", str(tmp_path / "ds"), "--task", "dmc/reacher-easy"]
    with pytest.raises(SystemExit, match=rf"rosbag: /sim_robot/task_state message 3 \(t={bad_t} ns\): JointState.position: "
                                         r"non-finite values for joints \['to_target_x'\]"):
        dataset_command(args, PROG)
    dataset_command([*args, "--lenient"], PROG)
    assert "1 messages rejected" in capsys.readouterr().out
    obs, actions, _ = expected_reacher(states, targets, cmds)  # the bad message is skipped: the rule never sees it
    ep = EpisodeStore(tmp_path / "ds").load_episode(0)
    np.testing.assert_array_equal(ep.observations["to_target"], obs["to_target"])
    np.testing.assert_array_equal(ep.actions, actions)


TWO_CAMERA_ARM = """
name = "two_camera_arm"
rate_hz = 50.0
joints = ["shoulder", "wrist"]
[command]
interface = "position"
topic = "/effort_controller/commands"
[limits]
position_lower = -2.0
position_upper = 2.0
velocity = 3.0
max_delta = 0.5
[joint_states]
topic = "/joint_states"
[[cameras]]
key = "front"
topic = "/front/image_raw"
height = 16
width = 20
[[cameras]]
key = "wrist"
topic = "/wrist/image_raw"
height = 8
width = 12
[observation.position]
topic = "/joint_states"
field = "position"
names = ["shoulder", "wrist"]
"""


def two_camera_recording(seed: int, wrist_stall_ms: tuple[int, int] = (200, 400)):
    """Joint states at 100 Hz; front images at 50 Hz, wrist images at 25 Hz (stalling a while); commands at 50 Hz."""
    rng = np.random.default_rng(seed)
    msgs, states, front, wrist, cmds = [], [], [], [], []
    for k in range(60):
        t = T0 + k * 10 * MS
        q = rng.uniform(-1, 1, size=2)
        msgs.append(("/joint_states", t, joint_state(JOINTS, q, stamp=Time.from_ns(t))))
        states.append((t, q))
        if k % 2 == 0:
            img = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
            msgs.append(("/front/image_raw", t + 1 * MS, array_to_image(img, stamp=Time.from_ns(t))))
            front.append((t + 1 * MS, img))
        if k % 4 == 0 and not wrist_stall_ms[0] <= k * 10 < wrist_stall_ms[1]:
            img = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
            msgs.append(("/wrist/image_raw", t + 2 * MS, array_to_image(img, stamp=Time.from_ns(t))))
            wrist.append((t + 2 * MS, img))
        if k % 2 == 1:
            a = rng.uniform(-1, 1, size=2)
            msgs.append((CMD, t + 3 * MS, Float64MultiArray(layout=MultiArrayLayout(), data=a)))
            cmds.append((t + 3 * MS, a))
    return msgs, states, front, wrist, cmds


def test_every_camera_of_a_robot_file_is_read_from_its_own_topic(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    robot = tmp_path / "arm.toml"
    robot.write_text(TWO_CAMERA_ARM)
    msgs, states, front, wrist, cmds = two_camera_recording(8)
    bag = write_bag(tmp_path / "run-0", msgs)
    out = tmp_path / "ds"
    dataset_command(["from-rosbag", str(bag), "--out", str(out), "--robot", str(robot), "--max-image-age", "0.05"], PROG)
    assert ("front <- /front/image_raw (sensor_msgs/Image -> RGB uint8); wrist <- /wrist/image_raw "
            "(sensor_msgs/Image -> RGB uint8)") in capsys.readouterr().out
    want: dict[str, list] = {"position": [], "front": [], "wrist": [], "action": []}
    for t, a in cmds:
        s, f, w = (latest_at_or_before(states, t, 100 * MS), latest_at_or_before(front, t, 50 * MS),
                   latest_at_or_before(wrist, t, 50 * MS))
        if s is None or f is None or w is None:
            continue
        for key, value in (("position", s), ("front", f), ("wrist", w), ("action", a)):
            want[key].append(value)
    dropped = len(cmds) - len(want["action"])
    assert dropped >= 5  # the wrist camera's stall: its latest image is older than 50 ms, the front one's is fresh
    ep = EpisodeStore(out).load_episode(0)
    assert ep.task_id == "two_camera_arm" and len(ep.actions) == len(want["action"])
    assert ep.observations["front"].shape[1:] == (16, 20, 3) and ep.observations["wrist"].shape[1:] == (8, 12, 3)
    for key in ("front", "wrist"):
        np.testing.assert_array_equal(ep.observations[key], np.stack(want[key]))  # each frame in its timestep
    np.testing.assert_array_equal(ep.observations["position"], np.array(want["position"], np.float32))
    np.testing.assert_array_equal(ep.actions, np.array(want["action"], np.float32))
    # --joints with the arm (the explicit layout) reads both cameras too
    dataset_command(["from-rosbag", str(bag), "--out", str(tmp_path / "ds2"), "--robot", str(robot),
                     "--max-image-age", "0.05", "--joints", *JOINTS], PROG)
    for key in ("front", "wrist"):
        np.testing.assert_array_equal(EpisodeStore(tmp_path / "ds2").load_episode(0).observations[key], ep.observations[key])
    notes = json.loads((out / "meta/rosbag_imports.json").read_text())[0]
    assert notes["image_topics"] == {"front": "/front/image_raw", "wrist": "/wrist/image_raw"}
    assert notes["dropped_commands"] == [dropped] and notes["max_image_age_s"] == 0.05
    assert [line for line in notes["topics"] if "Image" in line] == [
        "front <- /front/image_raw (sensor_msgs/Image -> RGB uint8)", "wrist <- /wrist/image_raw (sensor_msgs/Image -> RGB uint8)"]


def test_two_camera_errors_name_the_camera(tmp_path: Path) -> None:
    robot = tmp_path / "arm.toml"
    robot.write_text(TWO_CAMERA_ARM)
    msgs, *_ = two_camera_recording(9, wrist_stall_ms=(0, 1000))  # the wrist camera never publishes
    base = ["from-rosbag", str(write_bag(tmp_path / "bag", msgs)), "--out", str(tmp_path / "ds"), "--robot", str(robot)]
    with pytest.raises(SystemExit, match=r"topic /wrist/image_raw \(camera 'wrist' of the task's recipe\) not found; "
                                         r"the bag has: /effort_controller/commands"):
        dataset_command(base, PROG)
    with pytest.raises(SystemExit, match=(
            r"--image-topic /cam is ambiguous: it renames the camera of a one-camera task, and task 'two_camera_arm' "
            r"has 2 cameras \(front <- /front/image_raw, wrist <- /wrist/image_raw\)")):
        dataset_command([*base, "--image-topic", "/cam"], PROG)
    # the wrist camera stops after 100 ms: every later command is dropped; with all of them stale, the error says which
    msgs, *_ = two_camera_recording(10, wrist_stall_ms=(100, 1000))
    late = [m for m in msgs if m[0] != CMD or m[1] > T0 + 300 * MS]
    with pytest.raises(SystemExit, match=(
            r"no timestep left after alignment \(15 commands on /effort_controller/commands dropped: .*"
            r"--max-image-age 0.2 s\); commands without a fresh message, per topic: /wrist/image_raw at 15$")):
        dataset_command(["from-rosbag", str(write_bag(tmp_path / "late", late)), "--out", str(tmp_path / "ds"),
                         "--robot", str(robot)], PROG)
    assert not (tmp_path / "ds").exists()


def test_the_instruction_of_each_timestep_comes_from_the_instruction_topic(tmp_path: Path) -> None:
    """An SO-101 recording: two cameras, the arm's trajectory controller and the gripper's forward-command controller,
    and instructions on /instruction: each timestep holds the latest one; commands before the first are dropped."""
    from omnipolicy.robot_bridge.arms import ROBOTS_DIR
    from omnipolicy.robot_bridge.wire.messages import String

    robot = ROBOTS_DIR / "so101_lift.toml"
    joints = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
    rng = np.random.default_rng(3)
    msgs, want = [], []
    said = {3: "pick up the red cube", 10: "lift the blue cylinder"}  # tick -> a new instruction
    text = None
    for k in range(16):
        t = T0 + k * 50 * MS
        msgs.append(("/joint_states", t, joint_state(joints, rng.uniform(-1, 1, 6), stamp=Time.from_ns(t))))
        for cam in ("front", "wrist"):
            img = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
            msgs.append((f"/camera/{cam}/image_raw", t + MS, array_to_image(img, stamp=Time.from_ns(t))))
        if k in said:
            text = said[k]
            msgs.append(("/instruction", t + 2 * MS, String(text)))
        a = rng.uniform(-1, 1, 6)
        msgs.append(("/arm_controller/joint_trajectory", t + 3 * MS, trajectory_from_action(a[:5], JointMap(joints[:5]))))
        msgs.append(("/gripper_controller/commands", t + 4 * MS, Float64MultiArray(layout=MultiArrayLayout(), data=a[5:])))
        if text is not None:
            want.append((text, a))
    bag = write_bag(tmp_path / "run-0", msgs)
    dataset_command(["from-rosbag", str(bag), "--out", str(tmp_path / "ds"), "--robot", str(robot),
                     "--task", "so101/lift-v1"], PROG)
    ep = EpisodeStore(tmp_path / "ds").load_episode(0)
    assert list(ep.observations["instruction"]) == [w for w, _ in want]
    np.testing.assert_allclose(ep.actions, np.array([a for _, a in want], np.float32))
