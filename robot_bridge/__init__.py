"""ROS 2 for omnipolicy: the wire library and the applications that drive robots with it.

- ``wire``: the ROS 2 wire library (messages, CDR, transports, network, rosbag2,
  safety, control loop); a low layer that imports nothing else of omnipolicy.
- ``arms``: what a robot and a deploy node agree on per task (joints, limits, topics, the
  observation recipe messages -> observation), and the simulated arms.
- ``sim_robot``: ``omnipolicy sim-robot``, a simulated arm as a ROS 2 robot.
- ``deploy``: ``omnipolicy deploy``, a policy (or the scripted expert) driving a robot.
"""
