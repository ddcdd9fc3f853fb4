"""irface.engine: the training loop, optimizers and schedules, precision, checkpoints, logging.

`train(cfg)` runs one training job (one process, or this rank under torchrun); see docs/training.md.
"""

from irface.engine.checkpoint import checkpoint_name, find_checkpoint, load_checkpoint
from irface.engine.optim import LRSchedule
from irface.engine.trainer import NonFiniteLossError, Trainer, TrainResult, train

__all__ = ["train", "Trainer", "TrainResult", "NonFiniteLossError", "LRSchedule", "checkpoint_name",
           "find_checkpoint", "load_checkpoint"]
