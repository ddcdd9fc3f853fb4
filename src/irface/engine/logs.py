"""Training logs: the seed's lines, periodic progress lines, train.log, TensorBoard when installed.

Only rank 0 writes. The seed's two lines, at the end of every epoch, are kept character for character:

    epoch: 7 step: 5686, loss is 4.730966
    epoch time: 6156469.326 ms, per step time: 1082.742 ms

("step" is the step within the epoch; the loss is the last step's, printed as a float32.)
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

log = logging.getLogger(__name__)

LOG_NAME = "train.log"


def seed_loss_line(epoch: int, step_in_epoch: int, loss: float) -> str:
    return f"epoch: {epoch} step: {step_in_epoch}, loss is {str(np.float32(loss))}"


def seed_time_line(epoch_ms: float, steps: int) -> str:
    return f"epoch time: {epoch_ms:.3f} ms, per step time: {epoch_ms / max(1, steps):.3f} ms"


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


class TrainLogger:
    """Rank 0's log sinks for one run: train.log beside the checkpoints, TensorBoard, a progress bar.

    On other ranks the "irface" loggers are raised to WARNING for the run so that N processes do not
    print N copies; everything is put back by `close()`.
    """

    def __init__(self, output_dir: Path, is_main: bool, tensorboard: bool = True):
        self.is_main = is_main
        self.package_logger = logging.getLogger("irface")
        self._old_level = self.package_logger.level
        self.file_handler: Optional[logging.Handler] = None
        self.writer = None
        self.bar = None
        if not is_main:
            self.package_logger.setLevel(logging.WARNING)
            return
        if self.package_logger.getEffectiveLevel() > logging.INFO:
            self.package_logger.setLevel(logging.INFO)
        self.file_handler = logging.FileHandler(output_dir / LOG_NAME, mode="a", encoding="utf-8")
        self.file_handler.setFormatter(logging.Formatter("%(message)s"))
        self.file_handler.setLevel(logging.INFO)
        self.package_logger.addHandler(self.file_handler)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
            except ImportError:
                log.debug("tensorboard is not installed: no TensorBoard scalars")
            else:
                self.writer = SummaryWriter(str(output_dir / "tensorboard"))

    def start_bar(self, total: int, initial: int, desc: str) -> None:
        """A progress bar for the epoch, only when rank 0's stderr is a terminal."""
        self.close_bar()
        if self.is_main and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)

    def advance_bar(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
            self.bar.update(1)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def info(self, message: str) -> None:
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.clear()
        log.info(message)
        if self.bar is not None:
            self.bar.refresh()

    def file_only(self, message: str) -> None:
        """A line for train.log alone (the console gets it from whoever raises)."""
        if self.file_handler is not None:
            self.file_handler.handle(logging.LogRecord(__name__, logging.ERROR, __file__, 0, message, None, None))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.close_bar()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.file_handler is not None:
            self.package_logger.removeHandler(self.file_handler)
            self.file_handler.close()
            self.file_handler = None
        self.package_logger.setLevel(self._old_level)


class Meter:
    """Loss, throughput and ETA since the last report and since the process started."""

    def __init__(self, images_per_step: int, total_steps: int, start_step: int):
        self.images_per_step = images_per_step
        self.total_steps = total_steps
        self.start_step = start_step
        self.t0 = self.t_last = time.perf_counter()
        self.losses: list[float] = []
        self.steps_since = 0

    def update(self, loss: float) -> None:
        self.losses.append(loss)
        self.steps_since += 1

    def report(self, step: int) -> dict[str, Any]:
        """Averages over the window since the previous report; resets the window."""
        now = time.perf_counter()
        window = max(now - self.t_last, 1e-9)
        done = step - self.start_step
        per_step = (now - self.t0) / max(1, done)
        out = {
            "loss_avg": float(np.mean(self.losses)) if self.losses else float("nan"),
            "images_per_s": self.images_per_step * self.steps_since / window,
            "eta": format_duration(per_step * (self.total_steps - step)),
        }
        self.losses.clear()
        self.steps_since = 0
        self.t_last = now
        return out
