"""Open any model file as an `Embedder`: uint8 RGB face crops in, raw embeddings out.

Accepted: everything `irface.models.loading` reads (irface checkpoints and run folders, bare
state dicts, safetensors, MindSpore `.ckpt`), TorchScript files and ONNX files (onnxruntime).
Normalisation happens here, once, as `irface.data.transforms` defines it.

Every Embedder also carries `threshold`: the verify threshold (cosine similarity) stored with the
model (checkpoint key `threshold`, ONNX metadata, TorchScript `irface.json`, safetensors header),
or None; and `cluster_threshold`, the clustering one (key `cluster_threshold`), read the same way.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from irface.data.transforms import MEAN, STD, embed_images
from irface.device import onnx_session, precision_dtype, resolve_device
from irface.errors import ConfigError, ModelFileError, first_line, import_extra
from irface.models.fold import fold_batchnorm
from irface.models.metadata import (CLUSTER_THRESHOLD_KEY, THRESHOLD_KEY, TORCHSCRIPT_EXTRA_FILE, calibration_path, read_calibration,
                                    threshold_from)
from irface.models.loading import is_torchscript_archive, load_backbone

log = logging.getLogger(__name__)


class Embedder:
    """Common interface: `embed(uint8 (N, H, W, 3) RGB) -> float32 (N, E)` raw (un-normalised) embeddings."""

    input_hw: tuple[int, int] = (112, 112)  # the crops' (height, width)
    embedding_size: int = 512
    threshold: Optional[float] = None
    threshold_source: Optional[str] = None  # "calibration" (irface calibrate) or "model" (stored inside)
    cluster_threshold: Optional[float] = None
    cluster_threshold_source: Optional[str] = None  # as threshold_source
    norm: "InputNorm"
    info: dict[str, Any]

    def embed(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def input_size(self) -> int | tuple[int, int]:
        """The crop size the photo pipeline takes: one side for a square model, else (height, width)."""
        h, w = self.input_hw
        return h if h == w else (h, w)

    @input_size.setter
    def input_size(self, size: int | tuple[int, int]) -> None:
        from irface.data.images import crop_shape

        self.input_hw = crop_shape(size)

    def check_input(self, images: np.ndarray) -> None:
        h, w = self.input_hw
        if images.ndim != 4 or images.shape[1:] != (h, w, 3):
            raise ModelFileError(
                f"{self.info.get('path', 'model')}: expects {h}x{w} (height x width) RGB images, "
                f"got an array of shape {tuple(images.shape)}")


class TorchEmbedder(Embedder):
    def __init__(self, model: torch.nn.Module, info: dict[str, Any], device: torch.device,
                 input_size: int, embedding_size: int, dtype: Optional[torch.dtype] = None,
                 channels_last: bool = False, norm: Optional[InputNorm] = None):
        self.model = model.eval().to(device)
        self.norm = norm or InputNorm()
        # NHWC activations and weights: the layout oneDNN and cuDNN run convolutions fastest in
        # (benchmarks/README.md has the figures).
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.info = info
        self.device = device
        self.input_hw = (input_size, input_size)
        self.embedding_size = embedding_size
        self.dtype = dtype  # bf16/fp16 autocast on CUDA, None for fp32

    def embed(self, images: np.ndarray) -> np.ndarray:
        self.check_input(images)
        return embed_images(self.model, images, self.device, self.dtype, self.channels_last,
                            self.norm.mean, self.norm.std, self.norm.bgr)


@dataclass
class InputNorm:
    """How uint8 RGB pixels become a model's input: x' = (x - mean) / std per channel, in pixel units
    (as insightface's model zoo writes them), in RGB or BGR order; `source` says where it came from."""

    mean: tuple[float, float, float] = (MEAN, MEAN, MEAN)
    std: tuple[float, float, float] = (STD, STD, STD)
    bgr: bool = False
    source: str = "irface"

    def apply(self, images: np.ndarray, layout: str = "nchw") -> np.ndarray:
        """uint8 (N, H, W, 3) RGB -> float32 (N, 3, H, W), or (N, H, W, 3) for `layout` "nhwc"."""
        x = np.asarray(images, dtype=np.float32)
        if self.bgr:
            x = x[..., ::-1]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x if layout == "nhwc" else x.transpose(0, 3, 1, 2))

    def is_standard(self) -> bool:
        """irface's own normalisation (RGB, (x - 127.5) / 127.5)."""
        return not self.bgr and self.mean == (MEAN,) * 3 and self.std == (STD,) * 3

    def describe(self) -> str:
        def fmt(v):
            return f"{v[0]:g}" if len(set(v)) == 1 else ",".join(f"{x:g}" for x in v)
        return f"{'BGR' if self.bgr else 'RGB'}, (x - {fmt(self.mean)}) / {fmt(self.std)}"

    def to_metadata(self) -> dict[str, str]:
        return {"input_color": "BGR" if self.bgr else "RGB",
                "input_mean": ",".join(repr(float(v)) for v in self.mean),
                "input_std": ",".join(repr(float(v)) for v in self.std)}


