"""The training loop: one process, or one per device under torchrun, with the same code.

Per optimizer step: `grad_accum` micro-batches of uint8 images are normalised on the device, the
backbone (DDP when there are several ranks) embeds them under the configured precision, and the
Partial FC head (class centres sharded across ranks) turns the global batch's embeddings into the
mean cross-entropy. Then: non-finite check, unscale, global gradient norm (clip), the learning rate
for this position in the schedule, both optimizers, and, at their times, log lines, verification and
a checkpoint. SIGTERM / SIGINT ask for a checkpoint at the end of the current step and a clean exit.

Everything a resume needs is in the checkpoint, so `resume=auto` continues mid-epoch; on CPU with
`deterministic=true` the weights end bit-identical to those of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import Dataset

from irface import dist
from irface.config import TrainConfig, save_config
from irface.data.loader import build_train_loader, set_loader_epoch
from irface.data.transforms import normalize
from irface.engine import checkpoint as ckpt_io
from irface.engine import validation
from irface.engine.logs import Meter, TrainLogger, seed_loss_line, seed_time_line
from irface.engine.optim import LRSchedule, build_optimizer, clip_gradients, global_grad_norm
from irface.engine.precision import LossScaler, autocast, configure_backends
from irface.errors import ConfigError, ModelFileError, UserError
from irface.heads.partial_fc import PartialFC

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss (or, in fp16, every rescaled gradient) stopped being finite; the run stopped cleanly."""


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_device(name: str) -> torch.device:
    """auto / cpu / cuda / cuda:N; under torchrun `auto` and `cuda` mean this process's GPU (LOCAL_RANK)."""
    local = dist.get_local_rank()
    if name == "auto":
        return torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"config key 'device': unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"config key 'device': {name!r} asked for, but no CUDA device is available")
        if device.index is None:
            device = torch.device("cuda", local)
    elif device.type != "cpu":
        raise ConfigError(f"config key 'device': {name!r} is not supported (use auto, cpu, cuda or cuda:N)")
    return device


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; gradient times `factor` backward.

    The loss is already the mean over the global batch and the all-gather hands each rank the whole
    gradient of its own embeddings, so each rank's backbone gradient is its share of the total; DDP
    then averages over ranks where the total is the sum. Multiplying by the world size undoes that.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def _one_line(error: UserError) -> UserError:
    """A user error raised in a loader worker arrives wrapped in the worker's traceback: keep its own line."""
    text = str(error)
    if "Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = re.sub(r"^[\w.]+(Error|Exception): ", "", last.strip())
    return type(error)(text)


