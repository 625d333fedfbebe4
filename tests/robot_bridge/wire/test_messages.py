"""Message layer: JointMap, conversions between messages and observations, actions and images, validation errors."""

from __future__ import annotations

import numpy as np
import pytest

from omnipolicy.robot_bridge.wire.messages import (
    Duration,
    Float64MultiArray,
    Header,
    Image,
    JointMap,
    JointState,
    JointTrajectory,
    JointTrajectoryPoint,
    MultiArrayLayout,
    ObservationMap,
    Time,
    action_from_command,
    array_to_image,
    command_from_action,
    image_to_array,
    joint_state,
    trajectory_from_action,
    validate,
)

JM = JointMap(robot_joints=("elbow", "shoulder", "wrist"), task_index=(1, 0, 2), ignored=("finger",))


def test_joint_map_orders():
    assert JM.task_joints == ("shoulder", "elbow", "wrist")
    msg = joint_state(["wrist", "finger", "shoulder", "elbow"], [3.0, 9.0, 1.0, 2.0], [30.0, 90.0, 10.0, 20.0])
    np.testing.assert_array_equal(JM.task_vector(msg), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(JM.task_vector(msg, "velocity"), [10.0, 20.0, 30.0])
    np.testing.assert_array_equal(JM.robot_vector([1.0, 2.0, 3.0]), [2.0, 1.0, 3.0])
    np.testing.assert_array_equal(JM.task_from_robot([2.0, 1.0, 3.0]), [1.0, 2.0, 3.0])
    same = JointMap.from_task_order(["elbow", "shoulder", "wrist"], ["shoulder", "elbow", "wrist"], ignored=["finger"])
    assert same == JM


@pytest.mark.parametrize(
    "names, values, match",
    [
        (["shoulder", "elbow", "wrist", "tool"], [1, 2, 3, 4],
         r"^JointState.position: unknown joint names \['tool'\]; expected \['elbow', 'shoulder', 'wrist'\] \(ignored: \['finger'\]\)$"),
        (["shoulder", "elbow"], [1, 2], r"^JointState.position: missing joint names \['wrist'\]; got \['shoulder', 'elbow'\]$"),
        (["shoulder", "elbow", "wrist"], [1, np.nan, 3], r"^JointState.position: non-finite values for joints \['elbow'\]: \[nan\]$"),
    ],
)
def test_joint_map_rejects_bad_states(names, values, match):
    msg = JointState(Header(), tuple(names), values)
    with pytest.raises(ValueError, match=match):
        JM.task_vector(msg)


def test_joint_map_rejects_wrong_lengths_and_bad_maps():
    with pytest.raises(ValueError, match=r"^JointState.position: 2 values for 3 joint names \['shoulder', 'elbow', 'wrist'\]$"):
        JM.task_from_named(["shoulder", "elbow", "wrist"], [1.0, 2.0], what="JointState.position")
    with pytest.raises(ValueError, match=r"^action: expected 3 values for task joints \['shoulder', 'elbow', 'wrist'\], got 4$"):
        JM.robot_vector([1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"^action: non-finite values for joints \['wrist'\]: \[inf\]$"):
        JM.robot_vector([1, 2, np.inf])
    with pytest.raises(ValueError, match=r"^Float64MultiArray.data: expected 3 values for joints \['elbow', 'shoulder', 'wrist'\], got 2$"):
        action_from_command(Float64MultiArray(data=[1.0, 2.0]), JM)
    with pytest.raises(ValueError, match=r"^JointState.velocity is empty; the task needs it for joints"):
        JM.task_vector(joint_state(["shoulder", "elbow", "wrist"], [1, 2, 3]), "velocity")
    with pytest.raises(ValueError, match=r"task_index must be a permutation of 0..1"):
        JointMap(("a", "b"), (0, 0))
    with pytest.raises(ValueError, match=r"duplicate joint names \['a'\] in robot_joints"):
        JointMap(("a", "a"))
    with pytest.raises(ValueError, match=r"joints \['a'\] are both mapped and ignored"):
        JointMap(("a", "b"), ignored=("a",))
    with pytest.raises(ValueError, match=r"must name the same joints once each"):
        JointMap.from_task_order(["a", "b"], ["a", "c"])


def test_validate_messages():
    with pytest.raises(ValueError, match=r"^JointState: velocity has 1 values for 2 joint names \['a', 'b'\]; expected 2 or 0$"):
        validate(JointState(Header(), ("a", "b"), [1.0, 2.0], [1.0]))
    with pytest.raises(ValueError, match=r"^JointState: duplicate joint names \['a'\] in name$"):
        validate(JointState(Header(), ("a", "a"), [1.0, 2.0]))
    with pytest.raises(ValueError, match=r"^Image: data has 5 bytes, expected step\*height = 3\*2 = 6$"):
        validate(Image(Header(), 2, 1, "rgb8", 0, 3, np.zeros(5, np.uint8)))
    with pytest.raises(ValueError, match=r"^Image: step 2 is smaller than width\*channels = 1\*3 for encoding 'rgb8'$"):
        validate(Image(Header(), 3, 1, "rgb8", 0, 2, np.zeros(6, np.uint8)))
    with pytest.raises(ValueError, match=r"^JointTrajectory: points\[0\].positions has 1 values for 2 joints; expected 2 or 0$"):
        validate(JointTrajectory(Header(), ("a", "b"), (JointTrajectoryPoint([1.0]),)))
    with pytest.raises(ValueError, match=r"^Time: nanosec must be in \[0, 1e9\), got 1000000000$"):
        validate(Time(0, 1_000_000_000))
    with pytest.raises(TypeError, match=r"JointState.name: expected a sequence of str, got a str 'abc'"):
        JointState(name="abc")


def test_image_conversions():
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    np.testing.assert_array_equal(image_to_array(array_to_image(rgb)), rgb)
    bgr = array_to_image(rgb, encoding="bgr8")
    np.testing.assert_array_equal(bgr.data.reshape(4, 5, 3), rgb[..., ::-1])
    np.testing.assert_array_equal(image_to_array(bgr), rgb)
    mono = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(image_to_array(array_to_image(mono, encoding="mono8"))[..., 0], mono)
    padded = Image(Header(), 2, 2, "rgb8", 0, 8, np.arange(16, dtype=np.uint8))  # 2 bytes of row padding
    np.testing.assert_array_equal(image_to_array(padded), [[[0, 1, 2], [3, 4, 5]], [[8, 9, 10], [11, 12, 13]]])
    rgba = Image(Header(), 1, 1, "bgra8", 0, 4, [10, 20, 30, 255])
    np.testing.assert_array_equal(image_to_array(rgba), [[[30, 20, 10]]])
    with pytest.raises(ValueError, match=r"^Image: unsupported encoding '16UC1'; supported: \["):
        image_to_array(Image(Header(), 1, 1, "16UC1", 0, 2, [0, 0]))
    with pytest.raises(ValueError, match=r"^array_to_image: expected a uint8 array, got dtype float64$"):
        array_to_image(np.zeros((2, 2, 3)))


def test_observation_and_action_conversions():
    om = ObservationMap(JM, position_key="q", velocity_key="qd", image_key="rgb")
    state = joint_state(["shoulder", "elbow", "wrist"], [1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    img = array_to_image(np.full((2, 3, 3), 7, np.uint8))
    obs = om.observation(state, img)
    assert sorted(obs) == ["q", "qd", "rgb"]
    np.testing.assert_array_equal(obs["qd"], [4.0, 5.0, 6.0])
    assert obs["rgb"].shape == (2, 3, 3) and obs["rgb"].dtype == np.uint8
    with pytest.raises(ValueError, match=r"observation key 'rgb' needs an Image, got none"):
        om.observation(state)

    action = np.array([0.1, 0.2, 0.3])
    cmd = command_from_action(action, JM)
    np.testing.assert_array_equal(cmd.data, [0.2, 0.1, 0.3])  # controller order
    np.testing.assert_array_equal(action_from_command(cmd, JM), action)
    traj = trajectory_from_action(action, JM, time_from_start=0.25)
    assert traj.joint_names == ("elbow", "shoulder", "wrist")
    assert traj.points[0].time_from_start == Duration(0, 250_000_000)
    np.testing.assert_array_equal(action_from_command(traj, JM), action)
    offset = Float64MultiArray(MultiArrayLayout((), 1), [99.0, 0.2, 0.1, 0.3])
    np.testing.assert_array_equal(action_from_command(offset, JM), action)
    with pytest.raises(ValueError, match=r"^JointTrajectory: no points; expected at least one$"):
        action_from_command(JointTrajectory(Header(), JM.robot_joints, ()), JM)


def test_observation_map_checks_spec():
    from omnipolicy.tokenizers.spec import FieldSpec, TimestepSpec

    spec = TimestepSpec((FieldSpec("q", "continuous", (3,), "float64"),), FieldSpec("action", "continuous", (3,), "float32"))
    ObservationMap(JM, position_key="q").check_spec(spec)
    with pytest.raises(ValueError, match=r"key 'qd' is not in the task's observation keys \['q'\]"):
        ObservationMap(JM, position_key="q", velocity_key="qd").check_spec(spec)
    with pytest.raises(ValueError, match=r"'q' has shape \(2,\) from 2 joints, spec says \(3,\)"):
        ObservationMap(JointMap(("a", "b")), position_key="q").check_spec(spec)


def test_time_helpers():
    t = Time.from_ns(1_500_000_000_123)
    assert (t.sec, t.nanosec) == (1500, 123) and t.to_ns() == 1_500_000_000_123
    assert Duration.from_sec(-0.5) == Duration(-1, 500_000_000)
