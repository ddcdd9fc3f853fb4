"""IJB protocol math (irface.eval.ijb) against the slow literal re-statement of the reference scripts."""

import json

import numpy as np
import pytest

from irface.eval import ijb
from irface.eval.protocol import l2_normalize
from tests import ijb_reference as ref
from tests.repo_scripts import load_repo_script


def _synthetic(seed=0, subjects=12, templates_per=4, dim=16, one_media_templates=3):
    """Features of a small IJB-like set: templates of several media of several images, some of one image."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (subjects, dim))
    templates, medias, subject_of, rows = [], [], {}, []
    tid, mid = 100, 5000
    for s in range(subjects):
        for _ in range(templates_per):
            tid += int(rng.integers(1, 4))  # ids with gaps, not starting at 0
            subject_of[tid] = s
            n_media = 1 if len(subject_of) <= one_media_templates else int(rng.integers(1, 4))
            for _ in range(n_media):
                mid += int(rng.integers(1, 3))
                for _ in range(int(rng.integers(1, 5)) if n_media > 1 else 1):
                    templates.append(tid)
                    medias.append(mid)
                    rows.append(centres[s] + rng.normal(0, 1.2, dim))
    n = len(rows)
    plain = np.asarray(rows)
    feats = np.concatenate([plain, plain + rng.normal(0, 0.3, plain.shape)], 1).astype(np.float32) * 7
    perm = rng.permutation(n)  # file order is not template order
    templates, medias, feats = np.asarray(templates)[perm], np.asarray(medias)[perm], feats[perm]
    faceness = rng.uniform(0.3, 1.0, n).astype(np.float32)
    tids = sorted(subject_of)
    pairs = [(a, b) for i, a in enumerate(tids) for b in tids[i + 1:]]
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    p1 = np.array([a for a, _ in pairs])
    p2 = np.array([b for _, b in pairs])
    label = np.array([int(subject_of[a] == subject_of[b]) for a, b in pairs])
    return feats, faceness, templates, medias, p1, p2, label, subject_of


def _run_fast(feats, faceness, templates, medias, p1, p2, label, mode):
    unique, sums = ijb.pool_templates(lambda idx: ijb.image_features(feats[idx], faceness[idx], mode), templates, medias,
                                      chunk=7)
    return ijb.verification(l2_normalize(sums), unique, p1, p2, label)


MODES = [ijb.Mode(n, d, f) for n in (True, False) for d in (True, False) for f in (True, False)]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_1to1_equals_reference_in_every_mode(mode):
    data = _synthetic(seed=hash(mode.name) % 1000)
    feats, faceness, templates, medias, p1, p2, label, _ = data
    score, row, roc_auc = ref.ijb_11(feats, faceness, templates, medias, p1, p2, label, use_norm_score=mode.norm_score,
                                     use_detector_score=mode.detector_score, use_flip_test=mode.flip)
    got = _run_fast(*data[:7], mode)
    np.testing.assert_array_equal(got.scores, score)  # the same bits
    assert [got.tar[f][0] for f in ijb.IJB_FARS] == pytest.approx(row, abs=1e-12)
    assert got.auc == pytest.approx(roc_auc, abs=1e-12)
    assert 0.0 < got.tar[1e-1][0] < 1.0 or mode.flip  # not a degenerate set


def test_pooling_is_bitwise_the_reference_and_chunking_does_not_matter():
    feats, faceness, templates, medias, *_ = _synthetic(seed=3, templates_per=6)
    x = ref.image_input_feats(feats, faceness)
    unique = np.unique(templates)
    want = ref.template_sums(x, templates, medias, unique)
    for chunk in (1, 5, 64, 10 ** 6):
        got_t, got = ijb.pool_templates(lambda idx: x[idx], templates, medias, chunk=chunk)
        np.testing.assert_array_equal(got_t, unique)
        np.testing.assert_array_equal(got, want)


def test_pooling_of_long_media_listed_together_is_bitwise_the_reference():
    # The archive's layout: each template's images together (ids not ascending), media of up to 40
    # images (longer than numpy's pairwise block of 8), media ids falling within a template (summed in
    # id order, not file order), and zero rows of both signs.
    rng = np.random.default_rng(7)
    templates, medias = [], []
    mid = 10_000
    for tid in rng.permutation(np.arange(30, 90, 3)):
        for size in rng.integers(1, 41, int(rng.integers(1, 5))):
            mid -= int(rng.integers(1, 4))
            templates += [tid] * int(size)
            medias += [mid] * int(size)
    templates, medias = np.asarray(templates), np.asarray(medias)
    x = (rng.standard_normal((len(templates), 24)) * rng.uniform(0.01, 100, (len(templates), 1))).astype(np.float32)
    x[np.flatnonzero(medias == medias[0])] = -0.0   # a whole media of negative zeros
    x[5, :3] = 0.0
    unique = np.unique(templates)
    want = ref.template_sums(x, templates, medias, unique)
    for chunk in (1, 50, 10 ** 6):
        got_t, got = ijb.pool_templates(lambda idx: x[idx], templates, medias, chunk=chunk)
        np.testing.assert_array_equal(got_t, unique)
        np.testing.assert_array_equal(got.view(np.uint64), want.view(np.uint64))  # zeros' signs too


def test_segment_sums_add_rows_in_row_order():
    x = np.array([[1e8], [1.0], [-1e8], [1.0], [3.0]], dtype=np.float32)  # 1e8 + 1 rounds to 1e8 in float32
    got = ijb.segment_sums(x, np.array([0, 0, 0, 0, 1]), 2)
    assert got[0, 0] == np.sum(x[:4], axis=0)[0] == 1.0   # ((1e8 + 1) - 1e8) + 1
    assert x[0, 0] + (x[1, 0] + (x[2, 0] + x[3, 0])) == 0.0  # another order gives another sum
    assert got[1, 0] == 3.0


def test_ties_in_scores_follow_sklearns_roc():
    rng = np.random.default_rng(5)
    scores = np.round(rng.normal(0, 1, 3000), 1)  # heavy ties, pairs of both labels on one score
    label = (rng.random(3000) < 0.3 + 0.1 * (scores > 0)).astype(int)
    fpr, tpr, _ = ijb.sklearn_roc_curve(label, scores)
    want_f, want_t = ref.roc_curve(label, scores)
    np.testing.assert_array_equal(fpr, want_f)
    np.testing.assert_array_equal(tpr, want_t)
    row, roc_auc = ref.tar_table(label, scores, (1e-3, 0.01, 0.05, 0.1, 0.3, 0.5))
    got = ijb.tar_nearest(fpr, tpr, (1e-3, 0.01, 0.05, 0.1, 0.3, 0.5))
    assert [v[0] for v in got.values()] == pytest.approx(row, abs=1e-12)
    assert ijb.auc(fpr, tpr) == pytest.approx(roc_auc, abs=1e-12)


def test_interpolated_tar_lies_on_the_roc():
    fpr = np.array([0.0, 0.0, 0.1, 0.1, 0.5, 1.0])
    tpr = np.array([0.0, 0.2, 0.4, 0.7, 0.9, 1.0])
    got = ijb.tar_interpolated(fpr, tpr, (0.0, 0.05, 0.1, 0.3, 1.0))
    assert got == pytest.approx({0.0: 0.2, 0.05: 0.3, 0.1: 0.7, 0.3: 0.8, 1.0: 1.0})
    near = ijb.tar_nearest(fpr, tpr, (0.05, 0.09))
    assert near[0.05] == (0.7, 0.1)  # equally near 0.0 and 0.1: the reference's flipped order takes 0.1's top
    assert near[0.09] == (0.7, 0.1)


def test_template_in_no_pair_and_unknown_template():
    feats, faceness, templates, medias, p1, p2, label, _ = _synthetic(seed=7)
    keep = (p1 != p1[0]) & (p2 != p1[0])  # template p1[0] is pooled but in no pair
    got = _run_fast(feats, faceness, templates, medias, p1[keep], p2[keep], label[keep], ijb.Mode())
    _, row, _ = ref.ijb_11(feats, faceness, templates, medias, p1[keep], p2[keep], label[keep])
    assert [got.tar[f][0] for f in ijb.IJB_FARS] == pytest.approx(row, abs=1e-12)
    unique = np.unique(templates)
    with pytest.raises(ValueError, match="template"):
        ijb.verification(np.eye(len(unique)), unique, np.array([unique[0]]), np.array([99999]), np.array([1]))


@pytest.mark.parametrize("mode", [ijb.Mode(), ijb.Mode(False, False, True)], ids=lambda m: m.name)
def test_1n_equals_reference(mode):
    feats, faceness, templates, medias, _, _, _, subject_of = _synthetic(seed=11, subjects=30, templates_per=3)
    tids = sorted(subject_of)
    gallery_t = np.array(tids[0::3])  # one gallery template per subject, the others probes
    probe_t = np.array([t for t in tids if t not in set(gallery_t.tolist())])
    sub = lambda ts: np.array([subject_of[t] for t in ts])  # noqa: E731
    want_tops, want_far = ref.ijb_1n(feats, faceness, templates, medias, (gallery_t, sub(gallery_t)),
                                     (probe_t, sub(probe_t)), use_norm_score=mode.norm_score,
                                     use_detector_score=mode.detector_score, use_flip_test=mode.flip)
    unique, sums = ijb.pool_templates(lambda idx: ijb.image_features(feats[idx], faceness[idx], mode), templates, medias)
    norm = ijb.normalize_1n(sums)
    g = ijb.template_rows(unique, gallery_t)
    p = ijb.template_rows(unique, probe_t)
    got = ijb.reference_1n(norm[p], sub(probe_t), norm[g], sub(gallery_t), chunk=13)
    assert got["rank"] == pytest.approx(want_tops, abs=1e-12)
    assert got["far_rule"] == pytest.approx(want_far, abs=1e-12)
    assert 0 < got["rank"][1] < 1


def test_scale_benchmark_runs_and_pools_the_reference_bits(capsys):
    # benchmarks/ijb_scale.py makes benchmarks/README.md's IJB-C-sized figures: keep it runnable and exact.
    bench = load_repo_script("benchmarks/ijb_scale.py")
    assert bench.main(["--images", "3000", "--templates", "200", "--pairs", "20000", "--ref-templates", "50",
                       "--dim", "16"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pooling_bitwise_equal"] is True
    assert (out["templates"], out["pairs"]) == (200, 20000)
