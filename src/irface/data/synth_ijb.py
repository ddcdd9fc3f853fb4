"""A synthetic IJB-B / IJB-C set in the insightface archive's layout (`irface data synth-ijb OUT`).

Synthetic identities (`irface.data.synth`) rendered onto the ArcFace template, then placed as loose,
unaligned photos: a random scale, rotation and shift on a random background of random size. The 5
landmarks written are the template's points carried by that placement (the true ones), with a
faceness score. Each subject has one gallery template (in G1 or G2 by turns) and `probe_templates`
probe templates; every template has several media of one or more images. The 1:1 pairs are every
pair of probe templates (genuine when the subjects match); gallery templates are in no pair, as in
the real protocol. The same `irface eval --ijb` runs on it and on the real archive.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from irface.data.align import ARCFACE_TEMPLATE, warp_affine  # the aligner's own template and warp
from irface.data.ijb import GALLERIES, LANDMARKS, PAIRS, PROBE, TEMPLATES, gallery_names, meta_name, normalize_target
from irface.data.synth import draw_nuisance, encode, identity_traits, render
from irface.utils import atomic_write

_STREAM_IJB = 7


@dataclass
class SynthIJBSummary:
    root: Path
    target: str
    subjects: int
    images: int
    templates: int
    pairs: int
    genuine: int


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth two-colour gradient with some noise: clutter the aligner must cut away."""
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = a * (1 - t[..., None]) + b * t[..., None] + rng.normal(0, 12, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def place_face(rng: np.random.Generator, face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An aligned 112x112 face put into a loose photo: (uint8 photo, its 5 landmarks (5, 2))."""
    size = int(rng.integers(150, 240))
    scale = rng.uniform(0.9, 1.6)
    angle = rng.uniform(-0.35, 0.35)
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    centre = rng.uniform(0.4, 0.6, 2) * size
    rot = np.array([[c, -s], [s, c]])
    matrix = np.c_[rot, centre - rot @ np.array([55.5, 55.5])]  # crop -> photo
    photo = warp_affine(face, matrix, size)
    mask = warp_affine(np.full_like(face, 255), matrix, size).astype(np.float32) / 255.0
    out = mask * photo + (1 - mask) * _background(rng, size)
    landmarks = ARCFACE_TEMPLATE @ matrix[:, :2].T + matrix[:, 2]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), landmarks


def write_synth_ijb(out_dir: str | Path, target: str = "IJBC", subjects: int = 16, probe_templates: int = 2,
                    seed: int = 0, difficulty: float = 0.5) -> SynthIJBSummary:
    """Write `out_dir/<target>/loose_crop/*.jpg` and `out_dir/<target>/meta/*` (see the module docstring)."""
    target = normalize_target(target)
    if subjects < 2 or probe_templates < 1:
        raise ValueError("need at least 2 subjects and 1 probe template each")
    root = Path(out_dir) / target
    images_dir = root / "loose_crop"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, _STREAM_IJB])
    traits_all = identity_traits(seed, list(range(subjects)))
    lmk_lines, tid_lines = [], []
    gallery_rows: dict[str, list[list]] = {g: [] for g in GALLERIES[target]}
    probe_rows, probe_tids, subject_of = [], [], {}
    image_no, template_id, media_id = 0, 0, 0
    for subj in range(subjects):
        # The subject's templates -> media -> frame counts, then all its faces rendered in one batch.
        plan = [[int(rng.integers(1, 4)) for _ in range(int(rng.integers(1, 4)))] for _ in range(1 + probe_templates)]
        frames = sum(sum(media) for media in plan)
        nz = draw_nuisance(rng, frames, "train", difficulty)
        for key, value in (("tx", 0.0), ("ty", 0.0), ("rot", 0.0), ("scale", 1.0)):
            nz[key] = np.full(frames, value, np.float32)  # the face on the template: its landmarks are the true ones
        faces = iter(zip(render(np.repeat(traits_all[subj:subj + 1], frames, 0), nz, 112), nz["quality"]))
        for k, media in enumerate(plan):
            template_id += 1
            subject_of[template_id] = subj
            for count in media:
                media_id += 1
                for _ in range(count):
                    face, quality = next(faces)
                    image_no += 1
                    name = f"{image_no}.jpg"
                    photo, lmk = place_face(rng, face)
                    (images_dir / name).write_bytes(encode(photo, quality=int(quality)))
                    score = rng.uniform(0.6, 1.0)
                    lmk_lines.append(name + " " + " ".join(f"{v:.4f}" for v in lmk.reshape(-1)) + f" {score:.6f}")
                    tid_lines.append(f"{name} {template_id} {media_id}")
                    row = [template_id, subj + 1, name]
                    if k == 0:
                        gallery_rows[GALLERIES[target][subj % 2]].append(row)
                    else:
                        probe_rows.append(row)
            if k > 0:
                probe_tids.append(template_id)
    pairs = [(a, b, int(subject_of[a] == subject_of[b])) for i, a in enumerate(probe_tids) for b in probe_tids[i + 1:]]
    meta = root / "meta"
    with atomic_write(meta / meta_name(target, LANDMARKS), "w") as f:
        f.write("\n".join(lmk_lines) + "\n")
    with atomic_write(meta / meta_name(target, TEMPLATES), "w") as f:
        f.write("\n".join(tid_lines) + "\n")
    with atomic_write(meta / meta_name(target, PAIRS), "w") as f:
        f.write("".join(f"{a} {b} {y}\n" for a, b, y in pairs))
    files = [(gallery_names(target, g)[0], rows) for g, rows in gallery_rows.items()]
    for file_name, rows in files + [(meta_name(target, PROBE), probe_rows)]:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["TEMPLATE_ID", "SUBJECT_ID", "FILENAME"])
        writer.writerows(rows)
        with atomic_write(meta / file_name, "w") as f:
            f.write(buf.getvalue())
    return SynthIJBSummary(root, target, subjects, image_no, template_id, len(pairs), sum(p[2] for p in pairs))
