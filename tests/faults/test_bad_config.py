"""Bad configuration and arguments (issue 10, item 4): one line, exit 2, before any work starts.

Covers what the engine's own tests do not already drive through the CLI: unknown keys and wrong types,
a batch larger than the data, fewer classes than the labels (image folder and both RecordIO layouts),
a world larger than the class count, a missing path for every command, and an output that cannot be
written for every command that writes one.
"""

import errno
import os

import numpy as np
import pytest

from fault_support import (
    CLASSES, assert_one_line, checkpoints, run_cli, tiny_bin, tiny_model_file, tiny_recordio, train_args,
    write_image_folder,
)

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfg")
    faces = write_image_folder(root / "faces")
    tiny_bin(root / "sets" / "lfw.bin")
    (root / "a-file").write_text("not a folder\n")
    return {"root": root, "faces": faces, "face": faces / "id00" / "000.png", "sets": root / "sets",
            "model": tiny_model_file(root / "model.pth"), "rec": tiny_recordio(root / "rec"),
            "plain": tiny_recordio(root / "plain", layout="plain")}


@pytest.mark.parametrize("extra, message", [
    (["batchsize=8"], "unknown config key 'batchsize' (did you mean 'batch_size'?)"),
    (["batch_size=eight"], "config key 'batch_size': expected int, got 'eight'"),
    (["lr=[0.1]"], "config key 'lr': expected float"),
    (["schedule=10"], "config key 'schedule': expected a list of int"),
    (["precision=fp8"], "config key 'precision': 'fp8' is not one of fp32, bf16, fp16"),
    (["head=arcface", "sample_rate=0"], "config key 'sample_rate': must be in (0, 1]"),
    (["max_steps=-1"], "config key 'max_steps': must not be negative"),
])
def test_unknown_keys_and_wrong_types_on_the_command_line(tmp_path, world, capsys, extra, message):
    code, _, err = run_cli(train_args(tmp_path / "run", world["faces"]) + extra, capsys)
    assert_one_line(code, err, message)
    assert not (tmp_path / "run").exists()  # refused before the output folder was even made


