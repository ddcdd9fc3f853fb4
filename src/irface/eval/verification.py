"""The embedding pass over `.bin` verification sets, streamed batch by batch, and the figures from it.

`embed_fn(uint8 (N, H, W, 3) RGB) -> (N, E)` raw embeddings is all the model side needs: an
`irface.infer` Embedder's `.embed`, or `module_embed_fn(model)` around a live training model.
Images are decoded, mirrored and normalised one batch at a time: only the encoded bytes of a set and
its embeddings are held, never a float copy of the images (the reference keeps ~11 GB for the three
standard sets; this keeps tens of MB).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from irface.data.bin import find_targets, read_bin
from irface.data.images import crop_shape, decode_images, open_image
from irface.errors import DataError, ModelFileError
from irface.eval.protocol import (
    FARS,
    N_FOLDS,
    best_threshold,
    cosine_from_distance,
    equal_error_rate,
    flip_pair_distances,
    fold_accuracies,
    l2_normalize,
    mean_norm,
    pair_distances,
    roc_auc,
    roc_curve,
    tar_at_far,
)
from irface.eval.rates import tail_threshold
from irface.eval.result import TargetResult

log = logging.getLogger(__name__)

EmbedFn = Callable[[np.ndarray], np.ndarray]
DEFAULT_BATCH_SIZE = 64


def evaluate_embeddings(name: str, embeddings: np.ndarray, issame: Sequence[bool] | np.ndarray,
                        embeddings_flip: Optional[np.ndarray] = None, seconds: float = 0.0) -> TargetResult:
    """All figures of one set from its raw embeddings (2N, E) (and those of the mirrored images)."""
    issame = np.asarray(issame, dtype=bool)
    # The reference copies network outputs into float64 arrays before anything else.
    plain = np.asarray(embeddings, dtype=np.float64)
    if plain.ndim != 2 or plain.shape[0] != 2 * len(issame):
        raise ValueError(f"{name}: {plain.shape[0] if plain.ndim else 0} embeddings for {len(issame)} pairs")
    dist = pair_distances(l2_normalize(plain))
    acc, _ = fold_accuracies(dist, issame)
    sets = [plain]
    acc_flip = None
    if embeddings_flip is not None:
        flipped = np.asarray(embeddings_flip, dtype=np.float64)
        if flipped.shape != plain.shape:
            raise ValueError(f"{name}: mirrored embeddings {flipped.shape} differ from {plain.shape}")
        sets.append(flipped)
        dist = flip_pair_distances(plain, flipped)
        acc_flip, _ = fold_accuracies(dist, issame)
    scores = cosine_from_distance(dist)
    thr, thr_acc = best_threshold(dist, issame)
    fpr, tpr, _ = roc_curve(scores, issame)
    return TargetResult(
        name=name, pairs=len(issame), positives=int(issame.sum()), negatives=int((~issame).sum()),
        embedding_size=int(plain.shape[1]),
        accuracy=float(np.mean(acc)), accuracy_std=float(np.std(acc)), xnorm=mean_norm(*sets),
        accuracy_flip=None if acc_flip is None else float(np.mean(acc_flip)),
        accuracy_flip_std=None if acc_flip is None else float(np.std(acc_flip)),
        tar_at_far=tar_at_far(scores, issame, FARS), auc=roc_auc(scores, issame),
        eer=equal_error_rate(scores, issame), threshold=thr, threshold_cos=1.0 - thr / 2.0,
        threshold_accuracy=thr_acc, scores_from="flip" if acc_flip is not None else "plain",
        fold_accuracies=acc.tolist(), fold_accuracies_flip=None if acc_flip is None else acc_flip.tolist(),
        seconds=seconds, roc_fpr=fpr, roc_tpr=tpr, cluster_threshold=tail_threshold(scores[~issame]))


def _model_attr(embed_fn: EmbedFn, attr: str) -> Optional[Any]:
    """`input_size` / `embedding_size` of an Embedder's bound `.embed` or of a `module_embed_fn` function
    (an `input_size` may be (height, width): a foreign model that is not square)."""
    for owner in (embed_fn, getattr(embed_fn, "__self__", None)):
        value = getattr(owner, attr, None)
        if isinstance(value, int) or (attr == "input_size" and isinstance(value, tuple) and len(value) == 2):
            return value
    return None


def _model_name(embed_fn: EmbedFn) -> str:
    info = getattr(getattr(embed_fn, "__self__", None), "info", None)
    return str(info.get("path", "the model")) if isinstance(info, dict) else "the model"


def _image_size(data: bytes, source: str) -> tuple[int, int]:
    with open_image(data, f"{source} image 0") as img:  # the header only; bombs are refused here
        return img.size


def run_embed(embed_fn: EmbedFn, images: np.ndarray, source: str, expected_dim: Optional[int]) -> np.ndarray:
    """`embed_fn(images)` as float32, checked: one row per image, `expected_dim` columns (when given).

    `source` names where the images come from in the error line (a file name).
    """
    out = np.asarray(embed_fn(images))
    if out.ndim != 2 or out.shape[0] != images.shape[0]:
        raise ModelFileError(f"{_model_name(embed_fn)}: returned an array of shape {tuple(out.shape)} for "
                             f"{images.shape[0]} images of {source}; expected (images, embedding size)")
    if expected_dim is not None and out.shape[1] != expected_dim:
        raise ModelFileError(f"{_model_name(embed_fn)}: returned {out.shape[1]}-d embeddings, "
                             f"but {expected_dim}-d ones were expected")
    return out.astype(np.float32, copy=False)


_RESIZES_REPORTED: set[tuple[str, int, int, int, int]] = set()


def _report_resize(path: Path, width: int, height: int, size: int | tuple[int, int]) -> None:
    """Say once per set and size (not at every verification of a training run) that images are resized."""
    out_h, out_w = crop_shape(size)
    key = (str(path.resolve()), width, height, out_h, out_w)
    if key not in _RESIZES_REPORTED:
        _RESIZES_REPORTED.add(key)
        log.info("%s: %dx%d images resized to %dx%d", path.name, width, height, out_w, out_h)


def embed_bin(embed_fn: EmbedFn, path: str | Path, batch_size: int = DEFAULT_BATCH_SIZE, flip: bool = True,
              image_size: Optional[int] = None, min_pairs: int = 1) -> tuple[np.ndarray, Optional[np.ndarray], np.ndarray]:
    """Raw float32 embeddings of a `.bin`'s images (and of their mirror images) and the pair labels.

    `image_size` defaults to the model's (`embed_fn.input_size` or its Embedder's); images of another
    size are resized to it on decode as the training decoder does (short side, bilinear, centre crop),
    as the reference's `load_bin` does, and that is logged once per set.
    """
    path = Path(path)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    bins, issame = read_bin(path)
    if len(issame) < min_pairs:
        raise DataError(f"{path}: {len(issame)} pairs; the 10-fold protocol needs at least {min_pairs}")
    w, h = _image_size(bins[0], str(path))
    size = image_size or _model_attr(embed_fn, "input_size")
    if size is None:
        if w != h:
            raise DataError(f"{path}: images are {w}x{h}, not square")
        size = w
    elif (h, w) != crop_shape(size):  # a model that is not square gives (height, width)
        _report_resize(path, w, h, size)
    expected_dim = _model_attr(embed_fn, "embedding_size")
    n = len(bins)
    emb: Optional[np.ndarray] = None
    emb_flip: Optional[np.ndarray] = None
    for start in range(0, n, batch_size):
        images = decode_images(bins[start:start + batch_size], size, str(path))
        out = run_embed(embed_fn, images, path.name, expected_dim)
        if emb is None:
            expected_dim = out.shape[1]
            emb = np.zeros((n, expected_dim), dtype=np.float32)
            emb_flip = np.zeros((n, expected_dim), dtype=np.float32) if flip else None
        emb[start:start + len(images)] = out
        if emb_flip is not None:  # flip
            # Horizontal mirror: the width axis of NHWC (the reference flips axis 2 of CHW).
            emb_flip[start:start + len(images)] = run_embed(embed_fn, np.ascontiguousarray(images[:, :, ::-1]), path.name,
                                                            expected_dim)
    assert emb is not None, f"{path}: no pairs"  # refused above (min_pairs >= 1)
    if not np.isfinite(emb).all() or (emb_flip is not None and not np.isfinite(emb_flip).all()):
        log.warning("%s: some embeddings are NaN or infinite; the figures are meaningless", path)
    return emb, emb_flip, issame


def evaluate_bin(embed_fn: EmbedFn, path: str | Path, batch_size: int = DEFAULT_BATCH_SIZE, flip: bool = True,
                 *, image_size: Optional[int] = None, name: Optional[str] = None) -> TargetResult:
    """Embed one `.bin` set through `embed_fn` and compute every figure of the seed's protocol and ours."""
    path = Path(path)
    name = name or path.stem
    t0 = time.perf_counter()
    emb, emb_flip, issame = embed_bin(embed_fn, path, batch_size, flip, image_size, min_pairs=N_FOLDS)
    seconds = time.perf_counter() - t0
    result = evaluate_embeddings(name, emb, issame, emb_flip, seconds)
    log.info("%s: %d pairs, %d images%s embedded in %.1f s", name, len(issame), 2 * len(issame),
             " (and mirrors)" if flip else "", seconds)
    return result


