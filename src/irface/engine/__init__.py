"""irface.engine: the training step and its state, the loop, optimizers and schedules, precision, checkpoints, logging.

`train(cfg)` runs one training job (one process, or this rank under torchrun); see docs/training.md.
"""

from irface.engine.checkpoint import checkpoint_name, find_checkpoint, load_checkpoint
from irface.engine.optim import LRSchedule
from irface.engine.state import Components, TrainState, build_components
from irface.engine.step import NonFiniteLossError, StepOutput, train_step
from irface.engine.trainer import Trainer, TrainResult, train

__all__ = ["train", "Trainer", "TrainResult", "NonFiniteLossError", "LRSchedule", "checkpoint_name",
           "find_checkpoint", "load_checkpoint", "Components", "TrainState", "build_components", "StepOutput",
           "train_step"]
