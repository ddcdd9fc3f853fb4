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
             "print(' '.join(m for m in ('torch', 'numpy', 'PIL', 'onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []
