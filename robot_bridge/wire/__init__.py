"""The ROS 2 wire library: messages, their CDR encoding, transports, rosbag2, safety (imports nothing else of omnipolicy).

A low layer of its own: the model, the tasks and the datasets never come into it, so it can be read, tested
and reused alone.

- ``messages``: ROS 2 message dataclasses (``JointState``, ``Image``, ``JointTrajectory``,
  ``Float64MultiArray``, ``Bool``, ...), ``JointMap`` / ``ObservationMap`` and the
  conversions to and from policy observations and actions.
- ``cdr``: ROS 2's wire encoding of those messages (plain CDR, XCDR1).
- ``transport``: the ``Transport`` interface, QoS presets (ros2_control's), registry.
- ``dds``: the transport over pure Cyclone DDS; ``rclpy_transport``: over an rclpy node.
- ``network``: ``system`` (the ROS 2 environment) or ``loopback``; ``loopback``: the
  127.0.0.1-only DDS configurations (``config/``) and environment.
- ``rosbag``: rosbag2 recordings -> aligned observation/action arrays; bag writer.
- ``safety``: limits, rate limit, watchdog and e-stop latch of the command path (pure).
- ``control_loop``: the fixed-rate loop with latency, jitter and deadline statistics.
- ``echo``: an echo node for tests and ``scripts/bench_bridge.py``.
"""
