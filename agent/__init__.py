"""The generalist model: presets, transformer, training, checkpoints and acting.

>>> from omnipolicy.agent import PRESETS
>>> sorted(PRESETS)[:2]
['cpu-small', 'cpu-tiny']
"""

import os

# OpenMP worker threads that spin while waiting stall badly when the cores are shared (other processes,
# simulators, several ranks): small matmuls took 24 ms instead of 0.7 ms on this project's 2-core machine.
# Sleeping waits cost little when the machine is idle. Effective only if torch is not imported yet; an
# explicit OMP_WAIT_POLICY from the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
    "TrainConfig",
    "TrainResult",
    "get_preset",
    "load_meta",
    "load_model_weights",
    "resolve_checkpoint",
    "save_checkpoint",
    "train",
]
