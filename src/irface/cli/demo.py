"""`irface demo`: synthetic identities -> train -> evaluate -> export ONNX -> verify, end to end."""

from __future__ import annotations

import argparse
from pathlib import Path

from irface.cli._output import add_json_argument, emit
from irface.demo_settings import DemoSettings


def register(sub) -> None:
    d = DemoSettings()
    p = sub.add_parser(
        "demo", help="generate data, train, evaluate, export and verify end to end",
        description="The whole flow on an embedded default: a synthetic identity set in the real MS1MV2 formats "
                    "(train.rec + lfw/cfp_fp/agedb_30.bin of held-out identities), a small IResNet trained with "
                    "ArcFace for a time budget, the seed's accuracy lines before and after training, an ONNX "
                    "export checked against PyTorch, and verify on a same and a different pair.")
    p.add_argument("--out", type=Path, default=d.out_dir, help=f"output folder (default {d.out_dir})")
    p.add_argument("--minutes", type=float, default=d.minutes,
                   help=f"training time budget in minutes at most (default {d.minutes:g})")
    p.add_argument("--budget-minutes", type=float, default=d.budget_minutes,
                   help="the whole demo's target in minutes: training gets what data, evaluation and export leave, "
                        f"and its epochs are planned to fit (default {d.budget_minutes:g}; the plan allows 30%% more "
                        "than the measured step, so the demo usually ends minutes inside it)")
    p.add_argument("--threads", type=int, default=d.threads,
                   help=f"CPU threads for torch (default {d.threads}; 0: measure whether one or all run a step "
                        "faster now)")
    p.add_argument("--config", type=Path, default=d.config, help="training config (default configs/demo.yaml)")
    p.add_argument("--ids", type=int, default=d.ids, help=f"training identities (default {d.ids})")
    p.add_argument("--per-id", type=int, default=d.per_id, help=f"training images per identity (default {d.per_id})")
    p.add_argument("--holdout-ids", type=int, default=d.holdout_ids,
                   help=f"held-out identities for the .bin sets (default {d.holdout_ids})")
    p.add_argument("--pairs", type=int, default=d.pairs, help=f"pairs per .bin set (default {d.pairs}, as in LFW)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed for data and training (default {d.seed})")
    p.add_argument("--device", default=d.device, help=f"auto (GPU when present), cpu or cuda (default {d.device})")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="extra training config overrides")
    add_json_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from irface.demo import run_demo, summary_lines

    settings = DemoSettings(out_dir=args.out, config=args.config, minutes=args.minutes,
                            budget_minutes=args.budget_minutes, threads=args.threads, ids=args.ids,
                            per_id=args.per_id, holdout_ids=args.holdout_ids, pairs=args.pairs, seed=args.seed,
                            device=args.device, overrides=tuple(args.overrides))
    result = run_demo(settings)
    emit(result.to_dict(), args.json, "\n".join(summary_lines(result)))
    return 0
