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
