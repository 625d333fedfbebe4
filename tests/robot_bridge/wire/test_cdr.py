"""CDR, ROS 2's wire encoding: our bytes equal rosbags' serializer and read back both ways, every registered message
type has the same fields as its ROS definition, and bad bytes are refused with the reason."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnipolicy.robot_bridge.wire import cdr
from omnipolicy.robot_bridge.wire.messages import (
    MESSAGE_TYPES,
    Bool,
    Duration,
    Float64MultiArray,
    Header,
    Image,
    JointState,
    JointTrajectory,
    JointTrajectoryPoint,
    MultiArrayDimension,
    MultiArrayLayout,
    Time,
    array_to_image,
    message_type,
)
from omnipolicy.robot_bridge.wire.rosbag import _typestore, rosbags_cdr

TS = _typestore()


def sample_messages() -> list:
    rng = np.random.default_rng(0)
    stamp = Time(sec=1_700_000_123, nanosec=456_789)
    return [
        stamp,
        Duration(sec=-3, nanosec=5),
        Header(stamp=stamp, frame_id="base_link"),
        JointState(Header(stamp, "w"), ("shoulder_pan", "shoulder_lift", "elbow", "w1", "w2", "w3", "gripper"),
                   rng.normal(size=7), rng.normal(size=7), rng.normal(size=7)),
        JointState(Header(stamp, ""), ("a", "b"), [1.0, -2.0], [], [np.nan, 0.5]),  # empty velocity, NaN effort
        JointState(),
        array_to_image(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), stamp=stamp, frame_id="cam"),
        Image(Header(stamp, "cam"), 3, 5, "mono8", 0, 6, rng.integers(0, 256, 18, dtype=np.uint8)),  # padded rows
        JointTrajectory(Header(stamp, ""), ("a", "b", "c"), (
            JointTrajectoryPoint([1.0, 2.0, 3.0], [], [0.1, 0.2, 0.3], [], Duration(0, 500_000_000)),
            JointTrajectoryPoint([4.0, 5.0, 6.0], [1.0, 1.0, 1.0], [], [], Duration(1, 0)),
        )),
        JointTrajectory(),
        Float64MultiArray(MultiArrayLayout((MultiArrayDimension("joints", 3, 3), MultiArrayDimension("x", 1, 1)), 1),
                          [9.0, 0.25, -1e300, 3.5]),
        Float64MultiArray(data=[1.0, 2.0]),
        Bool(data=True),
        Bool(data=False),
    ]


@pytest.mark.parametrize("msg", sample_messages(), ids=lambda m: type(m).__name__)
def test_cdr_bytes_equal_rosbags_serializer(msg):
    ours = cdr.encode(msg)
    assert ours == rosbags_cdr(msg, TS)
    assert ours[:4] == b"\x00\x01\x00\x00"
    back = cdr.decode(type(msg), ours)
    assert back == msg
    # rosbags reads our bytes into the same values
    theirs = TS.deserialize_cdr(ours, msg.ROS_TYPE)
    assert cdr.encode(cdr.decode(type(msg), TS.serialize_cdr(theirs, msg.ROS_TYPE))) == ours


def test_joint_state_layout_by_hand():
    # header | sec nanosec | frame_id "" | pad | 1 name "a" | pad | 1 position (already 8-aligned) | 0 velocity | 0 effort
    expected = bytes.fromhex(
        "00010000" "01000000" "02000000" "01000000" "00" "000000" "01000000" "02000000" "6100" "0000"
        "01000000" "000000000000f03f" "00000000" "00000000"
    )
    msg = JointState(Header(Time(1, 2), ""), ("a",), [1.0])
    assert cdr.encode(msg) == expected and len(expected) == 52


def test_every_registered_type_has_a_ros_twin_in_rosbags():
    for name, cls in MESSAGE_TYPES.items():
        assert name in TS.types
        theirs = []
        for fname, (node, detail) in TS.fielddefs[name][1]:
            seq = node.name == "SEQUENCE"
            inner = detail[0] if seq else (node, detail)
            base = inner[1][0] if inner[0].name == "BASE" else inner[1]
            theirs.append(f"{fname}:{base}{'[]' if seq else ''}")
        assert [f"{f.name}:{f.ros_type}" for f in cls.__ros_fields__] == theirs
        assert cls.dds_typename() == name.replace("/msg/", "::msg::dds_::").replace("/", "::") + "_"
    assert JointState.dds_typename() == "sensor_msgs::msg::dds_::JointState_"
    assert message_type("std_msgs/Bool") is Bool
    text = "pick up the crimson cube, s'il vous plaît"  # an instruction (std_msgs/String), non-ASCII included
    assert cdr.decode(message_type("std_msgs/msg/String"), cdr.encode(message_type("std_msgs/String")(data=text))).data == text
    with pytest.raises(ValueError, match=r"Unsupported ROS message type 'geometry_msgs/msg/Twist'; supported types: \["):
        message_type("geometry_msgs/msg/Twist")


_names = st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12),
                  min_size=0, max_size=9, unique=True)


@settings(max_examples=60, deadline=None)
@given(names=_names, data=st.data())
def test_random_joint_states_match_rosbags(names, data):
    n = len(names)
    floats = st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=n, max_size=n)
    msg = JointState(
        Header(Time(data.draw(st.integers(-(2**31), 2**31 - 1)), data.draw(st.integers(0, 999_999_999))), data.draw(st.text(max_size=5))),
        tuple(names), data.draw(floats), data.draw(st.one_of(st.just([]), floats)), data.draw(floats),
    )
    ours = cdr.encode(msg)
    assert ours == rosbags_cdr(msg, TS)
    assert cdr.decode(JointState, ours) == msg


def test_decode_big_endian_and_padding():
    msg = sample_messages()[3]
    be = bytes(TS.serialize_cdr(_to_rb(msg), msg.ROS_TYPE, little_endian=False))
    assert be[:2] == b"\x00\x00"
    assert cdr.decode(JointState, be) == msg
    assert cdr.decode(JointState, cdr.encode(msg) + b"\0\0\0") == msg  # writers pad to 4 bytes


def _to_rb(msg):
    from omnipolicy.robot_bridge.wire.rosbag import to_rosbags

    return to_rosbags(msg, TS)


def test_decode_rejects_garbage():
    good = cdr.encode(sample_messages()[3])
    with pytest.raises(cdr.CdrError, match=r"sensor_msgs/msg/JointState: truncated message: need \d+ bytes at offset \d+"):
        cdr.decode(JointState, good[:100])
    with pytest.raises(cdr.CdrError, match="encapsulation 0003 is not plain CDR"):
        cdr.decode(JointState, b"\x00\x03\x00\x00" + good[4:])
    with pytest.raises(cdr.CdrError, match="shorter than the 4-byte CDR header"):
        cdr.decode(Bool, b"\x00")
    huge_count = good[:4] + good[4:16] + b"\xff\xff\xff\x7f" + good[20:]
    with pytest.raises(cdr.CdrError):
        cdr.decode(JointState, huge_count)
    with pytest.raises(cdr.CdrError, match="does not fit its ROS type"):
        cdr.encode(Time(sec=2**31, nanosec=0))
