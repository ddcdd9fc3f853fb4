"""Hostile files (issue 10, item 3): a crafted `.pt` or `.bin` runs nothing, absurd sizes allocate nothing.

Each crafted file carries a payload that would create a marker file if it were ever unpickled without
restrictions; every command that takes such a file must refuse it in one line (exit 2), write no
output, and leave the marker uncreated. `test_payloads_are_live` proves the payloads would work.
"""

import json
import pickle
import subprocess
import sys
import textwrap

import pytest

from engine_support import subprocess_env
from fault_support import (
    BIN_KINDS, PT_KINDS, ExecPayload, SystemPayload, absurd_pt, assert_one_line, checkpoints, hostile_bin,
    hostile_pt, jpeg_declaring, png_declaring, run_cli, tiny_bin, tiny_model_file, tiny_recordio, train_args,
    write_image_folder,
)

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A well-formed model, verification set and image folder to put the hostile files beside."""
    root = tmp_path_factory.mktemp("world")
    faces = write_image_folder(root / "faces")
    tiny_bin(root / "sets" / "lfw.bin")
    return {"model": tiny_model_file(root / "model.pth"), "sets": root / "sets", "faces": faces,
            "face": faces / "id00" / "000.png"}


@pytest.mark.parametrize("payload", [SystemPayload, ExecPayload])
def test_payloads_are_live(tmp_path, payload):
    """Without the allow-lists these payloads do run: the marker tests below can fail."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(payload(marker)))
    assert marker.exists()


def _model_commands(world, model, out):
    """Every command that takes a model file, with the output it would write."""
    data = world["faces"]
    return {
        "eval": (["eval", "--ckpt", model, "--data", world["sets"], "--targets", "lfw", "--device", "cpu",
                  "--json", out / "eval.json"], out / "eval.json"),
        "export": (["export", "--ckpt", model, "--output", out / "model.onnx"], out / "model.onnx"),
        "embed": (["embed", model, data, "--output", out / "emb.npy", "--device", "cpu", "--no-progress"],
                  out / "emb.npy"),
        "verify": (["verify", model, world["face"], world["face"], "--device", "cpu", "--json", out / "v.json"],
                   out / "v.json"),
        "train-init": (train_args(out / "run", data, init_backbone=model, max_steps=1), out / "run" / "config.yaml"),
        "train-resume": (train_args(out / "run", data, resume=model, max_steps=1), out / "run" / "config.yaml"),
    }


COMMANDS = ("eval", "export", "embed", "verify", "train-init", "train-resume")


@pytest.mark.parametrize("kind", PT_KINDS)
@pytest.mark.parametrize("command", COMMANDS)
def test_crafted_pt_runs_nothing_in_any_command(tmp_path, world, capsys, kind, command):
    marker = tmp_path / "marker"
    model = hostile_pt(tmp_path / "evil.pt", marker, kind)
    argv, output = _model_commands(world, model, tmp_path / "out")[command]
    code, _, err = run_cli(argv, capsys)
    if kind == "torchscript" and command in ("embed", "verify", "eval"):
        # Inference runs TorchScript models: the archive goes to torch.jit.load, whose own unpickler
        # knows only TorchScript's types, and is refused there.
        line = assert_one_line(code, err, str(model), "not a loadable TorchScript model")
    elif kind == "torchscript":
        line = assert_one_line(code, err, str(model), "a TorchScript model, not a")
    else:
        line = assert_one_line(code, err, str(model), "refused to load", "nothing in it was run")
        assert ("posix.system" in line or "os.system" in line) if kind != "exec" else "exec" in line
        assert "weights_only" not in line  # PyTorch's advice to load it unsafely is not passed on
    assert not marker.exists()
    assert not output.exists()


def test_crafted_checkpoint_in_a_run_folder(tmp_path, world, capsys, caplog):
    """resume=auto passes over a hostile newest checkpoint (warning); model commands given the folder refuse it."""
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    run.mkdir()
    hostile_pt(run / "checkpoint-e0009-s00000099.pt", marker)
    code, _, err = run_cli(train_args(run, world["faces"], resume="auto", max_steps=1), capsys)
    assert code == 0, err
    assert any(r.getMessage().startswith("skipping") and "checkpoint-e0009-s00000099.pt: refused to load" in r.getMessage()
               for r in caplog.records)
    assert "checkpoint-e0001-s00000001.pt" in checkpoints(run) and not marker.exists()
    code, _, err = run_cli(["embed", run, world["faces"], "-o", tmp_path / "e.npy", "--device", "cpu"], capsys)
    assert_one_line(code, err, "checkpoint-e0009-s00000099.pt: refused to load")
    assert not marker.exists() and not (tmp_path / "e.npy").exists()


