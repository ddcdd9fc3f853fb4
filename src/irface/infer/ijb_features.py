"""The IJB image-feature pass: every photo of the meta list aligned on its 5 landmarks, embedded with
its mirror image, streamed through a DataLoader, and kept in a resumable cache.

The stored feature of image i is float32 [embedding | mirror's embedding] (2E), raw network outputs:
the reference's `img_feats`. The protocol (`irface.eval.ijb`) turns them into the mode's features.

Cache (`features` path given): chunks of `CHUNK` images are written as they complete, each atomically,
to `<features>.parts/`; a killed run finds them there and embeds only the rest. When all are done
they are joined into `<features>` (an .npz: `features`, `present`, `mirrored`, the set's fingerprint)
and the parts removed. An existing `<features>` of the same set is read instead of embedding.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from irface.data.ijb import LANDMARKS, IJBMeta, meta_name
from irface.data.images import crop_shape
from irface.data.progress import progress_bar
from irface.errors import DataError, ModelFileError
from irface.data.align import align_face
from irface.eval.verification import run_embed
from irface.infer.images import open_rgb
from irface.utils import atomic_write

log = logging.getLogger(__name__)

CHUNK = 4096
FORMAT = "irface-ijb-features-1"


@dataclass
class IJBFeatures:
    feats: np.ndarray            # float32 (N, 2E) [plain | mirror] when mirrored, else (N, E)
    mirrored: bool
    present: np.ndarray          # bool (N,): False for images skipped (--skip-missing)
    skipped: list[str] = field(default_factory=list)   # one line per skipped image


def _check_landmarks(points: np.ndarray, shape: tuple[int, ...], where: str) -> None:
    h, w = shape[:2]
    inside = (points[:, 0] >= 0) & (points[:, 0] < w) & (points[:, 1] >= 0) & (points[:, 1] < h)
    if not inside.any():
        raise DataError(f"{where}: all 5 landmarks lie outside the {w}x{h} image")


class AlignedFaces(Dataset):
    """(index, aligned uint8 RGB crop, error line or "") for the meta's images `indices`."""

    def __init__(self, meta: IJBMeta, indices: np.ndarray, size: int | tuple[int, int]):
        self.image_dir = meta.image_dir
        self.names = [meta.names[i] for i in indices]
        self.landmarks = meta.landmarks[indices]
        self.indices = np.asarray(indices)
        self.size = size
        self.meta_file = f"meta/{meta_name(meta.target, LANDMARKS)}"

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = int(self.indices[k])
        path = self.image_dir / self.names[k]
        try:
            image = open_rgb(path)
            _check_landmarks(self.landmarks[k], image.shape, f"{path} (line {i + 1} of {self.meta_file})")
            # The reference parses landmarks to float32; the transform is then solved in float64.
            crop = align_face(image, self.landmarks[k], self.size)
            return i, crop, ""
        except DataError as e:
            return i, np.zeros((*crop_shape(self.size), 3), np.uint8), str(e)


def _collate(batch):
    idx, crops, errors = zip(*batch)
    return np.asarray(idx, dtype=np.int64), np.stack(crops), list(errors)


def _load_cache(path: Path, meta: IJBMeta, flip: bool) -> IJBFeatures:
    try:
        with np.load(path, allow_pickle=False) as z:
            info = json.loads(str(z["info"]))
            feats, present = z["features"], z["present"]
            skipped = [str(s) for s in z["skipped"]]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: not an irface IJB features file ({e})") from None
    if info.get("format") != FORMAT or info.get("set") != meta.fingerprint():
        raise DataError(f"{path}: features of another image list (not {meta.root}'s {len(meta.names)} images); "
                        "give another --features file or delete this one")
    if flip and not info.get("mirrored"):
        raise DataError(f"{path}: holds no mirror-image features (made with --no-flip); flip needs them")
    return IJBFeatures(feats, bool(info.get("mirrored")), present.astype(bool), skipped)


def _parts_info(meta: IJBMeta, flip: bool, model_name: str) -> dict:
    return {"format": FORMAT, "set": meta.fingerprint(), "mirrored": flip, "chunk": CHUNK, "model": model_name}


