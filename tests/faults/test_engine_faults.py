"""Faults during training: a kill at a random step or in the middle of a checkpoint write, SIGTERM, a full
disk. Each run is resumed and must end bit-identical to an uninterrupted run (CPU, deterministic).

The kill points are drawn at random (the seed is in the failure message, IRFACE_FAULT_SEED repeats it):
the promise holds at every step, so any draw must pass.
"""

import errno
import os
import random
import re
import signal

import pytest
import torch

from engine_support import ROOT, assert_same_weights, fault_env, load, run, tiny_overrides, write_config, write_image_folder
from irface.config import load_config
from irface.engine import train
from irface.engine.checkpoint import load_checkpoint
from irface.errors import ModelFileError

pytestmark = pytest.mark.faults

SEED = int(os.environ.get("IRFACE_FAULT_SEED", random.randrange(1 << 30)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("faces"))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run: 24 steps, checkpoints every 5 steps and at each epoch's end (6, 12, 18, 24)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference")
    return load(train(load_config(None, tiny_overrides(out, data, checkpoint_every=5))).checkpoint)


def _train_cli(out, data, **extra):
    """The interrupted runs go through the seed's one-device script (which tests it too)."""
    config = write_config(out.parent / "tiny.yaml", tiny_overrides(out, "", checkpoint_every=5, **extra))
    return ["bash", str(ROOT / "scripts" / "run_standalone_train.sh"), str(data), "--config", str(config)]


def _resume_and_compare(out, data, reference):
    result = train(load_config(None, tiny_overrides(out, data, checkpoint_every=5, resume="auto")))
    assert result.step == 24
    assert_same_weights(load(result.checkpoint), reference)
    for path in out.glob("checkpoint-*.pt"):
        load_checkpoint(path)  # every file under a checkpoint name is whole


@pytest.mark.slow  # training in a subprocess, killed
@pytest.mark.parametrize("mode", ["kill", "term"])
def test_killed_or_terminated_run_resumes_bit_identical(tmp_path, data, reference, mode):
    at = random.Random(f"{SEED}-{mode}").randint(7, 22)
    out = tmp_path / "run"
    r = run(_train_cli(out, data), env=fault_env(tmp_path / "hooks", mode, at))
    note = f"{mode} after step {at} (IRFACE_FAULT_SEED={SEED}): {r.stderr[-2000:]}"
    steps = sorted(load(p)["step"] for p in out.glob("checkpoint-*.pt"))
    if mode == "kill":
        assert r.returncode == -signal.SIGKILL, note
        assert steps and steps[-1] < at, note  # the step in flight is lost, nothing more
    else:
        assert r.returncode == 0, note  # SIGTERM: a checkpoint of the current step, then a clean exit
        assert steps[-1] == at, note
        log = (out / "train.log").read_text()
        assert f"stopping on SIGTERM at step {at}" in log
        if at > 6:  # the seed's lines, from the script's run
            assert re.search(r"^epoch: 1 step: 6, loss is [0-9.]+\nepoch time: [0-9.]+ ms, per step time: [0-9.]+ ms$", log, re.M)
    _resume_and_compare(out, data, reference)


@pytest.mark.slow  # training in a subprocess, killed
def test_kill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path, data, reference):
    at = random.Random(f"{SEED}-save").randint(2, 6)  # the n-th write: steps 5, 6, 10, 12, 15, 18
    out = tmp_path / "run"
    r = run(_train_cli(out, data), env=fault_env(tmp_path / "hooks", "kill-in-save", at))
    assert r.returncode == -signal.SIGKILL, f"write {at} (IRFACE_FAULT_SEED={SEED}): {r.stderr[-2000:]}"
    steps = sorted(load(p)["step"] for p in out.glob("checkpoint-*.pt"))
    assert steps == [5, 6, 10, 12, 15, 18][: at - 1][-3:]  # the half-written file never got its name
    assert list(out.glob(".checkpoint-*.tmp"))  # it is there under the temporary name, ignored
    _resume_and_compare(out, data, reference)


def test_full_disk_while_saving_is_one_clear_error(tmp_path, data, monkeypatch):
    import irface.engine.checkpoint as ckpt

    real, calls = torch.save, {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"PK\x03\x04 a few bytes")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", save)
    with pytest.raises(ModelFileError) as e:
        train(load_config(None, tiny_overrides(tmp_path, data, checkpoint_every=5)))
    message = str(e.value)
    assert "checkpoint-e0001-s00000006.pt: could not write the checkpoint (No space left on device)" in message
    assert "earlier checkpoints are untouched" in message and "\n" not in message
    assert [p.name for p in tmp_path.glob("checkpoint-*.pt")] == ["checkpoint-e0001-s00000005.pt"]
    assert load_checkpoint(tmp_path / "checkpoint-e0001-s00000005.pt")["step"] == 5
    assert not list(tmp_path.glob(".checkpoint-*"))  # no temporary file left behind
