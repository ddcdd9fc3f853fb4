"""The main job on an embedded default: synthetic identities -> train -> evaluate -> export -> verify.

Every stage runs the same code as on MS1MV2: the synthetic set is written as train.rec/train.idx/
property plus lfw/cfp_fp/agedb_30 `.bin` files of held-out identities, the trainer reads the RecordIO
files, evaluation reads the `.bin` files, and the exported ONNX model answers a `verify` call.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from PIL import Image

from irface.config import TrainConfig, load_config
from irface.demo_settings import DATA_DIR, MODEL_FILE, RUN_DIR, DemoSettings
from irface.errors import ConfigError

if TYPE_CHECKING:
    from irface.engine import TrainResult

log = logging.getLogger(__name__)

TARGETS = ["lfw", "cfp_fp", "agedb_30"]
REPO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


@dataclasses.dataclass
class DemoResult:
    data_dir: str
    run_dir: str
    onnx: str
    untrained: dict[str, dict[str, float]]
    trained: dict[str, dict[str, float]]
    train: dict[str, Any]
    export: dict[str, Any]
    verify: list[dict[str, Any]]
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def demo_config(settings: DemoSettings, plan: tuple[str, ...] = ()) -> TrainConfig:
    """The demo's training config: the config file, the demo's keys, the user's overrides, then `plan`."""
    path = settings.config or REPO_CONFIG
    if not Path(path).exists():
        raise ConfigError(f"{path}: demo config not found; pass --config configs/demo.yaml from an irface checkout")
    run_dir = settings.out_dir / RUN_DIR
    base = [f"data_path={settings.out_dir / DATA_DIR}", f"output_dir={run_dir}", f"num_classes={settings.ids}",
            f"max_minutes={settings.minutes}", f"seed={settings.seed}", f"device={settings.device}",
            # The demo verifies once after training (stage 4) rather than after every epoch: on 2 CPU
            # cores a pass over the three sets costs about half an epoch of training.
            "val_targets=[]"]
    return load_config(path, base + list(settings.overrides) + list(plan))


# A real training step costs this much more than the probe's bare forward + backward (head, optimizer,
# loader); measured on 2 CPU cores, quiet and with a busy loop beside it.
STEP_OVERHEAD = 1.3


class _Probe:
    """The demo's backbone and one batch, built once, timed at several thread counts."""

    def __init__(self, cfg: TrainConfig):
        from irface.models import create_backbone

        self.model = create_backbone(cfg.network, **cfg.backbone_kwargs())
        self.x = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size)

    def step_seconds(self, threads: int, repeats: int = 3) -> float:
        """Seconds of one forward + backward on the batch with `threads` torch threads."""
        from irface.bench.timing import step_times_ms

        torch.set_num_threads(threads)
        # The first step at a thread count picks kernels: a warm-up, not timed.
        return min(step_times_ms(lambda: self.model(self.x).sum().backward(), torch.device("cpu"), repeats, 1)) / 1e3


def pick_threads(cfg: TrainConfig) -> tuple[int, float]:
    """The CPU thread count (one, or every core torch would use) whose training step runs fastest right now,
    and that step's seconds (the probe's, without the head and the optimizer).

    With other processes on the machine one thread can be several times faster than two: every operation
    waits for its slowest thread, and a thread sharing a core with another job is slow. Measured twice in
    alternation, a second or two in all.
    """
    most = torch.get_num_threads()
    candidates = [most, 1] if most > 1 else [1]
    seconds = {n: float("inf") for n in candidates}
    probe = _Probe(cfg)
    for _ in range(2):
        for n in candidates:
            seconds[n] = min(seconds[n], probe.step_seconds(n))
    best = min(candidates, key=lambda n: seconds[n])
    torch.set_num_threads(best)
    log.info("CPU threads: %s -> using %d", ", ".join(f"{n}: {seconds[n] * 1000:.0f} ms/step" for n in candidates), best)
    return best, seconds[best]


