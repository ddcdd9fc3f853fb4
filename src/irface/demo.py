"""The main job on an embedded default: synthetic identities -> train -> evaluate -> export -> verify.

Every stage runs the same code as on MS1MV2: the synthetic set is written as train.rec/train.idx/
property plus lfw/cfp_fp/agedb_30 `.bin` files of held-out identities, the trainer reads the RecordIO
files, evaluation reads the `.bin` files, and the exported ONNX model answers a `verify` call.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from PIL import Image

from irface.config import TrainConfig, load_config
from irface.errors import ConfigError

if TYPE_CHECKING:
    from irface.engine import TrainResult

log = logging.getLogger(__name__)

TARGETS = ["lfw", "cfp_fp", "agedb_30"]
REPO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


@dataclasses.dataclass
class DemoSettings:
    """What the demo generates and how long it trains; the network and recipe come from the config."""

    out_dir: Path = Path("demo_out")
    config: Optional[Path] = None  #: default: configs/demo.yaml of this checkout
    minutes: float = 7.0  #: training time budget (training also stops at the config's epochs)
    ids: int = 300  #: training identities
    per_id: int = 20  #: training images per identity
    holdout_ids: int = 100  #: identities used only in the .bin sets
    pairs: int = 6000  #: pairs per .bin set, as many as LFW and AgeDB-30 (so the figures resolve 0.02 points)
    seed: int = 0
    device: str = "auto"
    overrides: tuple[str, ...] = ()  #: extra key=value config overrides


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


def demo_config(settings: DemoSettings) -> TrainConfig:
    path = settings.config or REPO_CONFIG
    if not Path(path).exists():
        raise ConfigError(f"{path}: demo config not found; pass --config configs/demo.yaml from an irface checkout")
    run_dir = settings.out_dir / "run"
    base = [f"data_path={settings.out_dir / 'data'}", f"output_dir={run_dir}", f"num_classes={settings.ids}",
            f"max_minutes={settings.minutes}", f"seed={settings.seed}", f"device={settings.device}",
            # The demo verifies once after training (stage 4) rather than after every epoch: on 2 CPU
            # cores a pass over the three sets costs about half an epoch of training.
            "val_targets=[]"]
    return load_config(path, base + list(settings.overrides))


def _figures(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {name: {"accuracy": r.accuracy, "accuracy_std": r.accuracy_std, "accuracy_flip": r.accuracy_flip,
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
    from irface.data.synth import write_synthetic
    from irface.engine import train
    from irface.eval import format_seed_lines, module_embed_fn, run_verification
    from irface.export.api import export_model
    from irface.infer import load_model
    from irface.infer.verify import verify_pair
    from irface.models import create_backbone

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
                    pairs=settings.pairs, seed=settings.seed, image_size=cfg.image_size)
    seconds["data"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log.info("[2/6] verification before training (%s)", cfg.network)
    torch.manual_seed(cfg.seed)
    untrained_model = create_backbone(cfg.network, **cfg.backbone_kwargs())
    untrained = run_verification(module_embed_fn(untrained_model), data_dir, TARGETS)
    for name, r in untrained.items():
        for line in format_seed_lines(name, r):
            log.info("  untrained %s", line)
    del untrained_model
    seconds["eval_untrained"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log.info("[3/6] training for up to %g minutes -> %s", settings.minutes, run_dir)
    result = train(cfg)
    seconds["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log.info("[4/6] verification after training")
    embedder = load_model(run_dir, device=settings.device)
    trained = run_verification(embedder.embed, data_dir, TARGETS)
    seconds["eval_trained"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    onnx_path = out / "model.onnx"
    log.info("[5/6] export to ONNX with a parity check -> %s", onnx_path)
    export_report = export_model(run_dir, onnx_path)
    seconds["export"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log.info("[6/6] verify a same and a different pair of held-out faces with the ONNX model")
    onnx_model = load_model(onnx_path)
    pairs_dir = out / "pairs"
    pairs_dir.mkdir(parents=True, exist_ok=True)
    checks = []
    # The threshold that separated lfw's pairs best (as a cosine similarity), as `irface verify` would use.
    threshold = trained["lfw"].threshold_cos
    for a, b, same in _write_pair_images(data_dir / "lfw.bin", pairs_dir, onnx_model.input_size):
        answer = verify_pair(onnx_model, a, b, threshold=threshold)
        answer.update(truth=same, threshold_source="lfw evaluation")
        checks.append(answer)
    seconds["verify"] = time.perf_counter() - t0

    return DemoResult(
        data_dir=str(data_dir), run_dir=str(run_dir), onnx=str(onnx_path),
        untrained=_figures(untrained), trained=_figures(trained), train=_train_figures(result),
        export=export_report, verify=checks, seconds={k: round(v, 1) for k, v in seconds.items()},
    )


def _train_figures(result: TrainResult) -> dict[str, Any]:
    """Steps, epochs, last loss and the training speed (images/s over the run's steps) from the run's result."""
    return {"steps": result.step, "epochs": result.epoch, "loss": result.loss, "stopped": result.stopped,
            "checkpoint": result.checkpoint, "seconds": result.seconds, "images_per_s": result.images_per_s}


def summary_lines(result: DemoResult) -> list[str]:
    """The closing summary: untrained -> trained accuracy, speed, where files went, what to run next."""
    lines = ["", "irface demo: done", "", "Held-out synthetic identities (10-fold verification, +- = std over folds):"]
    for name in TARGETS:
        before, after = result.untrained[name], result.trained[name]
        lines.append(f"  [{name}]Accuracy: {after['accuracy']:1.5f}+-{after['accuracy_std']:1.5f}   "
                     f"(untrained {before['accuracy']:1.5f})")
        lines.append(f"  [{name}]Accuracy-Flip: {after['accuracy_flip']:1.5f}+-{after['accuracy_flip_std']:1.5f}   "
                     f"(untrained {before['accuracy_flip']:1.5f})")
    t = result.train
    speed = f", {t['images_per_s']:.0f} images/s" if t.get("images_per_s") else ""
    lines += ["", f"Training: {t['steps']} steps, {t['epochs']} epochs, final loss {t['loss']:.4f}{speed} "
                  f"(stopped: {t['stopped']})"]
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
              f"  ONNX model  {result.onnx}", "",
              "Same steps on MS1MV2 (see README, 'From the demo to MS1MV2'):",
              "  irface data info /data/ms1m-retinaface-t1",
              "  bash scripts/run_distribute_train.sh /data/ms1m-retinaface-t1 8",
              "  bash scripts/run_eval.sh /data/ms1m-retinaface-t1 runs/lresnet100e_ir",
              "  irface export --ckpt runs/lresnet100e_ir --format onnx --output lresnet100e_ir.onnx"]
    return lines
