"""`irface.cluster`: the graph clustering against scikit-learn's DBSCAN on all pairs, the incremental rule,
the metrics against hand-worked figures and scikit-learn's pair counts, the state file."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("sklearn")

from irface.cluster import graph  # noqa: E402
from irface.cluster.graph import assign, by_size, cluster_embeddings  # noqa: E402
from irface.cluster.metrics import clustering_scores  # noqa: E402
from irface.cluster.state import ClusterState, parse_reference  # noqa: E402
from irface.errors import ConfigError, DataError, ModelFileError  # noqa: E402
from tests.repo_scripts import load_repo_script  # noqa: E402

BENCH = load_repo_script("benchmarks/cluster_scale.py")


def people(sizes, dim=64, noise=0.6, seed=0):
    """Unit faces of people with these photo counts (two faces of one person: cosine ~0.7), and who is who."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(sizes), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    who = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[who] + noise * rng.standard_normal((len(who), dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), who


def test_people_found_and_singletons_left_alone():
    x, who = people([6, 4, 3, 2, 1, 1, 1])
    labels = cluster_embeddings(x, 0.5)
    # Numbered by size, 0 the largest; the three people seen once are noise, never merged.
    assert labels.tolist() == [0] * 6 + [1] * 4 + [2] * 3 + [3] * 2 + [-1] * 3
    assert cluster_embeddings(x, 0.5, min_faces=1)[-3:].tolist() == [4, 5, 6]  # or each their own person
    assert (cluster_embeddings(x, 0.5, min_faces=3)[13:15] == -1).all()  # two faces are too few for 3
    assert (cluster_embeddings(x, 0.999) == -1).all()


def test_graph_clustering_equals_dbscan_on_all_pairs():
    # The same algorithm as scikit-learn's DBSCAN on the cosine distances of every pair, through a sparse graph.
    from sklearn.cluster import DBSCAN

    x, _ = BENCH.make_faces(1500, 64, seed=3)
    sims = np.sort((x @ x.T).ravel())
    sims = sims[(sims > 0.45) & (sims < 0.55)]
    # The threshold in the widest gap between pairs near 0.5: the two computations round differently in
    # the last bits, and a pair right at the threshold could go either way.
    i = int(np.argmax(np.diff(sims)))
    assert sims[i + 1] - sims[i] > 1e-5
    t = float(sims[i] + sims[i + 1]) / 2
    for min_faces in (2, 4):
        ours = cluster_embeddings(x, t, min_faces)
        reference = by_size(DBSCAN(eps=1 - t, min_samples=min_faces, metric="cosine", algorithm="brute").fit(x).labels_)
        assert len(set(ours.tolist())) > 20
        np.testing.assert_array_equal(ours, reference)


def test_approximate_graph_agrees_with_exact(monkeypatch):
    x, who = BENCH.make_faces(3000, 128, seed=1)
    exact = cluster_embeddings(x, 0.5)
    monkeypatch.setattr(graph, "EXACT_LIMIT", 100)  # IVF from 100 faces on
    approximate = cluster_embeddings(x, 0.5)
    exact_people = np.where(exact >= 0, exact, -1 - np.arange(len(exact)))  # each noise face alone
    assert clustering_scores(approximate, exact_people)["bcubed"]["f1"] > 0.99
    assert clustering_scores(approximate, who)["bcubed"]["f1"] > clustering_scores(exact, who)["bcubed"]["f1"] - 0.01


def test_graph_is_sparse():
    x, _ = people([300] * 10, dim=32)
    g = graph.similarity_graph(x, 0.0)
    assert g.shape == (3000, 3000) and g.nnz <= 3000 * graph.NEIGHBOURS * 2


def test_by_size():
    assert by_size(np.array([5, 5, 2, 2, 2, -1, 7])).tolist() == [1, 1, 0, 0, 0, -1, 2]
    assert by_size(np.array([3, 1, 1, 3]), start=10).tolist() == [10, 11, 11, 10]  # a tie: the first met first
    assert by_size(np.array([-1, -1])).tolist() == [-1, -1]


def test_new_faces_join_people_without_reshuffling_them():
    x, who = people([5, 4, 3, 3, 1, 1], seed=2)
    old = np.r_[0:4, 5:8, 9:11, 15]  # persons 0, 1, 2 partly, person 3 not at all, person 4 (alone)
    new = np.setdiff1d(np.arange(len(x)), old)
    old_labels = cluster_embeddings(x[old], 0.5)
    before = old_labels.copy()
    kept, added = assign(x[old], old_labels, x[new], 0.5)
    people_before = old_labels >= 0
    np.testing.assert_array_equal(kept[people_before], before[people_before])
    for i, label in zip(new, added):
        if who[i] in (0, 1, 2):  # an earlier person: joins them
            assert label == before[np.where(who[old] == who[i])[0][0]]
    # Person 3 (three new faces) is a new person, numbered after the earlier ones; the lone face is noise.
    three = added[who[new] == 3]
    assert len(set(three.tolist())) == 1 and three[0] == before.max() + 1
    assert added[who[new] == 5].tolist() == [-1]


