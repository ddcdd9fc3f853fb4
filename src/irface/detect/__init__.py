"""Face detection with 5 landmarks (ArcFace order) from weights shipped in a registry package."""

from irface.detect.retinaface import DetectedFace, Detector, load_detector

__all__ = ["DetectedFace", "Detector", "load_detector"]
