"""`irface bench infer`: the forward pass in inference mode, one configuration or the fast paths side by side.

The model is either a file (`model`, read by `irface.infer.load_model` as `embed` and `eval` read it)
or a freshly built network whose BatchNorm statistics are set on face-like images (see
`irface.bench.inputs`), so int8 calibration and the agreement figures see realistic activations.

With `compare`, the baseline is the plain eager fp32 NCHW network with its BatchNorms, and every
other path is reported as a ratio to it, measured in the same run; each path's embeddings are also
compared with the baseline's on held-out faces (cosine similarity, and how much any pair's
similarity moves: a verification decision can only flip for pairs that close to the threshold).
"""

from __future__ import annotations

import copy
import functools
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from irface.bench.flops import count_flops
from irface.bench.inputs import calibrate_batchnorm
from irface.bench.options import RUNTIMES, InferOptions
from irface.bench.runner import Prepared, RunResult, Variant, create_network, run_variants, select_variants
from irface.bench.machine import cpu_has_fast_bf16
from irface.bench.timing import device_info, sig
from irface.data.transforms import embed_images, normalize, to_nchw_tensor
from irface.device import DTYPES, autocast, onnx_session
from irface.errors import ConfigError

log = logging.getLogger(__name__)

# Faces that set the BN statistics and calibrate int8, and held-out faces for the agreement check.
CALIB_FACES = 32
AGREEMENT_FACES = 32


def normalised(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> the model's float32 NCHW input (the one normalisation)."""
    return normalize(to_nchw_tensor(images))


# --- the network and its inputs --------------------------------------------------------------------

def faces_for(opts: InferOptions, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibration faces, held-out agreement faces) as uint8 RGB: from `opts.calib`, else synthetic."""
    if opts.calib:
        from irface.export.calibration import load_calibration_images

        given = load_calibration_images(opts.calib, CALIB_FACES + AGREEMENT_FACES, size)
        if len(given) < 4:
            raise ConfigError(f"{opts.calib}: only {len(given)} images; need at least 4")
        half = len(given) // 2
        return given[:half], given[half:]
    from irface.data.synth import faces

    calib, _ = faces(1, CALIB_FACES // 2, 2, size)
    held_out, _ = faces(2, AGREEMENT_FACES // 2, 2, size)
    return calib, held_out


def base_network(opts: InferOptions) -> tuple[nn.Module, dict[str, Any]]:
    """The unfolded eval-mode backbone on CPU: from `opts.model`, or built and BN-calibrated on faces."""
    if opts.model:
        from irface.models.loading import load_backbone

        model, info = load_backbone(opts.model, None)
        return model.eval(), {"model": opts.model, "network": info.get("network")}
    model = create_network(opts.network, **opts.backbone_kwargs)
    calib, _ = faces_for(opts, model.input_size)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.PReLU):
                # Trained slopes differ channel by channel; one shared 0.25 would let the ONNX exporter
                # share one constant, which no trained network allows.
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.5)
    torch.manual_seed(0)
    calibrate_batchnorm(model, normalised(calib), batch_size=16)
    return model.eval(), {"model": None, "network": opts.network, "weights": "random, BN statistics set on faces"}


# --- PyTorch paths --------------------------------------------------------------------------------

def torch_variant(name: str, base: nn.Module, device: torch.device, batch: int, *, fold: str,
                  channels_last: bool, precision: str = "fp32", compile: bool = False,
                  cast_weights: bool = False, flop: float, description: str = "") -> Variant:
    """A PyTorch forward.

    `fold`: "none" (BatchNorms as trained), "conv" (into the convs they follow) or "all" (the blocks'
    leading ones too, `fold_batchnorm(leading=True)`, what `load_model` does). `cast_weights`: hold
    the weights in the low precision instead of autocasting per call.
    """
    dtype = DTYPES[precision]
    size = base.input_size

    def build() -> Prepared:
        from irface.models.fold import fold_batchnorm

        model = fold_batchnorm(base, leading=fold == "all") if fold != "none" else copy.deepcopy(base).eval()
        model = model.to(device)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        input_dtype, run_dtype = torch.float32, dtype  # run_dtype: autocast's (None with cast weights)
        if cast_weights and dtype is not None:
            model = model.to(dtype)
            input_dtype, run_dtype = dtype, None
        notes: dict[str, Any] = {"bn_folded": fold, "channels_last": channels_last, "precision": precision}
        if compile:
            model = _compiled(model, device)
            notes["compiled"] = True

        def net(inp: torch.Tensor) -> torch.Tensor:
            return model(inp.to(input_dtype))  # a no-op unless the weights were cast

        gen = torch.Generator().manual_seed(0)
        x = torch.rand(batch, 3, size, size, generator=gen).mul_(2).sub_(1)
        x = x.to(device=device, dtype=input_dtype).contiguous(memory_format=memory_format)

        def step() -> torch.Tensor:
            with torch.inference_mode(), autocast(run_dtype, device):
                return net(x)

        def embed(images: np.ndarray) -> np.ndarray:
            return embed_images(net, images, device, run_dtype, channels_last)

        return Prepared(step=step, embed=embed, notes=notes)

    return Variant(name, build, flop, precision, description)


def _compiled(model: nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.compile for inference; on CPU with freezing, so oneDNN gets its weights pre-packed once."""
    compiled = torch.compile(model)
    if device.type != "cpu":
        return compiled
    import torch._inductor.config as inductor_config

    def run(x: torch.Tensor) -> torch.Tensor:
        # Freezing applies when the graph is compiled (the first call); the patch is cheap afterwards.
        with inductor_config.patch(freezing=True):
            return compiled(x)

    return run


def default_variant(name: str, base: nn.Module, opts: InferOptions, device: torch.device, batch: int,
                    flop: float, workdir: Path) -> Variant:
    """What `embed` and `eval` run: `load_model` on a model file, `Embedder.embed` on uint8 images."""

    def build() -> Prepared:
        from irface.infer.model_file import load_model

        path = opts.model
        if path is None:
            path = workdir / "model.pth"
            torch.save(base.state_dict(), path)
        embedder = load_model(path, device=device, precision=opts.precision)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (batch, *embedder.input_hw, 3), dtype=np.uint8)
        return Prepared(step=lambda: embedder.embed(images), embed=embedder.embed,
                        notes={"path": "irface.infer.load_model defaults", "precision": opts.precision})

    return Variant(name, build, flop, opts.precision, "load_model as embed/eval use it: every BN folded, NHWC")


