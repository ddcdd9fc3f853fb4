"""Verification during training: the one place the engine talks to `irface.eval`.

`irface.eval.run_verification(embed_fn, data_dir, targets, batch_size)` runs the community protocol
(10 folds, flip) on `.bin` sets; here we only give it an embedding function over the current backbone
and turn its results into log lines and plain numbers for checkpoints.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from irface.device import DTYPES
from irface.errors import DataError

log = logging.getLogger(__name__)


def open_targets(val_targets: list[str], data_path: str, image_size: int) -> dict[str, Path]:
    """The `.bin` sets to verify on (name -> path), looked up beside the training data; missing ones are
    skipped with one warning. Every set is read once here: a hostile pickle, a malformed set or an image
    that cannot be decoded stops the run with one line before any training, not at the end of the first
    epoch. Images of another size than `image_size` are resized when verifying, as `irface eval` does."""
    from irface.data.bin import find_targets, read_bin
    from irface.data.images import decode_image

    base = Path(data_path) if data_path else Path(".")
    targets, missing = find_targets(val_targets, base.parent if base.is_file() else base)
    if missing:
        log.warning("verification sets not found, skipped: %s", ", ".join(map(str, missing)))
    for path in targets.values():
        bins, _ = read_bin(path)  # allow-list unpickling: a .bin cannot run code
        if not bins:
            raise DataError(f"{path}: the verification set holds no pairs")
        decode_image(bins[0], image_size, f"{path} image 0")
    return targets


def run(backbone: nn.Module, targets: dict[str, Path], device: torch.device, precision: str,
        batch_size: int, channels_last: bool = False) -> dict[str, Any]:
    """Verify on every target; returns the eval package's result objects by name. The backbone embeds in
    eval mode and is left in the mode it was in (`module_embed_fn`)."""
    from irface.eval import module_embed_fn, run_verification

    embed = module_embed_fn(backbone, device, DTYPES[precision], channels_last)
    by_dir: dict[Path, list[str]] = defaultdict(list)
    for name, path in targets.items():
        by_dir[path.parent].append(name)
    results: dict[str, Any] = {}
    for folder, names in by_dir.items():
        results.update(run_verification(embed, folder, names, batch_size))
    return results


def summarize(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Plain numbers for checkpoints, JSON and TensorBoard."""
    return {name: {"accuracy_flip": float(r.accuracy_flip), "accuracy_flip_std": float(r.accuracy_flip_std),
                   "threshold_cos": float(r.threshold_cos), "cluster_threshold": r.cluster_threshold}
            for name, r in results.items()}
