"""`irface demo`: synthetic identities -> train -> evaluate -> export ONNX -> verify, end to end."""

from __future__ import annotations

import argparse
from pathlib import Path

from irface.cli._output import add_json_argument, emit


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="generate data, train, evaluate, export and verify end to end",
        description="The whole flow on an embedded default: a synthetic identity set in the real MS1MV2 formats "
                    "(train.rec + lfw/cfp_fp/agedb_30.bin of held-out identities), a small IResNet trained with "
                    "ArcFace for a time budget, the seed's accuracy lines before and after training, an ONNX "
                    "export checked against PyTorch, and verify on a same and a different pair.")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    p.add_argument("--minutes", type=float, default=7.0, help="training time budget in minutes at most (default 7)")
    p.add_argument("--budget-minutes", type=float, default=10.0,
                   help="the whole demo's target in minutes: training gets what data, evaluation and export leave, "
                        "and its epochs are planned to fit (default 10; the plan allows 30%% more than the measured "
                        "step, so the demo usually ends minutes inside it)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (default 0: measure whether one or all run a step faster now)")
    p.add_argument("--config", type=Path, default=None, help="training config (default configs/demo.yaml)")
    p.add_argument("--ids", type=int, default=300, help="training identities (default 300)")
    p.add_argument("--per-id", type=int, default=20, help="training images per identity (default 20)")
    p.add_argument("--holdout-ids", type=int, default=100, help="held-out identities for the .bin sets (default 100)")
    p.add_argument("--pairs", type=int, default=6000, help="pairs per .bin set (default 6000, as in LFW)")
    p.add_argument("--seed", type=int, default=0, help="seed for data and training (default 0)")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda (default auto)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="extra training config overrides")
    add_json_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from irface.demo import DemoSettings, run_demo, summary_lines

    settings = DemoSettings(out_dir=args.out, config=args.config, minutes=args.minutes,
                            budget_minutes=args.budget_minutes, threads=args.threads, ids=args.ids,
                            per_id=args.per_id, holdout_ids=args.holdout_ids, pairs=args.pairs, seed=args.seed,
                            device=args.device, overrides=tuple(args.overrides))
    result = run_demo(settings)
    emit(result.to_dict(), args.json, "\n".join(summary_lines(result)))
    return 0