# --- ONNX Runtime paths ---------------------------------------------------------------------------

def _onnx_file(base: nn.Module, workdir: Path) -> Path:
    """The BN-folded fp32 export, as `irface export` writes it, made once per run."""
    path = workdir / "fp32.onnx"
    if not path.exists():
        from irface.models.fold import fold_batchnorm
        from irface.export.onnx_export import export_onnx

        export_onnx(fold_batchnorm(base), path, base.input_size)
    return path


def ort_variant(name: str, base: nn.Module, device: torch.device, batch: int, workdir: Path, flop: float,
                calib_faces: Optional[np.ndarray] = None, description: str = "", int8_form: str = "qdq") -> Variant:
    """onnxruntime on the fp32 export, or (with `calib_faces`) on an int8 model in `int8_form`.

    The int8 forms are `irface export --int8`'s (`irface.export.quantize.INT8_FORMS`): "qdq", the
    portable default, and "cpu", ONNX Runtime's CPU operators (faster there).
    """
    int8 = calib_faces is not None

    def build() -> Prepared:
        import onnxruntime as ort

        if calib_faces is not None:  # int8: made from the PyTorch network, as `irface export --int8` does; no fp32 file needed
            from irface.export.quantize import write_int8_onnx

            path = workdir / f"int8-{int8_form}.onnx"
            if not path.exists():
                write_int8_onnx(base, path, calib_faces, int8_form, workdir=workdir)
        else:
            path = _onnx_file(base, workdir)
        if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)")
        # onnxruntime's defaults (every graph optimisation, sequential), with torch's threads as the torch paths
        sess = onnx_session(str(path), device, torch.get_num_threads())
        input_name = sess.get_inputs()[0].name
        gen = np.random.default_rng(0)
        x = gen.uniform(-1, 1, (batch, 3, base.input_size, base.input_size)).astype(np.float32)

        def embed(images: np.ndarray) -> np.ndarray:
            return sess.run(None, {input_name: normalised(images).numpy()})[0]

        notes = {"runtime": f"onnxruntime {ort.__version__}", "providers": sess.get_providers(),
                 "model_mb": round(path.stat().st_size / 2 ** 20, 1)}
        if calib_faces is not None:  # int8
            from irface.export.quantize import INT8_FORMS, INT8_METHOD

            spec = INT8_FORMS[int8_form]
            notes["quantisation"] = f"{spec.description}; {INT8_METHOD} calibration on {len(calib_faces)} faces"
        return Prepared(step=lambda: sess.run(None, {input_name: x}), embed=embed, notes=notes)

    return Variant(name, build, flop, "int8" if int8 else "fp32", description)


