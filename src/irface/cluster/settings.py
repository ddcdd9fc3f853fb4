"""Clustering's defaults, declared once: read by `irface.cluster.graph` and `irface cluster`'s help. No numpy
here, so the CLI's parser reads them cheaply."""

# Without a calibrated threshold: above every different-person pair measured with the fixture MobileFaceNet
# (49 photos of 21 people: highest 0.408, tests/fixtures/realface/README.md), with a margin because in a
# clustering one false link merges two people; same-person pairs below it still join through other photos.
# Immich clusters ArcFace embeddings with the same value (maximum cosine distance 0.5).
DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_FACES = 2
