"""rosbag2 import: bags written by rosbags' serializer come back as aligned arrays with the same values."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rosbags")

from omnipolicy.robot_bridge.wire.messages import (  # noqa: E402
    Header,
    JointMap,
    JointState,
    ObservationMap,
    Time,
    array_to_image,
    command_from_action,
    joint_state,
    trajectory_from_action,
)
from omnipolicy.robot_bridge.wire.rosbag import BagImportConfig, read_bag, write_bag  # noqa: E402

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000
# controller order (elbow, shoulder, wrist); task order (shoulder, elbow, wrist); the robot also publishes a finger
JM = JointMap(("elbow", "shoulder", "wrist"), (1, 0, 2), ignored=("finger",))
OBS = ObservationMap(JM, position_key="q", velocity_key="qd")


def recording(rng, n_states=100, state_dt=10 * MS, cmd_every=4, cmd_delay=3 * MS, trajectory=False, image_every=None):
    """Joint states at 100 Hz, commands at 25 Hz (3 ms after a state), optional images; and the expected arrays."""
    msgs, expected = [], {"q": [], "qd": [], "action": [], "t": [], "rgb": []}
    last_img = None
    for k in range(n_states):
        t = T0 + k * state_dt
        q, qd = rng.normal(size=3), rng.normal(size=3)
        # published in the robot's own order, with the ignored finger
        msgs.append(("/joint_states", t, joint_state(["wrist", "finger", "elbow", "shoulder"],
                                                     [q[2], 0.01, q[1], q[0]], [qd[2], 0.0, qd[1], qd[0]],
                                                     stamp=Time.from_ns(t))))
        if image_every and k % image_every == 0:
            last_img = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            msgs.append(("/camera/image_raw", t + 1 * MS, array_to_image(last_img, stamp=Time.from_ns(t))))
        if k % cmd_every == cmd_every - 1:
            a = rng.normal(size=3)
            cmd = trajectory_from_action(a, JM) if trajectory else command_from_action(a, JM)
            topic = "/arm_controller/joint_trajectory" if trajectory else "/forward_position_controller/commands"
            msgs.append((topic, t + cmd_delay, cmd))
            expected["q"].append(q)
            expected["qd"].append(qd)
            expected["action"].append(a)
            expected["t"].append(t + cmd_delay)
            expected["rgb"].append(last_img)
    return msgs, expected


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_float64_commands(tmp_path, storage):
    msgs, exp = recording(np.random.default_rng(0))
    bag = write_bag(tmp_path / "bag", msgs, storage=storage)
    ep = read_bag(bag, OBS)
    assert len(ep) == 25 and ep.dropped == 0 and ep.rejected == 0
    np.testing.assert_array_equal(ep.actions, np.array(exp["action"]))  # (T, A), exact
    np.testing.assert_array_equal(ep.observations["q"], np.array(exp["q"]))
    np.testing.assert_array_equal(ep.observations["qd"], np.array(exp["qd"]))
    np.testing.assert_array_equal(ep.timestamps_ns, exp["t"])
    np.testing.assert_array_equal(ep.timestamps_ns - ep.state_timestamps_ns, np.full(25, 3 * MS))
    np.testing.assert_allclose(ep.timestamps, np.arange(25) * 0.04)
    assert ep.joint_names == ("shoulder", "elbow", "wrist")


def test_round_trip_trajectory_commands_and_images(tmp_path):
    msgs, exp = recording(np.random.default_rng(1), trajectory=True, image_every=2)
    bag = write_bag(tmp_path / "bag", msgs)
    cfg = BagImportConfig(commands="/arm_controller/joint_trajectory", image="/camera/image_raw")
    ep = read_bag(bag, ObservationMap(JM, position_key="q", image_key="rgb"), cfg)
    assert len(ep) == 25
    np.testing.assert_array_equal(ep.actions, np.array(exp["action"]))
    np.testing.assert_array_equal(ep.observations["q"], np.array(exp["q"]))
    assert ep.observations["rgb"].shape == (25, 6, 8, 3) and ep.observations["rgb"].dtype == np.uint8
    np.testing.assert_array_equal(ep.observations["rgb"], np.stack(exp["rgb"]))


def test_alignment_rule_drops_stale_and_early_commands(tmp_path):
    rng = np.random.default_rng(2)
    states = [(T0 + k * 10 * MS, rng.normal(size=3)) for k in range(10)]  # states 0..90 ms
    msgs = [("/joint_states", t, joint_state(["shoulder", "elbow", "wrist"], q[[0, 1, 2]], stamp=Time.from_ns(t)))
            for t, q in states]
    cmd_times = [T0 - 5 * MS, T0, T0 + 25 * MS, T0 + 300 * MS]  # before any state, same instant, between, stale
    for i, t in enumerate(cmd_times):
        msgs.append(("/forward_position_controller/commands", t, command_from_action([i, i, i], JM)))
    ep = read_bag(write_bag(tmp_path / "bag", msgs), ObservationMap(JM, position_key="q"), BagImportConfig(max_state_age=0.1))
    assert ep.dropped == 2  # no state yet; latest state 210 ms old
    np.testing.assert_array_equal(ep.actions[:, 0], [1.0, 2.0])
    np.testing.assert_array_equal(ep.observations["q"], [states[0][1], states[2][1]])  # at-or-before rule
    np.testing.assert_array_equal(ep.state_timestamps_ns, [T0, T0 + 20 * MS])


def test_malformed_messages_strict_and_lenient(tmp_path):
    msgs, _ = recording(np.random.default_rng(3), n_states=20)
    bad_t = T0 + 35 * MS + 1
    msgs.append(("/joint_states", bad_t, JointState(Header(), ("shoulder", "elbow", "wrist"), [0.0, np.nan, 0.0])))
    bag = write_bag(tmp_path / "bag", msgs)
    with pytest.raises(ValueError, match=rf"^rosbag: /joint_states message 4 \(t={bad_t} ns\): JointState.position: "
                                         r"non-finite values for joints \['elbow'\]: \[nan\]$"):
        read_bag(bag, OBS)
    ep = read_bag(bag, OBS, BagImportConfig(strict=False))
    assert ep.rejected == 1 and len(ep) == 5 and ep.dropped == 0  # the 40 ms state pairs with the 43 ms command


def test_bad_bags_and_configs(tmp_path):
    msgs, _ = recording(np.random.default_rng(4), n_states=8)
    bag = write_bag(tmp_path / "bag", msgs)
    with pytest.raises(ValueError, match=r"topics \['/cmd'\] not found; the bag has \['/forward_position_controller/commands', '/joint_states'\]"):
        read_bag(bag, OBS, BagImportConfig(commands="/cmd"))
    with pytest.raises(ValueError, match=r"/forward_position_controller/commands has type std_msgs/msg/Float64MultiArray, expected sensor_msgs/msg/JointState"):
        read_bag(bag, OBS, BagImportConfig(joint_states="/forward_position_controller/commands"))
    with pytest.raises(ValueError, match=r"must be both set or both None"):
        read_bag(bag, ObservationMap(JM, image_key="rgb"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_bag(tmp_path / "nope", OBS)
    with pytest.raises(ValueError, match=r"BagImportConfig.max_state_age must be > 0 seconds, got 0"):
        BagImportConfig(max_state_age=0)
    with pytest.raises(ValueError, match=r"storage must be one of \['mcap', 'sqlite3'\], got 'db'"):
        write_bag(tmp_path / "b2", msgs, storage="db")
    wrong_order = JointMap(("a", "b", "c"))
    with pytest.raises(ValueError, match=r"unknown joint names"):
        read_bag(bag, ObservationMap(wrong_order, position_key="q"))


def two_camera_recording(rng, stall=(100 * MS, 300 * MS)):
    """Joint states at 100 Hz, a front camera at 50 Hz, a wrist camera at 33 Hz that stalls, commands at 50 Hz."""
    msgs, states, front, wrist, cmds = [], [], [], [], []
    for k in range(40):
        t = T0 + k * 10 * MS
        q = rng.normal(size=3)
        msgs.append(("/joint_states", t, joint_state(["shoulder", "elbow", "wrist"], q, stamp=Time.from_ns(t))))
        states.append((t, q))
        if k % 2 == 0:
            img = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            msgs.append(("/front/image_raw", t + 1 * MS, array_to_image(img, stamp=Time.from_ns(t))))
            front.append((t + 1 * MS, img))
        if k % 3 == 0 and not stall[0] <= t - T0 < stall[1]:
            img = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)  # another size than the front camera's
            msgs.append(("/wrist/image_raw", t + 2 * MS, array_to_image(img, stamp=Time.from_ns(t))))
            wrist.append((t + 2 * MS, img))
        if k % 2 == 1:
            a = rng.normal(size=3)
            msgs.append(("/forward_position_controller/commands", t + 5 * MS, command_from_action(a, JM)))
            cmds.append((t + 5 * MS, a))
    return msgs, states, front, wrist, cmds


def latest(stream, t, max_age_ns):
    """The rule, spelled out: the newest value received at or before t, unless older than max_age_ns."""
    before = [(ts, v) for ts, v in stream if ts <= t]
    return None if not before or t - before[-1][0] > max_age_ns else before[-1][1]


def test_two_cameras_each_align_on_their_own_topic(tmp_path):
    msgs, states, front, wrist, cmds = two_camera_recording(np.random.default_rng(6))
    bag = write_bag(tmp_path / "bag", msgs)
    cfg = BagImportConfig(image="/front/image_raw", cameras=(("hand", "wrist/image_raw"),), max_image_age=0.05)
    assert cfg.cameras == (("hand", "/wrist/image_raw"),)
    ep = read_bag(bag, ObservationMap(JM, position_key="q", image_key="rgb"), cfg)
    want = {"q": [], "rgb": [], "hand": [], "action": []}
    stale_wrist = 0
    for t, a in cmds:
        s, f, w = latest(states, t, 100 * MS), latest(front, t, 50 * MS), latest(wrist, t, 50 * MS)
        stale_wrist += w is None
        if s is None or f is None or w is None:
            continue
        for key, value in (("q", s), ("rgb", f), ("hand", w), ("action", a)):
            want[key].append(value)
    assert stale_wrist >= 5 and ep.dropped == stale_wrist  # the wrist camera's stall alone drops timesteps
    assert ep.stale == {"/joint_states": 0, "/front/image_raw": 0, "/wrist/image_raw": stale_wrist}
    assert len(ep) == len(cmds) - stale_wrist
    assert ep.observations["rgb"].shape == (len(ep), 6, 8, 3) and ep.observations["hand"].shape == (len(ep), 4, 5, 3)
    for key in ("q", "rgb", "hand"):
        np.testing.assert_array_equal(ep.observations[key], np.stack(want[key]))
    np.testing.assert_array_equal(ep.actions, np.array(want["action"]))

    # cameras only in `cameras` (no ObservationMap.image_key) read the same frames
    only = read_bag(bag, ObservationMap(JM, position_key="q"), BagImportConfig(
        cameras=(("rgb", "/front/image_raw"), ("hand", "/wrist/image_raw")), max_image_age=0.05))
    for key in ("rgb", "hand"):
        np.testing.assert_array_equal(only.observations[key], ep.observations[key])


def test_camera_errors_name_the_camera_topic(tmp_path):
    msgs, *_ = two_camera_recording(np.random.default_rng(7))
    msgs.append(("/depth", T0, joint_state(["shoulder"], [0.0])))
    bag = write_bag(tmp_path / "bag", msgs)
    with pytest.raises(ValueError, match=r"^rosbag: /depth \(camera 'depth'\) has type sensor_msgs/msg/JointState, "
                                         r"expected sensor_msgs/msg/Image$"):
        read_bag(bag, OBS, BagImportConfig(cameras=(("rgb", "/front/image_raw"), ("depth", "/depth"))))
    with pytest.raises(ValueError, match=r"topics \['/side/image_raw'\] not found"):
        read_bag(bag, OBS, BagImportConfig(cameras=(("side", "/side/image_raw"),)))
    with pytest.raises(ValueError, match=r"BagImportConfig.cameras: keys \['q'\] are also keys of the ObservationMap"):
        read_bag(bag, OBS, BagImportConfig(cameras=(("q", "/wrist/image_raw"),)))
    with pytest.raises(ValueError, match=r"BagImportConfig.cameras: observation keys must differ, got \['a', 'a'\]"):
        BagImportConfig(cameras=(("a", "/front/image_raw"), ("a", "/wrist/image_raw")))
    resized = msgs + [("/wrist/image_raw", T0 + 39 * MS, array_to_image(np.zeros((2, 2, 3), np.uint8)))]
    with pytest.raises(ValueError, match=r"^rosbag: /wrist/image_raw \(camera 'hand'\) changes image size within the "
                                         r"episode: \[\(2, 2, 3\), \(4, 5, 3\)\]$"):
        read_bag(write_bag(tmp_path / "resized", resized), ObservationMap(JM, position_key="q"),
                 BagImportConfig(cameras=(("hand", "/wrist/image_raw"),)))