# --- the sets -------------------------------------------------------------------------------------

def compare_variants(base: nn.Module, opts: InferOptions, device: torch.device, flop: float, workdir: Path,
                     calib_faces: np.ndarray) -> list[Variant]:
    """Baseline first, then the faster paths this device offers."""
    b = opts.batch_size
    # What every path shares, given once: the network, device, batch and work per image.
    t = functools.partial(torch_variant, base=base, device=device, batch=b, flop=flop)
    low = functools.partial(t, fold="all", channels_last=True, cast_weights=True)  # weights held in fp16 / bf16
    v = [
        t("eager-fp32", fold="none", channels_last=False, description="baseline: eager fp32 NCHW, BatchNorm as trained"),
        default_variant("default", base, opts, device, b, flop, workdir),
        t("channels-last", fold="none", channels_last=True, description="NHWC memory format"),
        t("folded-cl", fold="conv", channels_last=True, description="BN folded into the convs they follow, NHWC"),
        t("folded-all-cl", fold="all", channels_last=True, description="every BN folded (shifted residual stream), NHWC"),
        t("compiled", fold="all", channels_last=True, compile=True,
          description="every BN folded, NHWC, torch.compile (inductor, frozen weights on CPU)"),
    ]
    if device.type == "cuda":
        v += [low("fp16", precision="fp16", description="fp16 weights, folded, NHWC"),
              low("bf16", precision="bf16", description="bf16 weights, folded, NHWC"),
              low("bf16-compiled", precision="bf16", compile=True, description="bf16, folded, NHWC, compiled")]
    elif cpu_has_fast_bf16():
        v += [low("bf16", precision="bf16", description="bf16 weights (AMX / AVX-512 bf16), folded, NHWC")]
    v += list(_ort_paths(base, device, b, workdir, flop, calib_faces).values())
    return select_variants(v, opts.variants)


def _ort_paths(base: nn.Module, device: torch.device, batch: int, workdir: Path, flop: float,
               calib_faces: np.ndarray) -> dict[str, Variant]:
    """The onnxruntime paths by their --runtime name: fp32, int8 as exported (QDQ), int8 in the CPU form."""
    o = functools.partial(ort_variant, base=base, device=device, batch=batch, workdir=workdir, flop=flop)
    return {"ort": o("ort-fp32", description="onnxruntime fp32, BN folded"),
            "ort-int8": o("ort-int8", calib_faces=calib_faces, description="onnxruntime int8 QDQ (irface export --int8)"),
            "ort-int8-cpu": o("ort-int8-cpu", calib_faces=calib_faces, int8_form="cpu",
                              description="onnxruntime int8 CPU form (irface export --int8 --int8-form cpu)")}


