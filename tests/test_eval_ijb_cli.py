"""`irface data synth-ijb` + `irface eval --ijb` end to end with a tiny model; the feature cache; bad input."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from irface.cli import main
from irface.data.ijb import read_ijb
from irface.errors import DataError
from irface.eval import ijb
from irface.eval.ijb_report import evaluate_ijb
from irface.infer import ijb_features, load_model
from tests import ijb_reference as ref
from tests.infer_export_util import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # a tiny model: threads only wait on each other


@pytest.fixture(scope="module")
def ijb_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("ijb")
    assert main(["data", "synth-ijb", str(out), "--subjects", "6", "--probe-templates", "2"]) == 0
    save_checkpoint(out / "tiny.pt")
    return out


def _copy(ijb_set, tmp_path):
    shutil.copytree(ijb_set / "IJBC", tmp_path / "IJBC")
    return tmp_path / "IJBC"


def run_eval(args, capsys):
    code = main(["eval", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_ijb_prints_the_table_and_json_matches_the_reference(ijb_set, tmp_path, capsys):
    feats_file = tmp_path / "feats.npz"
    code, out, err = run_eval(["--ckpt", str(ijb_set / "tiny.pt"), "--ijb", str(ijb_set), "--features", str(feats_file),
                               "--json", "--workers", "0"], capsys)
    assert code == 0, err
    report = json.loads(out)  # JSON alone on stdout
    assert report["mode"] == "N1D1F1" and report["target"] == "IJBC"
    assert list(report["tar_at_far"]) == ["1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01"]
    assert report["pairs"] == report["genuine"] + report["impostor"] > 0
    assert set(report["identification"]["nist"]) == {"G1", "G2", "mean"}
    # The figures are the reference's on the features the run stored.
    meta = read_ijb(ijb_set, "IJBC")
    stored = np.load(feats_file)["features"]
    _, row, roc_auc = ref.ijb_11(stored, meta.faceness, meta.templates, meta.medias, meta.pair_t1, meta.pair_t2,
                                 meta.labels.astype(int))
    assert list(report["tar_at_far"].values()) == pytest.approx(row, abs=1e-12)
    assert report["auc"] == pytest.approx(roc_auc, abs=1e-12)
    # Text mode: the reference's table.
    code, out, _ = run_eval(["--ijb", str(ijb_set), "--features", str(feats_file)], capsys)  # no model: cache read
    assert code == 0
    assert "| N1D1F1-IJBC  | " in out and "0.0001" in out and "1:N NIST" in out


@pytest.mark.parametrize("flags, name", [(["--no-flip"], "N1D1F0"), (["--normalize-images"], "N0D1F1"),
                                         (["--no-detector-score"], "N1D0F1")])
def test_each_switch_names_its_mode_and_matches_the_reference(ijb_set, tmp_path, capsys, flags, name):
    feats_file = tmp_path / "feats.npz"
    code, out, err = run_eval(["--ckpt", str(ijb_set / "tiny.pt"), "--ijb", str(ijb_set), "--features", str(feats_file),
                               "--json", "--workers", "0", *flags], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["mode"] == name
    meta = read_ijb(ijb_set, "IJBC")
    stored = np.load(feats_file)["features"]
    if name.endswith("F0"):
        stored = np.concatenate([stored, stored], 1)  # stored without mirrors; the reference reads the first half
    _, row, _ = ref.ijb_11(stored, meta.faceness, meta.templates, meta.medias, meta.pair_t1, meta.pair_t2,
                           meta.labels.astype(int), use_norm_score=name[1] == "1", use_detector_score=name[3] == "1",
                           use_flip_test=name[5] == "1")
    assert list(report["tar_at_far"].values()) == pytest.approx(row, abs=1e-12)


class _Dying:
    """An Embedder that stops the run (as a kill would) after `limit` calls, and counts faces."""

    def __init__(self, inner, limit=None):
        self.inner, self.limit, self.calls, self.faces = inner, limit, 0, 0
        self.info, self.input_size, self.embedding_size = inner.info, inner.input_size, inner.embedding_size

    def embed(self, crops):
        self.calls += 1
        if self.limit is not None and self.calls > self.limit:
            raise KeyboardInterrupt
        self.faces += len(crops)
        return self.inner.embed(crops)


def test_a_killed_run_resumes_where_it_stopped(ijb_set, tmp_path, monkeypatch):
    monkeypatch.setattr(ijb_features, "CHUNK", 8)
    meta = read_ijb(ijb_set, "IJBC")
    model = load_model(ijb_set / "tiny.pt")
    whole = ijb_features.embed_ijb(model, meta, None, batch_size=4, workers=0)
    cache = tmp_path / "f.npz"
    with pytest.raises(KeyboardInterrupt):
        ijb_features.embed_ijb(_Dying(model, limit=2 * 5), meta, cache, batch_size=4, workers=0)  # 5 batches, flip
    parts = sorted((tmp_path / "f.npz.parts").glob("*.npz"))
    assert len(parts) == 2 and not cache.exists()
    counting = _Dying(model)
    again = ijb_features.embed_ijb(counting, meta, cache, batch_size=4, workers=0)
    assert counting.faces == 2 * (len(meta.names) - 16)  # only the images after the two saved chunks
    np.testing.assert_array_equal(again.feats, whole.feats)
    assert cache.exists() and not (tmp_path / "f.npz.parts").exists()


def test_template_with_one_and_many_media_and_unused_template(ijb_set):
    meta = read_ijb(ijb_set, "IJBC")
    counts = {t: len(set(meta.medias[meta.templates == t])) for t in np.unique(meta.templates)}
    assert min(counts.values()) == 1 and max(counts.values()) > 1
    in_pairs = set(meta.pair_t1) | set(meta.pair_t2)
    assert set(counts) - in_pairs  # gallery templates are in no pair
    rng = np.random.default_rng(0)
    feats = rng.normal(0, 1, (len(meta.names), 8)).astype(np.float32)
    report = evaluate_ijb(meta, feats, np.ones(len(feats), bool), True, ijb.Mode())
    assert report["templates"] == len(counts)


def test_pairs_of_a_skipped_template_are_dropped_and_an_unknown_template_is_named(ijb_set):
    meta = read_ijb(ijb_set, "IJBC")
    feats = np.random.default_rng(0).normal(0, 1, (len(meta.names), 8)).astype(np.float32)
    everything = evaluate_ijb(meta, feats, np.ones(len(feats), bool), True, ijb.Mode())
    gone = meta.pair_t2[0]  # every image of this template skipped: its pairs are dropped, counted
    present = meta.templates != gone
    report = evaluate_ijb(meta, feats, present, True, ijb.Mode())
    dropped = int(((meta.pair_t1 == gone) | (meta.pair_t2 == gone)).sum())
    assert dropped > 0 and report["pairs_dropped"] == dropped
    assert report["pairs"] == everything["pairs"] - dropped and report["templates"] == everything["templates"] - 1
    # A pair naming a template that has no image at all is an error naming the line (1-based).
    t2 = meta.pair_t2.copy()
    t2[3] = 987654
    with pytest.raises(DataError, match=r"ijbc_template_pair_label.txt: line 4 names template 987654"):
        evaluate_ijb(dataclasses.replace(meta, pair_t2=t2), feats, present, True, ijb.Mode())


def _edit(path: Path, line_no: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[line_no] = new
    path.write_text("\n".join(lines) + "\n")


def test_wrong_column_count_is_one_line(ijb_set, tmp_path, capsys):
    root = _copy(ijb_set, tmp_path)
    _edit(root / "meta" / "ijbc_face_tid_mid.txt", 2, "3.jpg 1")
    code, _, err = run_eval(["--ckpt", str(ijb_set / "tiny.pt"), "--ijb", str(root)], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "ijbc_face_tid_mid.txt: line 3 has 2 columns, expected 3" in err


def test_missing_image_is_named_or_skipped_and_counted(ijb_set, tmp_path, capsys):
    root = _copy(ijb_set, tmp_path)
    (root / "loose_crop" / "2.jpg").unlink()
    args = ["--ckpt", str(ijb_set / "tiny.pt"), "--ijb", str(root), "--workers", "0"]
    code, _, err = run_eval(args, capsys)
    assert code == 2 and "2.jpg: no such file" in err and "--skip-missing" in err
    code, out, err = run_eval(args + ["--skip-missing", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["images_skipped"] == 1 and "2.jpg" in report["skipped"][0]


def test_landmarks_outside_the_image(ijb_set, tmp_path, capsys):
    root = _copy(ijb_set, tmp_path)
    lmk = root / "meta" / "ijbc_name_5pts_score.txt"
    _edit(lmk, 0, "1.jpg " + " ".join(["-500.0"] * 10) + " 0.9")
    code, _, err = run_eval(["--ckpt", str(ijb_set / "tiny.pt"), "--ijb", str(root), "--workers", "0"], capsys)
    assert code == 2 and "1.jpg" in err and "landmarks lie outside" in err and "line 1" in err


def test_features_of_another_set_are_refused(ijb_set, tmp_path, capsys):
    root = _copy(ijb_set, tmp_path)
    feats_file = tmp_path / "f.npz"
    assert run_eval(["--ckpt", str(ijb_set / "tiny.pt"), "--ijb", str(ijb_set), "--features", str(feats_file),
                     "--workers", "0"], capsys)[0] == 0
    lmk = root / "meta" / "ijbc_name_5pts_score.txt"
    first = lmk.read_text().splitlines()[0].split()
    first[1] = str(float(first[1]) + 1)  # one landmark moved: the stored features are not this set's
    _edit(lmk, 0, " ".join(first))
    code, _, err = run_eval(["--ijb", str(root), "--features", str(feats_file)], capsys)
    assert code == 2 and "another image list" in err
