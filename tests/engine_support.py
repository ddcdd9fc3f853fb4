"""Helpers for the engine's tests: a tiny training set on disk, tiny configs, subprocess runs.

One thread per process everywhere: two CPU cores are shared, and equal thread counts keep float
results equal between the in-process and subprocess runs that the resume tests compare.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

CLASSES, PER_CLASS, SIZE = 6, 8, 16


def tiny_overrides(output_dir: Path, data_path: Path | str = "", **extra) -> list[str]:
    """`key=value` overrides for a ~10k-parameter IResNet on 16x16 images, 6 steps per epoch of 8."""
    values = {
        "network": "iresnet18", "network_layers": "[1,1]", "network_widths": "[8,16]", "embedding_size": 16,
        "image_size": SIZE, "num_classes": CLASSES, "batch_size": 8, "epoch_size": 4, "head": "arcface",
        "scale": 16.0, "margin": 0.2, "lr": 0.1, "lr_batch_reference": 0, "num_workers": 0, "log_every": 3,
        "schedule": "[3]", "deterministic": "true", "device": "cpu", "tensorboard": "false",
        "output_dir": str(output_dir), "data_path": str(data_path),
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def tiny_images(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Six noisy prototypes, eight images each: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    proto = rng.integers(0, 255, (CLASSES, SIZE, SIZE, 3))
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    images = np.clip(proto[labels] + rng.normal(0, 20, (len(labels), SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    return images, labels


def tiny_dataset(seed: int = 0):
    from irface.data.datasets import ArrayDataset

    images, labels = tiny_images(seed)
    return ArrayDataset(images, labels, CLASSES)


def write_image_folder(root: Path, seed: int = 0) -> Path:
    """The same images as PNG files in root/<class>/<i>.png (lossless: identical to `tiny_dataset`)."""
    from PIL import Image

    images, labels = tiny_images(seed)
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / f"id{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


def subprocess_env(extra_path: Path | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    paths = ([str(extra_path)] if extra_path else []) + [str(SRC)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHON"] = sys.executable
    env.update(extra)
    return env


def run(args: list[str], timeout: float = 180, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env or subprocess_env(), cwd=cwd, capture_output=True, text=True, timeout=timeout)


# Fault injection for subprocesses (plain `python -m irface train` and torchrun workers alike): a
# sitecustomize.py that Python imports at start-up when its folder is on PYTHONPATH. Armed by
# IRFACE_TEST_FAULT=kill|term|kill-in-save and IRFACE_TEST_FAULT_AT=N (the N-th step, or the N-th
# checkpoint write); IRFACE_TEST_FAULT_RANK limits it to one rank; never on a torchrun restart.
FAULT_HOOKS = """
import os

_mode = os.environ.get("IRFACE_TEST_FAULT")
_rank = os.environ.get("IRFACE_TEST_FAULT_RANK")
if (_mode and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        and (_rank is None or os.environ.get("RANK") == _rank)):
    import io
    import signal

    import torch

    import irface.engine.trainer as _trainer

    _at = int(os.environ["IRFACE_TEST_FAULT_AT"])
    if _mode in ("kill", "term"):
        _step = _trainer.Trainer._train_step

        def _train_step(self, batches):
            loss = _step(self, batches)
            if self.state.step + 1 == _at:
                os.kill(os.getpid(), signal.SIGKILL if _mode == "kill" else signal.SIGTERM)
            return loss

        _trainer.Trainer._train_step = _train_step
    elif _mode == "kill-in-save":
        _save, _count = torch.save, [0]

        def _half_save(obj, f, *args, **kwargs):
            _count[0] += 1
            if _count[0] != _at:
                return _save(obj, f, *args, **kwargs)
            buf = io.BytesIO()
            _save(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = _half_save
"""


def fault_env(folder: Path, mode: str, at: int, rank: int | None = None) -> dict[str, str]:
    """Environment for a subprocess that kills or signals itself (see FAULT_HOOKS)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(FAULT_HOOKS)
    extra = {"IRFACE_TEST_FAULT": mode, "IRFACE_TEST_FAULT_AT": str(at)}
    if rank is not None:
        extra["IRFACE_TEST_FAULT_RANK"] = str(rank)
    return subprocess_env(folder, **extra)


def write_config(path: Path, overrides: list[str]) -> Path:
    """A YAML config file holding `key=value` overrides."""
    path.write_text("\n".join(o.replace("=", ": ", 1) for o in overrides) + "\n")
    return path


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict, b: dict, exact: bool = True) -> None:
    """Backbone, head and optimizer state of two checkpoints: bit-identical (or allclose)."""
    for part in ("backbone", "head"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            if exact:
                assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
            else:
                torch.testing.assert_close(a[part][key], b[part][key], rtol=1e-3, atol=1e-4, msg=f"{part}.{key}")
    if exact:
        for idx, state in a["optimizer"]["state"].items():
            for key, value in state.items():
                assert torch.equal(value, b["optimizer"]["state"][idx][key]), f"optimizer {idx}.{key} differs"
    assert a["step"] == b["step"]