def _ignore_sigint(worker_id: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class Trainer:
    """One training run of `cfg`. `dataset` replaces `open_train_dataset(cfg.data_path)` (tests, demos)."""

    def __init__(self, cfg: TrainConfig, dataset: Optional[Dataset] = None):
        self.cfg = cfg
        self.dataset = dataset
        self._stop_signal: Optional[int] = None
        self._old_handlers: dict[int, Any] = {}

    # --- set-up ---------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        self.device = resolve_device(cfg.device)
        dist.init_distributed(self.device)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        if self.world > cfg.num_classes:
            raise ConfigError(f"config key 'num_classes': {cfg.num_classes} classes cannot be split across {self.world} processes")
        self.out = Path(cfg.output_dir)
        self._check_output_dir()
        self.logger = TrainLogger(self.out, self.is_main, cfg.tensorboard)
        self._restore_backends = configure_backends(self.device, cfg.deterministic)
        # Found before the model is built: a resumed run ignores init_backbone.
        self._found = ckpt_io.find_checkpoint(cfg.resume, self.out) if cfg.resume else None
        seen = dist.all_gather_object(None if self._found is None else str(self._found[0]))
        if len(set(seen)) > 1:
            raise ConfigError(f"resume={cfg.resume}: the processes see different checkpoints ({', '.join(map(str, seen))}); "
                              "output_dir must be on storage that every machine shares")
        self._build_data()
        torch.manual_seed(cfg.seed)  # the same initial backbone on every rank, whatever the world size
        self._build_model()
        # From here each rank draws its own numbers (dropout).
        torch.manual_seed(cfg.seed + 1_000_003 * (self.rank + 1))
        self.schedule = LRSchedule.from_config(cfg, self.steps_per_epoch, self.world)
        self.opt_backbone = build_optimizer(self.backbone, cfg, self.schedule.lr_at(0))
        self.opt_head = build_optimizer(self.head, cfg, self.schedule.lr_at(0))
        self.scaler = LossScaler(cfg.precision == "fp16")
        self.step, self.epoch, self.step_in_epoch = 0, 0, 0
        self.threshold: Optional[float] = None
        self.last_val: dict[str, dict[str, float]] = {}
        self.best: dict[str, Any] = {"target": cfg.best_target, "value": None, "step": None}
        self._pending_rng: Optional[dict[str, Any]] = None
        self.last_checkpoint: Optional[Path] = None
        self._last_saved_step = -1
        self._resume()
        self._wrap_model()
        targets = self._on_rank0(lambda: validation.open_targets(cfg.val_targets, cfg.data_path, cfg.image_size)) or {}
        self.val_targets = targets
        self.has_val = bool(dist.all_gather_object(bool(targets))[0])
        if self.is_main:
            save_config(cfg, self.out / "config.yaml")
            if hasattr(self.dataset, "save_classes"):  # image folders: which folder is class i
                self.dataset.save_classes(self.out / "classes.txt")

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
        self.micro_per_epoch = self.loader.sampler.batches_per_epoch
        self.steps_per_epoch = self.micro_per_epoch // cfg.grad_accum
        if self.steps_per_epoch == 0:
            raise ConfigError(f"config key 'grad_accum': {self.micro_per_epoch} batches per epoch cannot make one "
                              f"step of {cfg.grad_accum} accumulated batches")

    def _build_model(self) -> None:
        cfg = self.cfg
        from irface.models import create_backbone

        try:
            backbone = create_backbone(cfg.network, **cfg.backbone_kwargs())
        except KeyError as e:
            raise ConfigError(f"config key 'network': {e.args[0]}") from None
        except ValueError as e:
            raise ConfigError(f"config key 'network': {e}") from None
        if cfg.init_backbone and self._found is None:
            self._load_init_backbone(backbone)
        self.backbone = backbone.to(self.device)
        if cfg.channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        try:
            self.head = PartialFC(cfg.head, cfg.embedding_size, cfg.num_classes, cfg.head_params(), cfg.sample_rate,
                                  self.rank, self.world, seed=cfg.seed).to(self.device)
        except ValueError as e:
            raise ConfigError(f"config key 'head': {e}") from None

    def _load_init_backbone(self, backbone: nn.Module) -> None:
        from irface.models.loading import load_backbone

        model, info = load_backbone(self.cfg.init_backbone)
        try:
            backbone.load_state_dict(model.state_dict(), strict=True)
        except RuntimeError:
            raise ModelFileError(f"init_backbone={self.cfg.init_backbone}: holds {info.get('arch')}, which does not fit "
                                 f"network={self.cfg.network} as configured (set network, network_layers, "
                                 f"network_widths, stem_width, embedding_size, image_size to match)") from None
        log.info("backbone initialised from %s (%s)", self.cfg.init_backbone, info.get("kind"))

    def _resume(self) -> None:
        found = getattr(self, "_found", None)
        if found is None:
            if self.cfg.resume == "auto":
                log.info("resume=auto: no checkpoint in %s, starting afresh", self.out)
            return
        path, ckpt = found
        self._found = None
        try:
            self.backbone.load_state_dict(ckpt["backbone"], strict=True)
            self.head.load_full_state_dict(ckpt["head"])
        except (RuntimeError, ValueError) as e:
            raise ModelFileError(f"{path}: does not fit the configured model ({str(e).splitlines()[0]})") from None
        try:
            self.opt_backbone.load_state_dict(ckpt["optimizer"])
            self.opt_head.load_state_dict(ckpt_io.shard_optimizer_state(
                ckpt["head_optimizer"], self.opt_head, self.cfg.num_classes, self.head.start, self.head.end))
        except (ValueError, KeyError, IndexError) as e:
            log.warning("%s: optimizer state not restored (the optimizer settings changed?): %s", path, e)
        self.scaler.load_state_dict(ckpt.get("scaler", {}))
        self.step = int(ckpt["step"])
        sampler = ckpt.get("sampler", {})
        self.epoch = int(sampler.get("epoch", ckpt["epoch"]))
        per_micro = self.cfg.batch_size * self.world
        images = int(sampler.get("images", 0))
        self.step_in_epoch = (images // per_micro) // self.cfg.grad_accum
        if images % (per_micro * self.cfg.grad_accum):
            log.warning("%s: %d images into epoch %d is not a whole number of steps of %d; continuing at step %d of the epoch",
                        path, images, self.epoch + 1, per_micro * self.cfg.grad_accum, self.step_in_epoch)
        if self.step_in_epoch >= self.steps_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        rngs = ckpt.get("rng") or []
        samplers = ckpt.get("head_sampler") or []
        if len(rngs) == self.world:
            self._pending_rng = rngs[self.rank]  # restored once the data iterator exists
            if len(samplers) == self.world:
                self.head.load_sampler_state(samplers[self.rank])
        else:
            log.warning("%s: saved by %d processes, resumed by %d: random streams start afresh", path, len(rngs), self.world)
        self.threshold = ckpt.get("threshold")
        self.last_val = ckpt.get("val") or {}
        if ckpt.get("best") and ckpt["best"].get("target") == self.cfg.best_target:
            self.best = dict(ckpt["best"])
        self.last_checkpoint = path
        self._last_saved_step = self.step
        log.info("resumed from %s: step %d, epoch %d, step %d of the epoch", path, self.step, self.epoch + 1, self.step_in_epoch)

    def _wrap_model(self) -> None:
        self.model: nn.Module = self.backbone
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.backbone, device_ids=ids, gradient_as_bucket_view=True)
        if self.cfg.compile:
            self.model = torch.compile(self.model)
        self.backbone_params = [p for p in self.backbone.parameters() if p.requires_grad]
        self.head_params = [p for p in self.head.parameters() if p.requires_grad]

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
            return self._loop()
        finally:
            self._restore_signals()
            if hasattr(self, "logger"):
                self.logger.close()
            if hasattr(self, "_restore_backends"):
                self._restore_backends()
            dist.destroy()

    def _describe(self) -> None:
        cfg = self.cfg
        n_params = sum(p.numel() for p in self.backbone.parameters())
        total_batch = cfg.total_batch(self.world)
        self.logger.info(
            f"irface train: {cfg.network} ({n_params:,} parameters, {cfg.embedding_size}-d), head {cfg.head} over "
            f"{cfg.num_classes} classes ({self.world} rank(s) x ~{self.head.end - self.head.start} centres, "
            f"sample rate {cfg.sample_rate}); {len(self.dataset)} images, {self.steps_per_epoch} steps/epoch x "
            f"{cfg.epoch_size} epochs; batch {cfg.batch_size} x {self.world} x {cfg.grad_accum} = {total_batch}; "
            f"lr {self.schedule.base_lr:g} ({cfg.scheduler}); {cfg.optimizer}; {cfg.precision} on {self.device}")

    def _loop(self) -> TrainResult:
        cfg = self.cfg
        run_steps = cfg.epoch_size * self.steps_per_epoch
        limit = min(run_steps, cfg.max_steps) if cfg.max_steps else run_steps
        self._describe()
        meter = Meter(cfg.total_batch(self.world), limit, self.step)
        last_loss: Optional[float] = None
        stopped = "completed" if limit == run_steps else "max_steps"
        self._deadline = time.monotonic() + cfg.max_minutes * 60 if cfg.max_minutes else None
        while self.step < limit and self.epoch < cfg.epoch_size:
            set_loader_epoch(self.loader, self.epoch, self.step_in_epoch * cfg.grad_accum)
            batches = iter(self.loader)
            if self._pending_rng is not None:
                ckpt_io.restore_rng(self._pending_rng, self.device)
                self._pending_rng = None
            epoch_t0, epoch_steps = time.perf_counter(), 0
            self.logger.start_bar(self.steps_per_epoch, self.step_in_epoch, f"epoch {self.epoch + 1}/{cfg.epoch_size}")
            while self.step_in_epoch < self.steps_per_epoch and self.step < limit:
                if self._stop_requested() or self._time_is_up():
                    break
                loss = self._train_step(batches)
                self.step += 1
                self.step_in_epoch += 1
                epoch_steps += 1
                last_loss = loss
                meter.update(loss)
                self.logger.advance_bar(loss)
                if cfg.log_every and self.step % cfg.log_every == 0:
                    self._log_progress(meter, loss)
                end_of_epoch = self.step_in_epoch == self.steps_per_epoch
                end_of_run = self.step == limit
                if end_of_epoch:
                    self.logger.close_bar()
                    self.logger.info(seed_loss_line(self.epoch + 1, self.step_in_epoch, loss))
                    self.logger.info(seed_time_line((time.perf_counter() - epoch_t0) * 1000.0, epoch_steps))
                    self.epoch, self.step_in_epoch = self.epoch + 1, 0
                improved = False
                if self.has_val and (end_of_epoch or end_of_run or (cfg.eval_every and self.step % cfg.eval_every == 0)):
                    improved = self._verify()
                if end_of_epoch or end_of_run or improved or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
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
        if stopped == "max_minutes":
            self.logger.info(f"stopping at step {self.step}: max_minutes={cfg.max_minutes:g} reached")
            if self.step != self._last_saved_step:
                self.save()
        elif stopped == "signal":
            name = signal.Signals(self._stop_signal).name if self._stop_signal else "a signal on another rank"
            self.logger.info(f"stopping on {name} at step {self.step}")
            if self.step != self._last_saved_step:
                self.save()
        elif self.step != self._last_saved_step and self.step > 0:
            self.save()  # e.g. resumed past the end: keep the newest state on disk
        return TrainResult(self.step, self.epoch, last_loss, stopped,
                           str(self.last_checkpoint) if self.last_checkpoint else None, str(self.out),
                           self.last_val, self.threshold)

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

    def _train_step(self, batches) -> float:
        cfg = self.cfg
        position = self.epoch * self.steps_per_epoch + self.step_in_epoch
        self.lr = self.schedule.apply((self.opt_backbone, self.opt_head), position)
        total = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            try:
                images, labels = next(batches)
            except UserError as e:
                raise _one_line(e) from None
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            x = normalize(images)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            sync = self.model.no_sync() if self.world > 1 and micro < cfg.grad_accum - 1 and hasattr(self.model, "no_sync") \
                else contextlib.nullcontext()
            with sync:
                with autocast(cfg.precision, self.device):
                    emb = self.model(x)
                emb = emb.float()  # the head runs in fp32: margins are sensitive near |cos| = 1
                if self.world > 1:
                    emb = _ScaleGrad.apply(emb, float(self.world))
                loss = self.head(emb, labels)
                self.scaler.scale(loss / cfg.grad_accum).backward()
            total += loss.detach()
        loss_value = (total / cfg.grad_accum).item()  # the same number on every rank (a global mean)
        finite_loss = math.isfinite(loss_value)
        if not finite_loss and not self.scaler.enabled:
            self._diverged(f"the loss is {loss_value}")
        self.scaler.unscale_(self.backbone_params + self.head_params)
        norm = global_grad_norm(self.backbone_params, self.head_params, self.device).item()
        self.grad_norm = norm
        if self.scaler.update(finite_loss and math.isfinite(norm)):
            clip_gradients(self.backbone_params + self.head_params, norm, cfg.grad_clip)
            with self.head.restrict_update(self.opt_head):
                self.opt_head.step()
            self.opt_backbone.step()
        else:
            self.head.reset_sampled()
            if not self.scaler.enabled:
                self._diverged(f"the gradient norm is {norm}")
            if self.scaler.gave_up:
                self._diverged(f"the fp16 loss scaler gave up after {self.scaler.consecutive_skips} overflowing steps in a row "
                               f"(loss {loss_value})")
            log.warning("step %d: gradients overflowed in fp16, step skipped, loss scale now %g",
                        self.step + 1, self.scaler.scale_value)
        self.opt_backbone.zero_grad(set_to_none=True)
        self.opt_head.zero_grad(set_to_none=True)
        return loss_value

    def _diverged(self, what: str) -> None:
        last = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written"
        message = f"step {self.step + 1} (epoch {self.epoch + 1}): {what}; training stopped, {last}"
        self.logger.file_only(f"stopped: {message}")
        raise NonFiniteLossError(message)

    def _log_progress(self, meter: Meter, loss: float) -> None:
        r = meter.report(self.step)
        scale = f" scale {self.scaler.scale_value:g}" if self.scaler.enabled else ""
        self.logger.info(
            f"[step {self.step}] epoch {self.epoch + 1} ({self.step_in_epoch}/{self.steps_per_epoch}) loss {loss:.6f} "
            f"avg {r['loss_avg']:.6f} lr {self.lr:.6g} grad-norm {self.grad_norm:.4g} images/s {r['images_per_s']:.1f}"
            f"{scale} eta {r['eta']}")
        scalars = {"train/loss": r["loss_avg"], "train/lr": self.lr, "train/images_per_s": r["images_per_s"],
                   "train/grad_norm": self.grad_norm}
        if self.scaler.enabled:
            scalars["train/loss_scale"] = self.scaler.scale_value
        self.logger.scalars(self.step, scalars)

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
        def run() -> bool:
            try:
                results = validation.run(self.backbone, self.val_targets, self.device, self.cfg.precision,
                                         self.cfg.batch_size, self.cfg.channels_last)
            except ImportError as e:
                log.warning("verification skipped: the evaluation package is not available (%s)", e)
                return False
            except UserError as e:
                # The sets were read at set-up; a set that fails now (a file replaced or damaged since)
                # costs this report, not the run.
                self.logger.info(f"verification at step {self.step} skipped: {e}")
                return False
            for line in validation.seed_lines(results):
                self.logger.info(line)
            summary = validation.summarize(results)
            self.last_val = summary
            key = self.cfg.best_target or next(iter(summary), None)
            self.threshold = summary[key]["threshold_cos"] if key in summary else None
            self.logger.scalars(self.step, {f"val/{n}/accuracy_flip": v["accuracy_flip"] for n, v in summary.items()})
            target = self.cfg.best_target
            if target and target in summary:
                value = summary[target]["accuracy_flip"]
                if self.best["value"] is None or value > self.best["value"]:
                    self.best = {"target": target, "value": value, "step": self.step}
                    return True
            return False

        return bool(self._on_rank0(run))

    def save(self, best: bool = False) -> Optional[Path]:
        """Write a checkpoint of the current step (a collective: every rank calls it). Returns its path on rank 0."""
        head_state = self.head.full_state_dict()
        head_opt = ckpt_io.gather_sharded_optimizer(self.opt_head, self.head.shard_sizes)
        rngs = dist.all_gather_object(ckpt_io.capture_rng(self.device))
        samplers = dist.all_gather_object(_to_cpu(self.head.sampler_state()))
        epoch_label = self.epoch + 1 if self.step_in_epoch else self.epoch
        path = self.out / ckpt_io.checkpoint_name(epoch_label, self.step)

        def write() -> Path:
            payload = {
                "config": self.cfg.to_dict(),
                "backbone": _to_cpu(self.backbone.state_dict()),
                "head": _to_cpu(head_state),
                "head_layout": self.head.layout(),
                "optimizer": _to_cpu(self.opt_backbone.state_dict()),
                "head_optimizer": head_opt,
                "scheduler": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rngs,
                "head_sampler": samplers,
                "sampler": {"epoch": self.epoch, "images": self.step_in_epoch * self.cfg.grad_accum * self.cfg.batch_size * self.world,
                            "seed": self.cfg.seed},
                "epoch": self.epoch,
                "step": self.step,
                "world_size": self.world,
                "threshold": self.threshold,
                "val": self.last_val,
                "best": self.best,
            }
            ckpt_io.save_checkpoint(path, payload)
            if best:
                ckpt_io.copy_as_best(path)
            ckpt_io.prune_checkpoints(self.out, self.cfg.keep_checkpoints)
            return path

        self._on_rank0(write)
        self.last_checkpoint = path
        self._last_saved_step = self.step
        self.logger.info(f"checkpoint {path}" + (f" (best {self.best['target']} so far: {self.best['value']:.5f})" if best else ""))
        return path


def train(cfg: TrainConfig, dataset: Optional[Dataset] = None) -> TrainResult:
    """Train as `cfg` says (one process, or this rank of a torchrun job); see `Trainer`."""
    return Trainer(cfg, dataset).fit()


__all__ = ["Trainer", "TrainResult", "NonFiniteLossError", "train", "resolve_device"]
