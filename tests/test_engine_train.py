"""The training engine in one process: learning, checkpoints, resume, fine-tuning, errors, verification."""

import os
import re

import pytest
import torch

from engine_support import CLASSES, assert_same_weights, load, tiny_dataset, tiny_overrides, write_image_folder
from irface.config import load_config
from irface.engine import NonFiniteLossError, train
from irface.engine.checkpoint import find_checkpoint, load_checkpoint
from irface.errors import ConfigError, ModelFileError, UserError
from irface.heads.partial_fc import PartialFC
from irface.models.loading import CHECKPOINT_FORMAT, load_backbone, newest_checkpoint


# One thread per process: equal float results between in-process and subprocess runs.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cfg_for(out, data="", **extra):
    return load_config(None, tiny_overrides(out, data, **extra))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One uninterrupted 24-step run (4 epochs of 6), checkpoints every 5 steps and at epoch ends."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    result = train(cfg_for(out, checkpoint_every=5, keep_checkpoints=3), tiny_dataset())
    return out, result


def test_a_few_steps_lower_the_loss_and_log_the_seeds_lines(finished_run):
    out, result = finished_run
    assert result.step == 24 and result.epoch == 4 and result.stopped == "completed"
    assert result.steps_run == 24 and result.seconds > 0 and result.images_per_s > 0
    lines = (out / "train.log").read_text().splitlines()
    losses = [float(m.group(2)) for m in (re.match(r"^epoch: (\d+) step: 6, loss is ([0-9.e+-]+)$", line) for line in lines) if m]
    assert len(losses) == 4
    assert losses[-1] < 0.5 * losses[0]
    assert sum(bool(re.match(r"^epoch time: \d+\.\d{3} ms, per step time: \d+\.\d{3} ms$", line)) for line in lines) == 4
    periodic = [line for line in lines if line.startswith("[step ")]
    assert len(periodic) == 8 and all(k in periodic[0] for k in ("loss", "avg", "lr", "images/s", "eta"))


@pytest.mark.faults
def test_checkpoint_contents_load_with_weights_only(finished_run):
    out, result = finished_run
    names = sorted(p.name for p in out.glob("checkpoint-*.pt"))
    # Saved at steps 5, 6, 10, 12, 15, 18, 20, 24; the three newest are kept.
    assert names == ["checkpoint-e0003-s00000018.pt", "checkpoint-e0004-s00000020.pt", "checkpoint-e0004-s00000024.pt"]
    ckpt = load(out / names[-1])
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["step"] == 24 and ckpt["epoch"] == 4
    for key in ("config", "backbone", "head", "head_layout", "optimizer", "head_optimizer", "scheduler", "scaler",
                "rng", "head_sampler", "sampler", "threshold", "digest"):
        assert key in ckpt, key
    assert ckpt["config"]["num_classes"] == CLASSES and ckpt["threshold"] is None
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["backbone"])
    assert ckpt["head"]["weight"].shape == (CLASSES, 16)
    assert ckpt["head_layout"]["class_ranges"] == [[0, CLASSES]]
    assert len(ckpt["rng"]) == 1 and ckpt["sampler"] == {"epoch": 4, "images": 0, "seed": 0}
    # Others read it through models.loading, without the engine.
    model, info = load_backbone(out)
    assert info["kind"] == "irface-checkpoint" and info["path"].endswith(names[-1])
    assert all(torch.equal(v, ckpt["backbone"][k]) for k, v in model.state_dict().items())
    assert (out / "config.yaml").exists()


def test_a_checkpoint_of_another_format_version_is_refused(finished_run, tmp_path):
    out, _ = finished_run
    ckpt = load(out / "checkpoint-e0004-s00000024.pt")
    ckpt["version"] = 99
    old = tmp_path / "checkpoint-e0004-s00000024.pt"
    torch.save(ckpt, old)
    with pytest.raises(ModelFileError, match=r"checkpoint format version 99; this irface reads version 1$"):
        train(cfg_for(tmp_path / "out", resume=str(old)), tiny_dataset())


