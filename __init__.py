"""omnipolicy: one transformer, one set of weights, every modality as tokens.

Subpackages: ``tokenizers`` (observations/actions <-> token ids), ``envs`` (task
registry, simulator adapters, scripted experts, evaluation), ``datasets``
(episode store, collection, token cache), ``agent`` (the transformer, training,
inference) and ``robot_bridge`` (ROS 2).
"""

__version__ = "0.1.0"
