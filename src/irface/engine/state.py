"""A training run's parts and its position: `build_components(cfg)` and `TrainState`.

`Components` are what the config builds (backbone, head, optimizers, loss scaler, schedule);
`TrainState` is where the run stands (step, epoch, verification figures). `TrainState.state_dict` and
`load_state_dict` are the one definition of a checkpoint's contents (keys in docs/training.md), with
a format version: a checkpoint of another version is refused with one line.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from irface import dist
from irface.config import TrainConfig
from irface.engine import checkpoint as ckpt_io
from irface.engine.optim import LRSchedule, build_optimizer
from irface.engine.precision import LossScaler
from irface.errors import ConfigError, ModelFileError, first_line
from irface.heads.partial_fc import PartialFC

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # of the checkpoint's contents; bump when `TrainState.state_dict` changes them


def _to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


@dataclasses.dataclass
class Components:
    """What `build_components` makes from a config. `model` is the backbone as the step calls it (DDP
    and `torch.compile` wrapped by `wrap`); `backbone` is the bare module whose state is saved."""

    cfg: TrainConfig
    device: torch.device
    rank: int
    world: int
    steps_per_epoch: int
    backbone: nn.Module
    head: PartialFC
    opt_backbone: torch.optim.Optimizer
    opt_head: torch.optim.Optimizer
    scaler: LossScaler
    schedule: LRSchedule
    model: Optional[nn.Module] = None

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = self.backbone
        self.backbone_params = [p for p in self.backbone.parameters() if p.requires_grad]
        self.head_params = [p for p in self.head.parameters() if p.requires_grad]

    def wrap(self) -> "Components":
        """DDP over the ranks (several processes) and `torch.compile` (cfg.compile) around the backbone."""
        model: nn.Module = self.backbone
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DDP(self.backbone, device_ids=ids, gradient_as_bucket_view=True)
        if self.cfg.compile:
            model = torch.compile(model)
        self.model = model
        return self


def _load_init_backbone(backbone: nn.Module, cfg: TrainConfig) -> None:
    from irface.models.loading import load_backbone

    model, info = load_backbone(cfg.init_backbone)
    try:
        backbone.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError:
        raise ModelFileError(f"init_backbone={cfg.init_backbone}: holds {info.get('arch')}, which does not fit "
                             f"network={cfg.network} as configured (set network, network_layers, "
                             f"network_widths, stem_width, embedding_size, image_size to match)") from None
    log.info("backbone initialised from %s (%s)", cfg.init_backbone, info.get("kind"))


def build_components(cfg: TrainConfig, device: torch.device, steps_per_epoch: int, rank: int = 0, world: int = 1,
                     init_backbone: bool = True, fused: bool = False) -> Components:
    """Backbone (the same initial weights on every rank: seeded by cfg.seed), this rank's share of the head,
    both optimizers (`fused` kernels for SGD), the loss scaler and the schedule. `init_backbone`: load
    cfg.init_backbone if set (not when resuming)."""
    from irface.models import create_backbone

    torch.manual_seed(cfg.seed)
    try:
        backbone = create_backbone(cfg.network, **cfg.backbone_kwargs())
    except KeyError as e:
        raise ConfigError(f"config key 'network': {e.args[0]}") from None
    except ValueError as e:
        raise ConfigError(f"config key 'network': {e}") from None
    if cfg.init_backbone and init_backbone:
        _load_init_backbone(backbone, cfg)
    backbone = backbone.to(device)
    if cfg.channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    try:
        head = PartialFC(cfg.head, cfg.embedding_size, cfg.num_classes, cfg.head_params(), cfg.sample_rate,
                         rank, world, seed=cfg.seed).to(device)
    except ValueError as e:
        raise ConfigError(f"config key 'head': {e}") from None
    schedule = LRSchedule.from_config(cfg, steps_per_epoch, world)
    return Components(cfg, device, rank, world, steps_per_epoch, backbone, head,
                      build_optimizer(backbone, cfg, schedule.lr_at(0), fused),
                      build_optimizer(head, cfg, schedule.lr_at(0)), LossScaler(cfg.precision == "fp16"), schedule)


@dataclasses.dataclass
class TrainState:
    """Where a run stands: optimizer steps taken, the epoch and the step in it, the latest verification
    figures (`val`, `threshold`) and the best so far; `rng` is a resumed rank's random streams, restored
    once the data iterator exists."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    threshold: Optional[float] = None
    cluster_threshold: Optional[float] = None
    val: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    best: dict[str, Any] = dataclasses.field(default_factory=lambda: {"target": None, "value": None, "step": None})
    rng: Optional[dict[str, Any]] = None

    def state_dict(self, parts: Components) -> Optional[dict[str, Any]]:
        """The checkpoint's contents on rank 0 (None on the others). A collective: every rank calls it."""
        cfg = parts.cfg
        head_state = parts.head.full_state_dict()
        head_opt = ckpt_io.gather_sharded_optimizer(parts.opt_head, parts.head.shard_sizes)
        rngs = dist.all_gather_object(ckpt_io.capture_rng(parts.device))
        samplers = dist.all_gather_object(_to_cpu(parts.head.sampler_state()))
        if parts.rank != 0:
            return None
        return {
            "version": FORMAT_VERSION,
            "config": cfg.to_dict(),
            "backbone": _to_cpu(parts.backbone.state_dict()),
            "head": _to_cpu(head_state),
            "head_layout": parts.head.layout(),
            "optimizer": _to_cpu(parts.opt_backbone.state_dict()),
            "head_optimizer": head_opt,
            "scheduler": parts.schedule.state_dict(),
            "scaler": parts.scaler.state_dict(),
            "rng": rngs,
            "head_sampler": samplers,
            "sampler": {"epoch": self.epoch, "images": self.step_in_epoch * cfg.grad_accum * cfg.batch_size * parts.world,
                        "seed": cfg.seed},
            "epoch": self.epoch,
            "step": self.step,
            "world_size": parts.world,
            "threshold": self.threshold,
            "cluster_threshold": self.cluster_threshold,
            "val": self.val,
            "best": self.best,
        }

    def load_state_dict(self, ckpt: dict[str, Any], parts: Components, path: Path) -> None:
        """Restore the parts and this state from a checkpoint `state_dict` wrote (read from `path`)."""
        cfg = parts.cfg
        if ckpt.get("version") != FORMAT_VERSION:
            raise ModelFileError(f"{path}: checkpoint format version {ckpt.get('version')}; this irface reads "
                                 f"version {FORMAT_VERSION}")
        try:
            parts.backbone.load_state_dict(ckpt["backbone"], strict=True)
            parts.head.load_full_state_dict(ckpt["head"])
        except (RuntimeError, ValueError) as e:
            raise ModelFileError(f"{path}: does not fit the configured model ({first_line(e)})") from None
        try:
            parts.opt_backbone.load_state_dict(ckpt["optimizer"])
            parts.opt_head.load_state_dict(ckpt_io.shard_optimizer_state(
                ckpt["head_optimizer"], parts.opt_head, cfg.num_classes, parts.head.start, parts.head.end))
        except (ValueError, KeyError, IndexError) as e:
            log.warning("%s: optimizer state not restored (the optimizer settings changed?): %s", path, e)
        parts.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        sampler = ckpt["sampler"]
        self.epoch = int(sampler["epoch"])
        per_micro = cfg.batch_size * parts.world
        images = int(sampler["images"])
        self.step_in_epoch = (images // per_micro) // cfg.grad_accum
        if images % (per_micro * cfg.grad_accum):
            log.warning("%s: %d images into epoch %d is not a whole number of steps of %d; continuing at step %d of the epoch",
                        path, images, self.epoch + 1, per_micro * cfg.grad_accum, self.step_in_epoch)
        if self.step_in_epoch >= parts.steps_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        rngs, samplers = ckpt["rng"], ckpt["head_sampler"]
        if len(rngs) == parts.world:
            self.rng = rngs[parts.rank]
            if len(samplers) == parts.world:
                parts.head.load_sampler_state(samplers[parts.rank])
        else:
            log.warning("%s: saved by %d processes, resumed by %d: random streams start afresh", path, len(rngs), parts.world)
        self.threshold, self.cluster_threshold = ckpt["threshold"], ckpt.get("cluster_threshold")
        self.val = ckpt["val"] or {}
        if ckpt["best"] and ckpt["best"].get("target") == cfg.best_target:
            self.best = dict(ckpt["best"])
