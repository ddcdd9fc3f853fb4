"""The verification protocol against a slow, direct re-statement of the community's reference.

The reference below is written from the published protocol with plain loops (no vectorisation, no
sorting tricks): pairs (2i, 2i+1), L2 normalisation with near-zero norms left alone, squared Euclidean
distance, thresholds 0.00 .. 3.99, KFold(10) fold sizes, best training threshold (first on ties),
"same" when distance < threshold, mean and population std over folds.
"""

import math

import numpy as np
import pytest

from irface.eval import (
    evaluate_embeddings,
    fold_accuracies,
    format_seed_lines,
    kfold_sizes,
    protocol_thresholds,
    roc_auc,
    seed_lines,
    tar_at_far,
    verification_accuracy,
)
from irface.eval.protocol import equal_error_rate, mean_norm

# ---------------------------------------------------------------- the slow reference


def ref_thresholds():
    return [i * 0.01 for i in range(400)]


def ref_normalize(rows):
    out = []
    for row in rows:
        norm = math.sqrt(sum(float(v) * float(v) for v in row))
        if norm < 10 * np.finfo(np.float64).eps:
            norm = 1.0
        out.append([float(v) / norm for v in row])
    return out


def ref_distances(rows):
    dists = []
    for i in range(0, len(rows), 2):
        dists.append(sum((a - b) ** 2 for a, b in zip(rows[i], rows[i + 1])))
    return dists


def ref_folds(n, k=10):
    # sklearn.model_selection.KFold(n_splits=k, shuffle=False): contiguous test folds; the first
    # n % k of them one element larger.
    folds, start = [], 0
    for i in range(k):
        size = n // k + (1 if i < n % k else 0)
        folds.append(list(range(start, start + size)))
        start += size
    return folds


def ref_accuracy(threshold, dists, labels):
    right = 0
    for d, same in zip(dists, labels):
        predicted_same = d < threshold
        if predicted_same == bool(same):
            right += 1
    return right / len(dists)


def ref_fold_accuracies(dists, labels):
    n = len(dists)
    thresholds = ref_thresholds()
    accs = []
    for test in ref_folds(n):
        train = [i for i in range(n) if i not in set(test)]
        best_acc, best_t = -1.0, None
        for t in thresholds:
            acc = ref_accuracy(t, [dists[i] for i in train], [labels[i] for i in train])
            if acc > best_acc:  # strict: the first threshold wins ties
                best_acc, best_t = acc, t
        accs.append(ref_accuracy(best_t, [dists[i] for i in test], [labels[i] for i in test]))
    return accs


def ref_protocol(embeddings, labels):
    accs = ref_fold_accuracies(ref_distances(ref_normalize(embeddings)), labels)
    mean = sum(accs) / len(accs)
    std = math.sqrt(sum((a - mean) ** 2 for a in accs) / len(accs))
    return mean, std, accs


def ref_xnorm(*sets):
    norms = [math.sqrt(sum(float(v) ** 2 for v in row)) for s in sets for row in s]
    return sum(norms) / len(norms)


# ---------------------------------------------------------------- data with known structure


def noisy_pairs(n, dim=16, noise=0.6, seed=0):
    rng = np.random.default_rng(seed)
    issame = rng.random(n) < 0.5
    emb = rng.normal(size=(2 * n, dim)).astype(np.float32)
    emb[1::2][issame] = emb[0::2][issame] + noise * rng.normal(size=(int(issame.sum()), dim)).astype(np.float32)
    return emb, issame


def assert_matches_reference(emb, issame):
    mean, std, accs = verification_accuracy(emb, issame)
    rmean, rstd, raccs = ref_protocol(emb, issame)
    assert list(accs) == raccs  # fold accuracies: exactly
    assert abs(mean - rmean) < 1e-12 and abs(std - rstd) < 1e-12


# ---------------------------------------------------------------- tests


def test_thresholds_are_the_references():
    t = protocol_thresholds()
    assert len(t) == 400 and t.dtype == np.float64
    assert t.tolist() == ref_thresholds()


@pytest.mark.parametrize("n, sizes", [
    (6000, [600] * 10), (7000, [700] * 10), (37, [4] * 7 + [3] * 3), (10, [1] * 10), (19, [2] * 9 + [1]),
])
def test_fold_sizes_are_sklearns(n, sizes):
    assert kfold_sizes(n) == sizes
    assert [len(f) for f in ref_folds(n)] == sizes


def test_fewer_pairs_than_folds_is_refused():
    with pytest.raises(ValueError, match="9 pairs"):
        kfold_sizes(9)


