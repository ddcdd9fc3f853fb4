"""Synthetic face-like identities, rendered with vectorised numpy and written in the real formats.

An identity is a fixed vector of latent traits (face shape, skin and hair colour, hairline, eye
placement and size, iris colour, brows, nose, mouth, beard, glasses, moles, a skin texture).
Each image of it is a nuisance draw: pose (shift, in-plane rotation, scale, yaw with a head-like
foreshortening), directional lighting and ambient level, colour cast, background clutter,
expression (mouth, brows, blink), age drift (grey hair, receding hairline, wrinkles), partial
occlusion (hand, scarf, sunglasses), blur, noise and JPEG quality.

`difficulty` scales every nuisance (0 = none, 1 = default, 2 = twice as strong). At 1, an
untrained network verifies held-out identities near chance, and a small IResNet trained for a few
CPU minutes verifies them well above it (see docs/data.md for the figures).

The three verification sets differ in flavour, like the real ones:
- `lfw`: both images drawn as in training;
- `cfp_fp`: a near-frontal image against a strong profile-like one (yaw 55..80 degrees);
- `agedb_30`: a young image against an old one (strong age drift between the two).
Their identities are held out: never in `train.rec`.

Everything is deterministic given the seed: identity i's traits depend only on (seed, i), and each
image's nuisances only on (seed, split, identity or pair), not on how the work is chunked.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from PIL import Image, ImageFilter

from irface.data.pairs import plan_pairs

log = logging.getLogger(__name__)

# Trait columns (each uniform in [0, 1] per identity); the renderer maps them to geometry and colour.
TRAITS = (
    "face_w", "face_h", "jaw", "skin_l", "skin_warm", "skin_red", "hair_hue", "hair_l", "hair_volume",
    "hairline", "bald", "eye_y", "eye_dx", "eye_rx", "eye_ratio", "iris_hue", "iris_l", "brow_thick",
    "brow_tilt", "brow_gap", "nose_len", "nose_w", "mouth_y", "mouth_w", "lip_thick", "lip_red",
    "beard", "glasses", "glasses_hue", "mole1", "mole1_u", "mole1_v", "mole2", "mole2_u", "mole2_v",
    "tex_f1", "tex_a1", "tex_p1", "tex_f2", "tex_a2", "tex_p2", "tex_amp", "eye_asym", "bg_pref",
)
T = {name: i for i, name in enumerate(TRAITS)}

HAIR_PALETTE = np.array([[0.08, 0.06, 0.05], [0.30, 0.18, 0.10], [0.55, 0.38, 0.20], [0.80, 0.65, 0.38],
                         [0.55, 0.22, 0.10], [0.25, 0.25, 0.28]], dtype=np.float32)
IRIS_PALETTE = np.array([[0.25, 0.45, 0.75], [0.30, 0.55, 0.35], [0.40, 0.25, 0.12], [0.12, 0.08, 0.06],
                         [0.50, 0.50, 0.55]], dtype=np.float32)
GLASSES_PALETTE = np.array([[0.05, 0.05, 0.05], [0.55, 0.35, 0.15], [0.75, 0.75, 0.78], [0.6, 0.1, 0.1]],
                           dtype=np.float32)

FLAVOURS = ("train", "lfw", "frontal", "profile", "young", "old")
BIN_SETS = {"lfw": ("lfw", "lfw"), "cfp_fp": ("frontal", "profile"), "agedb_30": ("young", "old")}

_STREAM_TRAITS, _STREAM_TRAIN, _STREAM_PAIRS = 1, 2, 3


def identity_traits(seed: int, ids: np.ndarray | list[int]) -> np.ndarray:
    """(len(ids), len(TRAITS)) uniforms; identity i's row depends only on (seed, i)."""
    return np.stack([np.random.default_rng([seed, _STREAM_TRAITS, int(i)]).random(len(TRAITS))
                     for i in ids]).astype(np.float32)


