"""Open any model file as an `Embedder`: uint8 RGB face crops in, raw embeddings out.

Accepted: everything `irface.models.loading` reads (irface checkpoints and run folders, bare
state dicts, safetensors, MindSpore `.ckpt`), TorchScript files and ONNX files (onnxruntime).
Normalisation happens here, once, as `irface.data.transforms` defines it.

Every Embedder also carries `threshold`: the verify threshold (cosine similarity) stored with the
model (checkpoint key `threshold`, ONNX metadata, TorchScript `irface.json`, safetensors header),
or None.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from irface.data.transforms import embed_images, normalize, to_nchw_tensor
from irface.device import precision_dtype, resolve_device
from irface.errors import ModelFileError, first_line
from irface.export.fold import fold_batchnorm
from irface.export.metadata import THRESHOLD_KEY, TORCHSCRIPT_EXTRA_FILE, threshold_from
from irface.models.loading import is_torchscript_archive, load_backbone


class Embedder:
    """Common interface: `embed(uint8 (N, H, W, 3) RGB) -> float32 (N, E)` raw (un-normalised) embeddings."""

    input_size: int = 112
    embedding_size: int = 512
    threshold: Optional[float] = None
    info: dict[str, Any]

    def embed(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def check_input(self, images: np.ndarray) -> None:
        if images.ndim != 4 or images.shape[1:] != (self.input_size, self.input_size, 3):
            raise ModelFileError(
                f"{self.info.get('path', 'model')}: expects {self.input_size}x{self.input_size} RGB images, "
                f"got an array of shape {tuple(images.shape)}")


class TorchEmbedder(Embedder):
    def __init__(self, model: torch.nn.Module, info: dict[str, Any], device: torch.device,
                 input_size: int, embedding_size: int, dtype: Optional[torch.dtype] = None,
                 channels_last: bool = False):
        self.model = model.eval().to(device)
        # NHWC activations and weights: the layout oneDNN and cuDNN run convolutions fastest in
        # (benchmarks/README.md has the figures).
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.info = info
        self.device = device
        self.input_size = input_size
        self.embedding_size = embedding_size
        self.dtype = dtype  # bf16/fp16 autocast on CUDA, None for fp32

    def embed(self, images: np.ndarray) -> np.ndarray:
        self.check_input(images)
        return embed_images(self.model, images, self.device, self.dtype, self.channels_last)


class OnnxEmbedder(Embedder):
    def __init__(self, path: Path, device: torch.device):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelFileError(f"{path}: running ONNX models needs onnxruntime (pip install onnxruntime)") from None
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # onnxruntime's load-time notices are not the user's concern
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:
            raise ModelFileError(f"{path}: not a loadable ONNX model ({first_line(e)})") from None
        inp = self.session.get_inputs()[0]
        out = self.session.get_outputs()[0]
        shape, out_shape = inp.shape, out.shape
        if len(shape) != 4 or shape[1] not in (3, "3") or len(out_shape) != 2:
            raise ModelFileError(f"{path}: not a face embedding model (input {shape}, output {out_shape}; "
                                 "expected (batch, 3, S, S) -> (batch, E))")
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self.input_size = shape[2] if isinstance(shape[2], int) else 112
        self.embedding_size = out_shape[1] if isinstance(out_shape[1], int) else 512
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.threshold = threshold_from(meta.get(THRESHOLD_KEY), str(path))
        self.info = {"kind": "onnx", "path": str(path), "metadata": meta}

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x.astype(self.input_dtype, copy=False)})[0]

    def embed(self, images: np.ndarray) -> np.ndarray:
        self.check_input(images)
        x = normalize(to_nchw_tensor(images)).numpy()
        if self.fixed_batch and x.shape[0] != self.fixed_batch:
            # A fixed-batch export: run it batch by batch, padding the tail.
            outs = []
            for i in range(0, x.shape[0], self.fixed_batch):
                chunk = x[i:i + self.fixed_batch]
                pad = self.fixed_batch - chunk.shape[0]
                if pad:
                    chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
                outs.append(self._run(chunk)[:self.fixed_batch - pad])
            return np.concatenate(outs).astype(np.float32)
        return self._run(x).astype(np.float32)


def _torchscript_meta(path: Path, device: torch.device) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    extra = {TORCHSCRIPT_EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice: the file is still read correctly
            model = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as e:
        raise ModelFileError(f"{path}: not a loadable TorchScript model ({first_line(e)})") from None
    try:
        meta = json.loads(extra[TORCHSCRIPT_EXTRA_FILE] or "{}")
    except (ValueError, TypeError):
        meta = {}
    return model, meta if isinstance(meta, dict) else {}


def _safetensors_meta(path: Path) -> dict[str, str]:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # load_backbone reports unreadable files; the metadata is optional
        return {}


def load_model(path: str | Path, network: Optional[str] = None, device: str | torch.device = "cpu",
               precision: str = "fp32", fold_bn: bool = True, channels_last: bool = True) -> Embedder:
    """Open `path` (any supported model file) as an Embedder on `device`.

    `fold_bn` folds every eval-mode BatchNorm of PyTorch backbones into the convs (the blocks' leading
    ones through a shifted residual stream; same embeddings to ~1e-6 relative); `channels_last` runs
    them in NHWC. Both are faster on CPU (`irface bench infer --compare`).
    """
    path = Path(path)
    device = resolve_device(device) if isinstance(device, str) else device
    dtype = precision_dtype(precision)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file or folder")
    if path.suffix.lower() == ".onnx":
        return OnnxEmbedder(path, device)
    if path.is_file() and is_torchscript_archive(path):
        model, meta = _torchscript_meta(path, device)
        size = int(meta.get("input_size", 112))
        with torch.inference_mode():
            emb = model.eval()(torch.zeros(1, 3, size, size, device=device)).shape[1]
        embedder = TorchEmbedder(model, {"kind": "torchscript", "path": str(path), "metadata": meta}, device,
                                 size, emb, dtype)
        embedder.threshold = threshold_from(meta.get(THRESHOLD_KEY), str(path))
        return embedder
    model, info = load_backbone(path, network)
    stored = info.get("threshold")
    if info.get("kind") == "safetensors":
        info["metadata"] = _safetensors_meta(path)
        stored = info["metadata"].get(THRESHOLD_KEY)
    if fold_bn:
        model = fold_batchnorm(model, leading=True)
    embedder = TorchEmbedder(model, info, device, model.input_size, model.embedding_size, dtype, channels_last)
    embedder.threshold = threshold_from(stored, str(path))
    return embedder
