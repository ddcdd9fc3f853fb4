"""5-point alignment: the least-squares similarity transform and the Pillow warp, OpenCV's pixel convention."""

import numpy as np
import pytest
from PIL import Image

from irface.cli import main
from irface.errors import DataError
from irface.data.align import (
    ARCFACE_TEMPLATE,
    align_face,
    parse_landmarks,
    similarity_transform,
    template,
    warp_affine,
)


def _similarity(angle, scale, tx, ty):
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    return np.array([[c, -s, tx], [s, c, ty]])


def _apply(m, pts):
    return pts @ m[:, :2].T + m[:, 2]


def _landmarks_for(m):
    """Image landmarks that `m` (image -> crop) carries exactly onto the template."""
    full = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    return _apply(full, ARCFACE_TEMPLATE)


@pytest.mark.parametrize("angle, scale, tx, ty", [(0.3, 1.7, 40.0, 25.0), (-1.2, 0.45, -10.0, 60.0), (0.0, 1.0, 0.0, 0.0)])
def test_known_similarity_is_recovered(angle, scale, tx, ty):
    m = _similarity(angle, scale, tx, ty)
    got = similarity_transform(_landmarks_for(m), ARCFACE_TEMPLATE)
    np.testing.assert_allclose(got, m, atol=1e-9)


def test_least_squares_with_noisy_points_and_no_reflection():
    rng = np.random.default_rng(0)
    m = _similarity(0.4, 2.0, 5.0, -3.0)
    src = rng.uniform(0, 100, size=(5, 2))
    dst = _apply(m, src) + rng.normal(0, 0.5, size=(5, 2))
    got = similarity_transform(src, dst)
    # Naive reference: a similarity is linear in (a, b, tx, ty): x' = a x - b y + tx, y' = b x + a y + ty.
    rows = np.concatenate([np.c_[src[:, 0], -src[:, 1], np.ones(5), np.zeros(5)],
                           np.c_[src[:, 1], src[:, 0], np.zeros(5), np.ones(5)]])
    (a, b, tx, ty), *_ = np.linalg.lstsq(rows, np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)
    np.testing.assert_allclose(got, [[a, -b, tx], [b, a, ty]], atol=1e-9)
    np.testing.assert_allclose(got, m, atol=1.5)
    mirrored = src * [-1, 1]  # a mirror image cannot be reached by rotation + scale: det stays positive
    assert np.linalg.det(similarity_transform(mirrored, dst)[:, :2]) > 0


def test_warp_samples_where_the_transform_says():
    # A linear ramp image: bilinear sampling reproduces it exactly, so every crop pixel can be predicted.
    h, w = 140, 120
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([2 * xx, (1.5 * yy).astype(int), np.full_like(xx, 7)], -1).astype(np.uint8)
    m = _similarity(0.35, 1.4, -20.0, -30.0)
    crop = align_face(image, _landmarks_for(m)).astype(float)
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
    ys, xs = np.mgrid[0:112, 0:112]
    u = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    v = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    inside = (u > 1) & (u < w - 2) & (v > 1) & (v < h - 2)
    assert inside.mean() > 0.5
    # Rounded, not truncated, no half-pixel shift; positions are on OpenCV's 1/32-pixel grid (a slope
    # of 2 adds up to 2/64) and the landmarks float32 as the reference's.
    assert np.abs(crop[..., 0][inside] - 2 * u[inside]).max() <= 0.5 + 2 / 64 + 0.005
    assert np.abs(crop[..., 1][inside] - 1.5 * v[inside]).max() <= 1.0
    assert np.all(crop[..., 2][inside] == 7)


def test_template_scales_with_size_and_identity_crop_is_unchanged():
    np.testing.assert_allclose(template(224), ARCFACE_TEMPLATE * 2)
    rng = np.random.default_rng(1)
    face = rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    np.testing.assert_array_equal(align_face(face, ARCFACE_TEMPLATE), face)


@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d,e,f,g,h,i,j", "1,2,3,4,5,6,7,8,9,nan"])
def test_bad_landmarks_are_refused(text):
    with pytest.raises(DataError, match="10"):
        parse_landmarks(text)


