"""How to feed a foreign ONNX model: the one place that reads its graph and decides.

Models come from other tools in many shapes. What is decided here, from the graph alone:
- inputs: declared inputs that no node reads (OpenCV zoo's block-quantised SFace keeps its old weight
  names as inputs) are pruned from the graph, since onnxruntime insists on a feed for every declared
  input; what remains must be one 4-D float input, the image;
- its layout: NCHW `(batch, 3, H, W)` or NHWC `(batch, H, W, 3)` (TensorFlow / Keras conversions),
  told by which axis has 3 channels; `--layout` forces it;
- its size (H, W), from the shape (112x112 when the shape does not say);
- the output: any shape that squeezes to `(batch, E)` (`(batch, E, 1, 1)`, `(batch, 1, E)`; `(E,)` for a
  batch fixed at 1); of several, the one named like an embedding, else the first; `--output-name`
  forces it.

Everything else is refused in one line naming the file. `OnnxFeed.describe()` is the line printed
when a foreign model is opened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from irface.errors import ModelFileError

LAYOUTS = ("nchw", "nhwc")
DEFAULT_SIDE = 112  # when the input's shape does not say
FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
# Output names that say "this is the embedding" when several outputs could be (e.g. beside logits).
_EMBEDDING_NAME = re.compile(r"emb|feat|fc1|descriptor|repr", re.IGNORECASE)


@dataclass
class Port:
    """An input or output as onnxruntime declares it: name, type ("tensor(float)"), shape (ints, and
    str or None for dimensions the graph leaves open)."""

    name: str
    type: str
    shape: list[Any]
    rank_known: bool = True  # False: the graph does not say even how many dimensions

    @classmethod
    def of(cls, node_arg: Any) -> "Port":
        return cls(node_arg.name, node_arg.type, list(node_arg.shape or []), node_arg.shape is not None)

    def __str__(self) -> str:
        dims = ", ".join(str(d) if _known(d) else (d if isinstance(d, str) and d else "?") for d in self.shape)
        return f"'{self.name}' ({dims}) {self.type.replace('tensor(', '').rstrip(')')}"


def _known(d: Any) -> bool:
    return bool(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0)


@dataclass
class OnnxFeed:
    """How to run one ONNX model on face crops: which input, in which layout and size, which output."""

    input_name: str
    input_dtype: type
    layout: str  # "nchw" or "nhwc"
    height: int
    width: int
    fixed_batch: Optional[int]  # the batch size the graph fixes, None when dynamic
    output_name: str
    output_shape: list[Any]
    embedding_size: Optional[int]  # None when the graph leaves it open
    dropped: list[str] = field(default_factory=list)  # declared inputs that no node reads
    why: dict[str, str] = field(default_factory=dict)  # "layout", "size", "output": how each was decided

    def describe(self) -> str:
        out = ", ".join(str(d) if _known(d) else "?" for d in self.output_shape)
        text = (f"input '{self.input_name}' {self.layout.upper()} {self.height}x{self.width} ({self.why['layout']}; "
                f"size {self.why['size']}), output '{self.output_name}' ({out}) -> "
                f"{self.embedding_size or '?'}-d embedding ({self.why['output']})")
        if self.dropped:
            more = len(self.dropped) - 3
            shown = ", ".join(self.dropped[:3]) + (f" and {more} more" if more > 0 else "")
            text += f"; ignored {len(self.dropped)} declared input(s) that no node reads: {shown}"
        return text

    def to_embeddings(self, out: np.ndarray, batch: int, path: Path | str) -> np.ndarray:
        """The chosen output of a run on `batch` images as float32 (batch, E); ModelFileError when what
        came out is not `batch` rows of more than one number."""
        out = np.asarray(out)
        if out.size % batch or out.size // batch < 2 or (out.ndim > 1 and out.shape[0] != batch):
            raise _refuse(path, f"output '{self.output_name}' gave shape {tuple(out.shape)} for {batch} image(s); "
                                "not (batch, E)")
        return out.reshape(batch, -1).astype(np.float32, copy=False)


def _refuse(path: Path | str, what: str) -> ModelFileError:
    return ModelFileError(f"{path}: {what}")


def _channel_layout(port: Port, path: Path | str, forced: Optional[str]) -> tuple[str, str]:
    """NCHW or NHWC for a 4-D input, and why."""
    d1, d3 = port.shape[1], port.shape[3]
    if forced is not None:
        channels = d1 if forced == "nchw" else d3
        if _known(channels) and channels != 3:
            raise _refuse(path, f"--layout {forced}: input {port} has {channels} channels on that axis, not 3")
        return forced, "as asked"
    if d1 == 3 and d3 != 3:
        return "nchw", "channels first"
    if d3 == 3 and d1 != 3:
        return "nhwc", "channels last"
    if d1 == 3:  # (batch, 3, H, 3): no way to tell; the common case
        return "nchw", "assumed; --layout nhwc if not"
    if _known(d1) and _known(d3):
        raise _refuse(path, f"input {port} has no axis of 3 channels; expected (batch, 3, H, W) or "
                            "(batch, H, W, 3) RGB")
    if _known(d1) and not _known(d3):  # (batch, 112, 112, C): the open axis is the channels
        return "nhwc", "assumed from the open last axis; --layout nchw if not"
    return "nchw", "assumed; --layout nhwc if not"


def embedding_dim(port: Port, fixed_batch: Optional[int]) -> tuple[bool, Optional[int]]:
    """Whether an output can be the embedding (its shape squeezes to (batch, E), E > 1, float), and E
    (None when the graph leaves it open)."""
    if port.type not in FLOAT_TYPES:
        return False, None
    if not port.rank_known:
        return True, None  # told by the first run (`OnnxEmbedder` checks every run's shape)
    shape = port.shape
    if len(shape) == 1:
        rest = shape if fixed_batch == 1 else []
    elif len(shape) >= 2:
        rest = [d for d in shape[1:] if d != 1]
    else:
        rest = []
    if len(rest) != 1:
        return False, None
    e = rest[0]
    if _known(e):
        return (int(e) > 1), int(e)
    return True, None


def plan_feed(path: Path | str, inputs: Sequence[Port], outputs: Sequence[Port], dropped: Sequence[str] = (),
              layout: Optional[str] = None, output_name: Optional[str] = None) -> OnnxFeed:
    """Decide how to feed a model whose (used) inputs and outputs are these; one-line ModelFileError
    for anything irface cannot feed. `layout` and `output_name` force those choices."""
    if layout is not None:
        layout = layout.lower()
        if layout not in LAYOUTS:
            raise _refuse(path, f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    images = [p for p in inputs if len(p.shape) == 4]
    others = [p for p in inputs if len(p.shape) != 4]
    if not images:
        listed = "; ".join(map(str, inputs)) or "none"
        raise _refuse(path, f"not a face embedding model: no image input (inputs: {listed}); expected one "
                            "(batch, 3, H, W) or (batch, H, W, 3) float input")
    if len(images) > 1:
        raise _refuse(path, f"{len(images)} image-like inputs ({'; '.join(map(str, images))}); irface feeds "
                            "one image per face")
    if others:
        raise _refuse(path, f"the graph reads input {others[0]} besides the image; irface feeds only the image")
    image = images[0]
    if image.type not in FLOAT_TYPES:
        raise _refuse(path, f"input {image} is not float; irface feeds float pixels ((x - mean) / std)")
    chosen_layout, layout_why = _channel_layout(image, path, layout)
    h, w = (image.shape[2], image.shape[3]) if chosen_layout == "nchw" else (image.shape[1], image.shape[2])
    size_why = "from the graph"
    if not (_known(h) and _known(w)):
        size_why = (f"open in the graph, so {DEFAULT_SIDE}" if not (_known(h) or _known(w))
                    else "one side open, so square")
        h = int(h) if _known(h) else (int(w) if _known(w) else DEFAULT_SIDE)
        w = int(w) if _known(w) else h
    fixed_batch = int(image.shape[0]) if _known(image.shape[0]) else None

    if output_name is not None:
        named = [p for p in outputs if p.name == output_name]
        if not named:
            raise _refuse(path, f"--output-name {output_name!r}: no such output (outputs: "
                                f"{'; '.join(map(str, outputs))})")
        ok, e = embedding_dim(named[0], fixed_batch)
        if not ok:
            raise _refuse(path, f"--output-name {output_name!r}: output {named[0]} cannot be an embedding "
                                "(expected (batch, E) or a shape that squeezes to it, E > 1, float)")
        chosen, out_why = named[0], "as asked"
    else:
        dims = [(p, *embedding_dim(p, fixed_batch)) for p in outputs]
        candidates = [(p, e) for p, ok, e in dims if ok]
        if not candidates:
            raise _refuse(path, f"not a face embedding model: no output can be an embedding "
                                f"({'; '.join(map(str, outputs))}); expected (batch, E) or a shape that "
                                "squeezes to it, E > 1, float")
        if len(candidates) == 1:
            out_why = ("the only output" if len(outputs) == 1
                       else f"the only one of {len(outputs)} outputs shaped (batch, E)")
            chosen, e = candidates[0]
        else:
            named_like = [c for c in candidates if _EMBEDDING_NAME.search(c[0].name)]
            pool = named_like or candidates
            chosen, e = pool[0]
            out_why = (f"named like an embedding, of {len(candidates)} outputs shaped (batch, E)" if named_like
                       else f"the first of {len(candidates)} outputs shaped (batch, E)")
            out_why += "; --output-name to choose another"
    return OnnxFeed(image.name, FLOAT_TYPES[image.type], chosen_layout, int(h), int(w), fixed_batch,
                    chosen.name, list(chosen.shape), e, list(dropped),
                    {"layout": layout_why, "size": size_why, "output": out_why})


def _subgraph_inputs(node: Any) -> set[str]:
    """Names read inside a node's subgraphs (If / Loop / Scan bodies), which may reach outer values."""
    names: set[str] = set()
    for attr in node.attribute:
        for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for inner in graph.node:
                names.update(inner.input)
                names |= _subgraph_inputs(inner)
    return names


def unused_inputs(model: Any) -> list[str]:
    """Declared graph inputs (not initializers) that no node reads and no output passes through."""
    graph = model.graph
    read: set[str] = {o.name for o in graph.output}
    for node in graph.node:
        read.update(node.input)
        read |= _subgraph_inputs(node)
    initializers = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers and i.name not in read]


def load_pruned(path: Path) -> tuple[str | bytes, list[str], bool]:
    """What onnxruntime should load for `path` (the path itself, or the serialised model without its
    unused inputs), the names of the inputs pruned, and whether the graph was read (not without the
    onnx package: then which inputs are read is not known)."""
    try:
        import onnx
    except ImportError:
        return str(path), [], False
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        from irface.errors import first_line

        raise _refuse(path, f"the onnx package cannot read the graph ({first_line(e)})") from None
    dropped = unused_inputs(model)
    if not dropped:
        return str(path), [], True
    keep = [i for i in model.graph.input if i.name not in set(dropped)]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    if any(t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL
           for t in model.graph.initializer):
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(path.parent))
    return model.SerializeToString(), dropped, True
