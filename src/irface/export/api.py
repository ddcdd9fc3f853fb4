"""`export_model`: one checked export of a backbone to ONNX, TorchScript, a bare `.pth` or safetensors.

The file is written under a temporary name beside the output, checked (onnx.checker, then the
exported model is run and compared with the PyTorch model at batch 1 and 7), and only then renamed
into place; a failed check leaves no output.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from irface.device import onnx_session
from irface.errors import ConfigError, UserError, first_line, import_extra
from irface.export.calibration import load_calibration_images
from irface.export.check import (
    CHECK_BATCHES, FP16_TOLERANCE, FP32_TOLERANCE, ParityError, check_parity, cosine_similarity, random_input,
    reference_embeddings,
)
from irface.models.fold import fold_batchnorm
from irface.models.metadata import TORCHSCRIPT_EXTRA_FILE, export_metadata
from irface.export.onnx_export import (
    INPUT_NAME, OUTPUT_NAME, HalfPrecision, export_onnx, set_metadata,
)
from irface.export.options import (  # noqa: F401 (FORMATS and the options are re-exported)
    DEFAULT_OPSET, FORMATS, INT8_FORMS, INT8_METHOD, INT8_MIN_COSINE, ExportOptions, Int8Options,
)
from irface.export.quantize import normalised_batch, write_int8_onnx
from irface.models.loading import load_backbone
from irface.utils import atomic_path, check_writable

log = logging.getLogger(__name__)

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "pth": ".pth", "safetensors": ".safetensors"}
_FORMAT_OF_SUFFIX = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript",
                     ".pth": "pth", ".safetensors": "safetensors"}
MIN_OPSET = 11


def format_for(output: str | Path, fmt: Optional[str] = None) -> str:
    """The export format: `fmt` if given (checked against the output's suffix), else read off the suffix."""
    suffix = Path(output).suffix.lower()
    if fmt is None:
        if suffix not in _FORMAT_OF_SUFFIX:
            raise ConfigError(f"{output}: cannot tell the format from the suffix; give --format "
                              f"({', '.join(FORMATS)})")
        return _FORMAT_OF_SUFFIX[suffix]
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'; known: {', '.join(FORMATS)}")
    # Model loaders pick the reader by suffix, so these two must carry theirs.
    if fmt in ("onnx", "safetensors") and suffix != SUFFIX[fmt]:
        raise ConfigError(f"{output}: a {fmt} file must end in {SUFFIX[fmt]}")
    if fmt in ("torchscript", "pth") and suffix in (".onnx", ".safetensors"):
        raise ConfigError(f"{output}: a {fmt} file must not end in {suffix}")
    return fmt


def _check_onnx_file(path: Path, label: str):
    """onnx.checker, then the input/output contract; returns an onnxruntime session."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise ParityError(f"{label}: onnx.checker refused the export ({first_line(e)}); output removed") from None
    try:
        sess = onnx_session(str(path))  # on the CPU: the checks run where the export runs
    except Exception as e:
        raise ParityError(f"{label}: onnxruntime cannot load the export ({first_line(e)}); output removed") from None
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        raise ParityError(f"{label}: expected one input '{INPUT_NAME}' and one output '{OUTPUT_NAME}', got "
                          f"{[i.name for i in inputs]} -> {[o.name for o in outputs]}")
    return sess


def _onnx_runner(sess):
    return lambda x: sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def _export_onnx(net: torch.nn.Module, reference: torch.nn.Module, tmp: Path, label: str, meta: dict[str, str],
                 opset: int, batch_size: Optional[int], tolerance: float, batches: Sequence[int]) -> list[dict]:
    try:
        export_onnx(net, tmp, reference.input_size, opset=opset, batch_size=batch_size, metadata=meta)
    except Exception as e:
        raise ParityError(f"{label}: the ONNX exporter failed ({first_line(e)})") from None
    sess = _check_onnx_file(tmp, label)
    return check_parity(_onnx_runner(sess), reference, reference.input_size, tolerance, batches, label)


def _export_int8(reference: torch.nn.Module, tmp: Path, label: str, meta: dict[str, str], opts: ExportOptions,
                 batches: Sequence[int], calib_images: np.ndarray) -> tuple[list[dict], dict[str, Any]]:
    import onnx

    q, batch_size = opts.int8, opts.batch_size
    assert q is not None  # export_model calls this only with --int8
    try:
        write_int8_onnx(reference, tmp, calib_images, q.form, batch_size=batch_size, opset=opts.opset, method=q.method,
                        fold_bn=opts.fold_bn)
    except UserError:
        raise
    except Exception as e:
        raise ParityError(f"{label}: int8 quantisation failed ({first_line(e)}); output removed") from None
    proto = onnx.load(str(tmp))
    set_metadata(proto, meta)
    onnx.save(proto, str(tmp))
    sess = _check_onnx_file(tmp, label)
    run = _onnx_runner(sess)
    size = reference.input_size
    records = []
    for batch in batches:  # int8 cannot match fp32 to 1e-4; it must run at every batch and stay finite
        try:
            out = np.asarray(run(random_input(batch, size)))
        except Exception as e:
            raise ParityError(f"{label}: the int8 model failed to run at batch {batch} ({first_line(e)})") from None
        if out.shape != (batch, reference.embedding_size) or not np.all(np.isfinite(out)):
            raise ParityError(f"{label}: the int8 model gave shape {out.shape} or non-finite values at batch {batch}")
        records.append({"batch": batch, "shape": list(out.shape)})
    # Agreement where it matters: on the calibration faces, embedding by embedding.
    faces = normalised_batch(calib_images[:64])
    step = batch_size or len(faces)
    got, ref = [], []
    for i in range(0, len(faces) - (len(faces) % step if batch_size else 0), step):
        chunk = faces[i:i + step]
        got.append(run(chunk))
        ref.append(reference_embeddings(reference, chunk))
    if not got:  # fewer faces than one fixed batch
        chunk = np.resize(faces, (step,) + faces.shape[1:])
        got, ref = [run(chunk)], [reference_embeddings(reference, chunk)]
    cos = cosine_similarity(np.concatenate(got), np.concatenate(ref))
    agreement = {"faces": int(len(cos)), "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                 "min_mean_cosine_required": q.min_cosine}
    log.info("%s: int8 vs fp32 cosine similarity on %d faces: mean %.4f, min %.4f", label, len(cos), cos.mean(), cos.min())
    if not cos.mean() >= q.min_cosine:
        raise ParityError(f"{label}: int8 embeddings agree poorly with fp32 (mean cosine {cos.mean():.4f} < "
                          f"{q.min_cosine}); output removed")
    return records, agreement


def _export_torchscript(net: torch.nn.Module, reference: torch.nn.Module, tmp: Path, label: str, meta: dict[str, str],
                        tolerance: float, batches: Sequence[int]) -> list[dict]:
    size = reference.input_size
    example = torch.zeros(batches[0], 3, size, size)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notices are not the user's concern
            traced = torch.jit.trace(net.eval(), example, check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_EXTRA_FILE: json.dumps(meta)})
    except Exception as e:
        raise ParityError(f"{label}: TorchScript tracing failed ({first_line(e)})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.jit.load(str(tmp), map_location="cpu").eval()
    except Exception as e:
        raise ParityError(f"{label}: the saved TorchScript does not load ({first_line(e)}); output removed") from None

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return loaded(torch.from_numpy(x)).float().numpy()

    return check_parity(run, reference, size, tolerance, batches, label)


def _bare_state(model: torch.nn.Module, fp16: bool) -> dict[str, torch.Tensor]:
    # Own, contiguous tensors: safetensors refuses shared or strided storage.
    return {k: (v.half() if fp16 and v.is_floating_point() else v).detach().clone().contiguous()
            for k, v in model.state_dict().items()}


def _check_weights_file(tmp: Path, reference: torch.nn.Module, label: str, tolerance: float,
                        batches: Sequence[int]) -> list[dict]:
    try:
        reloaded, _ = load_backbone(tmp)
    except Exception as e:
        raise ParityError(f"{label}: the written weights do not load back ({first_line(e)}); output removed") from None
    reloaded.eval()

    def run(x: np.ndarray) -> np.ndarray:
        return reference_embeddings(reloaded, x)

    return check_parity(run, reference, reference.input_size, tolerance, batches, label)


def export_model(model_path: str | Path, output: str | Path, opts: Optional[ExportOptions] = None) -> dict[str, Any]:
    """Export the backbone in `model_path` to `output` as `opts` says, check it, and return a report (JSON-ready).

    Formats: onnx, torchscript, pth or safetensors. `fp16` halves the weights (input and output stay
    float32); `int8` (ONNX only) quantises with onnxruntime, calibrated on faces. Raises `ParityError`
    (nothing written) when the exported model disagrees with PyTorch.
    """
    opts = opts or ExportOptions()
    output = Path(output)
    fmt = format_for(output, opts.fmt)
    network, opset, batch_size, fp16, fold_bn, q = opts.network, opts.opset, opts.batch_size, opts.fp16, opts.fold_bn, opts.int8
    int8 = q is not None
    if fp16 and int8:
        raise ConfigError("--fp16 and --int8 exclude each other")
    if int8 and fmt != "onnx":
        raise ConfigError(f"--int8 needs --format onnx (onnxruntime quantisation), not {fmt}")
    if q is not None and q.calib is None:
        raise ConfigError("--int8 needs --calib (a RecordIO training folder, a folder of aligned faces or a .bin)")
    if q is not None and q.form not in INT8_FORMS:
        raise ConfigError(f"unknown int8 form '{q.form}'; known: {', '.join(INT8_FORMS)}")
    if batch_size is not None and batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive or 'dynamic', got {batch_size}")
    if fmt == "onnx" and opset < MIN_OPSET:
        raise ConfigError(f"--opset {opset} is too old; use {MIN_OPSET} or newer (default {DEFAULT_OPSET})")
    check_writable(output)

    model, info = load_backbone(model_path, network)
    model.eval()
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    meta = export_metadata(info, model.input_size, model.embedding_size, precision,
                           batch_size if fmt == "onnx" else None)
    calib_images = load_calibration_images(q.calib, q.count, model.input_size) if q is not None and q.calib else None
    tolerance = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
    batches = (batch_size,) if batch_size and fmt == "onnx" else CHECK_BATCHES
    label = str(output)
    net: torch.nn.Module = model
    if fold_bn and fmt in ("onnx", "torchscript") and not int8:  # the int8 forms fold as they need
        net = fold_batchnorm(model)
    if fp16 and fmt in ("onnx", "torchscript"):
        net = HalfPrecision(copy.deepcopy(net)).eval()
    report: dict[str, Any] = {
        "output": str(output), "format": fmt, "precision": precision, "source": str(model_path),
        "network": info.get("network"), "input_size": model.input_size, "embedding_size": model.embedding_size,
        "batch": "dynamic" if batch_size is None or fmt != "onnx" else batch_size,
        "bn_folded": bool(fold_bn and fmt in ("onnx", "torchscript")),
    }
    log.info("exporting %s (%s) to %s as %s %s", model_path, info.get("network") or info.get("family"), output, fmt, precision)
    with atomic_path(output, f".partial{output.suffix}") as tmp:
        if fmt == "onnx" and q is not None and calib_images is not None:
            checks, agreement = _export_int8(model, tmp, label, meta, opts, batches, calib_images)
            report["int8_agreement"] = agreement
            report["int8_form"] = {"name": q.form, "description": INT8_FORMS[q.form].description}
            report["calibration"] = {"source": str(q.calib), "images": int(len(calib_images)),
                                     "method": q.method or INT8_METHOD}
        elif fmt == "onnx":
            checks = _export_onnx(net, model, tmp, label, meta, opset, batch_size, tolerance, batches)
        elif fmt == "torchscript":
            checks = _export_torchscript(net, model, tmp, label, meta, tolerance, batches)
        elif fmt == "pth":
            torch.save(_bare_state(model, fp16), tmp)
            checks = _check_weights_file(tmp, model, label, tolerance, batches)
        else:
            save_file = import_extra("safetensors.torch", "safetensors export", "export").save_file
            save_file(_bare_state(model, fp16), str(tmp), metadata=meta)
            checks = _check_weights_file(tmp, model, label, tolerance, batches)
    if fmt == "onnx":
        report["opset"] = opset
    report["checks"] = checks
    report["metadata"] = meta if fmt in ("onnx", "torchscript", "safetensors") else {}
    report["bytes"] = output.stat().st_size
    log.info("wrote %s (%d bytes)", output, report["bytes"])
    return report