@pytest.mark.parametrize("n, seed", [(200, 0), (37, 1), (53, 2), (121, 3)])
def test_random_embeddings_match_reference(n, seed):
    emb, issame = noisy_pairs(n, seed=seed)
    assert_matches_reference(emb, issame)


def test_coarse_embeddings_with_many_tied_distances():
    # Entries in {-1, 0, 1}: few distinct distances, many ties between pairs and across thresholds.
    rng = np.random.default_rng(4)
    n = 83
    emb = rng.integers(-1, 2, size=(2 * n, 3)).astype(np.float32)
    issame = rng.random(n) < 0.5
    dup = np.nonzero(issame)[0][:20]
    emb[2 * dup + 1] = emb[2 * dup]  # some exact duplicates: distance 0
    assert_matches_reference(emb, issame)


def test_distances_exactly_on_thresholds_are_not_below_them():
    # dist == threshold counts as "different" (strict <): 0.5 and 2.0 are exact thresholds.
    dist = np.array([0.5] * 10 + [2.0] * 10)
    same = np.array([True] * 10 + [False] * 10)
    acc, best = fold_accuracies(dist, same)
    assert np.all(acc == 1.0)
    # First threshold on ties: every t in (0.5, 2.0] separates; the first strictly above 0.5 is 0.51.
    assert np.allclose(best, 0.51)
    assert list(acc) == ref_fold_accuracies(dist.tolist(), same.tolist())


def test_first_threshold_on_ties_decides_a_test_fold():
    # Training folds leave a gap (0.2, 1.0]; the test fold's same pair at 0.6 is only accepted by a
    # threshold above 0.6, so picking the first tied threshold (0.21) gets it wrong.
    dist = np.array([0.2, 1.0] * 10)
    same = np.array([True, False] * 10)
    dist[0] = 0.6  # fold 0 (pairs 0, 1)
    acc, best = fold_accuracies(dist, same)
    assert best[0] == pytest.approx(0.21) and acc[0] == 0.5
    assert list(acc) == ref_fold_accuracies(dist.tolist(), same.tolist())


def test_perfectly_separable_gives_one():
    rng = np.random.default_rng(5)
    n = 60
    base = rng.normal(size=(n, 8))
    emb = np.empty((2 * n, 8))
    emb[0::2] = base
    issame = np.arange(n) % 2 == 0
    emb[1::2] = np.where(issame[:, None], base, -base)  # same: identical; different: opposite
    mean, std, _ = verification_accuracy(emb, issame)
    assert (mean, std) == (1.0, 0.0)
    assert_matches_reference(emb, issame)


def test_all_embeddings_the_same():
    n = 47
    issame = np.random.default_rng(6).random(n) < 0.3
    emb = np.tile(np.array([[0.3, -1.2, 2.0, 0.5]], dtype=np.float32), (2 * n, 1))
    assert_matches_reference(emb, issame)
    # All-zero embeddings are left at zero (not NaN), as sklearn's normalize leaves them: distance 0,
    # so with mostly same pairs every threshold above 0 says "same" for all.
    mostly_same = ~issame
    assert_matches_reference(np.zeros((2 * n, 4), dtype=np.float32), mostly_same)
    assert verification_accuracy(np.zeros((2 * n, 4)), mostly_same)[0] == pytest.approx(mostly_same.mean(), abs=0.05)


def test_flip_uses_the_normalised_sum_of_raw_embeddings():
    emb, issame = noisy_pairs(90, seed=7)
    rng = np.random.default_rng(8)
    flipped = (emb * rng.uniform(0.2, 3.0, size=(len(emb), 1)) + rng.normal(size=emb.shape)).astype(np.float32)
    r = evaluate_embeddings("x", emb, issame, flipped)
    summed = emb.astype(np.float64) + flipped.astype(np.float64)
    mean, std, accs = ref_protocol(summed, issame)
    assert r.fold_accuracies_flip == accs
    assert abs(r.accuracy_flip - mean) < 1e-12 and abs(r.accuracy_flip_std - std) < 1e-12
    assert abs(r.xnorm - ref_xnorm(emb, flipped)) < 1e-9
    assert r.scores_from == "flip"


def test_plain_figures_ignore_the_flip():
    emb, issame = noisy_pairs(40, seed=9)
    with_flip = evaluate_embeddings("x", emb, issame, emb[::-1].copy())
    without = evaluate_embeddings("x", emb, issame)
    assert with_flip.accuracy == without.accuracy and with_flip.fold_accuracies == without.fold_accuracies
    assert without.accuracy_flip is None and without.scores_from == "plain"
    assert abs(without.xnorm - ref_xnorm(emb)) < 1e-9


