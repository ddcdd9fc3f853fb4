"""Face detection with 5 landmarks (ArcFace order) from weights shipped in a registry package.

Names are imported on first use, so `irface.detect.settings` (the CLI's defaults) loads without numpy.
"""

from irface.utils import lazy_exports

_HOMES = {"DetectedFace": "retinaface", "Detector": "retinaface", "load_detector": "retinaface"}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
