import pytest

from irface.cli import SUBCOMMANDS, main


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("train", "eval", "export", "embed", "verify", "data", "convert", "bench", "demo"):
        assert name in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("usage: irface " + name)


def test_no_subcommand_prints_help_and_fails(capsys):
    assert main([]) == 2


def test_python_dash_m(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "irface", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("irface ")


def test_parser_imports_no_torch():
    # A fresh interpreter: in this one, other tests have imported torch already and would hide it. numpy and
    # Pillow stay out too (the detector's and exporter's defaults live in modules that import neither).
    import subprocess
    import sys

    probe = ("import sys; from irface.cli import build_parser; build_parser(); "
             "print(' '.join(m for m in ('torch', 'numpy', 'PIL', 'onnx', 'onnxruntime', 'ray', 'pyarrow', 'psycopg', 'sklearn', 'faiss', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []


@pytest.mark.parametrize("argv, model, rest", [
    (["embed", "m.onnx", "a.jpg", "b.jpg", "-o", "e.npy"], "m.onnx", ["a.jpg", "b.jpg"]),
    (["embed", "--model", "m.onnx", "a.jpg", "b.jpg", "-o", "e.npy"], "m.onnx", ["a.jpg", "b.jpg"]),
    (["embed", "a.jpg", "--model", "m.onnx", "-o", "e.npy"], "m.onnx", ["a.jpg"]),
    (["verify", "--model", "m.onnx", "a.jpg", "b.jpg"], "m.onnx", ["a.jpg", "b.jpg"]),
    (["verify", "m.onnx", "a.jpg", "b.jpg"], "m.onnx", ["a.jpg", "b.jpg"]),
    (["calibrate", "--model", "m.onnx", "pairs.bin"], "m.onnx", ["pairs.bin"]),
    (["eval", "--ckpt", "m.pt", "--data", "d"], "m.pt", []),
    (["export", "--ckpt", "m.pt", "-o", "m.onnx"], "m.pt", []),
    (["export", "--model", "m.pt", "-o", "m.onnx"], "m.pt", []),
    (["serve", "--model", "m.onnx"], "m.onnx", []),
])
def test_model_spellings(argv, model, rest):
    # The model as MODEL or --model (verify, embed, calibrate), --model or the older --ckpt (eval, export).
    from irface.cli import build_parser
    from irface.cli._model import resolve_model

    args = build_parser().parse_args(argv)
    assert resolve_model(args) == model
    got = {"embed": lambda: args.inputs, "verify": lambda: [args.image_a, args.image_b],
           "calibrate": lambda: [args.pairs]}.get(argv[0], lambda: [])()
    assert got == rest


@pytest.mark.parametrize("argv, message", [
    (["verify", "m.onnx", "a.jpg", "b.jpg", "--model", "n.onnx"], "given twice"),
    (["calibrate", "pairs.bin"], "no model"),
])
def test_model_missing_or_twice(argv, message, capsys):
    # Reported as one line before anything is opened (exit 2).
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_help_texts_from_their_constants(capsys):
    # One help text for the model everywhere it is opened; the detector's defaults as the detector has them.
    from irface.cli._model import MODEL_HELP, WEIGHTS_HELP
    from irface.detect.settings import DEFAULT_DETECTOR
    from irface.infer.settings import DEFAULT_THRESHOLD

    helps = {}
    for name in ("verify", "embed", "calibrate", "serve", "eval", "export", "detect", "cluster"):
        with pytest.raises(SystemExit):
            main([name, "--help"])
        helps[name] = " ".join(capsys.readouterr().out.split())
    for name in ("verify", "embed", "calibrate", "serve", "eval", "cluster"):
        assert MODEL_HELP in helps[name], name
    assert WEIGHTS_HELP in helps["export"]
    assert f"(default {DEFAULT_DETECTOR.min_score:g})" in helps["detect"]
    assert f"(default {DEFAULT_DETECTOR.det_size})" in helps["detect"]
    assert f"else {DEFAULT_THRESHOLD:g}" in helps["serve"] and f"else {DEFAULT_THRESHOLD:g}" in helps["verify"]


def test_skipped_text_closes_every_summary_the_same_way():
    from irface.cli._output import skipped_text

    assert skipped_text({"skipped": []}) == skipped_text({}) == ""
    two = {"skipped": [{"name": "a.jpg", "reason": "a.jpg: no face found"}, {"name": "b", "reason": "b: unreadable"}]}
    assert skipped_text(two) == "\nskipped 2: a.jpg: no face found; b: unreadable"


@pytest.mark.parametrize("argv, name", [(["embed", "m.onnx", "photos", "--output"], "e.npy"),
                                        (["export", "--model", "m.pth", "--output"], "m.onnx")])
def test_an_output_that_is_a_folder_is_one_line_before_any_work(argv, name, tmp_path, capsys):
    (tmp_path / name).mkdir()
    assert main([*argv, str(tmp_path / name)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"irface {argv[0]}: error: {tmp_path / name}: is a folder; give a file name"], err