def plan_epochs(cfg: TrainConfig, images: int, step_seconds: float, seconds_left: float) -> int:
    """Epochs (at most the config's) whose steps fit `seconds_left` at `step_seconds` a step, so that the
    schedule ends its decay in time on a slow or busy machine instead of being cut off at a high rate."""
    steps_per_epoch = max(1, images // cfg.batch_size)
    fit = int(seconds_left / (steps_per_epoch * step_seconds * STEP_OVERHEAD))
    return max(1, min(cfg.epoch_size, fit))


# The untrained network is verified on every n-th pair of each set, at most every 5th and keeping at
# least 1,200 pairs (all ten folds keep their share): its figures are a near-chance reference, and the
# full pass cost a minute of the 10. An untrained network's pass costs about 1.3x a trained one's per
# image (measured), which the time plan uses.
UNTRAINED_MAX_STRIDE = 5
UNTRAINED_MIN_PAIRS = 1200
UNTRAINED_COST = 1.3


def untrained_pair_stride(pairs: int) -> int:
    return max(1, min(UNTRAINED_MAX_STRIDE, pairs // UNTRAINED_MIN_PAIRS))


def _write_every_nth_pair(data_dir: Path, out: Path, stride: int) -> None:
    """Copies of the demo's .bin sets holding every `stride`-th pair, in order (so in every fold)."""
    from irface.data import read_bin, save_bin

    for name in TARGETS:
        bins, issame = read_bin(data_dir / f"{name}.bin")
        keep = range(0, len(issame), stride)
        save_bin(out / f"{name}.bin", [bins[j] for i in keep for j in (2 * i, 2 * i + 1)], issame[::stride])


def _figures(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {name: {"pairs": r.pairs, "accuracy": r.accuracy, "accuracy_std": r.accuracy_std, "accuracy_flip": r.accuracy_flip,
                   "accuracy_flip_std": r.accuracy_flip_std, "threshold_cos": r.threshold_cos}
            for name, r in results.items()}


def _write_pair_images(bin_path: Path, out: Path, image_size: int) -> list[tuple[Path, Path, bool]]:
    """The first same-identity and the first different-identity pair of a .bin, as PNG files."""
    from irface.data import decode_image, read_bin

    bins, issame = read_bin(bin_path)
    chosen = []
    for want in (True, False):
        i = int(np.flatnonzero(issame == want)[0])
        paths = []
        for j, suffix in ((2 * i, "a"), (2 * i + 1, "b")):
            path = out / f"{'same' if want else 'different'}_{suffix}.png"
            Image.fromarray(decode_image(bins[j], image_size, f"{bin_path} image {j}")).save(path)
            paths.append(path)
        chosen.append((paths[0], paths[1], want))
    return chosen


def run_demo(settings: DemoSettings) -> DemoResult:
    """Run every stage; logs progress and returns the figures (the CLI prints the summary)."""
    threads = torch.get_num_threads()
    try:
        return _run_stages(settings)
    finally:
        torch.set_num_threads(threads)  # the thread count picked for the demo is not the caller's


def _run_stages(settings: DemoSettings) -> DemoResult:
    from irface.data.synth import write_synthetic
    from irface.engine import train
    from irface.device import resolve_device
    from irface.eval import module_embed_fn, run_verification, seed_lines
    from irface.export.api import export_model
    from irface.infer import load_model
    from irface.infer.calibrate import calibrate
    from irface.infer.verify import verify_pair
    from irface.models import create_backbone

    started = time.perf_counter()
    out = settings.out_dir
    cfg = demo_config(settings)
    data_dir, run_dir = Path(cfg.data_path), Path(cfg.output_dir)
    if run_dir.exists() and any(run_dir.glob("checkpoint-*.pt")):
        raise ConfigError(f"{run_dir}: holds an earlier demo run; remove {out} or pass --out NEW_DIR")
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    log.info("[1/6] synthetic identities: %d x %d training images, %d held-out identities, %d pairs per set -> %s",
             settings.ids, settings.per_id, settings.holdout_ids, settings.pairs, data_dir)
    write_synthetic(data_dir, ids=settings.ids, per_id=settings.per_id, holdout_ids=settings.holdout_ids,
                    pairs=settings.pairs, seed=settings.seed, image_size=cfg.image_size,
                    # Shapes drawn at the full 56 px (not 28): the identities keep the detail a 112-px
                    # image has; +1.2 / +1.6 / +0.8 points of Accuracy-Flip after the same 8 epochs.
                    render_size=cfg.image_size)
    seconds["data"] = time.perf_counter() - t0

    step_seconds: Optional[float] = None
    if resolve_device(cfg.device).type == "cpu":
        if settings.threads:
            torch.set_num_threads(settings.threads)
            step_seconds = _Probe(cfg).step_seconds(settings.threads)
        else:
            _, step_seconds = pick_threads(cfg)

    t0 = time.perf_counter()
    log.info("[2/6] verification before training (%s)", cfg.network)
    torch.manual_seed(cfg.seed)
    untrained_model = create_backbone(cfg.network, **cfg.backbone_kwargs())
    stride = untrained_pair_stride(settings.pairs)
    with tempfile.TemporaryDirectory(dir=out) as subset:
        if stride > 1:
            _write_every_nth_pair(data_dir, Path(subset), stride)
        untrained = run_verification(module_embed_fn(untrained_model), subset if stride > 1 else data_dir, TARGETS)
    for line in seed_lines(untrained):
        log.info("  untrained %s", line)
    del untrained_model
    seconds["eval_untrained"] = time.perf_counter() - t0

    # Training gets the time the other stages leave: the pass after training (all pairs) is estimated
    # from the one before it, export and verify take a few seconds. The epochs are planned to fit.
    trained_pass = seconds["eval_untrained"] * stride / UNTRAINED_COST
    left = settings.budget_minutes * 60 - (time.perf_counter() - started) - trained_pass - 15.0
    train_seconds = max(30.0, min(settings.minutes * 60, left))
    epochs = cfg.epoch_size
    if step_seconds is not None:
        epochs = plan_epochs(cfg, settings.ids * settings.per_id, step_seconds, train_seconds)
    cfg = demo_config(settings, (f"max_minutes={train_seconds / 60:.3f}", f"epoch_size={epochs}"))
    t0 = time.perf_counter()
    log.info("[3/6] training for %d epochs, at most %.1f minutes -> %s", epochs, train_seconds / 60, run_dir)
    result = train(cfg)
    seconds["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log.info("[4/6] verification after training")
    embedder = load_model(run_dir, device=settings.device)
    trained = run_verification(embedder.embed, data_dir, TARGETS)
    seconds["eval_trained"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    onnx_path = out / MODEL_FILE
    log.info("[5/6] export to ONNX with a parity check -> %s", onnx_path)
    export_report = export_model(run_dir, onnx_path)
    seconds["export"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log.info("[6/6] calibrate the ONNX model on lfw.bin (its verify and clustering thresholds, beside it); "
             "verify a same and a different pair of held-out faces with it")
    calibrate(load_model(onnx_path), onnx_path, data_dir / "lfw.bin")
    onnx_model = load_model(onnx_path)  # with the calibration, as `irface verify` opens it
    pairs_dir = out / "pairs"
    pairs_dir.mkdir(parents=True, exist_ok=True)
    checks = []
    for a, b, same in _write_pair_images(data_dir / "lfw.bin", pairs_dir, onnx_model.input_size):
        checks.append(verify_pair(onnx_model, a, b) | {"truth": same})
    seconds["verify"] = time.perf_counter() - t0

    return DemoResult(
        data_dir=str(data_dir), run_dir=str(run_dir), onnx=str(onnx_path),
        untrained=_figures(untrained), trained=_figures(trained),
        train=_train_figures(result) | {"planned_epochs": epochs, "threads": torch.get_num_threads()},
        export=export_report, verify=checks, seconds={k: round(v, 1) for k, v in seconds.items()},
    )


def _train_figures(result: TrainResult) -> dict[str, Any]:
    """Steps, epochs, last loss and the training speed (images/s over the run's steps) from the run's result."""
    return {"steps": result.step, "epochs": result.epoch, "loss": result.loss, "stopped": result.stopped,
            "checkpoint": result.checkpoint, "seconds": result.seconds, "images_per_s": result.images_per_s}


def summary_lines(result: DemoResult) -> list[str]:
    """The closing summary: untrained -> trained accuracy, speed, where files went, what to run next."""
    from irface.models.metadata import calibration_path

    lines = ["", "irface demo: done", "", "Held-out synthetic identities (10-fold verification, +- = std over folds):"]
    for name in TARGETS:
        before, after = result.untrained[name], result.trained[name]
        lines.append(f"  [{name}]Accuracy: {after['accuracy']:1.5f}+-{after['accuracy_std']:1.5f}   "
                     f"(untrained {before['accuracy']:1.5f})")
        lines.append(f"  [{name}]Accuracy-Flip: {after['accuracy_flip']:1.5f}+-{after['accuracy_flip_std']:1.5f}   "
                     f"(untrained {before['accuracy_flip']:1.5f})")
    subset, full = result.untrained[TARGETS[0]]["pairs"], result.trained[TARGETS[0]]["pairs"]
    if subset != full:
        lines.append(f"  (untrained: on {subset:,} of each set's {full:,} pairs, every {full // subset}th; trained: all)")
    t = result.train
    speed = f", {t['images_per_s']:.0f} images/s" if t.get("images_per_s") else ""
    lines += ["", f"Training: {t['steps']} steps, {t['epochs']} of {t['planned_epochs']} planned epochs, final loss "
                  f"{t['loss']:.4f}{speed}, {t['threads']} CPU thread(s) (stopped: {t['stopped']})"]
    checks = result.export.get("checks", [])
    parity = ", ".join(f"batch {c['batch']}: relative error {c['relative_error']:.1e}" for c in checks)
    lines.append(f"Export: {result.onnx} (ONNX Runtime vs PyTorch, {parity})")
    for v in result.verify:
        verdict = "same" if v["same"] else "different"
        truth = "same" if v["truth"] else "different"
        lines.append(f"Verify: {Path(v['a']).name} vs {Path(v['b']).name}: similarity {v['similarity']:.3f}, "
                     f"threshold {v['threshold']:.3f} ({v['threshold_source']}) -> {verdict} (truth: {truth})")
    lines += ["", "Time (s): " + ", ".join(f"{k} {v}" for k, v in result.seconds.items()), "",
              "Files:", f"  data        {result.data_dir}  (train.rec/.idx/property, lfw/cfp_fp/agedb_30.bin)",
              f"  run         {result.run_dir}  (checkpoints, train.log, config.yaml)",
              f"  ONNX model  {result.onnx}  (calibrated on lfw.bin: {calibration_path(result.onnx)})", "",
              "Same steps on MS1MV2 (see README, 'From the demo to MS1MV2'):",
              "  irface data info /data/ms1m-retinaface-t1",
              "  bash scripts/run_distribute_train.sh /data/ms1m-retinaface-t1 8",
              "  bash scripts/run_eval.sh /data/ms1m-retinaface-t1 runs/lresnet100e_ir",
              "  irface export --ckpt runs/lresnet100e_ir --format onnx --output lresnet100e_ir.onnx"]
    return lines
