"""Foreign formats in: MindSpore `.ckpt` (read without MindSpore) -> irface / PyTorch weights."""

from irface.interop.convert import convert_mindspore, write_converted
from irface.interop.mindspore import MindSporeCheckpoint, read_mindspore_backbone, read_mindspore_checkpoint

__all__ = ["convert_mindspore", "write_converted", "MindSporeCheckpoint", "read_mindspore_backbone",
           "read_mindspore_checkpoint"]