def test_absurd_sizes_in_a_pt_allocate_nothing(tmp_path, world, capsys):
    """A torch archive declaring a 40 GB tensor over 16 bytes: refused from the declared sizes alone."""
    import resource

    model = absurd_pt(tmp_path / "huge.pt")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for argv in (["export", "--ckpt", model, "-o", tmp_path / "m.onnx"],
                 ["embed", model, world["face"], "-o", tmp_path / "e.npy", "--device", "cpu"],
                 train_args(tmp_path / "run", world["faces"], init_backbone=model)):
        code, _, err = run_cli(argv, capsys)
        assert_one_line(code, err, str(model), "40000000000 bytes")
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 200_000
    assert not checkpoints(tmp_path / "run")


@pytest.mark.parametrize("kind", BIN_KINDS)
def test_crafted_bin_runs_nothing_in_any_command(tmp_path, world, capsys, kind):
    marker = tmp_path / "marker"
    sets = tmp_path / "sets"
    sets.mkdir()
    evil = hostile_bin(sets / "lfw.bin", marker, kind)
    expected = "refusing numpy object arrays" if kind == "numpy-object" else "refusing to load"
    cases = [
        (["eval", "--ckpt", world["model"], "--data", sets, "--targets", "lfw", "--device", "cpu",
          "--json", tmp_path / "r.json"], tmp_path / "r.json"),
        (["data", "info", evil, "--json", tmp_path / "i.json"], tmp_path / "i.json"),
        (["export", "--ckpt", world["model"], "-o", tmp_path / "q.onnx", "--int8", "--calib", evil], tmp_path / "q.onnx"),
        # Beside the training data, as a verification target: read at set-up, before any step.
        (train_args(tmp_path / "run", world["faces"], val_targets=f"[{evil}]", max_steps=1),
         tmp_path / "run" / "config.yaml"),
    ]
    for argv, output in cases:
        code, _, err = run_cli(argv, capsys)
        assert_one_line(code, err, str(evil), "not a safe verification .bin", expected)
        assert not output.exists(), argv
    # Where an image is expected a .bin is only bytes to decode: never unpickled.
    code, _, err = run_cli(["embed", world["model"], evil, "-o", tmp_path / "e.npy", "--device", "cpu", "--no-progress"],
                           capsys)
    assert_one_line(code, err, str(evil), "cannot decode image")
    assert not marker.exists()


def test_mindspore_ckpt_with_absurd_sizes_through_convert_and_eval(tmp_path, world, capsys):
    import resource

    from test_interop_mindspore import ms_value, varint

    files = {
        "declared": (ms_value("conv1.weight", [100000, 100000], "Float32", b"\0" * 4),
                     "declares 100000x100000 Float32 (40,000,000,000 bytes) but holds 4 bytes"),
        "length": (varint(1 << 3 | 2) + varint(1 << 40) + b"\0" * 20, "declares 1099511627776 bytes"),
        "overflow": (ms_value("conv1.weight", [2**62, 2**62, 16], "Float32", b"\0" * 8), "but holds 8 bytes"),
    }
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name, (content, message) in files.items():
        ckpt = tmp_path / f"{name}.ckpt"
        ckpt.write_bytes(content)
        for argv, output in ((["convert", "mindspore", ckpt, "-o", tmp_path / "out.pth"], tmp_path / "out.pth"),
                             (["eval", "--ckpt", ckpt, "--data", world["sets"], "--targets", "lfw", "--device", "cpu",
                               "--json", tmp_path / "r.json"], tmp_path / "r.json")):
            code, _, err = run_cli(argv, capsys)
            assert_one_line(code, err, str(ckpt), "not a MindSpore checkpoint", message)
            assert not output.exists()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # kB


# --- image bombs: one subprocess, so that its peak memory is the commands' own --------------------------
BOMB_SCRIPT = textwrap.dedent("""
    import contextlib, io, json, resource, sys
    from irface.cli import main

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    main(["data", "info", sys.argv[2]])  # imports and warms up everything first
    results = []
    for argv in json.loads(open(sys.argv[1]).read()):
        err = io.StringIO()
        before = peak_mb()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        results.append({"argv": argv, "code": code, "err": err.getvalue(), "grew_mb": peak_mb() - before})
    print(json.dumps(results))
""")