def test_newest_checkpoint_goes_by_the_step_in_the_name(finished_run, tmp_path):
    out, _ = finished_run
    for p in sorted(out.glob("checkpoint-*.pt")):
        (tmp_path / p.name).write_bytes(p.read_bytes())
    os.utime(tmp_path / "checkpoint-e0003-s00000018.pt", (4e9, 4e9))  # the oldest has the newest mtime
    assert newest_checkpoint(tmp_path).name == "checkpoint-e0004-s00000024.pt"


@pytest.mark.faults
def test_damaged_checkpoints_are_never_picked(finished_run, tmp_path):
    out, _ = finished_run
    good = out / "checkpoint-e0004-s00000024.pt"
    data = good.read_bytes()
    (tmp_path / good.name).write_bytes(data)
    # A truncated copy (a full disk, an interrupted rsync) with a higher step ...
    (tmp_path / "checkpoint-e0005-s00000030.pt").write_bytes(data[: len(data) // 2])
    # ... and a whole archive whose weights were altered after the digest was taken.
    ckpt = load(good)
    ckpt["backbone"]["fc.weight"] += 1
    torch.save(ckpt, tmp_path / "checkpoint-e0005-s00000031.pt")
    assert newest_checkpoint(tmp_path).name == "checkpoint-e0005-s00000031.pt"  # the cheap check cannot see this
    path, found = find_checkpoint("auto", tmp_path)
    assert path.name == good.name and found["step"] == 24
    with pytest.raises(ModelFileError, match="digest"):
        load_checkpoint(tmp_path / "checkpoint-e0005-s00000031.pt")
    with pytest.raises(ModelFileError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "checkpoint-e0005-s00000030.pt")


@pytest.mark.parametrize("extra", [{}, {"sample_rate": 0.5, "grad_accum": 2, "optimizer": "adamw", "batch_size": 4,
                                        "scheduler": "cosine", "warmup_epochs": 1}])
def test_resume_mid_epoch_is_bit_identical(tmp_path, extra):
    whole = train(cfg_for(tmp_path / "whole", **extra), tiny_dataset())
    first = train(cfg_for(tmp_path / "split", max_steps=8, **extra), tiny_dataset())
    assert first.step == 8 and first.stopped == "max_steps"
    second = train(cfg_for(tmp_path / "split", resume="auto", **extra), tiny_dataset())
    assert second.step == whole.step == 24
    assert "resumed from" in (tmp_path / "split" / "train.log").read_text()
    assert_same_weights(load(whole.checkpoint), load(second.checkpoint))


def test_init_backbone_fine_tunes_from_a_bare_state_dict(tmp_path):
    from irface.models import IResNet

    donor = IResNet([1, 1], [8, 16], embedding_size=16, input_size=16)
    torch.save({"module." + k: v for k, v in donor.state_dict().items()}, tmp_path / "backbone.pth")
    result = train(cfg_for(tmp_path / "ft", init_backbone=str(tmp_path / "backbone.pth"), lr=1e-9, max_steps=1,
                           weight_decay=0.0, momentum=0.0), tiny_dataset())
    tuned = load(result.checkpoint)["backbone"]
    torch.testing.assert_close(tuned["conv1.weight"], donor.conv1.weight.detach(), rtol=0, atol=1e-6)
    wrong = IResNet([1, 1], [8, 32], embedding_size=16, input_size=16)
    torch.save(wrong.state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(ModelFileError, match=r"init_backbone=.*does not fit") as e:
        train(cfg_for(tmp_path / "ft2", init_backbone=str(tmp_path / "wrong.pth")), tiny_dataset())
    assert "\n" not in str(e.value)


@pytest.mark.faults
@pytest.mark.parametrize("extra,data,message", [
    ({}, "", "'data_path': not set"),
    ({}, "missing-folder", "no such training data folder"),
    ({"batch_size": 64}, None, "'batch_size': .* has 48 images, fewer than one global batch of 64"),
    ({"num_classes": 4}, None, "'num_classes': .* has 6 classes, more than num_classes=4"),
    ({"grad_accum": 7}, None, "'grad_accum'"),
    ({"network": "resnet9"}, None, "'network': unknown backbone"),
    ({"image_size": 18}, None, "'network': input_size 18 must be divisible by 4"),
    ({"device": "tpu"}, None, "'device'"),
    ({"init_backbone": "/nonexistent/backbone.pth"}, None, "backbone.pth: no such file"),
    ({"resume": "/nonexistent/run"}, None, "resume=/nonexistent/run: no such file or folder"),
])
def test_bad_settings_fail_before_any_work_with_one_line(tmp_path, extra, data, message):
    folder = write_image_folder(tmp_path / "data") if data is None else (tmp_path / data if data else "")
    with pytest.raises(UserError, match=message) as e:
        train(cfg_for(tmp_path / "out", folder, **extra))
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "out").glob("checkpoint-*"))


@pytest.mark.faults
def test_unwritable_output_folder_is_refused_up_front(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="'output_dir': .* is not writable"):
        train(cfg_for(tmp_path / "file" / "run"), tiny_dataset())


def _poison(monkeypatch, steps):
    """Make the head return NaN on the given 1-based calls."""
    real = PartialFC.forward
    calls = {"n": 0}

    def forward(self, emb, labels):
        calls["n"] += 1
        loss = real(self, emb, labels)
        return loss * float("nan") if calls["n"] in steps else loss

    monkeypatch.setattr(PartialFC, "forward", forward)


@pytest.mark.faults
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    _poison(monkeypatch, {5})
    with pytest.raises(NonFiniteLossError, match=r"step 5 \(epoch 1\): the loss is nan.*checkpoint-e0001-s00000004\.pt"):
        train(cfg_for(tmp_path, checkpoint_every=2), tiny_dataset())
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*.pt"))[-1] == "checkpoint-e0001-s00000004.pt"
    assert load_checkpoint(tmp_path / "checkpoint-e0001-s00000004.pt")["step"] == 4
    assert "stopped: step 5 (epoch 1): the loss is nan" in (tmp_path / "train.log").read_text()


@pytest.mark.faults
def test_fp16_skips_an_overflowing_step_and_gives_up_on_a_dead_run(tmp_path, monkeypatch):
    # The scale starts at 2^16 and backs off on its own for the first steps; one NaN costs one more skip.
    clean = load(train(cfg_for(tmp_path / "clean", precision="fp16", max_steps=12), tiny_dataset()).checkpoint)
    _poison(monkeypatch, {10})
    result = train(cfg_for(tmp_path / "once", precision="fp16", max_steps=12), tiny_dataset())
    scaler = load(result.checkpoint)["scaler"]
    assert result.step == 12 and result.loss == result.loss
    assert scaler["total_skips"] == clean["scaler"]["total_skips"] + 1
    assert scaler["scale"] == clean["scaler"]["scale"] / 2
    assert "step 10: gradients overflowed in fp16, step skipped" in (tmp_path / "once" / "train.log").read_text()
    monkeypatch.undo()
    _poison(monkeypatch, set(range(3, 100)))
    with pytest.raises(NonFiniteLossError, match=r"step \d+ .*scaler gave up after 20 overflowing steps"):
        train(cfg_for(tmp_path / "dead", precision="fp16", checkpoint_every=2), tiny_dataset())


@pytest.mark.parametrize("extra", [
    {"precision": "bf16", "channels_last": "true"},
    {"head": "softmax", "wd_exclude_norm_bias": "true", "grad_clip": 1.0, "scheduler": "poly"},
    {"head": "combined", "margins": "[1.0,0.2,0.1]", "sample_rate": 0.5, "dropout": 0.1},
])
def test_training_variants_run(tmp_path, extra):
    result = train(cfg_for(tmp_path, max_steps=4, **extra), tiny_dataset())
    assert result.step == 4 and result.loss == result.loss  # finite, not NaN
    assert load_checkpoint(result.checkpoint)["config"]["max_steps"] == 4


def test_cli_train_with_json(tmp_path, capsys):
    from irface.cli import main

    data = write_image_folder(tmp_path / "data")
    config = tmp_path / "tiny.yaml"
    config.write_text("\n".join(o.replace("=", ": ", 1) for o in tiny_overrides(tmp_path / "out", data)) + "\n")
    assert main(["train", "--config", str(config), "max_steps=3", "--json", str(tmp_path / "r.json")]) == 0
    import json

    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["step"] == 3 and summary["checkpoint"].endswith("checkpoint-e0001-s00000003.pt")
    # An image folder's class order is saved with the run: line i names class i.
    assert (tmp_path / "out" / "classes.txt").read_text().split() == [f"id{i:02d}" for i in range(6)]
    assert main(["train", "--config", str(config), "max_steps=3", "--json"]) == 0  # resumes nothing: fresh
    assert json.loads(capsys.readouterr().out)["step"] == 3
    assert main(["train", "--config", str(config), "batch_size=abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["irface train: error: config key 'batch_size': expected int, got 'abc'"]


# --- verification during training ---------------------------------------------------------------------
def _write_bin(path):
    """A real (tiny) verification set: the trainer reads every set once at set-up."""
    from engine_support import tiny_images
    from irface.data.bin import save_bin

    save_bin(path, tiny_images()[0][:20], [i % 2 == 0 for i in range(10)])


def test_verification_runs_for_real_every_n_steps_and_keeps_the_best(tmp_path):
    """The live backbone's embeddings through the eval protocol: figures in the log, the checkpoints and
    the result, and `best.pt` from the step whose Accuracy-Flip was highest."""
    data = tmp_path / "data"
    data.mkdir()
    _write_bin(data / "lfw.bin")  # found beside the data; cfp_fp and agedb_30 are not there
    result = train(cfg_for(tmp_path / "out", data, eval_every=4, max_steps=12, best_target="lfw",
                           val_targets="[lfw,cfp_fp,agedb_30]"), tiny_dataset())
    log = (tmp_path / "out" / "train.log").read_text()
    # Steps 4, 6 (epoch end), 8, 12 (epoch end and run end): once each.
    seen = [(float(a), float(s)) for a, s in re.findall(r"\[lfw\]Accuracy-Flip: ([0-9.]+)\+-([0-9.]+)", log)]
    assert len(seen) == 4 and all(0.0 <= a <= 1.0 for a, _ in seen)
    assert "verification sets not found, skipped" in log and "cfp_fp.bin" in log
    final = load(result.checkpoint)
    assert result.val == final["val"] and set(final["val"]) == {"lfw"}
    assert final["val"]["lfw"]["accuracy_flip"] == pytest.approx(seen[-1][0], abs=1e-5)
    assert result.threshold == final["threshold"] == final["val"]["lfw"]["threshold_cos"]
    assert final["cluster_threshold"] == final["val"]["lfw"]["cluster_threshold"] is not None
    best_at = [4, 6, 8, 12][[a for a, _ in seen].index(max(a for a, _ in seen))]
    best = load(tmp_path / "out" / "best.pt")
    assert best["step"] == best_at and best["best"]["step"] == best_at and best["best"]["target"] == "lfw"
    assert best["best"]["value"] == pytest.approx(max(a for a, _ in seen), abs=1e-5)


def test_verification_is_skipped_without_bin_files(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    result = train(cfg_for(tmp_path / "out", data, max_steps=6), tiny_dataset())
    log = (tmp_path / "out" / "train.log").read_text()
    assert result.val == {} and log.count("verification sets not found, skipped") == 1
    assert not (tmp_path / "out" / "best.pt").exists()


@pytest.mark.faults
def test_a_bad_image_in_a_loader_worker_is_one_line(tmp_path):
    data = write_image_folder(tmp_path / "data")
    (data / "id03" / "002.png").write_bytes(b"not a png")
    with pytest.raises(UserError) as e:  # max_bad_images=0: the first undecodable image stops the run
        train(cfg_for(tmp_path / "out", data, num_workers=1, persistent_workers="false", max_bad_images=0))
    assert "id03/002.png" in str(e.value) and "cannot decode image" in str(e.value)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)


def test_max_minutes_stops_with_a_checkpoint(tmp_path, monkeypatch):
    """A time budget ends the run at a step boundary and saves, like max_steps."""
    import irface.engine.trainer as trainer_module

    clock = {"t": 1000.0}

    def fake_monotonic():  # each call advances 1 s: the budget of 0.1 min lasts a handful of steps
        clock["t"] += 1.0
        return clock["t"]

    monkeypatch.setattr(trainer_module.time, "monotonic", fake_monotonic)
    result = train(cfg_for(tmp_path, max_minutes=0.1), tiny_dataset())
    assert result.stopped == "max_minutes"
    assert 0 < result.step < 24
    assert result.checkpoint and f"s{result.step:08d}" in result.checkpoint
    assert "max_minutes=0.1 reached" in (tmp_path / "train.log").read_text()
