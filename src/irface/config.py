"""Typed training configuration: defaults in one dataclass, YAML for overrides, `key=value` on top.

The seed's own keys (`num_classes`, `image_size`, `batch_size`, `epoch_size`, `schedule`, `gamma`,
`lr`, `momentum`, `weight_decay`) keep the seed's names and meanings. Derived values (the scaled
learning rate, the total batch) are methods and are never written back into the config, so the saved
resolved config is exactly what the user asked for.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from irface.errors import ConfigError, first_line
from irface.utils import atomic_write

# irface.heads' registry (`list_heads()`), spelled here so that the config and the CLI stay importable
# without torch; tests/test_heads.py checks that the two agree.
HEADS = ("softmax", "arcface", "cosface", "combined", "adaface", "magface", "subcenter", "curricularface")
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULERS = ("multistep", "poly", "cosine")
OPTIMIZERS = ("sgd", "adamw")


@dataclass
class TrainConfig:
    """Every training setting, with the seed's values as defaults where the seed has one."""

    # --- model ---
    network: str = "iresnet100"  #: backbone name from `irface.models.list_backbones()`
    embedding_size: int = 512  #: size of the face embedding (the "E" block's output)
    dropout: float = 0.0  #: dropout before the embedding FC (ViT: its drop_rate; mbf has no dropout)
    image_size: int = 112  #: seed key: side of the square aligned face
    grad_checkpointing: bool = False  #: recompute activations in backward to save memory
    network_layers: list[int] = field(default_factory=list)  #: blocks per stage, replacing the network's depths ([] = the network's own; mbf: 4 counts, ViT: [depth])
    network_widths: list[int] = field(default_factory=list)  #: channels per stage ([] = 64, 128, 256, 512; ViT: [width]; not mbf)
    stem_width: int = 0  #: channels of the stem conv (0 = the first stage's width)
    drop_path_rate: Optional[float] = None  #: ViT: stochastic depth of the last block (None = the network's own: 0.1, vit_l 0.05)
    mask_ratio: Optional[float] = None  #: ViT: fraction of patch tokens masked in training (None = the network's own: 0.1, vit_l 0.05)

    # --- head (loss) ---
    head: str = "softmax"  #: softmax (what the seed trains), arcface, cosface, combined, adaface, magface, subcenter or curricularface
    num_classes: int = 85742  #: seed key: identities in the training set
    scale: float = 64.0  #: s of the margin heads
    margin: Optional[float] = None  #: m: the head's own default when unset (arcface 0.5, cosface 0.4, adaface 0.4, subcenter 0.5, curricularface 0.5); magface has none
    margins: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.0])  #: m1, m2, m3 of `combined`
    head_options: dict[str, Any] = field(default_factory=dict)  #: the head's other parameters by name, e.g. {k: 3, base: arcface} (subcenter), {h: 0.333, t_alpha: 0.01} (adaface), {l_a: 10, u_a: 110, l_m: 0.45, u_m: 0.8, lambda_g: 35} (magface), {t_alpha: 0.01} (curricularface); see docs/training.md
    sample_rate: float = 1.0  #: Partial FC: fraction of class centres used per step (1.0 = all)

    # --- data ---
    data_path: str = ""  #: folder with train.rec/train.idx/property (or an image folder)
    val_targets: list[str] = field(default_factory=lambda: ["lfw", "cfp_fp", "agedb_30"])  #: `.bin` names beside the data
    num_workers: int = 4  #: DataLoader worker processes per rank
    pin_memory: bool = True  #: page-locked host memory (only used with CUDA)
    prefetch_factor: int = 2  #: batches prefetched per worker
    persistent_workers: bool = True  #: keep workers alive between epochs
    max_bad_images: int = 100  #: undecodable training images skipped (with a warning) before failing

    # --- optimisation ---
    optimizer: str = "sgd"  #: sgd or adamw
    lr: float = 0.1  #: seed key: base learning rate, before scaling by total batch / lr_batch_reference
    lr_batch_reference: int = 512  #: lr is multiplied by total_batch / this; 0 disables the scaling
    momentum: float = 0.9  #: seed key: SGD momentum (AdamW beta1)
    weight_decay: float = 5e-4  #: seed key
    wd_exclude_norm_bias: bool = False  #: exclude BN, bias and PReLU from weight decay (the seed does not)
    grad_clip: float = 0.0  #: clip the global gradient norm to this (0 = off)
    grad_accum: int = 1  #: micro-batches accumulated per optimizer step

    # --- schedule ---
    epoch_size: int = 25  #: seed key: number of epochs
    scheduler: str = "multistep"  #: multistep (the seed's), poly or cosine
    schedule: list[int] = field(default_factory=lambda: [10, 16, 21])  #: seed key: epochs where lr *= gamma
    gamma: float = 0.1  #: seed key
    poly_power: float = 2.0  #: power of the polynomial schedule
    warmup_epochs: float = 0.0  #: linear warm-up length, in epochs (fractions allowed)

    # --- run ---
    batch_size: int = 128  #: seed key: per device (per process)
    max_steps: int = 0  #: stop after this many optimizer steps (0 = run every epoch); for smoke runs
    max_minutes: float = 0.0  #: stop (with a checkpoint) after this much training time (0 = no limit); for time budgets
    seed: int = 0  #: seeds model init, sampler order and augmentation
    output_dir: str = "runs/default"  #: checkpoints, train.log and the resolved config go here
    resume: str = ""  #: "" (fresh), "auto" (newest checkpoint in output_dir) or a checkpoint path
    init_backbone: str = ""  #: start from these backbone weights (any model file irface reads)
    device: str = "auto"  #: auto, cpu, cuda or cuda:N
    precision: str = "fp32"  #: fp32, bf16 (autocast) or fp16 (autocast + gradient scaler)
    channels_last: bool = False  #: NHWC memory format for the convolutions
    compile: bool = False  #: torch.compile the backbone
    deterministic: bool = False  #: deterministic kernels (bit-exact resume on CPU)

    # --- logging, checkpoints, verification ---
    log_every: int = 50  #: steps between log lines
    tensorboard: bool = True  #: TensorBoard scalars in output_dir/tensorboard (when the package is installed)
    checkpoint_every: int = 0  #: steps between checkpoints (0 = only at epoch end)
    keep_checkpoints: int = 3  #: newest step checkpoints kept
    eval_every: int = 0  #: steps between verification passes (0 = only at epoch end)
    best_target: str = ""  #: keep a `best` checkpoint by this verification target's Accuracy-Flip

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"config key '{key}': {why}")

        for key, choices in (("head", HEADS), ("precision", PRECISIONS), ("scheduler", SCHEDULERS),
                             ("optimizer", OPTIMIZERS)):
            if getattr(self, key) not in choices:
                raise bad(key, f"{getattr(self, key)!r} is not one of {', '.join(choices)}")
        for key in ("embedding_size", "num_classes", "image_size", "batch_size", "epoch_size", "grad_accum", "lr",
                    "gamma"):
            if getattr(self, key) <= 0:
                raise bad(key, f"must be positive, got {getattr(self, key)}")
        for key in ("max_steps", "num_workers", "log_every", "checkpoint_every", "eval_every",
                    "keep_checkpoints", "max_bad_images", "lr_batch_reference", "max_minutes", "stem_width"):
            if getattr(self, key) < 0:
                raise bad(key, f"must not be negative, got {getattr(self, key)}")
        if not 0.0 < self.sample_rate <= 1.0:
            raise bad("sample_rate", f"must be in (0, 1], got {self.sample_rate}")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", f"must be in [0, 1), got {self.dropout}")
        if list(self.schedule) != sorted(self.schedule):
            raise bad("schedule", f"epochs must be in increasing order, got {self.schedule}")
        if len(self.margins) != 3:
            raise bad("margins", f"needs three values m1, m2, m3, got {self.margins}")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epoch_size:
            raise bad("warmup_epochs", f"must be between 0 and epoch_size ({self.epoch_size}), got {self.warmup_epochs}")
        for key in ("network_layers", "network_widths"):
            if any(v <= 0 for v in getattr(self, key)):
                raise bad(key, f"entries must be positive, got {getattr(self, key)}")
        if self.network_layers and self.network_widths and len(self.network_layers) != len(self.network_widths):
            raise bad("network_widths", f"needs one width per stage of network_layers {self.network_layers}, got {self.network_widths}")
        for key in ("drop_path_rate", "mask_ratio"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value < 1.0:
                raise bad(key, f"must be in [0, 1), got {value}")
        if self.best_target and self.best_target not in [Path(t).stem for t in self.val_targets]:
            raise bad("best_target", f"{self.best_target!r} is not one of val_targets {self.val_targets}")
        if self.head == "softmax" and self.sample_rate < 1.0:
            raise bad("sample_rate", "Partial FC sampling needs a margin head, not softmax")
        for key in ("s", "m"):
            if key in self.head_options:
                raise bad("head_options", f"set {key} with the key {'scale' if key == 's' else 'margin'}, not here")
        if any(not isinstance(v, (int, float, str, bool)) for v in self.head_options.values()):
            raise bad("head_options", f"values must be numbers, strings or booleans, got {self.head_options}")
        if self.head == "magface" and self.margin is not None:
            raise bad("margin", "magface's margin follows the feature norm from l_m to u_m: set those in head_options")

    # Derived values: computed, never stored.
    def total_batch(self, world_size: int) -> int:
        """Images per optimizer step across all processes."""
        return self.batch_size * world_size * self.grad_accum

    def scaled_lr(self, world_size: int) -> float:
        """The seed's linear scaling: lr x total batch / 512 (0.1 x 1024 / 512 = 0.2 on 8 x 128)."""
        if self.lr_batch_reference == 0:
            return self.lr
        return self.lr * self.total_batch(world_size) / self.lr_batch_reference

    def backbone_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `irface.models.create_backbone(cfg.network, ...)`."""
        kwargs: dict[str, Any] = {"embedding_size": self.embedding_size, "dropout": self.dropout,
                                  "input_size": self.image_size, "grad_checkpointing": self.grad_checkpointing}
        if self.network_layers:
            kwargs["layers"] = list(self.network_layers)
        if self.network_widths:
            kwargs["widths"] = list(self.network_widths)
        if self.stem_width:
            kwargs["stem_width"] = self.stem_width
        for key in ("drop_path_rate", "mask_ratio"):  # only the ViTs take them; others refuse them by name
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        return kwargs

    def head_params(self) -> dict[str, Any]:
        """Keyword arguments for `irface.heads.create_head` for the configured head."""
        if self.head == "softmax":
            return dict(self.head_options)
        if self.head == "combined":
            m1, m2, m3 = self.margins
            return {"s": self.scale, "m1": m1, "m2": m2, "m3": m3, **self.head_options}
        params: dict[str, Any] = {"s": self.scale}
        if self.margin is not None:
            params["m"] = self.margin
        return {**params, **self.head_options}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, field_names(), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against the field's type; ints are accepted for floats, nothing else is converted."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"config key '{key}': expected a mapping of name: value, got {value!r}")
        return dict(value)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list of {item_type.__name__}, got {value!r}")
        return [_coerce(key, v, item_type) for v in value]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str) and _SCIENTIFIC.match(value.strip()):
        return float(value)  # YAML 1.1 reads `1e-4` (no dot) as a string
    if annotation is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. data_path=2024 or resume=3
    if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
        raise ConfigError(f"config key '{key}': expected {annotation.__name__}, got {value!r}")
    return value


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` -> (key, value); the value is read as YAML (`schedule=[8,14]`, `compile=true`)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def build_config(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a checked config from a mapping; unknown keys and wrong types raise `ConfigError`."""
    types_ = _field_types()
    checked = {}
    for key, value in values.items():
        if key not in types_:
            raise ConfigError(f"{source}: unknown config key '{key}'{_suggest(key)}")
        checked[key] = _coerce(key, value, types_[key])
    return TrainConfig(**checked)


def load_config(path: Optional[str | Path] = None, overrides: Iterable[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file at `path`, then `key=value` overrides, checked together."""
    values: dict[str, Any] = {}
    source = "config"
    if path:
        path = Path(path)
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({first_line(e)})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of key: value, got {type(loaded).__name__}")
        values.update(loaded)
    for text in overrides:
        key, value = parse_override(text)
        if key not in _field_types():
            raise ConfigError(f"override '{text}': unknown config key '{key}'{_suggest(key)}")
        values[key] = value
    return build_config(values, source)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a config saved in a checkpoint; keys unknown to this version are dropped, not fatal."""
    known = set(field_names())
    return build_config({k: v for k, v in values.items() if k in known}, "checkpoint config")


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    with atomic_write(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)


def describe_keys() -> str:
    """Markdown table of every key, its default and the `#:` comment beside it in this file."""
    import inspect
    import re

    source = inspect.getsource(TrainConfig)
    docs = dict(re.findall(r"^\s+(\w+): .*?#: (.*)$", source, flags=re.M))
    sections = re.findall(r"^\s+# --- (.*) ---$|^\s+(\w+): ", source, flags=re.M)
    lines = ["| key | default | meaning |", "|---|---|---|"]
    defaults = TrainConfig().to_dict()
    for section, key in sections:
        if section:
            lines.append(f"| **{section}** | | |")
        elif key in defaults:
            lines.append(f"| `{key}` | `{defaults[key]!r}` | {docs.get(key, '')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print("# Configuration keys\n")
    print("Set in a YAML file (`irface train --config FILE`) or as `key=value` arguments after it.")
    print("Generated by `python -m irface.config > docs/config.md`; a test keeps it in step with the code.\n")
    print(describe_keys(), end="")