def test_coincident_landmarks_are_refused():
    with pytest.raises(DataError, match="coincide"):
        align_face(np.zeros((50, 50, 3), np.uint8), np.ones((5, 2)))


def test_cli_align_writes_the_crop(tmp_path, capsys):
    rng = np.random.default_rng(2)
    photo = rng.integers(0, 256, size=(200, 180, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    m = _similarity(0.2, 0.8, -30.0, -40.0)
    lm = _landmarks_for(m)
    text = ",".join(f"{v:.6f}" for v in lm.reshape(-1))
    assert main(["align", str(tmp_path / "photo.png"), "--landmarks", text, "--output", str(tmp_path / "crop.png")]) == 0
    crop = np.asarray(Image.open(tmp_path / "crop.png"))
    assert crop.shape == (112, 112, 3)
    np.testing.assert_array_equal(crop, align_face(photo, parse_landmarks(text)))  # the landmarks as typed


@pytest.mark.parametrize("setup, argv_tail, message", [
    (None, ["--landmarks", "1,2,3,4,5,6,7,8,9,10"], "no such file"),
    (b"not an image", ["--landmarks", "1,2,3,4,5,6,7,8,9,10"], "cannot decode"),
    ("png", ["--landmarks", "1,2,3"], "10"),
])
def test_cli_align_errors_are_one_line_and_write_nothing(tmp_path, capsys, setup, argv_tail, message):
    src = tmp_path / "in.png"
    if setup == "png":
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(src)
    elif setup is not None:
        src.write_bytes(setup)
    assert main(["align", str(src), *argv_tail, "--output", str(tmp_path / "out.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out.png").exists()


def test_border_blends_with_black_as_opencv():
    # A flat grey image; the crop's column 0 samples half a pixel left of the image's first column:
    # OpenCV mixes that column with the black border (half each), it does not repeat the edge.
    image = np.full((40, 40, 3), 200, np.uint8)
    m = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]])  # image x = crop x - 0.5
    crop = warp_affine(image, m, 20)
    assert crop[5, 0].tolist() == [100, 100, 100]
    assert crop[5, 1].tolist() == [200, 200, 200]
    far = warp_affine(image, np.array([[1.0, 0.0, 100.0], [0.0, 1.0, 0.0]]), 20)
    assert not far.any()


def test_warp_is_opencv_4s_warp_affine_bit_for_bit():
    cv2 = pytest.importorskip("cv2")
    if int(cv2.__version__.split(".")[0]) >= 5:
        pytest.skip("OpenCV 5 changed warpAffine; the reference results come from OpenCV 4")
    rng = np.random.default_rng(0)
    for _ in range(40):
        h, w = rng.integers(30, 200, 2)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        angle, scale = rng.uniform(-3, 3), rng.uniform(0.3, 3)
        m = np.array([[scale * np.cos(angle), -scale * np.sin(angle), rng.uniform(-150, 150)],
                      [scale * np.sin(angle), scale * np.cos(angle), rng.uniform(-150, 150)]])
        np.testing.assert_array_equal(warp_affine(image, m, 112), cv2.warpAffine(image, m, (112, 112), borderValue=0.0))


def test_template_is_the_references_float32_template():
    src = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655],
                    [62.7299, 92.2041]], dtype=np.float32)
    src[:, 0] += 8.0
    np.testing.assert_array_equal(ARCFACE_TEMPLATE, src)


# Crops of other sizes: each family's reference convention (see irface.data.align's docstring).

def test_other_families_templates():
    from irface.data.align import crop_family

    written = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                        [70.7299, 92.2041]], dtype=np.float32)
    # insightface estimate_norm for multiples of 128: arcface_dst * size/128, x + 8 * size/128, float32.
    for size in (128, 256):
        expected = written * (size / 128.0)
        expected[:, 0] += np.float32(8.0 * size / 128.0)
        np.testing.assert_array_equal(template(size), expected)
        assert crop_family(size) == "insightface-128"
    # SphereFace / CosFace: their 96x112 template, i.e. ArcFace's 8 px to the left.
    np.testing.assert_allclose(template((112, 96)), ARCFACE_TEMPLATE - [8, 0], atol=1e-5)
    np.testing.assert_allclose(template((224, 192)), template((112, 96)) * 2)
    # No published 5-point convention (FaceNet's 160): ArcFace's scaled to the shorter side, centred.
    np.testing.assert_allclose(template(160), ARCFACE_TEMPLATE * 160 / 112)
    np.testing.assert_allclose(template((120, 100)), ARCFACE_TEMPLATE * 100 / 112 + [0, 10])
    assert [crop_family(s) for s in (112, 224, (112, 96), 160)] == ["arcface", "arcface", "sphereface", "scaled"]