@pytest.mark.slow  # a subprocess of its own
def test_image_bombs_are_refused_before_memory_explodes(tmp_path, world):
    """100000 x 100000 PNG (30 GB of pixels) and 65000 x 65000 JPEG in every place an image can come from."""
    import shutil

    bombs = {"png": png_declaring(100000, 100000), "jpg": jpeg_declaring(65000, 65000)}
    good = world["face"].read_bytes()
    cases = []
    for ext, bomb in bombs.items():
        d = tmp_path / ext
        d.mkdir()
        (d / f"bomb.{ext}").write_bytes(bomb)
        # An image folder for training, with the bomb among good images.
        folder = shutil.copytree(world["faces"], d / "faces")
        (folder / "id02" / f"bomb.{ext}").write_bytes(bomb)
        # A .rec holding it as record 3, and a .bin holding it as image 5.
        images = [good] * 12
        images[2] = bomb
        tiny_recordio(d / "rec", images, [i // 2 for i in range(12)], num_classes=6)
        tiny_bin(d / "sets" / "lfw.bin", images=[good] * 5 + [bomb] + [good] * 14)
        out = d / "out"
        cases += [
            (["embed", str(world["model"]), str(d / f"bomb.{ext}"), "-o", str(out / "e.npy"), "--device", "cpu",
              "--no-progress"], f"bomb.{ext}: image of "),
            # In a batch a bad record is a reported skip; --strict makes it the error.
            (["embed", str(world["model"]), str(d / "rec"), "-o", str(out / "r.npy"), "--device", "cpu",
              "--no-progress", "--strict"], "train.rec: record 3: image of "),
            (["verify", str(world["model"]), str(d / f"bomb.{ext}"), str(world["face"]), "--device", "cpu"],
             f"bomb.{ext}: image of "),
            (["align", str(d / f"bomb.{ext}"), "--landmarks", "1,1,5,1,3,3,1,5,5,5", "-o", str(out / "a.png")],
             f"bomb.{ext}: image of "),
            (["eval", "--ckpt", str(world["model"]), "--data", str(d / "sets"), "--targets", "lfw", "--device", "cpu"],
             "lfw.bin image 5: image of "),
            (["data", "pack", str(folder), str(out / "packed")], f"bomb.{ext}: image of "),
            # Training refuses it with max_bad_images=0 (by default it is skipped and counted); batch
            # sizes that divide the image counts (49, 12), so that no epoch drops the bomb.
            (train_args(out / "run1", folder, max_bad_images=0, batch_size=7), f"bomb.{ext}: image of "),
            (train_args(out / "run2", d / "rec", max_bad_images=0, batch_size=4), "train.rec: record 3: image of "),
        ]
    (tmp_path / "cases.json").write_text(json.dumps([[str(a) for a in argv] for argv, _ in cases]))
    r = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, str(tmp_path / "cases.json"), str(world["face"].parent.parent)],
                       env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    for (argv, fragment), result in zip(cases, results):
        lines = [line for line in result["err"].splitlines() if line.strip() and "skipping" not in line]
        errors = [line for line in lines if ": error: " in line]
        assert result["code"] == 2, (argv, result["err"][-2000:])
        assert len(errors) == 1 and fragment in errors[0] and "larger than allowed" in errors[0], (argv, errors)
        assert "Traceback" not in result["err"] and "DecompressionBombWarning" not in result["err"]
        assert result["grew_mb"] < 100, (argv, result["grew_mb"])  # 30 GB of pixels were never allocated
    assert len(results) == len(cases) == 16


def test_bomb_between_pillow_warning_and_error_limits_is_one_clean_line(tmp_path, world, capsys):
    """100 megapixels: over irface's limit, over Pillow's warning limit, under its error limit. Before the
    shared header check, `eval` and `data info` printed Pillow's DecompressionBombWarning (three lines)."""
    import warnings

    sets = tmp_path / "sets"
    tiny_bin(sets / "lfw.bin", images=[png_declaring(10000, 10000)] + [world["face"].read_bytes()] * 19)
    for argv in (["eval", "--ckpt", world["model"], "--data", sets, "--targets", "lfw", "--device", "cpu"],
                 ["data", "info", sets / "lfw.bin"]):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning escaping to the user's terminal fails the test
            code, _, err = run_cli(argv, capsys)
        # Pillow's warning no longer refuses it first: irface's own check, which names the sides.
        assert_one_line(code, err, "lfw.bin image 0: image of 10000x10000 pixels is larger than allowed")
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, _, err = run_cli(["verify", world["model"], tmp_path / "x.png", world["face"], "--device", "cpu"], capsys)
    line = assert_one_line(code, err, "x.png: cannot decode image")
    assert "object at" not in line  # no "<_io.BytesIO object at 0x7f...>"
