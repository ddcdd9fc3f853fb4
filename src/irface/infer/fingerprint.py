"""The model fingerprint a gallery carries: embeddings from two different models are not comparable.

A fingerprint is the SHA-256 of the model file's bytes (for a run folder: of its newest complete
checkpoint, the file `load_model` reads), plus the Embedder's input normalisation when it is not
irface's own (a foreign model read with another mean/std or channel order embeds differently) and an
ONNX model's --layout / --output-name where they overrule its graph.
Re-saving the same weights in another format gives another fingerprint: the gallery then asks for a
rebuild rather than trusting that two files embed alike.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from irface.errors import ModelFileError

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _input_settings(embedder: Any) -> dict[str, Any]:
    # How pixels become the model's input (`InputNorm`): the same file read with another mean, std or
    # channel order embeds differently. The default normalisation adds nothing, so a bare path and
    # its Embedder agree. So do an ONNX model's --layout / --output-name where they change what its
    # graph decides (`OnnxEmbedder.forced`).
    norm = getattr(embedder, "norm", None)
    settings = {} if norm is None or norm.is_standard() else norm.to_metadata()
    return {**settings, **(getattr(embedder, "forced", None) or {})}


def model_fingerprint(model: Any) -> str:
    """`sha256:<hex>` identifying a model: a path (file or run folder) or an `Embedder` from `load_model`."""
    if isinstance(model, (str, Path)):
        path, settings = Path(model), {}
    else:
        info = getattr(model, "info", None) or {}
        if not info.get("path"):
            raise ModelFileError("this model has no file behind it; fingerprint its file instead")
        path, settings = Path(info["path"]), _input_settings(model)
    from irface.models.loading import model_file_path  # a run folder: the file load_model reads

    digest = file_sha256(model_file_path(path))
    if settings:
        digest = hashlib.sha256((digest + json.dumps(settings, sort_keys=True)).encode()).hexdigest()
    return f"sha256:{digest}"
