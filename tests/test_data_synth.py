"""Synthetic identities: deterministic, held-out identities only in the .bin sets, near chance untrained."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from irface.data import load_bin, synth
from irface.data.recordio import RecordIODataset
from irface.data.bin import read_bin
from irface.data.images import decode_image


def best_threshold_accuracy(sims: np.ndarray, issame: np.ndarray) -> float:
    """The most optimistic verification accuracy: the best single threshold chosen on the test pairs."""
    return max(float(((sims >= t) == issame).mean()) for t in np.unique(sims))


def cosine_pairs(features: np.ndarray) -> np.ndarray:
    f = features.reshape(len(features), -1).astype(np.float64)
    f -= f.mean(1, keepdims=True)
    f /= np.linalg.norm(f, axis=1, keepdims=True) + 1e-12
    return (f[0::2] * f[1::2]).sum(1)


def test_writes_the_real_formats_deterministically(tmp_path):
    kw = dict(ids=3, per_id=2, holdout_ids=4, pairs=20, image_size=32)
    a = synth.write_synthetic(tmp_path / "a", seed=7, **kw)
    synth.write_synthetic(tmp_path / "b", seed=7, **kw)
    synth.write_synthetic(tmp_path / "c", seed=8, **kw)
    names = ["train.rec", "train.idx", "property", "lfw.bin", "cfp_fp.bin", "agedb_30.bin"]
    assert a.bins == ["lfw", "cfp_fp", "agedb_30"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "train.rec").read_bytes() != (tmp_path / "c" / "train.rec").read_bytes()
    ds = RecordIODataset(tmp_path / "a", image_size=32)
    assert ds.layout == "header" and len(ds) == 6 and ds.num_classes == 3
    assert [ds[i][1] for i in range(6)] == [0, 0, 1, 1, 2, 2]
    images, issame = load_bin(tmp_path / "a" / "lfw.bin", image_size=32)
    assert images.shape == (40, 32, 32, 3) and issame.tolist() == [True, False] * 10


def test_render_size_at_the_image_size_draws_sharper_faces():
    """Shapes drawn at the image size (the demo's 56 px), not at half of it, keep their edges."""

    def edges(render_size=None) -> float:
        images = synth.train_images(0, ids=4, per_id=4, size=56, difficulty=0.0, render_size=render_size)
        pixels = np.stack([decode_image(data, 56) for _, data in images]).astype(float)
        return float(np.abs(np.diff(pixels, axis=2)).mean())

    assert edges(render_size=56) > 1.3 * edges()


def test_chunking_does_not_change_the_images():
    one = list(synth.train_images(3, ids=4, per_id=2, size=32, chunk_ids=1))
    many = list(synth.train_images(3, ids=4, per_id=2, size=32, chunk_ids=16))
    assert one == many


def test_identity_images_draws_any_identities_as_training_does():
    """Identity i's photos depend on (seed, i) alone: the same as in a training set that holds i; each
    identity gets its own count (unseen people for benchmarks/cluster_demo.py)."""
    train = list(synth.train_images(3, ids=4, per_id=2, size=32))
    picked = list(synth.identity_images(3, {2: 2, 3: 2}, size=32, chunk_ids=1))
    assert picked == train[4:]
    uneven = list(synth.identity_images(3, {10: 3, 7: 1, 11: 2}, size=32))
    assert [label for label, _ in uneven] == [10, 10, 10, 7, 11, 11]
    assert len({data for _, data in uneven}) == 6


def test_bin_sets_use_only_held_out_identities(tmp_path, monkeypatch):
    asked = []
    real = synth.identity_traits

    def spy(seed, ids):
        asked.append(np.asarray(ids).copy())
        return real(seed, ids)

    monkeypatch.setattr(synth, "identity_traits", spy)
    synth.write_synthetic(tmp_path, ids=5, per_id=1, holdout_ids=6, pairs=20, image_size=32)
    train_ids = np.concatenate(asked[:1])
    bin_ids = np.concatenate(asked[1:])
    assert set(train_ids.tolist()) == set(range(5))
    assert bin_ids.min() >= 5 and bin_ids.max() < 11


def test_bin_folds_are_balanced(tmp_path):
    synth.write_synthetic(tmp_path, ids=2, per_id=1, holdout_ids=40, pairs=100, image_size=32, sets=["lfw"])
    _, issame = read_bin(tmp_path / "lfw.bin")
    assert len(issame) == 100
    for fold in np.array_split(issame, 10):
        assert fold.sum() == 5


def test_flavours_differ_as_documented():
    rng = np.random.default_rng(0)
    profile = synth.draw_nuisance(rng, 200, "profile")
    frontal = synth.draw_nuisance(rng, 200, "frontal")
    young, old = synth.draw_nuisance(rng, 200, "young"), synth.draw_nuisance(rng, 200, "old")
    assert np.abs(profile["yaw"]).min() >= 0.75 and np.abs(frontal["yaw"]).max() <= 0.15
    assert young["age"].max() <= 0.2 and old["age"].min() >= 0.8
    calm = synth.draw_nuisance(rng, 200, "train", difficulty=0.0)
    assert np.all(calm["rot"] == 0) and np.all(calm["gain"] == 1) and np.all(calm["occ"] == 0)


@pytest.fixture(scope="module")
def lfw_like():
    held = np.arange(1000, 1040)
    hard = synth.verification_set(0, "lfw", held, 120, size=112)
    easy = synth.verification_set(0, "lfw", held, 120, size=112, difficulty=0.0)
    from irface.data.images import decode_images

    return decode_images(hard[0]), np.array(hard[1]), decode_images(easy[0]), np.array(easy[1])


def test_untrained_network_and_raw_pixels_verify_near_chance(lfw_like):
    from irface.data.transforms import normalize, to_nchw_tensor
    from irface.models import IResNet

    images, issame, easy_images, easy_same = lfw_like
    assert best_threshold_accuracy(cosine_pairs(images), issame) < 0.7
    net = IResNet(layers=[1, 1], widths=[8, 16], embedding_size=16, input_size=112).eval()
    with torch.no_grad():
        emb = net(normalize(to_nchw_tensor(images))).numpy()
    assert best_threshold_accuracy(cosine_pairs(emb), issame) < 0.7
    # The knob works: without nuisances the identity alone shows in the raw pixels.
    assert best_threshold_accuracy(cosine_pairs(easy_images), easy_same) > 0.8


def test_faces_are_unencoded_training_images_of_each_identity():
    from irface.data.synth import faces

    images, labels = faces(0, 3, 2, size=32)
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert images.std() > 10  # faces, not a blank
    again, _ = faces(0, 3, 2, size=32)
    assert np.array_equal(images, again)
