"""The embedding pass over `.bin` sets: streaming, mirroring, errors."""

import io
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from irface.data import save_bin
from irface.errors import DataError, ModelFileError
from irface.eval import embed_bin, evaluate_bin, evaluate_embeddings, module_embed_fn, run_verification


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")  # lossless: decoded pixels equal these
    return buf.getvalue()


def make_pair_images(n_pairs: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random faces; a same pair is the image and a slightly noisy copy."""
    rng = np.random.default_rng(seed)
    issame = np.arange(n_pairs) % 2 == 0
    low = rng.integers(0, 256, size=(2 * n_pairs, 4, 4, 3)).astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(x).resize((size, size), Image.BILINEAR)) for x in low])
    noise = rng.integers(-12, 13, size=images[1::2].shape)
    copy = np.clip(images[0::2].astype(int) + noise, 0, 255).astype(np.uint8)
    images[1::2][issame] = copy[issame]
    return images, issame


def make_bin(path, n_pairs: int = 20, size: int = 16, seed: int = 0, fmt: str = "png"):
    images, issame = make_pair_images(n_pairs, size, seed)
    save_bin(path, [png(x) for x in images] if fmt == "png" else images, issame)
    return images, issame


def column_features(images: np.ndarray) -> np.ndarray:
    """A deliberately mirror-sensitive embedding: per-channel intensity weighted by column index."""
    x = images.astype(np.float64)
    w = np.arange(images.shape[2], dtype=np.float64)
    left = np.einsum("nhwc,w->nc", x, w)
    return np.concatenate([left, x.mean(axis=(1, 2))], axis=1).astype(np.float32)


class Counter:
    def __init__(self, fn, input_size=None, embedding_size=None):
        self.fn, self.calls, self.images = fn, 0, 0
        if input_size:
            self.input_size = input_size
        if embedding_size:
            self.embedding_size = embedding_size

    def embed(self, images):
        self.calls += 1
        self.images += len(images)
        return self.fn(images)


def test_mirrors_are_horizontal_and_batches_cover_every_image(tmp_path):
    images, issame = make_bin(tmp_path / "lfw.bin", n_pairs=23)
    model = Counter(column_features, input_size=16)
    emb, emb_flip, labels = embed_bin(model.embed, tmp_path / "lfw.bin", batch_size=5)
    assert labels.tolist() == issame.tolist()
    np.testing.assert_array_equal(emb, column_features(images))
    np.testing.assert_array_equal(emb_flip, column_features(images[:, :, ::-1]))  # NHWC width axis
    assert model.images == 2 * len(images) and model.calls == 2 * 10  # ceil(46 / 5) batches, twice


def test_evaluate_bin_equals_the_protocol_on_the_same_embeddings(tmp_path):
    images, issame = make_bin(tmp_path / "agedb_30.bin", n_pairs=40)
    r = evaluate_bin(Counter(column_features, 16).embed, tmp_path / "agedb_30.bin", batch_size=7)
    ref = evaluate_embeddings("agedb_30", column_features(images), issame, column_features(images[:, :, ::-1]))
    assert r.name == "agedb_30" and r.pairs == 40
    for key in ("accuracy", "accuracy_std", "accuracy_flip", "accuracy_flip_std", "xnorm", "auc", "threshold_cos"):
        assert getattr(r, key) == getattr(ref, key), key
    no_flip = evaluate_bin(Counter(column_features, 16).embed, tmp_path / "agedb_30.bin", 7, flip=False)
    assert no_flip.accuracy_flip is None and no_flip.accuracy == r.accuracy


def test_tiny_model_separates_same_pairs(tmp_path, tiny_backbone):
    make_bin(tmp_path / "lfw.bin", n_pairs=30)
    results = run_verification(module_embed_fn(tiny_backbone), tmp_path, ["lfw"], batch_size=8)
    r = results["lfw"]
    # Same pairs are near-copies: even an untrained network ranks them above random different pairs.
    assert r.auc > 0.9 and r.accuracy > 0.7 and r.embedding_size == 16


def test_module_embed_fn_restores_training_mode(tiny_backbone):
    tiny_backbone.train()
    fn = module_embed_fn(tiny_backbone)
    out = fn(np.zeros((2, 16, 16, 3), dtype=np.uint8))
    assert out.shape == (2, 16) and tiny_backbone.training
    assert fn.input_size == 16 and fn.embedding_size == 16
    tiny_backbone.eval()
    expected = tiny_backbone(torch.full((2, 3, 16, 16), -1.0)).detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)  # uint8 0 -> -1 after normalisation


def test_missing_target_lists_what_is_there(tmp_path):
    make_bin(tmp_path / "lfw.bin", n_pairs=10)
    make_bin(tmp_path / "cfp_fp.bin", n_pairs=10)
    model = Counter(column_features, 16)
    with pytest.raises(DataError, match=r"agedb_30\.bin: no such verification set; .bin files in .*: cfp_fp, lfw$"):
        run_verification(model.embed, tmp_path, ["lfw", "agedb_30"])
    assert model.calls == 0  # checked before any work
    assert list(run_verification(model.embed, tmp_path, ["cfp_fp.bin", "lfw"])) == ["cfp_fp", "lfw"]


def test_images_of_another_size_reach_the_model_at_its_input_size(tmp_path):
    make_bin(tmp_path / "lfw.bin", n_pairs=10, size=16)
    seen = []
    model = Counter(lambda x: seen.append(x.shape) or column_features(x), input_size=24)
    evaluate_bin(model.embed, tmp_path / "lfw.bin")
    assert seen and all(shape[1:] == (24, 24, 3) for shape in seen)


def test_an_undecodable_image_is_still_one_clear_line(tmp_path):
    images, issame = make_pair_images(10, 16)
    encoded = [png(x) for x in images]
    encoded[0] = b"not an image"
    save_bin(tmp_path / "lfw.bin", encoded, issame)
    with pytest.raises(DataError, match=r"lfw\.bin image 0: cannot decode image"):
        evaluate_bin(Counter(column_features, input_size=24).embed, tmp_path / "lfw.bin")


def test_embedding_shape_and_size_mismatch(tmp_path):
    make_bin(tmp_path / "lfw.bin", n_pairs=10)
    with pytest.raises(ModelFileError, match=r"shape \(4, 6\) for 5 images"):
        evaluate_bin(lambda x: np.zeros((4, 6)), tmp_path / "lfw.bin", batch_size=5)
    with pytest.raises(ModelFileError, match="returned 6-d embeddings, but 512-d"):
        evaluate_bin(Counter(column_features, 16, embedding_size=512).embed, tmp_path / "lfw.bin")


def test_too_few_pairs_and_malformed_bin(tmp_path):
    make_bin(tmp_path / "small.bin", n_pairs=9)
    with pytest.raises(DataError, match="9 pairs"):
        evaluate_bin(column_features, tmp_path / "small.bin")
    (tmp_path / "bad.bin").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="bad.bin"):
        evaluate_bin(column_features, tmp_path / "bad.bin")


def test_streaming_never_holds_the_decoded_set(tmp_path):
    n_pairs, size = 600, 64
    make_bin(tmp_path / "big.bin", n_pairs=n_pairs, size=size, fmt="jpeg")
    decoded_uint8 = 2 * n_pairs * size * size * 3  # 14.7 MB; a float copy would be 4-8x that
    encoded = (tmp_path / "big.bin").stat().st_size  # read once, then unpickled: held twice at most

    def cheap(images):  # a model that allocates next to nothing itself
        return images[:, ::16, ::16, 0].reshape(len(images), -1).astype(np.float32)

    tracemalloc.start()
    try:
        r = evaluate_bin(cheap, tmp_path / "big.bin", batch_size=50)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.pairs == n_pairs
    assert peak < 2 * encoded + decoded_uint8 / 4, f"peak {peak / 1e6:.1f} MB, encoded {encoded / 1e6:.1f} MB"



def test_whole_pass_matches_the_reference_style_pass(tmp_path, tiny_backbone):
    # The reference decodes the whole set into float64 CHW arrays, mirrors axis 2 (width),
    # normalises ((x / 255) - 0.5) / 0.5 in float64 and feeds float32 to the network.
    from irface.data import load_bin

    make_bin(tmp_path / "lfw.bin", n_pairs=24, seed=5)
    model = tiny_backbone.eval()
    images, issame = load_bin(tmp_path / "lfw.bin", image_size=16)
    chw = np.transpose(images, (0, 3, 1, 2)).astype(np.float64)
    outs = []
    for data in (chw, np.flip(chw, axis=3)):  # axis 2 of each CHW image
        x = torch.from_numpy(((data / 255) - 0.5) / 0.5).float()
        with torch.no_grad():
            outs.append(model(x).numpy().astype(np.float64))
    ref = evaluate_embeddings("lfw", outs[0], issame, outs[1])
    ours = evaluate_bin(module_embed_fn(model), tmp_path / "lfw.bin", batch_size=10)
    for key in ("accuracy", "accuracy_std", "accuracy_flip", "accuracy_flip_std"):
        assert abs(getattr(ours, key) - getattr(ref, key)) < 1e-5, key
    assert ours.xnorm == pytest.approx(ref.xnorm, rel=1e-5)
