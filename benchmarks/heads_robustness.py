"""Demo-scale checks of two heads' claims, on `irface data synth` identities, several seeds each.

  noise     20 % of the labels of 30 % of the training classes moved to random other classes;
            sub-center ArcFace (k = 3) against plain ArcFace, verification on held-out identities.
  degraded  half the training images and half the test images degraded (blur, down-sampling,
            noise); AdaFace against ArcFace, verification on held-out identities.

Each run trains the demo's small IResNet (configs/demo.yaml's network at 56x56) with the engine, one
torch thread, then embeds the held-out pairs and reports the 10-fold accuracy. The heads share s and
m (the demo's s = 32, m = 0.3: a network this small barely moves at s = 64, m = 0.5); everything else
is the head's own default. Prints one JSON object and writes it to --json.

  nice python benchmarks/heads_robustness.py --experiment noise --seeds 0 1 2 --json noise.json
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from irface.config import load_config
from irface.data.datasets import ArrayDataset
from irface.data.synth import train_images, verification_set
from irface.engine import train
from irface.eval.verification import evaluate_embeddings
from irface.models.loading import load_backbone

SIZE = 56
HEADS = {
    "noise": {"arcface": [], "subcenter": ["head_options={k: 3}"]},
    "degraded": {"arcface": [], "adaface": []},
}


def decode(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of three degradations, strong enough to hide detail: blur, a 4x down-and-up sampling, noise."""
    kind = rng.integers(3)
    pil = Image.fromarray(image)
    if kind == 0:
        pil = pil.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.5, 3.0))))
    elif kind == 1:
        side = int(rng.integers(10, 16))
        pil = pil.resize((side, side), Image.BILINEAR).resize((SIZE, SIZE), Image.BILINEAR)
    else:
        noisy = image.astype(np.float32) + rng.normal(0, rng.uniform(25, 45), image.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8)
    return np.asarray(pil)


def make_data(experiment: str, seed: int, ids: int, per_id: int, pairs: int) -> dict:
    rng = np.random.default_rng([seed, 20])
    items = list(train_images(seed, ids, per_id, SIZE))
    labels = np.array([label for label, _ in items])
    images = np.stack([decode(blob) for _, blob in items])
    blobs, issame = verification_set(seed, "lfw", np.arange(ids, ids + 100), pairs, SIZE)
    test = np.stack([decode(b) for b in blobs])
    info = {}
    if experiment == "noise":
        noisy_classes = rng.choice(ids, int(0.3 * ids), replace=False)
        moved = 0
        for c in noisy_classes:
            idx = np.flatnonzero(labels == c)
            pick = rng.choice(idx, int(round(0.2 * len(idx))), replace=False)
            others = rng.integers(0, ids - 1, len(pick))
            labels[pick] = others + (others >= c)  # any class but c
            moved += len(pick)
        info = {"noisy_classes": len(noisy_classes), "labels_moved": moved}
    else:
        train_bad = rng.random(len(images)) < 0.5
        for i in np.flatnonzero(train_bad):
            images[i] = degrade(images[i], rng)
        test_bad = rng.random(len(test)) < 0.5
        for i in np.flatnonzero(test_bad):
            test[i] = degrade(test[i], rng)
        info = {"train_degraded": int(train_bad.sum()), "test_degraded": int(test_bad.sum())}
    return {"images": images, "labels": labels, "test": test, "issame": issame, "info": info}


@torch.no_grad()
def embed(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(images), 128):
        x = torch.from_numpy(images[start:start + 128]).permute(0, 3, 1, 2).float()
        out.append(model((x / 255 - 0.5) / 0.5))
    return torch.cat(out).numpy()


def run(experiment: str, head: str, extra: list[str], data: dict, seed: int, ids: int, epochs: int, out: Path,
        device: str = "cpu") -> dict:
    overrides = [
        "network=iresnet18", "network_layers=[1,1,1]", "network_widths=[16,32,64]", "embedding_size=64",
        f"image_size={SIZE}", f"num_classes={ids}", f"head={head}", "scale=32.0", "margin=0.3", "batch_size=64",
        f"epoch_size={epochs}", "scheduler=cosine", "warmup_epochs=1", "lr=0.1", "lr_batch_reference=0",
        "num_workers=0", f"device={device}", "tensorboard=false", "val_targets=[]", "log_every=1000", f"seed={seed}",
        f"output_dir={out}",
    ] + extra
    start = time.time()
    result = train(load_config(None, overrides), ArrayDataset(data["images"], data["labels"], ids))
    model, _ = load_backbone(result.checkpoint)  # on the CPU: the embedding pass is small
    emb = embed(model, data["test"])
    flip = embed(model, np.ascontiguousarray(data["test"][:, :, ::-1]))
    r = evaluate_embeddings("lfw", emb, data["issame"], flip)
    return {"experiment": experiment, "head": head, "seed": seed, "accuracy": r.accuracy,
            "accuracy_flip": r.accuracy_flip, "auc": r.auc, "final_loss": result.loss,
            "minutes": (time.time() - start) / 60}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", choices=sorted(HEADS), required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ids", type=int, default=150)
    p.add_argument("--per-id", type=int, default=20)
    p.add_argument("--pairs", type=int, default=1200)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (the engine's device key)")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    runs = []
    for seed in args.seeds:
        data = make_data(args.experiment, seed, args.ids, args.per_id, args.pairs)
        for head, extra in HEADS[args.experiment].items():
            with tempfile.TemporaryDirectory(prefix="irface-heads-") as tmp:
                r = run(args.experiment, head, extra, data, seed, args.ids, args.epochs, Path(tmp), args.device)
            r["data"] = data["info"]
            runs.append(r)
            print(json.dumps(r), flush=True)
    summary = {}
    for head in HEADS[args.experiment]:
        accs = [r["accuracy_flip"] for r in runs if r["head"] == head]
        summary[head] = {"mean": statistics.mean(accs), "stdev": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                         "min": min(accs), "max": max(accs), "runs": accs}
    first, second = list(HEADS[args.experiment])
    wins = sum(b["accuracy_flip"] > a["accuracy_flip"] for a, b in zip(runs[0::2], runs[1::2]))
    report = {"experiment": args.experiment, "settings": vars(args), "summary": summary,
              f"{second}_beats_{first}_in": f"{wins} of {len(args.seeds)} seeds", "runs": runs}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
