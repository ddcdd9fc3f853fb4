"""The detector's defaults, declared once: read by the detector, `irface detect/align/embed/...`'s options,
`irface bench photo` and the server. No numpy here, so the CLI's parser reads them cheaply."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DetectorSettings:
    min_score: float = 0.6  # lowest face score kept, in [0, 1]
    # Smaller faces (shorter box side, photo pixels) are dropped: enlarged for the detector they are still
    # found, but hold too little to recognise (eyes about 7 pixels apart at 20).
    min_size: float = 20.0
    max_faces: int = 0  # keep at most this many per photo, largest first; 0: all
    det_size: int = 640  # the photo's longer side is resized to this for detection
    nms_threshold: float = 0.4  # boxes overlapping a better one by more IoU than this are dropped


DEFAULT_DETECTOR = DetectorSettings()
