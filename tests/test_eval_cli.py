"""`irface eval` end to end: the seed's lines, the same figures from every model file kind, errors, JSON."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from irface.cli import main
from test_eval_run import make_bin, png

FIXTURE = Path(__file__).parent / "fixtures" / "mindspore" / "tiny_iresnet_e.ckpt"
SEED_LINES = [r"\[{0}\]XNorm: \d+\.\d{{6}}", r"\[{0}\]Accuracy: \d\.\d{{5}}\+-\d\.\d{{5}}",
              r"\[{0}\]Accuracy-Flip: \d\.\d{{5}}\+-\d\.\d{{5}}"]


# 112x112 like the real sets: a traced TorchScript file does not record its input size, and
# irface.infer assumes 112 for it.
SIZE = 112


@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    data = tmp_path_factory.mktemp("eval")
    make_bin(data / "lfw.bin", n_pairs=14, size=SIZE, seed=1)
    make_bin(data / "cfp_fp.bin", n_pairs=11, size=SIZE, seed=2)
    return data


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """The same tiny weights as an irface checkpoint, a bare state dict, safetensors, ONNX and TorchScript."""
    from irface.models import IResNet

    tmp_path = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    tiny_backbone = IResNet(layers=[1, 1], widths=[4, 8], embedding_size=16, input_size=SIZE)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in tiny_backbone.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    model = tiny_backbone.eval()
    files = {"checkpoint": tmp_path / "ckpt.pt", "state_dict": tmp_path / "backbone.pth",
             "safetensors": tmp_path / "model.safetensors", "onnx": tmp_path / "model.onnx",
             "torchscript": tmp_path / "model.ts"}
    torch.save({"format": "irface-checkpoint", "config": {"network": "iresnet18"}, "backbone": model.state_dict()},
               files["checkpoint"])
    torch.save(model.state_dict(), files["state_dict"])
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(files["safetensors"]))
    x = torch.zeros(2, 3, SIZE, SIZE)
    torch.onnx.export(model, x, str(files["onnx"]), input_names=["input"], output_names=["embedding"],
                      dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}}, dynamo=False)
    torch.jit.trace(model, x).save(str(files["torchscript"]))
    return files


def run_cli(args, capsys):
    code = main(["eval", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_prints_the_seeds_lines_then_a_table(bins, model_files, capsys):
    code, out, err = run_cli(["--ckpt", str(model_files["checkpoint"]), "--data", str(bins),
                              "--targets", "lfw,cfp_fp", "--batch-size", "7"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    for i, name in enumerate(["lfw", "cfp_fp"]):
        for j, pattern in enumerate(SEED_LINES):
            assert re.fullmatch(pattern.format(name), lines[3 * i + j]), lines[3 * i + j]
    assert lines[6].split()[:4] == ["target", "pairs", "Accuracy", "Accuracy-Flip"]
    assert lines[7].startswith("lfw") and lines[8].startswith("cfp_fp")


def test_every_model_file_kind_gives_the_same_figures(bins, model_files, tmp_path, capsys):
    figures = {}
    for kind, path in model_files.items():
        report = tmp_path / f"{kind}.json"
        code, out, err = run_cli(["--ckpt", str(path), "--data", str(bins), "--targets", "lfw",
                                  "--json", str(report)], capsys)
        assert code == 0, f"{kind}: {err}"
        figures[kind] = json.loads(report.read_text())["targets"]
    base = figures.pop("checkpoint")
    for kind, targets in figures.items():
        for name in ("lfw",):
            for key in ("accuracy", "accuracy_std", "accuracy_flip", "accuracy_flip_std", "auc"):
                assert targets[name][key] == pytest.approx(base[name][key], abs=1e-5), (kind, name, key)
            assert targets[name]["xnorm"] == pytest.approx(base[name]["xnorm"], rel=1e-5), (kind, name)


def test_json_on_stdout_is_the_only_thing_there(bins, model_files, capsys):
    code, out, err = run_cli(["--ckpt", str(model_files["state_dict"]), "--data", str(bins),
                              "--targets", "lfw", "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert report["kind"] == "state-dict" and set(report["targets"]) == {"lfw"}
    lfw = report["targets"]["lfw"]
    assert lfw["pairs"] == 14 and lfw["tar_at_far"]["1e-03"] is None and "1e-03" in lfw["far_unsupported"]
    assert re.search(r"^\[lfw\]Accuracy-Flip: ", err, re.M)  # the seed's lines moved to stderr


def test_no_flip_prints_no_flip_line(bins, model_files, capsys):
    code, out, _ = run_cli(["--ckpt", str(model_files["checkpoint"]), "--data", str(bins), "--targets", "lfw",
                            "--no-flip"], capsys)
    assert code == 0 and "Accuracy-Flip:" not in out and "[lfw]Accuracy: " in out


def test_missing_target_is_one_line_listing_the_folder(bins, model_files, capsys):
    code, out, err = run_cli(["--ckpt", str(model_files["checkpoint"]), "--data", str(bins),
                              "--targets", "lfw,agedb_30"], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "agedb_30.bin: no such verification set" in err and "cfp_fp, lfw" in err


def test_a_bin_of_another_size_is_resized_as_the_training_decoder_does(tmp_path, capsys, caplog):
    """A 112-px .bin through a 56-px network gives the figures of that .bin rewritten at 56 px by decode_image."""
    from irface.data import decode_image, read_bin, save_bin
    from irface.models import IResNet

    torch.manual_seed(0)
    torch.save(IResNet(layers=[1, 1], widths=[4, 8], embedding_size=16, input_size=56).state_dict(),
               tmp_path / "net56.pth")
    big, small = tmp_path / "big", tmp_path / "small"
    big.mkdir(), small.mkdir()
    make_bin(big / "lfw.bin", n_pairs=12, size=112, seed=4, fmt="jpeg")
    encoded, issame = read_bin(big / "lfw.bin")
    save_bin(small / "lfw.bin", [png(decode_image(b, 56)) for b in encoded], issame)  # PNG: lossless
    reports = []
    for data in (big, small):
        caplog.clear()
        with caplog.at_level("INFO", logger="irface"):
            code, out, err = run_cli(["--ckpt", str(tmp_path / "net56.pth"), "--data", str(data), "--targets", "lfw",
                                      "--json"], capsys)
        assert code == 0, err
        reports.append(json.loads(out)["targets"]["lfw"])
        resized = [r.getMessage() for r in caplog.records if "resized" in r.getMessage()]
        assert resized == (["lfw.bin: 112x112 images resized to 56x56"] if data == big else [])
    for key in ("accuracy", "accuracy_std", "accuracy_flip", "xnorm", "threshold", "auc"):
        assert reports[0][key] == reports[1][key], key


def test_wrong_network_name_is_one_line(bins, model_files, capsys):
    code, _, err = run_cli(["--ckpt", str(model_files["state_dict"]), "--data", str(bins), "--network", "iresnet50"],
                           capsys)
    assert code == 2 and err.count("\n") == 1 and "not iresnet50" in err


def test_plot_without_matplotlib_fails_before_any_work(bins, model_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code, out, err = run_cli(["--ckpt", str(model_files["checkpoint"]), "--data", str(bins),
                              "--plot", str(tmp_path / "roc.png")], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "matplotlib" in err
    assert not (tmp_path / "roc.png").exists()


def test_plot_draws_a_png(bins, model_files, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    code, _, err = run_cli(["--ckpt", str(model_files["checkpoint"]), "--data", str(bins), "--targets", "lfw,cfp_fp",
                            "--plot", str(tmp_path / "roc.png")], capsys)
    assert code == 0, err
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mindspore_checkpoint_evaluates_directly(tmp_path, capsys):
    make_bin(tmp_path / "lfw.bin", n_pairs=12, size=8)  # the fixture's network takes 8x8 inputs
    code, out, err = run_cli(["--ckpt", str(FIXTURE), "--data", str(tmp_path), "--targets", "lfw"], capsys)
    assert code == 0, err
    assert re.fullmatch(SEED_LINES[2].format("lfw"), out.splitlines()[2])


@pytest.mark.slow  # the seed script in a subprocess
def test_run_eval_script_writes_eval_log(tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    data = tmp_path / "sets"
    for i, name in enumerate(("lfw", "cfp_fp", "agedb_30")):
        make_bin(data / f"{name}.bin", n_pairs=10, size=8, seed=i)  # the MindSpore fixture takes 8x8
    script = Path(__file__).parents[1] / "scripts" / "run_eval.sh"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "IRFACE_PYTHON": sys.executable}
    done = subprocess.run([bash, str(script), str(data), str(FIXTURE), "--batch-size", "8"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "eval.log").read_text()
    for name in ("lfw", "cfp_fp", "agedb_30"):
        assert re.search(SEED_LINES[2].format(name), log)
    assert "[agedb_30]Accuracy-Flip" in done.stdout
    failed = subprocess.run([bash, str(script), str(data / "missing"), str(FIXTURE)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0 and "not a directory" in failed.stdout + failed.stderr