def single_variant(base: nn.Module, opts: InferOptions, device: torch.device, flop: float, workdir: Path,
                   calib_faces: np.ndarray) -> Variant:
    b = opts.batch_size
    if opts.runtime != "torch":
        return _ort_paths(base, device, b, workdir, flop, calib_faces)[opts.runtime]
    if opts.fold_bn and opts.channels_last and not opts.compile:
        return default_variant("default", base, opts, device, b, flop, workdir)
    parts = [opts.precision, "folded" if opts.fold_bn else "unfolded", "NHWC" if opts.channels_last else "NCHW"]
    if opts.compile:
        parts.append("compiled")
    return torch_variant("-".join(parts), base, device, b, fold="all" if opts.fold_bn else "none",
                         channels_last=opts.channels_last, precision=opts.precision, compile=opts.compile, flop=flop)


def agreement(prepared: dict[str, Prepared], baseline: str, faces: np.ndarray) -> dict[str, dict[str, float]]:
    """Each path's embeddings against the baseline's on held-out faces.

    `mean_cosine` / `min_cosine`: embedding by embedding. `pair_similarity_max_diff`: the largest
    change of any pair's cosine similarity; a verification decision flips only for pairs whose
    similarity lies that close to the threshold.
    """
    from irface.export.check import cosine_similarity

    base_embed = prepared[baseline].embed if baseline in prepared else None
    if base_embed is None:
        return {}
    ref = np.asarray(base_embed(faces), dtype=np.float64)
    ref_n = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    ref_pairs = ref_n @ ref_n.T
    out = {}
    for name, p in prepared.items():
        if name == baseline or p.embed is None:
            continue
        got = np.asarray(p.embed(faces), dtype=np.float64)
        cos = cosine_similarity(got, ref)
        got_n = got / np.maximum(np.linalg.norm(got, axis=1, keepdims=True), 1e-12)
        diff = np.abs(got_n @ got_n.T - ref_pairs)[np.triu_indices(len(faces), 1)]
        out[name] = {"faces": int(len(faces)), "mean_cosine": round(float(cos.mean()), 6),
                     "min_cosine": round(float(cos.min()), 6),
                     "pair_similarity_max_diff": round(float(diff.max()), 6),
                     "pair_similarity_mean_diff": round(float(diff.mean()), 6)}
    return out


def bench_infer(opts: InferOptions) -> dict[str, Any]:
    """Run the inference benchmark; returns the report (JSON-ready)."""
    from irface.device import precision_dtype, resolve_device

    precision_dtype(opts.precision, "--precision")
    if opts.runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {opts.runtime}: use {', '.join(RUNTIMES)}")
    if opts.batch_size < 1 or opts.steps < 1 or opts.warmup < 0:
        raise ConfigError("--batch-size and --steps must be positive, --warmup not negative")
    device = resolve_device(opts.device)
    # cuDNN runs fp32 convolutions on TF32 tensor cores by default; let the fp32 matmul peak do the same,
    # or "fraction of peak" would compare TF32 convolutions with a plain-fp32 matmul rate. Put back after.
    saved_tf32 = torch.backends.cuda.matmul.allow_tf32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        return _bench_infer(opts, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved_tf32


def _bench_infer(opts: InferOptions, device: torch.device) -> dict[str, Any]:
    base, source = base_network(opts)
    flop = count_flops(base, base.input_size)
    calib_faces, held_out = faces_for(opts, base.input_size)
    with tempfile.TemporaryDirectory(prefix="irface-bench-") as tmp:
        workdir = Path(tmp)
        if opts.compare:
            variants = compare_variants(base, opts, device, flop, workdir, calib_faces)
        else:
            variants = [single_variant(base, opts, device, flop, workdir, calib_faces)]
        result: RunResult = run_variants(variants, device, opts.batch_size, opts.steps, opts.warmup,
                                         opts.interleave, keep=opts.compare)
        agree = agreement(result.prepared, variants[0].name, held_out) if opts.compare else {}
    report = {
        "benchmark": "infer", "network": source.get("network"), "source": source,
        "batch_size": opts.batch_size, "steps": opts.steps, "warmup": opts.warmup,
        "input_size": base.input_size, "gflop_per_image": sig(flop / 1e9),
        "peaks_gflops": result.peaks["used"], "peaks_measured": result.peaks, "machine": device_info(device),
        "timings": [t.to_dict() for t in result.timings], "skipped": result.skipped,
    }
    if opts.compare:
        report["agreement"] = agree
    return report