def test_unknown_key_and_wrong_type_in_a_config_file(tmp_path, world, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("network: iresnet18\nembeding_size: 16\n")
    code, _, err = run_cli(["train", "--config", config, f"output_dir={tmp_path / 'run'}"], capsys)
    assert_one_line(code, err, f"{config}: unknown config key 'embeding_size' (did you mean 'embedding_size'?)")
    config.write_text("batch_size: 8.5\n")
    code, _, err = run_cli(["train", "--config", config, f"output_dir={tmp_path / 'run'}"], capsys)
    assert_one_line(code, err, "config key 'batch_size': expected int, got 8.5")
    config.write_text("[not, a, mapping]\n")
    code, _, err = run_cli(["train", "--config", config], capsys)
    assert_one_line(code, err, f"{config}: expected a mapping of key: value")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("data", ["faces", "rec", "plain"])
def test_batch_larger_than_the_data(tmp_path, world, capsys, data):
    code, _, err = run_cli(train_args(tmp_path / "run", world[data], batch_size=64), capsys)
    assert_one_line(code, err, "config key 'batch_size'", "has 48 images, fewer than one global batch of 64 x 1")
    assert not checkpoints(tmp_path / "run")


@pytest.mark.parametrize("data", ["faces", "rec", "plain"])
def test_num_classes_smaller_than_the_labels(tmp_path, world, capsys, data):
    """Image folder (class folders), header layout (property and identity records), plain layout (a label scan)."""
    code, _, err = run_cli(train_args(tmp_path / "run", world[data], num_classes=4), capsys)
    assert_one_line(code, err, "config key 'num_classes'", f"has {CLASSES} classes, more than num_classes=4")
    assert not checkpoints(tmp_path / "run")


def test_more_processes_than_classes_is_refused_before_any_work(tmp_path, world, monkeypatch):
    """Uneven shards are allowed (sizes differ by at most one; tests/test_partial_fc.py runs 11 classes on
    2 ranks); a rank without a single class is not."""
    from irface import dist
    from irface.config import load_config
    from irface.engine import train
    from irface.errors import ConfigError

    monkeypatch.setattr(dist, "init_distributed", lambda device, timeout_s=0: None)
    monkeypatch.setattr(dist, "get_world_size", lambda: 8)
    with pytest.raises(ConfigError, match=r"'num_classes': 6 classes cannot be split across 8 processes"):
        train(load_config(None, train_args(tmp_path / "run", world["faces"])[1:]))
    assert not (tmp_path / "run").exists()


def test_uneven_class_shards_cover_every_class_once():
    from irface.heads import PartialFC, class_range

    for classes, world in ((7, 2), (7, 3), (11, 4), (6, 6)):
        shards = [PartialFC("arcface", 4, classes, rank=r, world_size=world) for r in range(world)]
        assert [(s.start, s.end) for s in shards] == [class_range(classes, r, world) for r in range(world)]
        sizes = [s.weight.shape[0] for s in shards]
        assert sum(sizes) == classes and max(sizes) - min(sizes) <= 1


# --- missing paths: every command, one line naming the path -------------------------------------------
def _missing_cases(w, nope):
    return {
        "eval-ckpt": (["eval", "--ckpt", nope, "--data", w["sets"], "--targets", "lfw"], "no such file or folder"),
        "eval-data": (["eval", "--ckpt", w["model"], "--data", nope, "--targets", "lfw"], "not a folder"),
        "eval-target": (["eval", "--ckpt", w["model"], "--data", w["sets"], "--targets", f"lfw,{nope.name}"],
                        f"{nope.name}.bin: no such verification set; .bin files in {w['sets']}: lfw"),
        "export-ckpt": (["export", "--ckpt", nope, "-o", w["root"] / "o.onnx"], "no such file"),
        "export-calib": (["export", "--ckpt", w["model"], "-o", w["root"] / "q.onnx", "--int8", "--calib", nope],
                         "no such calibration folder or .bin file"),
        "embed-model": (["embed", nope, w["faces"], "-o", w["root"] / "e.npy"], "no such file or folder"),
        "embed-input": (["embed", w["model"], nope, "-o", w["root"] / "e.npy"], "no such file or folder"),
        "verify-model": (["verify", nope, w["face"], w["face"]], "no such file or folder"),
        "verify-image": (["verify", w["model"], w["face"], nope, "--device", "cpu"], "no such file"),
        "align-image": (["align", nope, "--landmarks", "1,1,5,1,3,3,1,5,5,5", "-o", w["root"] / "a.png"], "no such file"),
        "convert": (["convert", "mindspore", nope, "-o", w["root"] / "c.pth"], "no such file"),
        "data-info": (["data", "info", nope], "no such file or folder"),
        "data-pack": (["data", "pack", nope, w["root"] / "packed"], "not a folder"),
        "data-unpack": (["data", "unpack", nope, w["root"] / "unpacked"], "no train.rec here"),
        "data-make-pairs": (["data", "make-pairs", nope, w["root"] / "p.bin", "--pairs", "4"], "not a folder"),
        "data-reindex": (["data", "reindex", nope], "no such RecordIO file"),
        "train-config": (["train", "--config", nope], "no such config file"),
        "train-data": (train_args(w["root"] / "run", nope), "no such training data folder"),
        "train-init": (train_args(w["root"] / "run", w["faces"], init_backbone=nope), "no such file"),
        "train-resume": (train_args(w["root"] / "run", w["faces"], resume=nope), "no such file or folder"),
    }


MISSING = ("eval-ckpt", "eval-data", "eval-target", "export-ckpt", "export-calib", "embed-model", "embed-input",
           "verify-model", "verify-image", "align-image", "convert", "data-info", "data-pack", "data-unpack",
           "data-make-pairs", "data-reindex", "train-config", "train-data", "train-init", "train-resume")


@pytest.mark.parametrize("case", MISSING)
def test_missing_path_is_one_line_naming_it(tmp_path, world, capsys, case):
    nope = tmp_path / "no-such-thing"
    argv, message = _missing_cases(world, nope)[case]
    code, _, err = run_cli(argv, capsys)
    assert_one_line(code, err, str(world["sets"] / nope.name) if case == "eval-target" else str(nope), message)
    assert not checkpoints(world["root"] / "run")


# --- outputs that cannot be written --------------------------------------------------------------------
def _unwritable_cases(w, bad, nope):
    """bad: a path under a regular file. Where the check comes first, the model given does not even exist."""
    return {
        # Checked before the model is opened: the error is about the output, not the missing model.
        "embed": (["embed", nope, w["faces"], "-o", bad / "e.npy"], 2),
        "export": (["export", "--ckpt", nope, "-o", bad / "m.onnx"], 2),
        "eval-json": (["eval", "--ckpt", nope, "--data", w["sets"], "--json", bad / "r.json"], 2),
        "eval-plot": (["eval", "--ckpt", nope, "--data", w["sets"], "--plot", bad / "roc.png"], 2),
        "train-json": (train_args(w["root"] / "run", nope) + ["--json", bad / "t.json"], 2),
        # Written at the end of short commands: one line, nothing half-written.
        "verify-json": (["verify", w["model"], w["face"], w["face"], "--device", "cpu", "--json", bad / "v.json"], 2),
        "align": (["align", w["face"], "--landmarks", "3,5,12,5,8,9,4,12,11,12", "-o", bad / "a.png"], 2),
        "convert": (["convert", "mindspore", "tests/fixtures/mindspore/tiny_iresnet_e.ckpt", "-o", bad / "c.pth"], 2),
        "data-info": (["data", "info", w["sets"] / "lfw.bin", "--json", bad / "i.json"], 2),
        "data-make-pairs": (["data", "make-pairs", w["faces"], bad / "p.bin", "--pairs", "4", "--folds", "2"], 2),
        "train-output": (train_args(bad / "run", w["faces"]), 2),
        # Folders of files written by their own writers: the system's refusal, in one line (exit 1).
        "data-pack": (["data", "pack", w["faces"], bad / "packed"], 1),
        "data-synth": (["data", "synth", bad / "synth", "--ids", "2", "--per-id", "2", "--pairs", "0"], 1),
    }


UNWRITABLE = ("embed", "export", "eval-json", "eval-plot", "train-json", "verify-json", "align", "convert",
              "data-info", "data-make-pairs", "train-output", "data-pack", "data-synth")


@pytest.mark.parametrize("case", UNWRITABLE)
def test_unwritable_output_is_one_line(tmp_path, world, capsys, case):
    bad = world["root"] / "a-file" / "sub"
    argv, expected = _unwritable_cases(world, bad, tmp_path / "no-model.pth")[case]
    code, _, err = run_cli(argv, capsys)
    line = assert_one_line(code, err, str(world["root"] / "a-file"), expected_code=expected)
    assert "Not a directory" in line or "is a file, not a folder" in line or "not writable" in line
    assert not (tmp_path / "no-model.pth").exists()


def test_full_disk_while_writing_an_output_leaves_nothing(tmp_path, world, capsys, monkeypatch):
    """ENOSPC in the middle of `embed`'s write: one line, no output file and no temporary file left."""
    out = tmp_path / "out"
    real_save = np.save

    def save(f, arr, *args, **kwargs):
        f.write(b"\x93NUMPY partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", save)
    code, _, err = run_cli(["embed", world["model"], world["faces"], "-o", out / "e.npy", "--device", "cpu",
                            "--no-progress"], capsys)
    assert_one_line(code, err, str(out / "e.npy"), "could not write (No space left on device); nothing was written")
    monkeypatch.setattr(np, "save", real_save)
    assert list(out.iterdir()) == []  # neither the array nor its names list (before the fix: a lone e.txt)