def test_mean_norm_counts_every_row():
    a = np.array([[3.0, 4.0], [0.0, 1.0]])
    b = np.array([[6.0, 8.0]])
    assert mean_norm(a, b) == pytest.approx((5 + 1 + 10) / 3)


# ---------------------------------------------------------------- our own figures


def brute_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    total = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return total / (len(pos) * len(neg))


def brute_tar(scores, labels, far):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    allowed = math.floor(far * len(neg) + 1e-9)
    if allowed < 1:
        return None
    # The lowest threshold at which at most `allowed` different pairs score above it.
    candidates = sorted(set(scores)) + [float("inf")]
    for t in candidates:
        if sum(q > t for q in neg) <= allowed:
            return sum(p > t for p in pos) / len(pos)


def test_auc_and_tar_match_brute_force_with_ties():
    rng = np.random.default_rng(10)
    labels = rng.random(400) < 0.5
    scores = np.round(rng.normal(size=400) + labels * 1.5, 1)  # rounding makes many ties
    assert roc_auc(scores, labels) == pytest.approx(brute_auc(scores, labels), abs=1e-12)
    tars = tar_at_far(scores, labels, (0.5, 0.1, 0.01, 1e-3))
    for far, tar in tars.items():
        assert tar == brute_tar(scores.tolist(), labels.tolist(), far)
    negatives = int((~labels).sum())
    assert tars[1e-3] is None and negatives < 1000  # too few different pairs to measure 1e-3


def test_far_support_follows_the_different_pair_count():
    labels = np.array([True] * 10 + [False] * 3000)  # LFW has 3000 different pairs
    scores = np.linspace(0, 1, len(labels))
    tars = tar_at_far(scores, labels)
    assert tars[1e-3] is not None and tars[1e-4] is None and tars[1e-6] is None


def test_eer_known_values():
    scores = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1])
    assert equal_error_rate(scores, np.array([1, 1, 1, 0, 0, 0], bool)) == pytest.approx(1 / 3)
    assert equal_error_rate(np.array([0.9, 0.8, 0.2, 0.1]), np.array([1, 1, 0, 0], bool)) == 0.0
    assert equal_error_rate(np.array([0.5, 0.5]), np.array([1, 1], bool)) is None


def test_best_threshold_as_cosine_reproduces_its_accuracy():
    emb, issame = noisy_pairs(300, seed=11)
    r = evaluate_embeddings("x", emb, issame)
    n = ref_normalize(emb)
    cos = [sum(a * b for a, b in zip(n[i], n[i + 1])) for i in range(0, len(n), 2)]
    accepted = [c > r.threshold_cos for c in cos]
    assert sum(a == s for a, s in zip(accepted, issame)) / len(cos) == pytest.approx(r.threshold_accuracy)
    assert r.threshold_accuracy >= r.accuracy - 0.05  # tuned on all pairs: at least as good as the folds


def test_best_threshold_sits_in_the_middle_of_a_tied_run():
    from irface.eval import best_threshold

    dist = np.array([0.2] * 5 + [1.0] * 5)  # every threshold in (0.2, 1.0] separates perfectly
    same = np.array([True] * 5 + [False] * 5)
    t, acc = best_threshold(dist, same)
    assert acc == 1.0 and t == pytest.approx((0.21 + 1.0) / 2, abs=0.006)


def test_seed_lines_byte_for_byte():
    r = evaluate_embeddings("x", *noisy_pairs(20, seed=12))
    r.accuracy, r.accuracy_std, r.accuracy_flip, r.accuracy_flip_std, r.xnorm = 0.997, 0.00277, 0.9975, 0.00214, 22.5
    assert format_seed_lines("lfw", r) == [
        "[lfw]XNorm: 22.500000",
        "[lfw]Accuracy: 0.99700+-0.00277",
        "[lfw]Accuracy-Flip: 0.99750+-0.00214",
    ]
    r.accuracy_flip = None
    assert format_seed_lines("cfp_fp", r)[-1] == "[cfp_fp]Accuracy: 0.99700+-0.00277"
    assert seed_lines({"lfw": r, "cfp_fp": r}) == format_seed_lines("lfw", r) + format_seed_lines("cfp_fp", r)


def test_to_dict_is_json_with_far_keys():
    import json

    r = evaluate_embeddings("x", *noisy_pairs(30, seed=13))
    d = json.loads(json.dumps(r.to_dict()))
    assert d["tar_at_far"]["1e-01"] is not None and d["tar_at_far"]["1e-03"] is None
    assert "1e-03" in d["far_unsupported"] and d["pairs"] == 30
    assert "roc" not in d and "roc" in r.to_dict(include_roc=True)