def draw_nuisance(rng: np.random.Generator, n: int, flavour: str = "train", difficulty: float = 1.0) -> dict:
    """Per-image nuisance parameters (arrays of length n) for one flavour, scaled by `difficulty`."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}")
    d = float(difficulty)
    # Pose, light, colour cast, occlusion, blur and noise grow with g; d = 1 is calibrated so that a
    # small IResNet learns the identities in a few CPU minutes. The background is at full strength
    # from d = 1: it is what an untrained network's similarity mostly sees, and easy to learn to ignore.
    g = 0.5 * d
    bgs = min(d, 1.0)
    u = lambda lo=0.0, hi=1.0: rng.uniform(lo, hi, n).astype(np.float32)  # noqa: E731
    sym = lambda a: u(-a, a)  # noqa: E731
    nz = {
        "tx": sym(0.07 * g), "ty": sym(0.07 * g), "scale": 1.0 + sym(0.08 * g), "rot": sym(0.22 * g),
        "light_az": u(0, 2 * np.pi), "light_strength": u(0, 0.75) * min(g, 1.5),
        "ambient": 1.0 - u(0, 0.45) * min(g, 1.5), "contrast": 1.0 + sym(0.25 * g),
        "gain": np.exp(rng.normal(0, 0.16 * g, (n, 3))).astype(np.float32),
        "bg": (0.5 + (rng.uniform(0.05, 0.95, (n, 3)) - 0.5) * bgs).astype(np.float32),
        "bg_grad": sym(0.4 * bgs), "bg_angle": u(0, 2 * np.pi),
        "blob": rng.uniform(0, 1, (n, 2, 7)).astype(np.float32) * np.array([1] * 6 + [bgs], np.float32),
        "mouth_open": u(0, 1) ** 2 * min(d, 1.0), "brow_raise": sym(0.03 * g),
        "blink": 1.0 - u(0, 1) * min(d, 1.0),
        "occ": (u(0, 1) < 0.3 * min(g, 2.0)).astype(np.float32), "occ_kind": u(0, 3),
        "occ_pos": rng.uniform(0, 1, (n, 4)).astype(np.float32),
        "occ_color": rng.uniform(0.05, 0.95, (n, 3)).astype(np.float32),
        "blur": u(0, 1.1 * g), "noise": u(0, 7.0 * g), "noise_pick": rng.integers(0, 1 << 30, n),
        "quality": rng.integers(60, 96, n),
        "age": u(0, 1),
    }
    # Training covers every pose and age so the held-out flavours are learnable: 30% of the images
    # turn up to 72 degrees.
    turn = min(d, 1.0)
    yaw = sym(0.45 * g)
    wide = u(0, 1) < 0.3
    yaw = np.where(wide, sym(1.25 * turn), yaw).astype(np.float32)
    if flavour == "frontal":
        yaw = sym(0.15 * turn)
    elif flavour == "profile":
        side = np.where(u(0, 1) < 0.5, -1.0, 1.0).astype(np.float32)
        yaw = side * u(0.75, 1.1) * turn
    nz["yaw"] = yaw.astype(np.float32)
    if flavour == "young":
        nz["age"] = u(0.0, 0.2)
    elif flavour == "old":
        nz["age"] = u(0.8, 1.0)
    elif flavour == "lfw":
        nz["age"] = u(0.0, 0.7)
    return nz


def _col(x: np.ndarray) -> np.ndarray:
    """(B,) -> (B, 1, 1) for broadcasting over the image grid."""
    return x[:, None, None]


def _blend(img: np.ndarray, color: np.ndarray, alpha: np.ndarray, tmp: np.ndarray) -> None:
    """In place: img += (color - img) * alpha; img and tmp (3, B, H, W), color (B, 3) or (3, B, H, W), alpha (B, H, W)."""
    if color.ndim == 2:
        color = color.T[:, :, None, None]
    np.subtract(color, img, out=tmp)
    tmp *= alpha
    img += tmp


def _ellipse(u: np.ndarray, v: np.ndarray, cx, cy, rx, ry, px: float) -> np.ndarray:
    """Soft mask of an ellipse (about one pixel of edge); centres and radii are (B, 1, 1) or scalars."""
    d = ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2
    return np.clip((1.0 - d) * (np.minimum(rx, ry) / (2.0 * px)), 0.0, 1.0)


_NOISE_BANK: dict[int, np.ndarray] = {}


def _noise_bank(size: int) -> np.ndarray:
    # A fixed bank of unit Gaussian noise (seeded): drawing fresh noise for every pixel costs more
    # than the rest of the rendering.
    if size not in _NOISE_BANK:
        _NOISE_BANK[size] = np.random.default_rng(12345).standard_normal((16, size, size, 3)).astype(np.float32)
    return _NOISE_BANK[size]


def render(traits: np.ndarray, nz: dict, size: int = 112, render_size: Optional[int] = None) -> np.ndarray:
    """Render B faces: traits (B, len(TRAITS)) and nuisances (arrays of length B) -> uint8 (B, size, size, 3) RGB.

    The shapes are drawn at `render_size` (default size // 2, a quarter of the work), blurred by a
    detour through a lower resolution and resized bilinearly to `size`; sensor noise is added at
    `size`. JPEG quality is left to `encode`.
    """
    final = size
    size = render_size or max(16, final // 2)
    B = traits.shape[0]
    t = {name: traits[:, i] for name, i in T.items()}
    px = 2.0 / size
    g = (np.arange(size, dtype=np.float32) + 0.5) * px - 1.0
    gy, gx = g[None, :, None], g[None, None, :]

    # Pose: image point -> head coordinates (inverse similarity transform).
    c, s = _col(np.cos(nz["rot"])), _col(np.sin(nz["rot"]))
    x0 = (gx - _col(nz["tx"])) / _col(nz["scale"])
    y0 = (gy - _col(nz["ty"])) / _col(nz["scale"])
    x = c * x0 + s * y0
    y = -s * x0 + c * y0

    age = nz["age"]
    fw = _col(0.50 + 0.16 * t["face_w"] + 0.02 * age)
    fh = _col(0.70 + 0.16 * t["face_h"])
    jaw = _col(0.90 + 0.25 * t["jaw"])
    fy = 0.08  # face centre a little below the image centre

    # --- background: colour, gradient, two blobs of clutter
    # Channels first (3, B, H, W): every blend then runs over contiguous rows.
    img = np.empty((3, B, size, size), dtype=np.float32)
    tmp = np.empty_like(img)
    img[:] = nz["bg"].T[:, :, None, None]
    ang = nz["bg_angle"]
    grad = _col(nz["bg_grad"]) * (gx * _col(np.cos(ang)) + gy * _col(np.sin(ang)))
    img *= 1.0 + grad
    for k in range(2):
        b = nz["blob"][:, k]
        m = _ellipse(gx, gy, _col(b[:, 0] * 2 - 1), _col(b[:, 1] * 2 - 1), _col(0.15 + 0.4 * b[:, 2]),
                     _col(0.15 + 0.4 * b[:, 3]), px)
        _blend(img, np.stack([b[:, 4], b[:, 5], 1 - b[:, 4]], 1), m * _col(0.7 * b[:, 6]), tmp)

    # --- hair (behind the face), grey with age
    hair_base = HAIR_PALETTE[np.minimum((t["hair_hue"] * len(HAIR_PALETTE)).astype(int), len(HAIR_PALETTE) - 1)]
    hair = hair_base * (0.75 + 0.5 * t["hair_l"])[:, None]
    grey = np.clip((age - 0.35) / 0.65, 0, 1)[:, None] * 0.5
    hair = hair + (np.array([0.78, 0.78, 0.80], np.float32) - hair) * grey
    vol = _col(0.03 + 0.13 * t["hair_volume"])
    has_hair = _col((t["bald"] > 0.12).astype(np.float32))
    hair_mask = _ellipse(x, y, 0.0, fy - 0.08, fw + vol, fh * 0.92 + vol, px) * has_hair
    hairline = _col(-0.62 + 0.28 * t["hairline"] + 0.06 * age)
    hair_mask = hair_mask * (1.0 - np.clip((y - fy - 0.05) / 0.1, 0, 1))  # hair stops above the jaw
    _blend(img, hair, hair_mask, tmp)

    # --- face
    yy = y - fy
    ry = np.where(yy > 0, fh * jaw, fh)
    face = np.clip((1.0 - (x / fw) ** 2 - (yy / ry) ** 2) * (fw / (2 * px)), 0, 1)
    skin_l = 0.30 + 0.62 * t["skin_l"]
    skin = np.stack([skin_l * (0.95 + 0.05 * t["skin_red"]), skin_l * (0.72 + 0.12 * t["skin_warm"]),
                     skin_l * (0.58 + 0.18 * t["skin_warm"] - 0.08 * t["skin_red"])], 1)
    skin = skin * (1.0 - 0.08 * age)[:, None]

    # Yaw: a point at image x on a head of half-width fw sits at angle asin(x / fw); turning the head
    # by `yaw` moves the features to u = fw * sin(angle - yaw); the far side foreshortens and hides.
    xn = np.clip(x / fw, -0.999, 0.999)
    theta = np.arcsin(xn) - _col(nz["yaw"])
    visible = np.clip(np.cos(theta) * 6.0, 0, 1)
    u = np.sin(theta) * fw
    v = y

    # Skin texture: two identity-specific waves in face coordinates (they turn with the head).
    tex = np.zeros_like(u)
    for f, a, p in (("tex_f1", "tex_a1", "tex_p1"), ("tex_f2", "tex_a2", "tex_p2")):
        freq = _col(2.0 + 5.0 * t[f]) * np.pi
        ang = _col(t[a] * np.pi)
        tex += np.sin(freq * (u * np.cos(ang) + v * np.sin(ang)) + _col(t[p] * 2 * np.pi))
    skin_img = skin.T[:, :, None, None] * (1.0 + _col(0.08 + 0.10 * t["tex_amp"]) * tex)
    _blend(img, skin_img, face, tmp)

    feat = face * visible  # features are drawn only on the visible part of the face

    # Hairline over the forehead (the part of the hair in front of the face).
    fringe = np.clip((hairline - v) / (3 * px), 0, 1) * face * has_hair
    _blend(img, hair, fringe, tmp)

    # Wrinkles with age: thin horizontal lines on the forehead.
    wr = np.clip((age - 0.5) / 0.5, 0, 1)
    lines = np.clip((np.sin(v * 70.0) - 0.75) * 4, 0, 1) * ((v > hairline + 0.05) & (v < _col(-0.28 + 0 * age)))
    _blend(img, skin * 0.55, lines * feat * _col(wr * 0.6), tmp)

    # Eyes, irises, brows (two sides; asymmetry is part of the identity).
    eye_y = _col(-0.16 + 0.12 * t["eye_y"])
    eye_dx = _col(0.19 + 0.10 * t["eye_dx"])
    erx = _col(0.075 + 0.04 * t["eye_rx"] - 0.01 * age)
    ery = erx * _col((0.40 + 0.25 * t["eye_ratio"]) * (0.25 + 0.75 * (nz["blink"] > 0.12)))
    iris = IRIS_PALETTE[np.minimum((t["iris_hue"] * len(IRIS_PALETTE)).astype(int), len(IRIS_PALETTE) - 1)]
    iris = iris * (0.7 + 0.6 * t["iris_l"])[:, None]
    brow_col = hair_base * 0.7
    glasses = _col((t["glasses"] < 0.18).astype(np.float32))
    gcol = GLASSES_PALETTE[np.minimum((t["glasses_hue"] * 4).astype(int), 3)]
    for side in (-1.0, 1.0):
        ey = eye_y + side * _col(0.03 * (t["eye_asym"] - 0.5))
        ex = side * eye_dx
        white = _ellipse(u, v, ex, ey, erx, ery, px) * feat
        _blend(img, np.full((B, 3), 0.92, np.float32), white, tmp)
        _blend(img, iris, _ellipse(u, v, ex, ey, erx * 0.45, np.minimum(ery, erx * 0.45), px) * white, tmp)
        _blend(img, np.zeros((B, 3), np.float32), _ellipse(u, v, ex, ey, erx * 0.18, np.minimum(ery, erx * 0.18), px) * white, tmp)
        # brow: a thin tilted ellipse above the eye
        by = ey - _col(0.07 + 0.07 * t["brow_gap"]) - _col(nz["brow_raise"])
        tilt = _col(0.5 * (t["brow_tilt"] - 0.5)) * side
        bv = v - by - tilt * (u - ex)
        brow = _ellipse(u, bv, ex, 0.0, erx * 1.35, _col(0.012 + 0.025 * t["brow_thick"]), px) * feat
        _blend(img, brow_col, brow, tmp)
        # glasses: a ring around the eye
        ring = np.clip(_ellipse(u, v, ex, ey, erx * 1.6, erx * 1.25, px)
                       - _ellipse(u, v, ex, ey, erx * 1.6 - 0.02, erx * 1.25 - 0.02, px), 0, 1)
        _blend(img, gcol, ring * feat * glasses, tmp)

    # Nose: a shaded wedge that sticks out, so it moves further than the face surface with yaw.
    nose_len = _col(0.12 + 0.15 * t["nose_len"])
    nose_w = _col(0.045 + 0.045 * t["nose_w"])
    nose_u = u + _col(0.08 * np.sin(nz["yaw"])) * np.clip((v - eye_y) / nose_len, 0, 1)
    nose = _ellipse(nose_u, v, 0.0, eye_y + nose_len * 0.6, nose_w, nose_len * 0.55, px) * feat
    _blend(img, skin * 0.62, nose * 0.8, tmp)
    nostril_y = eye_y + nose_len * 1.05
    _blend(img, skin * 0.35, _ellipse(nose_u, v, 0.0, nostril_y, nose_w * 1.1, nose_w * 0.35, px) * feat, tmp)

    # Mouth: lips (identity colour and size), opened by expression.
    mouth_y = np.maximum(_col(0.30 + 0.14 * t["mouth_y"]), nostril_y + 0.08)
    mw = _col(0.12 + 0.11 * t["mouth_w"])
    lip = _col(0.022 + 0.022 * t["lip_thick"])
    lip_col = np.stack([0.55 + 0.3 * t["lip_red"], 0.25 + 0.1 * t["skin_warm"], 0.25 + 0.05 * t["skin_l"]], 1)
    opening = _col(nz["mouth_open"]) * 0.05
    _blend(img, lip_col * (0.6 + 0.5 * skin_l[:, None]), _ellipse(u, v, 0.0, mouth_y, mw, lip + opening, px) * feat, tmp)
    _blend(img, np.full((B, 3), 0.08, np.float32), _ellipse(u, v, 0.0, mouth_y, mw * 0.85, opening * 0.9 + 1e-3, px) * feat, tmp)

    # Beard (identity), moles (identity).
    beard = _col((t["beard"] < 0.25).astype(np.float32))
    beard_mask = face * np.clip((v - mouth_y + 0.1) / 0.05, 0, 1) * beard
    beard_mask *= 1.0 - _ellipse(u, v, 0.0, mouth_y, mw, lip + opening, px)
    _blend(img, hair * 0.85, beard_mask * 0.85, tmp)
    for k in (1, 2):
        present = _col((t[f"mole{k}"] < 0.5).astype(np.float32))
        mu, mv = _col(t[f"mole{k}_u"] * 0.7 - 0.35), _col(t[f"mole{k}_v"] * 0.8 - 0.25)
        _blend(img, skin * 0.3, _ellipse(u, v, mu, mv, 0.022, 0.022, px) * feat * present, tmp)

    # --- lighting: a directional light on a sphere-like head plus ambient, then contrast and colour cast
    ny = np.clip((y - fy) / (fh * 1.1), -0.999, 0.999)
    nxv = np.clip(x / (fw * 1.1), -0.999, 0.999)
    nzv = np.sqrt(np.clip(1.0 - nxv ** 2 - ny ** 2, 0, 1))
    az = nz["light_az"]
    lx, ly = _col(np.cos(az) * 0.8), _col(np.sin(az) * 0.8)
    lz = np.float32(0.6)
    head = np.maximum(face, hair_mask)
    lambert = np.clip(nxv * lx + ny * ly + nzv * lz, 0, 1) * head + (1 - head) * 0.6
    shade = _col(nz["ambient"]) + _col(nz["light_strength"]) * (lambert - 0.6)
    img *= shade
    img -= 0.5
    img *= _col(nz["contrast"])
    img += 0.5
    img *= nz["gain"].T[:, :, None, None]

    # --- occlusion: a hand or scarf (rectangle) over part of the face, or sunglasses
    occ = nz["occ"]
    if occ.any():
        p = nz["occ_pos"]
        kind = nz["occ_kind"]
        rect = (np.abs(gx - _col(p[:, 0] * 0.8 - 0.4)) < _col(0.15 + 0.25 * p[:, 1])) & \
               (np.abs(gy - _col(p[:, 2] * 0.9 - 0.2)) < _col(0.12 + 0.2 * p[:, 3]))
        sunglasses = np.maximum(_ellipse(u, v, -eye_dx, eye_y, erx * 1.7, erx * 1.3, px),
                                _ellipse(u, v, eye_dx, eye_y, erx * 1.7, erx * 1.3, px)) * feat
        occ_mask = np.where(_col(kind) < 2.0, rect.astype(np.float32), sunglasses)
        col = np.where((kind < 2.0)[:, None], nz["occ_color"], 0.05)
        _blend(img, col.astype(np.float32), occ_mask * _col(occ), tmp)

    np.clip(img, 0.0, 1.0, out=img)
    img *= 255.0
    img += 0.5
    small = np.ascontiguousarray(img.transpose(1, 2, 3, 0)).astype(np.uint8)

    # --- to the output size, then sensor noise at that size
    out = np.empty((B, final, final, 3), dtype=np.uint8)
    bank = _noise_bank(final)
    pick = nz["noise_pick"]
    for i in range(B):
        pixels = small[i]
        # Blur by going through a lower resolution: as soft as a Gaussian here, at a tenth of the cost.
        mid = int(round(size / (1.0 + 0.3 * float(nz["blur"][i]))))
        if mid < size - 1:
            pixels = np.asarray(Image.fromarray(pixels).resize((mid, mid), Image.Resampling.BILINEAR))
        if pixels.shape[0] != final:
            pixels = np.asarray(Image.fromarray(pixels).resize((final, final), Image.Resampling.BILINEAR))
        k = int(pick[i])
        noise = bank[k % 16]
        if k & 16:
            noise = noise[:, ::-1]
        if k & 32:
            noise = noise[::-1]
        noisy = pixels + noise * np.float32(nz["noise"][i])
        out[i] = np.clip(noisy, 0, 255)
    return out


def encode(image: np.ndarray, blur: float = 0.0, quality: int = 90) -> bytes:
    """uint8 (H, W, 3) -> JPEG bytes, after a Gaussian blur of `blur` pixels."""
    pil = Image.fromarray(image)
    if blur > 0.05:
        pil = pil.filter(ImageFilter.GaussianBlur(float(blur)))
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def _subset(nz: dict, idx) -> dict:
    return {k: v[idx] for k, v in nz.items()}


def render_encoded(traits: np.ndarray, nz: dict, size: int, chunk: int = 16,
                   render_size: Optional[int] = None) -> list[bytes]:
    """Render and JPEG-encode, `chunk` images at a time (bounded memory)."""
    out = []
    for start in range(0, traits.shape[0], chunk):
        sl = slice(start, start + chunk)
        sub = _subset(nz, sl)
        pixels = render(traits[sl], sub, size, render_size)
        out += [encode(p, quality=int(q)) for p, q in zip(pixels, sub["quality"])]
    return out


def _concat(parts: list[dict]) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _train_batch(seed: int, group: list[int], per_id: int | list[int], difficulty: float
                 ) -> tuple[np.ndarray, dict, np.ndarray]:
    counts = [per_id] * len(group) if isinstance(per_id, int) else list(per_id)
    traits = np.repeat(identity_traits(seed, group), counts, axis=0)
    nz = _concat([draw_nuisance(np.random.default_rng([seed, _STREAM_TRAIN, i]), n, "train", difficulty)
                  for i, n in zip(group, counts)])
    return traits, nz, np.repeat(group, counts)


def train_images(seed: int, ids: int, per_id: int, size: int = 112, difficulty: float = 1.0,
                 chunk_ids: int = 16, render_size: Optional[int] = None) -> Iterator[tuple[int, bytes]]:
    """(label, JPEG bytes) for `per_id` images of each of `ids` identities, grouped by identity."""
    yield from identity_images(seed, dict.fromkeys(range(ids), per_id), size, difficulty, chunk_ids, render_size)


def identity_images(seed: int, counts: dict[int, int], size: int = 112, difficulty: float = 1.0,
                    chunk_ids: int = 16, render_size: Optional[int] = None) -> Iterator[tuple[int, bytes]]:
    """(identity, JPEG bytes): `counts[i]` images of each identity i, drawn as the training images are
    (every pose and age; identity i's traits and nuisances from (seed, i) alone). For identities the
    training set does not hold (i >= its `ids`): unseen people to cluster or search, as many photos each
    as a photo library has."""
    ids = list(counts)
    for first in range(0, len(ids), chunk_ids):
        group = ids[first:first + chunk_ids]
        traits, nz, labels = _train_batch(seed, group, [counts[i] for i in group], difficulty)
        yield from zip(labels.tolist(), render_encoded(traits, nz, size, render_size=render_size))


def faces(seed: int, ids: int, per_id: int, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (ids * per_id, size, size, 3) RGB faces (the training images' poses and light, not encoded) and
    their identity labels: inputs for benchmarks and calibration when no real faces are at hand."""
    traits, nz, labels = _train_batch(seed, list(range(ids)), per_id, 1.0)
    return render(traits, nz, size), labels


def verification_set(seed: int, name: str, identities: np.ndarray, pairs: int, size: int = 112,
                     difficulty: float = 1.0, render_size: Optional[int] = None) -> tuple[list[bytes], list[bool]]:
    """2 x `pairs` JPEG images and `pairs` same-identity flags for one of `BIN_SETS`."""
    first, second = BIN_SETS[name]
    stream = list(BIN_SETS).index(name)
    rng = np.random.default_rng([seed, _STREAM_PAIRS, stream])
    identities = np.asarray(identities)
    # Every render is a fresh image, so an identity has as many images as pairs need.
    rows = plan_pairs(rng, np.full(len(identities), 1 << 20), pairs, source="held-out identities")
    plan = np.stack([identities[rows[:, 0]], identities[rows[:, 2]], rows[:, 4]], 1)
    ta = identity_traits(seed, plan[:, 0])
    tb = identity_traits(seed, plan[:, 1])
    na = draw_nuisance(rng, pairs, first, difficulty)
    nb = draw_nuisance(rng, pairs, second, difficulty)
    traits = np.empty((2 * pairs, len(TRAITS)), np.float32)
    traits[0::2], traits[1::2] = ta, tb
    nz = {k: np.empty((2 * pairs,) + na[k].shape[1:], na[k].dtype) for k in na}
    for k in nz:
        nz[k][0::2], nz[k][1::2] = na[k], nb[k]
    images = render_encoded(traits, nz, size, render_size=render_size)
    return images, [bool(s) for s in plan[:, 2]]


@dataclass
class SynthSummary:
    out_dir: Path
    train_images: int
    train_ids: int
    holdout_ids: int
    pairs: int
    bins: list[str]


def write_synthetic(out_dir: str | Path, ids: int = 300, per_id: int = 20, holdout_ids: int = 100,
                    pairs: int = 600, seed: int = 0, image_size: int = 112, difficulty: float = 1.0,
                    layout: str = "header", sets: Optional[list[str]] = None,
                    progress: Optional[bool] = None, render_size: Optional[int] = None) -> SynthSummary:
    """Write train.rec/train.idx/property (identities 0..ids-1) and lfw/cfp_fp/agedb_30 .bin sets
    (pairs of held-out identities ids..ids+holdout_ids-1) into `out_dir`.

    `render_size` is the side the shapes are drawn at (default half of `image_size`, see `render`); at
    `image_size` itself a small image keeps sharp edges and small traits (irises, moles, skin texture),
    for about twice the rendering time."""
    from irface.data.progress import progress_bar
    from irface.data.recordio import write_recordio_dataset
    from irface.data.bin import save_bin

    if ids < 1 or per_id < 1:
        raise ValueError("ids and per_id must be positive")
    if holdout_ids < 2 and pairs > 0:
        raise ValueError("verification pairs need at least 2 held-out identities")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = progress_bar(train_images(seed, ids, per_id, image_size, difficulty, render_size=render_size),
                         desc="train images",
                         total=ids * per_id, unit="img", enabled=progress)
    n = write_recordio_dataset(out, items, num_classes=ids, image_size=(image_size, image_size), layout=layout)
    held = np.arange(ids, ids + holdout_ids)
    written = []
    if pairs > 0:
        for name in sets or list(BIN_SETS):
            images, issame = verification_set(seed, name, held, pairs, image_size, difficulty, render_size)
            save_bin(out / f"{name}.bin", images, issame)
            written.append(name)
    log.info("synthetic data in %s: %d images of %d identities, %d pairs in each of %s",
             out, n, ids, pairs, ", ".join(written) or "no .bin")
    return SynthSummary(out, n, ids, holdout_ids, pairs, written)
