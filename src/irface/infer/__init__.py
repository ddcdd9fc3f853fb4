"""Inference: open any model file, embed images, compare two faces, 5-point alignment."""

from irface.infer.align import ARCFACE_TEMPLATE, align_face, parse_landmarks, similarity_transform
from irface.infer.embed import embed_to_file, l2_normalize, read_embeddings, read_norms, write_embeddings
from irface.infer.images import collect_faces, open_rgb, read_face
from irface.infer.model_file import Embedder, load_model
from irface.infer.verify import DEFAULT_THRESHOLD, similarity, verify_pair

__all__ = [
    "ARCFACE_TEMPLATE", "DEFAULT_THRESHOLD", "Embedder", "align_face", "collect_faces",
    "embed_to_file", "l2_normalize", "load_model", "open_rgb", "parse_landmarks", "read_embeddings", "read_face", "read_norms",
    "similarity", "similarity_transform", "verify_pair", "write_embeddings",
]