def embed_ijb(model, meta: IJBMeta, features: Optional[str | Path] = None, batch_size: int = 64,
              workers: int = 2, flip: bool = True, skip_missing: bool = False,
              progress: Optional[bool] = None) -> IJBFeatures:
    """Image features of every image in `meta` (see the module docstring for the cache)."""
    cache = Path(features) if features else None
    if cache is not None and cache.exists():
        return _load_cache(cache, meta, flip)
    if model is None:
        raise ModelFileError("no model given and no features file to read (--model MODEL or an existing --features FILE)")
    n = len(meta.names)
    chunks = [(lo, min(n, lo + CHUNK)) for lo in range(0, n, CHUNK)]
    parts = cache.with_name(cache.name + ".parts") if cache else None
    info = _parts_info(meta, flip, str(model.info.get("path", "")))
    done: set[int] = set()
    if parts is not None:
        if parts.exists():
            try:
                old = json.loads((parts / "info.json").read_text())
            except (OSError, ValueError):
                old = None
            if old != info:
                raise DataError(f"{parts}: an unfinished run of another set, model or mode; delete it to start over")
            done = {c for c in range(len(chunks)) if (parts / f"{c:06d}.npz").is_file()}
        else:
            with atomic_write(parts / "info.json", "w") as f:
                json.dump(info, f)
    todo = [c for c in range(len(chunks)) if c not in done]
    if done:
        log.info("%s: %d of %d chunks already embedded; resuming", parts, len(done), len(chunks))
    indices = np.concatenate([np.arange(*chunks[c]) for c in todo]) if todo else np.zeros(0, np.int64)
    dim = getattr(model, "embedding_size", None)
    width = None
    memory: Optional[np.ndarray] = None
    present_all = np.ones(n, dtype=bool)
    skipped: list[str] = []
    pending: dict[int, list] = {}
    loader = DataLoader(AlignedFaces(meta, indices, getattr(model, "input_size", 112)), batch_size=batch_size,
                        shuffle=False, num_workers=workers, collate_fn=_collate,
                        persistent_workers=False, pin_memory=False)
    batches = progress_bar(loader, desc=f"{meta.target} images", total=len(loader), unit="batch", enabled=progress)
    with torch.inference_mode():
        for idx, crops, errors in batches:
            bad = [e for e in errors if e]
            if bad and not skip_missing:
                raise DataError(bad[0] + " (--skip-missing skips such images)")
            ok = np.array([not e for e in errors])
            out = run_embed(model.embed, crops, meta.target, dim)
            dim = out.shape[1]
            if flip:
                out = np.concatenate([out, run_embed(model.embed, np.ascontiguousarray(crops[:, :, ::-1]), meta.target,
                                                     dim)], 1)
            out[~ok] = 0
            width = out.shape[1]
            skipped += bad
            if parts is None:
                if memory is None:
                    memory = np.zeros((n, width), np.float32)
                memory[idx] = out
                present_all[idx] = ok
                continue
            for j, i in enumerate(idx.tolist()):
                pending.setdefault(i // CHUNK, []).append((i, out[j], ok[j], errors[j]))
            for c in [c for c, rows in pending.items() if len(rows) == chunks[c][1] - chunks[c][0]]:
                rows = sorted(pending.pop(c), key=lambda r: r[0])
                with atomic_write(parts / f"{c:06d}.npz") as f:
                    np.savez(f, features=np.stack([r[1] for r in rows]), present=np.array([r[2] for r in rows]),
                             skipped=np.array([r[3] for r in rows if r[3]], dtype=str))
    if parts is None or cache is None:
        assert memory is not None, "an IJB set with no image"
        return IJBFeatures(memory, flip, present_all, skipped)
    return _join_parts(parts, cache, chunks, info)


def _join_parts(parts: Path, cache: Path, chunks: list, info: dict) -> IJBFeatures:
    feats: Optional[np.ndarray] = None
    present = np.zeros(chunks[-1][1], dtype=bool)
    skipped: list[str] = []
    for c, (lo, hi) in enumerate(chunks):
        with np.load(parts / f"{c:06d}.npz", allow_pickle=False) as z:
            part = z["features"]
            if feats is None:
                feats = np.empty((len(present), part.shape[1]), np.float32)  # filled in place: no second copy
            feats[lo:hi] = part
            present[lo:hi] = z["present"]
            skipped += [str(s) for s in z["skipped"]]
    assert feats is not None, "an IJB set with no image"
    with atomic_write(cache) as f:
        np.savez(f, features=feats, present=present, skipped=np.array(skipped, dtype=str),
                 info=np.array(json.dumps(info)))
    shutil.rmtree(parts, ignore_errors=True)
    return IJBFeatures(feats, bool(info["mirrored"]), present.astype(bool), skipped)