def run_verification(embed_fn: EmbedFn, data_dir: str | Path, targets: Sequence[str],
                     batch_size: int = DEFAULT_BATCH_SIZE, flip: bool = True, *,
                     image_size: Optional[int] = None) -> dict[str, TargetResult]:
    """Evaluate each target (`lfw`, `cfp_fp`, ... looked up as `<data_dir>/<name>.bin`), in order.

    Every target is checked to exist before any work starts; a missing one raises `DataError`
    listing the `.bin` files present.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: not a folder (expected a folder of .bin verification sets)")
    paths, missing = find_targets(targets, data_dir)
    if missing:
        listing = ", ".join(sorted(p.stem for p in data_dir.glob("*.bin"))) or "none"
        raise DataError(f"{missing[0]}: no such verification set; .bin files in {data_dir}: {listing}")
    if not paths:
        raise DataError(f"{data_dir}: no targets given")
    return {name: evaluate_bin(embed_fn, path, batch_size, flip, image_size=image_size, name=name)
            for name, path in paths.items()}


def module_embed_fn(model, device=None, dtype=None, channels_last: bool = False) -> EmbedFn:
    """An `embed_fn` around a live `torch.nn.Module` (e.g. during training).

    Runs in eval mode under inference mode (the module's train/eval state is restored afterwards),
    on `device` (default: where the module's parameters are), with autocast to `dtype` if given, the
    input in NHWC memory format if `channels_last` (as a module trained that way expects).
    """
    import torch

    from irface.data.transforms import embed_images

    device = torch.device(device) if device is not None else next(model.parameters()).device

    def embed(images: np.ndarray) -> np.ndarray:
        was_training = model.training
        model.eval()
        try:
            return embed_images(model, images, device, dtype, channels_last)
        finally:
            model.train(was_training)

    for attr in ("input_size", "embedding_size"):
        if isinstance(getattr(model, attr, None), int):
            setattr(embed, attr, getattr(model, attr))
    return embed
