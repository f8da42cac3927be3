"""Training engine: config, optimizers and schedules, the trainer, checkpoints.

Example:
    >>> from visionssl.engine import load_config
    >>> load_config("simclr").optim.name
    'lars'
"""

from visionssl.engine.checkpoint import CheckpointError, atomic_save, load_checkpoint, load_run_backbone
from visionssl.engine.config import ConfigError, list_recipes, load_config
from visionssl.engine.guards import NonFiniteLossError
from visionssl.engine.optim import cosine_with_warmup, create_optimizer
from visionssl.engine.trainer import Trainer

__all__ = [
    "CheckpointError",
    "ConfigError",
    "NonFiniteLossError",
    "Trainer",
    "atomic_save",
    "cosine_with_warmup",
    "create_optimizer",
    "list_recipes",
    "load_checkpoint",
    "load_config",
    "load_run_backbone",
]