def parse_channels(value: Any, name: str, source: str) -> Optional[tuple[float, float, float]]:
    """One number or three (comma-separated or a list) -> a 3-tuple; None when absent."""
    if value is None or value == "":
        return None
    parts = value if isinstance(value, (list, tuple)) else str(value).replace(" ", "").strip("[]()").split(",")
    try:
        values = [float(v) for v in parts if v != ""]
    except (TypeError, ValueError):
        raise ModelFileError(f"{source}: {name} must be one number or three (R,G,B), got {value!r}") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(np.isfinite(values)) or (name.endswith("std") and min(values) <= 0):
        raise ModelFileError(f"{source}: {name} must be one number or three (R,G,B)"
                             f"{', all above 0' if name.endswith('std') else ''}, got {value!r}")
    return tuple(values)  # type: ignore[return-value]


def norm_from_metadata(meta: dict[str, Any], source: str) -> Optional[InputNorm]:
    """The normalisation written in a model's metadata (irface's export, or a calibration file), if any."""
    mean = parse_channels(meta.get("input_mean"), "input_mean", source)
    std = parse_channels(meta.get("input_std"), "input_std", source)
    if mean is None or std is None:
        return None
    return InputNorm(mean, std, str(meta.get("input_color", "RGB")).upper() == "BGR", "metadata")


def guess_onnx_norm(path: Path) -> tuple[InputNorm, str]:
    """insightface's model-zoo rule: a graph starting with Sub and Mul nodes normalises inside
    (mean 0, std 1), any other wants (x - 127.5) / 127.5; RGB either way. Returns the norm and why."""
    try:
        import onnx
    except ImportError:
        return InputNorm(source="guess"), "onnx is not installed to read the graph, so the common (x - 127.5) / 127.5"
    try:
        nodes = onnx.load(str(path), load_external_data=False).graph.node[:8]
    except Exception:
        return InputNorm(source="guess"), "graph unreadable, so the common (x - 127.5) / 127.5"
    # By node name, exactly as insightface's ArcFaceONNX decides (mxnet exports name them so).
    has_sub = any(n.name.startswith(("Sub", "_minus")) for n in nodes)
    has_mul = any(n.name.startswith(("Mul", "_mul")) for n in nodes)
    if has_sub and has_mul:
        return InputNorm((0.0,) * 3, (1.0,) * 3, False, "guess"), "the graph starts with Sub and Mul (normalises inside)"
    return InputNorm(source="guess"), "no Sub/Mul at the graph's start"


