"""Inference: open any model file, embed images, compare two faces, 5-point alignment."""

from irface.infer.model_file import Embedder, load_model, resolve_device

__all__ = ["Embedder", "load_model", "resolve_device"]
