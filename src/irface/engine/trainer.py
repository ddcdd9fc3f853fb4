"""The training loop: one process, or one per device under torchrun, with the same code.

The step itself is `irface.engine.step.train_step`; the parts it runs on and the run's position are
`irface.engine.state` (`build_components`, `TrainState`). Around the step: the data loader, log lines,
verification and checkpoints at their times. SIGTERM / SIGINT ask for a checkpoint at the end of the
current step and a clean exit.

Everything a resume needs is in the checkpoint, so `resume=auto` continues mid-epoch; on CPU with
`deterministic=true` the weights end bit-identical to those of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.utils.data import Dataset

from irface import dist
from irface.config import TrainConfig, save_config
from irface.data.loader import build_train_loader, set_loader_epoch
from irface.device import resolve_device
from irface.engine import checkpoint as ckpt_io
from irface.engine import validation
from irface.engine.logs import Meter, TrainLogger, seed_loss_line, seed_time_line
from irface.engine.precision import configure_backends
from irface.engine.state import Components, TrainState, build_components
from irface.engine.step import NonFiniteLossError, StepOutput, train_step
from irface.errors import ConfigError, UserError
from irface.eval.result import seed_lines

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    """How a run ended: `stopped` is "completed", "max_steps", "max_minutes" or "signal"."""

    step: int
    epoch: int  # epochs completed
    loss: Optional[float]
    stopped: str
    checkpoint: Optional[str]
    output_dir: str
    val: dict[str, dict[str, float]]
    threshold: Optional[float]
    steps_run: int = 0  # optimizer steps taken by this process (a resumed run counts from where it resumed)
    seconds: float = 0.0  # wall time of those steps, verification and checkpoints included
    images_per_s: Optional[float] = None  # training images per second over those steps (all ranks)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _ignore_sigint(worker_id: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Trainer:
    """One training run of `cfg`. `dataset` replaces `open_train_dataset(cfg.data_path)` (tests, demos)."""

    def __init__(self, cfg: TrainConfig, dataset: Optional[Dataset] = None):
        self.cfg = cfg
        self.dataset: Any = dataset  # a torch Dataset (untyped); _build_data opens one when None
        self.out = Path(cfg.output_dir)
        self.device = torch.device("cpu")
        self.rank, self.world, self.is_main = 0, 1, True
        # Set by _setup before anything reads them (fit calls it first); None until then.
        self.parts: Components = None  # type: ignore[assignment]
        self.state = TrainState(best={"target": cfg.best_target, "value": None, "step": None})
        self.loader: Any = None
        self.steps_per_epoch = 0
        self.logger: TrainLogger = None  # type: ignore[assignment]  # as parts
        self.val_targets: dict[str, Path] = {}
        self.has_val = False
        self.last_checkpoint: Optional[Path] = None
        self._last_saved_step = -1
        self._deadline: Optional[float] = None
        self._restore_backends: Optional[Callable[[], None]] = None
        self._stop_signal: Optional[int] = None
        self._old_handlers: dict[int, Any] = {}

    # --- set-up ---------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        self.device = resolve_device(cfg.device, "config key 'device'")
        dist.init_distributed(self.device)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        if self.world > cfg.num_classes:
            raise ConfigError(f"config key 'num_classes': {cfg.num_classes} classes cannot be split across {self.world} processes")
        self._check_output_dir()
        self.logger = TrainLogger(self.out, self.is_main, cfg.tensorboard)
        self._restore_backends = configure_backends(self.device, cfg.deterministic)
        # Found before the model is built: a resumed run ignores init_backbone.
        found = ckpt_io.find_checkpoint(cfg.resume, self.out) if cfg.resume else None
        seen = dist.all_gather_object(None if found is None else str(found[0]))
        if len(set(seen)) > 1:
            raise ConfigError(f"resume={cfg.resume}: the processes see different checkpoints ({', '.join(map(str, seen))}); "
                              "output_dir must be on storage that every machine shares")
        self._build_data()
        self.parts = build_components(cfg, self.device, self.steps_per_epoch, self.rank, self.world,
                                      init_backbone=found is None)
        # From here each rank draws its own numbers (dropout).
        torch.manual_seed(cfg.seed + 1_000_003 * (self.rank + 1))
        if found is not None:
            path, ckpt = found
            self.state.load_state_dict(ckpt, self.parts, path)
            self.last_checkpoint, self._last_saved_step = path, self.state.step
            log.info("resumed from %s: step %d, epoch %d, step %d of the epoch", path, self.state.step,
                     self.state.epoch + 1, self.state.step_in_epoch)
        elif cfg.resume == "auto":
            log.info("resume=auto: no checkpoint in %s, starting afresh", self.out)
        self.parts.wrap()
        targets = self._on_rank0(lambda: validation.open_targets(cfg.val_targets, cfg.data_path, cfg.image_size)) or {}
        self.val_targets = targets
        self.has_val = bool(dist.all_gather_object(bool(targets))[0])
        if self.is_main:
            save_config(cfg, self.out / "config.yaml")
            if hasattr(self.dataset, "save_classes"):  # image folders: which folder is class i
                self.dataset.save_classes(self.out)

    def _check_output_dir(self) -> None:
        def probe() -> None:
            try:
                self.out.mkdir(parents=True, exist_ok=True)
                path = self.out / ".irface-write-test"
                path.write_bytes(b"")
                path.unlink()
            except OSError as e:
                raise ConfigError(f"config key 'output_dir': {self.out} is not writable ({e.strerror or e})") from None

        self._on_rank0(probe)

    def _build_data(self) -> None:
        cfg = self.cfg
        if self.dataset is None:
            if not cfg.data_path:
                raise ConfigError("config key 'data_path': not set (a RecordIO folder or an image folder)")
            from irface.data.datasets import open_train_dataset

            self.dataset = open_train_dataset(cfg.data_path, cfg.image_size, cfg.max_bad_images)
        source = cfg.data_path or "training data"
        found = getattr(self.dataset, "num_classes", None)
        if found is not None and found > cfg.num_classes:
            raise ConfigError(f"config key 'num_classes': {source} has {found} classes, more than num_classes={cfg.num_classes}")
        try:
            self.loader = build_train_loader(
                self.dataset, cfg.batch_size, self.rank, self.world, cfg.seed, cfg.num_workers,
                pin_memory=cfg.pin_memory and self.device.type == "cuda", prefetch_factor=cfg.prefetch_factor,
                persistent_workers=cfg.persistent_workers)
        except ValueError:
            raise ConfigError(f"config key 'batch_size': {source} has {len(self.dataset)} images, fewer than one global "
                              f"batch of {cfg.batch_size} x {self.world} processes") from None
        # Worker seeds from a generator of our own, not the global one: resuming must not shift it.
        self.loader.generator = torch.Generator().manual_seed(cfg.seed)
        # Ctrl-C reaches the workers too; they must keep serving while the main process saves.
        self.loader.worker_init_fn = _ignore_sigint
        micro_per_epoch = self.loader.sampler.batches_per_epoch
        self.steps_per_epoch = micro_per_epoch // cfg.grad_accum
        if self.steps_per_epoch == 0:
            raise ConfigError(f"config key 'grad_accum': {micro_per_epoch} batches per epoch cannot make one "
                              f"step of {cfg.grad_accum} accumulated batches")

    # --- signals --------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:
            raise KeyboardInterrupt  # asked twice: stop now, without a checkpoint
        self._stop_signal = signum

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _restore_signals(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()

    # --- the loop -------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        try:
            self._setup()
            # Only now: during set-up a signal should simply end the process (nothing to save yet,
            # and a handler cannot run while the process group is being formed).
            self._install_signals()
            result = self._loop()
            # Every rank is done before any rank tears the group down: a gloo peer that leaves while the
            # other is still in its last collective aborts it ("terminate called without an active exception").
            dist.barrier()
            return result
        finally:
            self._restore_signals()
            if self.logger is not None:
                self.logger.close()
            if self._restore_backends is not None:
                self._restore_backends()
            dist.destroy()

    def _describe(self) -> None:
        cfg, parts = self.cfg, self.parts
        n_params = sum(p.numel() for p in parts.backbone.parameters())
        total_batch = cfg.total_batch(self.world)
        self.logger.info(
            f"irface train: {cfg.network} ({n_params:,} parameters, {cfg.embedding_size}-d), head {cfg.head} over "
            f"{cfg.num_classes} classes ({self.world} rank(s) x ~{parts.head.end - parts.head.start} centres, "
            f"sample rate {cfg.sample_rate}); {len(self.dataset)} images, {self.steps_per_epoch} steps/epoch x "
            f"{cfg.epoch_size} epochs; batch {cfg.batch_size} x {self.world} x {cfg.grad_accum} = {total_batch}; "
            f"lr {parts.schedule.base_lr:g} ({cfg.scheduler}); {cfg.optimizer}; {cfg.precision} on {self.device}")

    def _loop(self) -> TrainResult:
        cfg, state = self.cfg, self.state
        run_steps = cfg.epoch_size * self.steps_per_epoch
        limit = min(run_steps, cfg.max_steps) if cfg.max_steps else run_steps
        self._describe()
        meter = Meter(cfg.total_batch(self.world), limit, state.step)
        first_step, t0 = state.step, time.perf_counter()
        last_loss: Optional[float] = None
        stopped = "completed" if limit == run_steps else "max_steps"
        self._deadline = time.monotonic() + cfg.max_minutes * 60 if cfg.max_minutes else None
        while state.step < limit and state.epoch < cfg.epoch_size:
            set_loader_epoch(self.loader, state.epoch, state.step_in_epoch * cfg.grad_accum)
            batches = iter(self.loader)
            if state.rng is not None:
                ckpt_io.restore_rng(state.rng, self.device)
                state.rng = None
            epoch_t0, epoch_steps = time.perf_counter(), 0
            self.logger.start_bar(self.steps_per_epoch, state.step_in_epoch, f"epoch {state.epoch + 1}/{cfg.epoch_size}")
            while state.step_in_epoch < self.steps_per_epoch and state.step < limit:
                if self._stop_requested() or self._time_is_up():
                    break
                out = self._train_step(batches)
                state.step += 1
                state.step_in_epoch += 1
                epoch_steps += 1
                last_loss = out.loss
                meter.update(out.loss)
                self.logger.advance_bar(out.loss)
                if cfg.log_every and state.step % cfg.log_every == 0:
                    self._log_progress(meter, out)
                end_of_epoch = state.step_in_epoch == self.steps_per_epoch
                end_of_run = state.step == limit
                if end_of_epoch:
                    self.logger.close_bar()
                    self.logger.info(seed_loss_line(state.epoch + 1, state.step_in_epoch, out.loss))
                    self.logger.info(seed_time_line((time.perf_counter() - epoch_t0) * 1000.0, epoch_steps))
                    state.epoch, state.step_in_epoch = state.epoch + 1, 0
                improved = False
                if self.has_val and (end_of_epoch or end_of_run or (cfg.eval_every and state.step % cfg.eval_every == 0)):
                    improved = self._verify()
                if end_of_epoch or end_of_run or improved or (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0):
                    self.save(best=improved)
                if end_of_epoch:
                    break  # the next epoch needs its own order from the loader
            self.logger.close_bar()
            if self._stop_requested():  # every rank asks, so the collectives stay in step
                stopped = "signal"
                break
            if self._time_is_up():
                stopped = "max_minutes"
                break
        seconds = time.perf_counter() - t0
        if stopped == "max_minutes":
            self.logger.info(f"stopping at step {state.step}: max_minutes={cfg.max_minutes:g} reached")
        elif stopped == "signal":
            name = signal.Signals(self._stop_signal).name if self._stop_signal else "a signal on another rank"
            self.logger.info(f"stopping on {name} at step {state.step}")
        if state.step != self._last_saved_step and (stopped in ("max_minutes", "signal") or state.step > 0):
            self.save()  # e.g. resumed past the end: keep the newest state on disk
        steps_run = state.step - first_step
        return TrainResult(state.step, state.epoch, last_loss, stopped,
                           str(self.last_checkpoint) if self.last_checkpoint else None, str(self.out),
                           state.val, state.threshold, steps_run, round(seconds, 3),
                           round(steps_run * cfg.total_batch(self.world) / seconds, 1) if steps_run and seconds > 0 else None)

    def _time_is_up(self) -> bool:
        """True on every rank once rank 0's budget is spent (one clock decides, so ranks agree)."""
        if self._deadline is None:
            return False
        flag = torch.tensor([float(time.monotonic() >= self._deadline)], device=self.device)
        return bool(dist.broadcast(flag, 0).item())

    def _stop_requested(self) -> bool:
        if self.world == 1:
            return self._stop_signal is not None
        return dist.any_rank(self._stop_signal is not None, self.device)

    def _train_step(self, batches) -> StepOutput:
        try:
            return train_step(self.parts, self.state, batches)
        except NonFiniteLossError as e:
            last = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written"
            message = f"step {self.state.step + 1} (epoch {self.state.epoch + 1}): {e}; training stopped, {last}"
            self.logger.file_only(f"stopped: {message}")
            raise NonFiniteLossError(message) from None

    def _log_progress(self, meter: Meter, out: StepOutput) -> None:
        state, scaler = self.state, self.parts.scaler
        r = meter.report(state.step)
        scale = f" scale {scaler.scale_value:g}" if scaler.enabled else ""
        self.logger.info(
            f"[step {state.step}] epoch {state.epoch + 1} ({state.step_in_epoch}/{self.steps_per_epoch}) loss {out.loss:.6f} "
            f"avg {r['loss_avg']:.6f} lr {out.lr:.6g} grad-norm {out.grad_norm:.4g} images/s {r['images_per_s']:.1f}"
            f"{scale} eta {r['eta']}")
        scalars = {"train/loss": r["loss_avg"], "train/lr": out.lr, "train/images_per_s": r["images_per_s"],
                   "train/grad_norm": out.grad_norm}
        if scaler.enabled:
            scalars["train/loss_scale"] = scaler.scale_value
        self.logger.scalars(state.step, scalars)

    # --- verification and checkpoints -----------------------------------------------------------------
    def _on_rank0(self, fn) -> Any:
        """Run `fn` on rank 0 while the others wait; an error there stops every rank."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
                error = e
        if dist.any_rank(error is not None, self.device):
            if error is not None:
                raise error
            raise RuntimeError("rank 0 failed (see its log)")
        return result

    def _verify(self) -> bool:
        """Verify on the `.bin` targets (rank 0); returns whether `best_target` improved."""
        state = self.state

        def run() -> bool:
            try:
                results = validation.run(self.parts.backbone, self.val_targets, self.device, self.cfg.precision,
                                         self.cfg.batch_size, self.cfg.channels_last)
            except UserError as e:
                # The sets were read at set-up; a set that fails now (a file replaced or damaged since)
                # costs this report, not the run.
                self.logger.info(f"verification at step {state.step} skipped: {e}")
                return False
            for line in seed_lines(results):
                self.logger.info(line)
            summary = validation.summarize(results)
            state.val = summary
            key = self.cfg.best_target or next(iter(summary), None)
            picked = summary.get(key or "", {})
            state.threshold, state.cluster_threshold = picked.get("threshold_cos"), picked.get("cluster_threshold")
            self.logger.scalars(state.step, {f"val/{n}/accuracy_flip": v["accuracy_flip"] for n, v in summary.items()})
            target = self.cfg.best_target
            if target and target in summary:
                value = summary[target]["accuracy_flip"]
                if state.best["value"] is None or value > state.best["value"]:
                    state.best = {"target": target, "value": value, "step": state.step}
                    return True
            return False

        return bool(self._on_rank0(run))

    def save(self, best: bool = False) -> Optional[Path]:
        """Write a checkpoint of the current step (a collective: every rank calls it). Returns its path on rank 0."""
        state = self.state
        payload = state.state_dict(self.parts)
        path = self.out / ckpt_io.checkpoint_name(state.epoch + 1 if state.step_in_epoch else state.epoch, state.step)

        def write() -> Path:
            assert payload is not None  # state_dict's contents on rank 0, where write runs
            ckpt_io.save_checkpoint(path, payload)
            if best:
                ckpt_io.copy_as_best(path)
            ckpt_io.prune_checkpoints(self.out, self.cfg.keep_checkpoints)
            return path

        self._on_rank0(write)
        self.last_checkpoint = path
        self._last_saved_step = state.step
        self.logger.info(f"checkpoint {path}" + (f" (best {state.best['target']} so far: {state.best['value']:.5f})" if best else ""))
        return path


def train(cfg: TrainConfig, dataset: Optional[Dataset] = None) -> TrainResult:
    """Train as `cfg` says (one process, or this rank of a torchrun job); see `Trainer`."""
    return Trainer(cfg, dataset).fit()


__all__ = ["Trainer", "TrainResult", "NonFiniteLossError", "train"]