def test_earlier_noise_can_become_a_person():
    x, _ = people([2, 1], seed=4)
    old_labels = cluster_embeddings(x[[0, 2]], 0.5)
    assert old_labels.tolist() == [-1, -1]
    kept, added = assign(x[[0, 2]], old_labels, x[[1]], 0.5)
    assert kept.tolist() == [0, -1] and added.tolist() == [0]


def test_metrics_by_hand():
    truth = ["a", "a", "a", "b", "b"]
    pred = [0, 0, 1, 1, -1]
    s = clustering_scores(pred, truth)
    # BCubed per face: precision 1, 1, 1/2, 1/2, 1 (noise is alone); recall 2/3, 2/3, 1/3, 1/2, 1/2.
    assert s["bcubed"]["precision"] == pytest.approx(0.8)
    assert s["bcubed"]["recall"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1 / 2 + 1 / 2) / 5)
    # Pairs put together: (1,2) right, (3,4) wrong; same-person pairs: 3 + 1.
    assert (s["pairwise"]["precision"], s["pairwise"]["recall"]) == (0.5, 0.25)
    assert s["pairwise"]["f1"] == pytest.approx(2 * 0.5 * 0.25 / 0.75)
    assert (s["people_found"], s["people_true"], s["noise_fraction"]) == (2, 2, 0.2)
    perfect = clustering_scores([1, 1, 0], ["x", "x", "y"])
    assert perfect["bcubed"]["f1"] == perfect["pairwise"]["f1"] == 1.0
    alone = clustering_scores([-1, -1, -1], ["x", "x", "y"])
    assert alone["bcubed"]["precision"] == alone["pairwise"]["precision"] == 1.0
    assert alone["pairwise"]["recall"] == 0.0 and alone["noise_fraction"] == 1.0


def test_pairwise_matches_scikit_learn_pair_counts():
    from sklearn.metrics.cluster import pair_confusion_matrix

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 20, 400)
    pred = np.where(rng.random(400) < 0.8, truth, rng.integers(-1, 25, 400))
    s = clustering_scores(pred, truth)
    apart = pred.copy()
    apart[apart < 0] = 1000 + np.arange((apart < 0).sum())  # noise: each face alone
    c = pair_confusion_matrix(truth, apart)
    assert s["pairwise"]["precision"] == pytest.approx(c[1, 1] / (c[1, 1] + c[0, 1]))
    assert s["pairwise"]["recall"] == pytest.approx(c[1, 1] / (c[1, 1] + c[1, 0]))


def _state(n=4):
    x, _ = people([n])
    faces = [{"source": f"p{i}.jpg", "face": 0, "box": [0.0, 0.0, 10.0, 10.0], "score": 0.9} for i in range(n)]
    return ClusterState("m.onnx", "sha256:abc", 0.5, "default", 2, x, np.zeros(n, np.int64), faces,
                        [f["source"] for f in faces])


def test_state_round_trip_and_bad_files(tmp_path):
    path = _state().save(tmp_path / "s.npz")
    back = ClusterState.load(path)
    assert back.faces == _state().faces and back.photos == _state().photos and back.threshold == 0.5
    np.testing.assert_array_equal(back.embeddings, _state().embeddings)
    with pytest.raises(ModelFileError, match="clustered with another model"):
        back.check_model("sha256:other", path)
    with pytest.raises(ConfigError, match="no such person in this state"):
        back.members(3, path)
    with pytest.raises(ConfigError, match="belong to no one"):
        back.members(-1, path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz: not a cluster state"):
        ClusterState.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(DataError, match="other.npz: not a cluster state"):
        ClusterState.load(tmp_path / "other.npz")
    with pytest.raises(DataError, match="no such cluster state"):
        ClusterState.load(tmp_path / "missing.npz")
    header = json.loads(bytes(np.load(path)["header"]).decode())
    assert header["format"] == "irface-cluster-state" and len(header["faces"]) == 4


def test_cluster_reference():
    assert parse_reference("a/b:c.npz:12") == (__import__("pathlib").Path("a/b:c.npz"), 12)
    for bad in ("people.npz", "people.npz:x", ":3"):
        with pytest.raises(ConfigError, match="expected STATE:NUMBER"):
            parse_reference(bad)


def test_bad_knobs():
    x, _ = people([3])
    with pytest.raises(ConfigError, match="cosine similarity lies in"):
        cluster_embeddings(x, 1.5)
    with pytest.raises(ConfigError, match="at least 1"):
        cluster_embeddings(x, 0.5, min_faces=0)


def test_scale_benchmark_runs_at_a_tiny_size(capsys):
    # benchmarks/cluster_scale.py makes benchmarks/README.md's clustering figures: keep it runnable.
    assert BENCH.main(["--sizes", "600", "--dim", "128", "--inline", "--no-fixtures", "--dense-max", "600"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["method"]: r for r in out["runs"]}
    assert set(rows) == {"graph", "dbscan", "hdbscan"}
    assert rows["graph"]["bcubed_f1"] == rows["dbscan"]["bcubed_f1"] > 0.5
    assert "GiB" in BENCH.skip_reason("hdbscan", 1_000_000, 10_000)
    assert BENCH.skip_reason("graph", 1_000_000, 10_000) is None