def test_cp2tform_is_the_inverse_of_the_fit_from_template_to_landmarks():
    from irface.data.align import cp2tform_similarity

    rng = np.random.default_rng(3)
    tpl = template((112, 96))
    m = _similarity(0.3, 1.6, 40.0, 25.0)
    landmarks = _apply(np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2], tpl) + rng.normal(0, 1.5, (5, 2))
    got = cp2tform_similarity(landmarks, tpl)
    # Independently: landmarks ~ a * template + b in complex numbers (a rotation + scale), least squares.
    z_t, z_l = tpl[:, 0] + 1j * tpl[:, 1], landmarks[:, 0] + 1j * landmarks[:, 1]
    (a, b), *_ = np.linalg.lstsq(np.c_[z_t, np.ones(5)], z_l, rcond=None)
    # Its inverse: template = (landmarks - b) / a.
    inv_a = 1 / a
    expected = np.array([[inv_a.real, -inv_a.imag, (-b * inv_a).real], [inv_a.imag, inv_a.real, (-b * inv_a).imag]])
    np.testing.assert_allclose(got, expected, atol=1e-9)
    # Measured in the other space than Umeyama's: with noise the two differ (a little).
    assert 1e-4 < np.abs(got - similarity_transform(landmarks, tpl)).max() < 1.0


def test_each_familys_crop_is_opencvs_warp_of_its_matrix_on_real_faces():
    """On the fixture photos' detected landmarks: the crop is cv2.warpAffine(img, M, (W, H)) of the
    family's matrix, bit for bit (SphereFace's M as its Python port computes it: checked by value above)."""
    cv2 = pytest.importorskip("cv2")
    pytest.importorskip("retinaface")
    if int(cv2.__version__.split(".")[0]) >= 5:
        pytest.skip("OpenCV 5 changed warpAffine; the reference results come from OpenCV 4")
    from pathlib import Path

    from irface.data.align import crop_transform
    from irface.infer.images import open_rgb
    from irface.infer.photo import default_detector

    photos = Path(__file__).parent / "fixtures" / "realface" / "photos"
    for path in sorted(photos.glob("*/*"))[:6]:
        image = open_rgb(path)
        points = default_detector().detect(image)[0].landmarks
        for size in ((112, 96), 128, 160):
            h, w = (size, size) if isinstance(size, int) else size
            crop = align_face(image, points, size)
            assert crop.shape == (h, w, 3)
            np.testing.assert_array_equal(crop, cv2.warpAffine(image, crop_transform(points, size), (w, h),
                                                               borderValue=0.0))


def test_cli_align_size_height_by_width(tmp_path, capsys):
    rng = np.random.default_rng(4)
    photo = rng.integers(0, 256, size=(200, 180, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    text = ",".join(f"{v:.6f}" for v in _landmarks_for(_similarity(0.1, 0.9, -20.0, -30.0)).reshape(-1))
    out = tmp_path / "crop.png"
    assert main(["align", str(tmp_path / "photo.png"), "--landmarks", text, "--size", "112x96", "--output", str(out)]) == 0
    crop = np.asarray(Image.open(out))
    assert crop.shape == (112, 96, 3)
    np.testing.assert_array_equal(crop, align_face(photo, parse_landmarks(text), (112, 96)))
    capsys.readouterr()
    assert main(["align", str(tmp_path / "photo.png"), "--landmarks", text, "--size", "0x96", "--output",
                 str(tmp_path / "bad.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--size" in err[0] and not (tmp_path / "bad.png").exists()