class OnnxEmbedder(Embedder):
    """An ONNX file run by onnxruntime, fed as `irface.infer.onnx_feed` decides from its graph."""

    def __init__(self, path: Path, device: torch.device, norm: Optional[InputNorm] = None,
                 layout: Optional[str] = None, output_name: Optional[str] = None):
        import_extra("onnxruntime", f"{path}: running ONNX models", "export", ModelFileError)
        from irface.infer.onnx_feed import Port, load_pruned, plan_feed

        def session(source: str | bytes):
            try:
                return onnx_session(source, device)
            except Exception as e:
                raise ModelFileError(f"{path}: not a loadable ONNX model ({first_line(e)})") from None

        self.session = session(str(path))
        inputs = [Port.of(i) for i in self.session.get_inputs()]
        dropped: list[str] = []
        if len(inputs) > 1:
            # onnxruntime wants a feed for every declared input, read or not: the graph is read (only
            # then: it costs a second parse of the file) and what no node reads is pruned.
            source, dropped, inspected = load_pruned(path)
            if not inspected:
                raise ModelFileError(f"{path}: declares {len(inputs)} inputs; telling which ones the graph "
                                     "reads needs the onnx package (pip install onnx)")
            if dropped:
                self.session = session(source)
                inputs = [Port.of(i) for i in self.session.get_inputs()]
        outputs = [Port.of(o) for o in self.session.get_outputs()]
        self.feed = plan_feed(path, inputs, outputs, dropped, layout, output_name)
        self.input_hw = (self.feed.height, self.feed.width)
        self.fixed_batch = self.feed.fixed_batch
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.info = {"kind": "onnx", "path": str(path), "metadata": meta}
        # What a flag changed from the graph's own answer: it changes the embeddings (the gallery's fingerprint).
        self.forced: dict[str, str] = {}
        if layout is not None or output_name is not None:
            auto = _auto_feed(path, inputs, outputs, dropped)
            if auto is None or auto.layout != self.feed.layout:
                self.forced["input_layout"] = self.feed.layout
            if auto is None or auto.output_name != self.feed.output_name:
                self.forced["output_name"] = self.feed.output_name
        if not str(meta.get("producer", "")).startswith("irface"):
            log.info("%s: %s. Force with --layout nchw|nhwc, --output-name NAME.", path, self.feed.describe())
        self.embedding_size = self.feed.embedding_size or self._probe_embedding_size()
        stored = norm or norm_from_metadata(meta, str(path))
        if stored is None:
            stored, why = guess_onnx_norm(path)
            log.info("%s: no input normalisation stored with the model; assumed %s (%s). "
                     "Give --input-mean/--input-std/--bgr if the model wants otherwise.", path, stored.describe(), why)
        self.norm = stored
        self.info["input"] = self.norm.describe()
        self.info["feed"] = {"input": self.feed.input_name, "layout": self.feed.layout, "size": list(self.input_hw),
                             "output": self.feed.output_name, "ignored_inputs": self.feed.dropped}

    def _run(self, x: np.ndarray) -> np.ndarray:
        feed: dict[str, np.ndarray] = {self.feed.input_name: x.astype(self.feed.input_dtype, copy=False)}
        out = self.session.run([self.feed.output_name], feed)
        return self.feed.to_embeddings(out[0], x.shape[0], self.info["path"])

    def _probe_embedding_size(self) -> int:
        # The graph leaves E open: one run on a black batch says it.
        shape = (self.fixed_batch or 1, *self.input_hw)
        x = np.zeros((*shape, 3) if self.feed.layout == "nhwc" else (shape[0], 3, *self.input_hw), np.float32)
        return int(self._run(x).shape[1])

    def embed(self, images: np.ndarray) -> np.ndarray:
        self.check_input(images)
        x = self.norm.apply(images, self.feed.layout)
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


def _auto_feed(path, inputs, outputs, dropped):
    """What the graph alone decides (None when it cannot decide without the flags)."""
    from irface.infer.onnx_feed import plan_feed

    try:
        return plan_feed(path, inputs, outputs, dropped)
    except ModelFileError:
        return None


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


