"""Inference defaults the CLI's help shows, declared once and light (no numpy, no torch)."""

# The verify threshold without a calibrated or stored one: a cosine similarity, the value ONNX Runtime
# ArcFace pipelines use to call two faces the same person, uncalibrated for any given model.
DEFAULT_THRESHOLD = 0.28
