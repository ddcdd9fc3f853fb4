"""`irface export`: export a model to ONNX, TorchScript, .pth or safetensors, checked against PyTorch."""

from __future__ import annotations

import argparse
import sys

from irface.cli._model import add_model_argument
from irface.cli._output import add_json_argument, emit


def batch_size_arg(text: str):
    if text.lower() == "dynamic":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'dynamic', got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'dynamic', got {text!r}")
    return value


def register(sub) -> None:
    from irface.export.options import (
        CALIB_METHODS, DEFAULT_CALIB_COUNT, DEFAULT_OPSET, FORMATS, INT8_FORMS, INT8_METHOD, Int8Options,
    )

    p = sub.add_parser(
        "export", help="Export a model to ONNX, TorchScript, .pth or safetensors (checked against PyTorch)",
        description="Export a backbone to ONNX, TorchScript, a bare state dict (.pth) or safetensors. The file "
                    "is checked (onnx.checker; outputs vs PyTorch at batch 1 and 7) before it is put in place; "
                    "a failed check leaves no file and exits 1. See docs/export.md.")
    add_model_argument(p, weights_only=True, aliases=("--ckpt",))
    p.add_argument("--format", choices=FORMATS, type=str.lower, help="output format (default: from --output's suffix)")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--batch-size", type=batch_size_arg, default=None, metavar="N|dynamic",
                   help="ONNX batch axis: a fixed size or 'dynamic' (default)")
    p.add_argument("--fp16", action="store_true", help="half-precision weights (input/output stay float32)")
    p.add_argument("--int8", action="store_true", help="ONNX int8 (onnxruntime static quantisation, per-channel weights); "
                   "needs --calib")
    p.add_argument("--int8-form", choices=tuple(INT8_FORMS), default=Int8Options.form,
                   help="qdq: portable QDQ (default; any ONNX Runtime provider, TensorRT, OpenVINO); cpu: ONNX "
                        "Runtime's CPU operators, uint8 activations, faster there")
    p.add_argument("--calib", metavar="DIR_OR_BIN", help="int8 calibration faces: a RecordIO training folder, an image folder or a .bin")
    p.add_argument("--calib-count", type=int, default=DEFAULT_CALIB_COUNT,
                   help=f"calibration images, spread over the source (default {DEFAULT_CALIB_COUNT})")
    p.add_argument("--calib-method", choices=CALIB_METHODS, default=None,
                   help=f"int8 range estimation (default {INT8_METHOD})")
    p.add_argument("--network", help="check that the model is this backbone (e.g. iresnet100)")
    p.add_argument("--no-fold-bn", dest="fold_bn", action="store_false",
                   help="keep BatchNorm layers instead of folding them into the convs (ONNX, TorchScript)")
    p.add_argument("--eval-bin", action="append", default=[], metavar="BIN",
                   help="also report verification accuracy of the export vs PyTorch on this .bin (repeatable)")
    p.add_argument("--eval-batch-size", type=int, default=64, help="batch size for --eval-bin (default 64)")
    add_json_argument(p)
    p.set_defaults(func=run)


def _summary(report: dict) -> str:
    head = (f"exported {report['output']} ({report['format']} {report['precision']}, batch {report['batch']}"
            + (f", opset {report['opset']}" if "opset" in report else "") + ")")
    lines = [head]
    if "int8_agreement" in report:
        a = report["int8_agreement"]
        lines.append(f"  int8 vs fp32 cosine similarity on {a['faces']} calibration faces: mean {a['mean_cosine']:.5f}, "
                     f"min {a['min_cosine']:.5f}; runs at batch " + ", ".join(str(c["batch"]) for c in report["checks"]))
    else:
        lines.append("  relative error vs PyTorch: " + ", ".join(
            f"{c['relative_error']:.2e} at batch {c['batch']}" for c in report["checks"])
            + f" (tolerance {report['checks'][0]['tolerance']:.0e})")
    for entry in report.get("accuracy", []):
        ref, got, d = entry["reference"], entry["exported"], entry["decisions"]
        lines.append(f"  {entry['bin']}: Accuracy-Flip PyTorch {ref['accuracy_flip']:.5f}, exported "
                     f"{got['accuracy_flip']:.5f} ({100 * (got['accuracy_flip'] - ref['accuracy_flip']):+.2f} points); "
                     f"at PyTorch's threshold {d['changed']} of {d['pairs']} decisions changed ({d['now_right']} now "
                     f"right, {d['now_wrong']} now wrong: {100 * d['delta']:+.2f} points)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from irface.export import ExportOptions, Int8Options, ParityError, export_model

    int8 = Int8Options(args.calib, args.calib_count, args.calib_method, args.int8_form) if args.int8 else None
    opts = ExportOptions(args.format, args.network, args.opset, args.batch_size, args.fp16, args.fold_bn, int8)
    try:
        report = export_model(args.model, args.output, opts)
    except ParityError as e:
        print(f"irface export: check failed: {e}", file=sys.stderr)
        return 1
    if args.eval_bin:
        from irface.infer import load_model
        from irface.export.accuracy import compare_accuracy

        reference = load_model(args.model, args.network, fold_bn=False)
        report["accuracy"] = compare_accuracy(reference, load_model(args.output), args.eval_bin, args.eval_batch_size)
    emit(report, args.json, _summary(report))
    return 0
