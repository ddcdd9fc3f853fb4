"""Checkpoint files: names, atomic writes, a digest verified on load, pruning, RNG and sharded state.

A checkpoint is one `torch.save`d dict that loads with `weights_only=True` (tensors, numbers,
strings, lists, dicts only). Keys (see docs/training.md): `format`, `version`, `config`, `backbone`,
`head`, `head_layout`, `optimizer`, `head_optimizer`, `scheduler`, `scaler`, `rng` (one entry per
rank), `head_sampler` (per rank), `sampler`, `epoch`, `step`, `threshold`, `cluster_threshold`, `val`, `digest`.
The head and its optimizer state are gathered into whole tensors (all classes), so a run can resume
on a different number of ranks.
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from irface import dist
from irface.errors import ModelFileError, OutputError
from irface.models.loading import CHECKPOINT_FORMAT, is_torchscript_archive, list_checkpoints, load_weights_only
from irface.utils import atomic_write

log = logging.getLogger(__name__)

BEST_NAME = "best.pt"


def checkpoint_name(epoch: int, step: int) -> str:
    """`checkpoint-e0003-s00012000.pt`: zero-padded so that names sort like steps."""
    return f"checkpoint-e{epoch:04d}-s{step:08d}.pt"


def tensor_digest(*states: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every tensor (the completeness check)."""
    h = hashlib.sha256()
    for state in states:
        for key in sorted(state):
            t = state[key].detach().cpu().contiguous().reshape(-1)
            h.update(f"{key}|{t.dtype}|{tuple(state[key].shape)}|".encode())
            h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically, with the digest of the weights; a failure leaves earlier files untouched."""
    payload = dict(payload, format=CHECKPOINT_FORMAT)
    payload["digest"] = tensor_digest(payload["backbone"], payload["head"])
    try:
        with atomic_write(path, "wb") as f:
            torch.save(payload, f)
    except (OSError, OutputError) as e:
        reason = e.reason if isinstance(e, OutputError) else (e.strerror or e)
        raise ModelFileError(f"{path}: could not write the checkpoint ({reason}); "
                             "earlier checkpoints are untouched") from None


def load_checkpoint(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read an engine checkpoint (weights only) and check its digest; `ModelFileError` if it is not whole."""
    path = Path(path)
    if is_torchscript_archive(path):  # torch.load would hand it to torch.jit.load
        raise ModelFileError(f"{path}: a TorchScript model, not a training checkpoint")
    ckpt = load_weights_only(path, "a readable checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path}: not an irface training checkpoint (no format: {CHECKPOINT_FORMAT})")
    missing = [k for k in ("backbone", "head", "step", "epoch", "digest") if k not in ckpt]
    if missing:
        raise ModelFileError(f"{path}: incomplete checkpoint (missing {', '.join(missing)})")
    if verify and tensor_digest(ckpt["backbone"], ckpt["head"]) != ckpt["digest"]:
        raise ModelFileError(f"{path}: the weights do not match the digest stored with them (damaged file)")
    return ckpt


def find_checkpoint(spec: str, output_dir: Path) -> Optional[tuple[Path, dict[str, Any]]]:
    """Resolve `resume`: "auto" = newest whole checkpoint in output_dir (None if there is none),
    a file = that checkpoint, a folder = its newest whole checkpoint. Damaged files are skipped, with
    a warning, in favour of the next newest."""
    if not spec:
        return None
    folder = output_dir if spec == "auto" else Path(spec)
    if spec != "auto" and not folder.exists():
        raise ModelFileError(f"resume={spec}: no such file or folder")
    if folder.is_file():
        return folder, load_checkpoint(folder)
    for path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path)
        except ModelFileError as e:
            log.warning("skipping %s", e)
    if spec != "auto":
        raise ModelFileError(f"resume={spec}: no whole checkpoint (checkpoint-*.pt) in this folder")
    return None


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the `keep` newest step checkpoints (0 keeps all); `best.pt` is never touched."""
    if keep <= 0:
        return
    for path in list_checkpoints(folder)[:-keep]:
        try:
            path.unlink()
        except OSError as e:
            log.warning("could not remove old checkpoint %s (%s)", path, e)


def copy_as_best(path: Path) -> Path:
    best = path.parent / BEST_NAME
    with atomic_write(best, "wb") as out, open(path, "rb") as src:
        shutil.copyfileobj(src, out)
    return best


# --- random number generators -------------------------------------------------------------------
def capture_rng(device: torch.device) -> dict[str, Any]:
    """This process's RNG states, in types that `weights_only=True` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    assert isinstance(keys, np.ndarray)  # the legacy tuple, as get_state() returns by default
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# --- the sharded head's optimizer state -----------------------------------------------------------
def _indexed_params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def gather_sharded_optimizer(optimizer: torch.optim.Optimizer, shard_sizes: list[int]) -> Optional[dict[str, Any]]:
    """The optimizer's state with every row-sharded tensor gathered whole (on rank 0; None elsewhere).

    A collective: every rank calls it. State tensors shaped like their parameter (momentum, Adam's
    moments) are concatenated across ranks; others (Adam's step count) are the same on every rank.
    """
    sd = optimizer.state_dict()
    params = _indexed_params(optimizer)
    state: dict[int, dict[str, Any]] = {}
    for idx in sorted(sd["state"]):
        state[idx] = {}
        for key in sorted(sd["state"][idx]):
            value = sd["state"][idx][key]
            if torch.is_tensor(value) and value.shape == params[idx].shape:
                value = dist.gather_rows(value, shard_sizes)
                value = None if value is None else value.cpu()
            elif torch.is_tensor(value):
                value = value.cpu()
            state[idx][key] = value
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    return {"state": state, "param_groups": sd["param_groups"]}


def shard_optimizer_state(state: dict[str, Any], optimizer: torch.optim.Optimizer, num_classes: int,
                          start: int, end: int) -> dict[str, Any]:
    """This rank's rows [start, end) of a gathered optimizer state, ready for `load_state_dict`."""
    params = _indexed_params(optimizer)
    out: dict[int, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        idx = int(idx)
        out[idx] = {}
        for key, value in entry.items():
            whole = (torch.is_tensor(value) and idx < len(params) and value.ndim >= 1
                     and value.shape[0] == num_classes and value.shape[1:] == params[idx].shape[1:])
            out[idx][key] = value[start:end].clone() if whole else value
    return {"state": out, "param_groups": state["param_groups"]}
