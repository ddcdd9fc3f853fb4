"""Evaluation: the seed's verification protocol on `.bin` sets, plus ROC, AUC, EER and TAR@FAR.

`run_verification(embed_fn, data_dir, targets)` is the entry point; `evaluate_bin` does one set;
the protocol itself (pure numpy, on embeddings) is in `irface.eval.protocol`.
"""

from irface.eval.protocol import (
    FARS,
    N_FOLDS,
    best_threshold,
    equal_error_rate,
    fold_accuracies,
    kfold_slices,
    kfold_sizes,
    l2_normalize,
    mean_norm,
    pair_distances,
    protocol_thresholds,
    roc_auc,
    roc_curve,
    tar_at_far,
    verification_accuracy,
)
from irface.eval.result import TargetResult, format_seed_lines, format_table, seed_lines
from irface.eval.verification import (
    embed_bin,
    evaluate_bin,
    evaluate_embeddings,
    module_embed_fn,
    run_verification,
)

__all__ = [
    "FARS", "N_FOLDS", "best_threshold", "equal_error_rate", "fold_accuracies", "kfold_slices", "kfold_sizes",
    "l2_normalize", "mean_norm", "pair_distances", "protocol_thresholds", "roc_auc", "roc_curve", "tar_at_far",
    "verification_accuracy", "TargetResult", "format_seed_lines", "format_table", "embed_bin", "evaluate_bin",
    "evaluate_embeddings", "module_embed_fn", "run_verification", "seed_lines",
]
