"""ROS 2 for omnipolicy: messages, transports and rosbag import (imports nothing heavy).

- ``messages``: ROS 2 message dataclasses (``JointState``, ``Image``, ``JointTrajectory``,
  ``Float64MultiArray``, ``Bool``, ...), ``JointMap`` / ``ObservationMap`` and the
  conversions to and from policy observations and actions.
- ``cdr``: ROS 2's wire encoding of those messages (plain CDR, XCDR1).
- ``transport``: the ``Transport`` interface, QoS presets (ros2_control's), registry.
- ``dds``: the transport over pure Cyclone DDS; ``rclpy_transport``: over an rclpy node.
- ``loopback``: 127.0.0.1-only DDS configurations (``config/``) and environment.
- ``rosbag``: rosbag2 recordings -> aligned observation/action arrays; bag writer.
- ``echo``: an echo node for tests and ``scripts/bench_bridge.py``.
- ``arms``: what a robot and a deploy node agree on per task (joints, limits, topics, the
  observation recipe messages -> observation), and the simulated arms.
- ``safety``: limits, rate limit, watchdog and e-stop latch of the command path (pure).
- ``sim_robot``: ``omnipolicy sim-robot``, a simulated arm as a ROS 2 robot.
- ``deploy``: ``omnipolicy deploy``, a policy (or the scripted expert) driving a robot.
"""