def _requested_norm(input_mean, input_std, bgr, calibration: dict, path: Path) -> Optional[InputNorm]:
    """The normalisation asked for on the command line, else the one a calibration file recorded."""
    if input_mean is not None or input_std is not None or bgr:
        mean = parse_channels(input_mean, "--input-mean", str(path)) or (MEAN,) * 3
        std = parse_channels(input_std, "--input-std", str(path)) or (STD,) * 3
        return InputNorm(mean, std, bool(bgr), "argument")
    norm = norm_from_metadata(calibration, str(calibration_path(path)))
    if norm is not None:
        norm.source = "calibration"
    return norm


def load_model(path: str | Path, network: Optional[str] = None, device: str | torch.device = "cpu",
               precision: str = "fp32", fold_bn: bool = True, channels_last: bool = True,
               input_mean: Any = None, input_std: Any = None, bgr: bool = False,
               layout: Optional[str] = None, output_name: Optional[str] = None) -> Embedder:
    """Open `path` (any supported model file) as an Embedder on `device`.

    `fold_bn` folds every eval-mode BatchNorm of PyTorch backbones into the convs (the blocks' leading
    ones through a shifted residual stream; same embeddings to ~1e-6 relative); `channels_last` runs
    them in NHWC. Both are faster on CPU (`irface bench infer --compare`).

    `input_mean` / `input_std` (one number or three, pixel units) and `bgr` set the input
    normalisation x' = (x - mean) / std; without them: what `irface calibrate` recorded beside the
    model, else the model's metadata (irface's exports), else a guess from an ONNX graph (logged).
    A threshold recorded by `irface calibrate` beside the model wins over the one stored inside it.

    `layout` ("nchw" / "nhwc") and `output_name` force how an ONNX model is fed where its graph
    misleads `irface.infer.onnx_feed` (else what `irface calibrate` recorded, else the graph's answer).
    """
    path = Path(path)
    device = resolve_device(device) if isinstance(device, str) else device
    if not path.exists():
        raise ModelFileError(f"{path}: no such file or folder")
    calibration = read_calibration(path)
    norm = _requested_norm(input_mean, input_std, bgr, calibration, path)
    if path.suffix.lower() == ".onnx":
        layout = layout or calibration.get("input_layout") or None
        output_name = output_name or calibration.get("output_name") or None
        embedder: Embedder = OnnxEmbedder(path, device, norm, layout, output_name)
    elif layout is not None or output_name is not None:
        raise ConfigError(f"{path}: --layout and --output-name apply to ONNX models only")
    else:
        embedder = _open(path, network, device, precision, fold_bn, channels_last, norm)
    # Each threshold from the calibration file beside the model, else from the model itself (a file's
    # metadata strings, or a checkpoint's keys).
    stored = embedder.info.get("metadata", embedder.info)
    for key, attr in ((THRESHOLD_KEY, "threshold"), (CLUSTER_THRESHOLD_KEY, "cluster_threshold")):
        for where, values, named in (("calibration", calibration, calibration_path(path)), ("model", stored, path)):
            value = threshold_from(values.get(key), str(named))
            if value is not None:
                setattr(embedder, attr, value)
                setattr(embedder, f"{attr}_source", where)
                break
    return embedder


def _open(path: Path, network: Optional[str], device: torch.device, precision: str, fold_bn: bool,
          channels_last: bool, norm: Optional[InputNorm]) -> Embedder:
    dtype = precision_dtype(precision)
    if path.is_file() and is_torchscript_archive(path):
        model, meta = _torchscript_meta(path, device)
        size = int(meta.get("input_size", 112))
        with torch.inference_mode():
            emb = model.eval()(torch.zeros(1, 3, size, size, device=device)).shape[1]
        return TorchEmbedder(model, {"kind": "torchscript", "path": str(path), "metadata": meta}, device,
                             size, emb, dtype, norm=norm or norm_from_metadata(meta, str(path)))
    model, info = load_backbone(path, network)
    if info.get("kind") == "safetensors":
        info["metadata"] = _safetensors_meta(path)
    if fold_bn:
        model = fold_batchnorm(model, leading=True)
    return TorchEmbedder(model, info, device, model.input_size, model.embedding_size, dtype, channels_last, norm)
