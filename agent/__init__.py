"""The generalist model: presets, transformer, training, checkpoints and acting.

>>> from omnipolicy.agent import PRESETS
>>> sorted(PRESETS)[:2]
['cpu-small', 'cpu-tiny']
"""

from .actor import PolicyActor
from .checkpoint import CheckpointMeta, load_meta, load_model_weights, resolve_checkpoint, save_checkpoint
from .config import PRESETS, ModelConfig, get_preset
from .model import GatoModel
from .policy import Policy
from .train import TrainConfig, TrainResult, train

__all__ = [
    "PRESETS",
    "CheckpointMeta",
    "GatoModel",
    "ModelConfig",
    "Policy",
    "PolicyActor",
    "TrainConfig",
    "TrainResult",
    "get_preset",
    "load_meta",
    "load_model_weights",
    "resolve_checkpoint",
    "save_checkpoint",
    "train",
]
