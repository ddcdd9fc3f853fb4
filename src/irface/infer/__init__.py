"""Inference: open any model file, embed images, compare two faces, 5-point alignment.

Names are imported on first use, so `irface.infer.settings` (the CLI's defaults) loads without torch.
"""

from irface.utils import lazy_exports

ALIGN = "irface.data.align"  # alignment is an image transform of the data layer; re-exported here
_HOMES = {"ARCFACE_TEMPLATE": ALIGN, "align_face": ALIGN, "parse_landmarks": ALIGN, "similarity_transform": ALIGN,
          "embed_to_file": "embed", "l2_normalize": "embed", "read_embeddings": "embed",
          "read_norms": "embed", "write_embeddings": "embed", "collect_faces": "images", "open_rgb": "images",
          "read_face": "images", "Embedder": "model_file", "load_model": "model_file", "DEFAULT_THRESHOLD": "settings",
          "similarity": "verify", "verify_pair": "verify"}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
