"""What an exported file says about itself: preprocessing constants, sizes, precision, verify and clustering thresholds.

Stored as ONNX `metadata_props`, as the TorchScript extra file `irface.json`, and in the safetensors
header; all values are strings (what those containers hold). `irface.infer.load_model` reads the
threshold back from each.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Optional

from irface import __version__
from irface.data.transforms import MEAN, STD
from irface.errors import ModelFileError

log = logging.getLogger(__name__)

TORCHSCRIPT_EXTRA_FILE = "irface.json"
THRESHOLD_KEY = "threshold"
# The clustering threshold (irface.eval.rates.tail_threshold): a checkpoint's key, a metadata key, a calibration key.
CLUSTER_THRESHOLD_KEY = "cluster_threshold"


def threshold_from(value: Any, source: str = "model") -> Optional[float]:
    """A stored verify threshold as a float (cosine similarity), or None when absent or unusable."""
    if value is None or value == "":
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        log.warning("%s: ignoring stored threshold %r (not a number)", source, value)
        return None
    if not math.isfinite(t) or not -1.0 <= t <= 1.0:
        log.warning("%s: ignoring stored threshold %r (a cosine similarity lies in [-1, 1])", source, value)
        return None
    return t


def export_metadata(info: Mapping[str, Any], input_size: int, embedding_size: int, precision: str,
                    batch_size: Optional[int] = None) -> dict[str, str]:
    """The string key/value pairs written into every exported file that can hold them."""
    meta = {
        "producer": f"irface {__version__}",
        "network": str(info.get("network") or info.get("family") or "iresnet"),  # family: a resized member
        "input_name": "data",
        "input_layout": "NCHW",
        "input_color": "RGB",
        "input_size": str(input_size),
        "input_mean": repr(MEAN),
        "input_std": repr(STD),
        "input_normalisation": "(x / 255 - 0.5) / 0.5",
        "batch": "dynamic" if batch_size is None else str(batch_size),
        "output_name": "embedding",
        "embedding_size": str(embedding_size),
        "output_l2_normalised": "false",
        "precision": precision,
    }
    for key in (THRESHOLD_KEY, CLUSTER_THRESHOLD_KEY):
        threshold = threshold_from(info.get(key), str(info.get("path", "checkpoint")))
        if threshold is not None:
            meta[key] = repr(threshold)
            meta["threshold_metric"] = "cosine"
    return meta


CALIBRATION_SUFFIX = ".irface.json"


def calibration_path(model: str | Path) -> Path:
    """Where `irface calibrate` keeps what it learnt about a model: `<model file or folder>.irface.json` beside it."""
    model = Path(model)
    return model.with_name(model.name + CALIBRATION_SUFFIX)


def read_calibration(model: str | Path) -> dict[str, Any]:
    """The calibration file of `model` ({} when there is none); ModelFileError when it is unreadable."""
    path = calibration_path(model)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}: unreadable calibration file ({type(e).__name__}); "
                             "delete it or rerun irface calibrate") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: a calibration file holds a JSON object; delete it or rerun irface calibrate")
    return data
