"""Every documented shell command runs: the README's and docs/' ```bash blocks, and configs/*.yaml headers.

Where commands come from:
- a fenced block opened with ```bash in README.md or docs/*.md: every line that is not blank and not a
  `#` comment is a command (a line ending in `\\` continues on the next one);
- the leading `#` comment lines of configs/*.yaml: a line whose text starts with a program (`irface`,
  `bash`, `python`, `python3`, `torchrun`, `make`) followed by a space is a command.

How they run: file by file (sorted), each file's commands in order, through bash, in one fresh copy of
the checkout (so `tests/fixtures/...`, `configs/...` and `scripts/...` resolve, and nothing lands in the
repository), with this environment's `irface` and `python` first on PATH. A later command may use what an
earlier one of the same file wrote (`irface data synth DATA ...` then `irface train ... data_path=DATA`);
a command another file already ran (the same text) is not run again.

To document a command that cannot run here in seconds (real data, a GPU, a trained IResNet-100), add
an entry to SKIP: a substring of the command and the reason. To make a runnable command quick, add its
substring to TINY with the extra arguments appended to it (`key=value` overrides for `irface train`).
EXPECT holds text a command's output must contain (what shows it did its job, not just exit 0).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ("irface", "bash", "python", "python3", "torchrun", "make")
# A guard against a command that hangs, not a speed check: generous, because CI's two cores may be busy
# (180 s failed once on a loaded machine while the whole test took 145 s on an idle one).
TIMEOUT_S = 600

# Documented commands that are not run here, by a substring of the command: the reason.
SKIP: dict[str, str] = {
    "make demo": "the whole demo (minutes); tests/test_demo.py runs a shortened one",
    "benchmarks/demo_busy.sh": "the whole demo from a fresh clone, install included (minutes)",
    "make test": "the test suite itself",
    "pytest -m faults": "the test suite itself",
    "/data/": "needs a real dataset (the MS1MV2 / faces_emore archive and its .bin sets)",
    "runs/r100": "needs a trained IResNet-100 run",
    "runs/lresnet100e_ir": "needs a trained IResNet-100 run",
    "r100.onnx": "needs an exported IResNet-100",
    "backbone.pth": "needs a trained IResNet-100 state dict",
    "lresnet100e_ir-25_5686.ckpt": "needs the seed's MindSpore checkpoint (not shipped)",
    "irface bench": "timing runs (tens of seconds to minutes); tests/test_bench*.py run them at tiny sizes",
}

# Extra arguments appended to a command (first matching substring) so that it runs in seconds.
TINY: dict[str, str] = {
    "irface data synth DATA": "--pairs 100",  # 100 pairs still make the 10 folds of verification
    # One epoch of the demo recipe (it verifies at its end) instead of eight.
    "irface train --config configs/demo.yaml": "epoch_size=1 num_workers=0",
    "scripts/run_distribute_train.sh DATA 2 --config configs/demo.yaml": "max_steps=2 val_targets=[] num_workers=0",
}

# Text that must appear in a command's output (stdout + stderr).
EXPECT: dict[str, list[str]] = {
    # The reference's TAR@FAR table and the 1:N lines of the synthetic IJB-C set.
    "irface eval --ckpt tests/fixtures/mindspore/tiny_iresnet_e.ckpt --ijb": [
        "| N1D1F1-IJBC  |", "0.0001", "1:N reference script", "1:N NIST   G1"],
    # Held-out style check on real faces: the enrolled photo is found, the group photo's face is nobody enrolled.
    "irface gallery search faces.gallery tests/fixtures/realface/photos/obama/obama1.jpg": [
        "obama1.jpg: obama", "t1.jpg: unknown"],
    "irface gallery search faces.gallery tests/fixtures/realface/photos/obama/obama.jpg --json": [
        '"identity": "Barack Obama"'],
    # Trains and verifies during training on the 112-px .bin sets of `irface data synth`.
    "irface train --config configs/demo.yaml data_path=DATA num_classes=30": [
        "lfw.bin: 112x112 images resized to 56x56", "[lfw]Accuracy-Flip: ", "[cfp_fp]Accuracy-Flip: ",
        "[agedb_30]Accuracy-Flip: "],
    # Real photos to a decision (README and docs/inference.md): six faces found, the calibrated threshold
    # decides every pair of the fixtures right and verify then uses it.
    "irface detect tests/fixtures/realface/group/t1.jpg": ["6 face(s)"],
    "irface calibrate photos_out/mobilefacenet_128d.onnx tests/fixtures/realface/photos": ["accuracy 1.0000"],
    # docs/scaling.md: the photos in 3 Parquet shards on a local Ray; the same command again finds them done
    # (the rerun's key comes first: the first run's is a substring of it); the gallery enrols them all.
    "--ray --shard-size 8 --output photos_out/shards --no-progress --json": ["21 embeddings", "0 now, 3 done before"],
    "--ray --shard-size 8 --output photos_out/shards --no-progress": ["21 embeddings", "3 Parquet shards (3 now, 0 done"],
    "irface gallery build --from-embeddings photos_out/shards": ["21 faces of 10 identities"],
    # ... and `gallery build --ray` does both steps into a folder of its own.
    "--ray --shards photos_out/gallery_shards": ["21 faces of 10 identities",
                                                 "3 shards in photos_out/gallery_shards (3 now, 0 done before)"],
    "irface verify photos_out/mobilefacenet_128d.onnx tests/fixtures/realface/photos/obama/obama.jpg "
    "tests/fixtures/realface/photos/biden/biden.jpg": ["different people", "from the calibration"],
    # Clustering (README, docs/cluster.md): the fixture people found, the group photo's strangers noise, a
    # library that grows keeps its people, person 0 named into a gallery and found there.
    "irface cluster tests/fixtures/realface/photos tests/fixtures/realface/group": [
        "27 faces in 22 photos: 7 people, 9 faces of no one"],
    "irface cluster evaluate tests/fixtures/realface/photos --model tests/fixtures/realface/models/"
    "mobilefacenet_128d.onnx --json": ['"people_found": 7', '"f1": 1.0'],
    "irface cluster evaluate tests/fixtures/realface/photos": ["21 faces of 10 people: 7 people found"],
    "irface cluster tests/fixtures/realface/photos/obama tests/fixtures/realface/photos/kit_harington": [
        "13 faces (13 new) in 8 photos: 2 people, 6 faces of no one"],
    "irface cluster tests/fixtures/realface/photos --model": ["27 faces (14 new) in 22 photos: 7 people", "(state)"],
    "--from-cluster library.npz:0": ["added 4 faces of 'Barack Obama'"],
    "irface gallery search people.gallery": ["obama.jpg: Barack Obama"],
}


@dataclass
class Command:
    source: str  # the file, relative to the repository
    where: str  # "```bash block 2 (line 40)" or "header line 4"
    text: str

    def without_comment(self) -> str:
        """The command before a trailing `# ...` comment (a `#` that starts a word outside quotes)."""
        quote = None
        for i, ch in enumerate(self.text):
            if quote:
                quote = None if ch == quote else quote
            elif ch in "'\"":
                quote = ch
            elif ch == "#" and (i == 0 or self.text[i - 1].isspace()):
                return self.text[:i].rstrip()
        return self.text

    def first_match(self, table: dict):
        return next(((key, value) for key, value in table.items() if key in self.text), None)


def bash_block_commands(path: Path) -> list[Command]:
    """Commands of the ```bash blocks of a Markdown file."""
    source = str(path.relative_to(ROOT))
    commands: list[Command] = []
    block, block_no, pending = None, 0, ""
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if block is None:
            if re.fullmatch(r"```\s*bash\s*", stripped):
                block_no += 1
                block = f"```bash block {block_no} (line {line_no})"
            continue
        if stripped.startswith("```"):
            block = None
            continue
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        commands.append(Command(source, block, pending + stripped))
        pending = ""
    return commands


def config_header_commands(path: Path) -> list[Command]:
    """Commands in the leading comment lines of a YAML config."""
    source = str(path.relative_to(ROOT))
    commands: list[Command] = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.split(" ", 1)[0] in PROGRAMS and " " in text:
            commands.append(Command(source, f"header line {line_no}", text))
    return commands


def documented_commands() -> dict[str, list[Command]]:
    """Every file with commands -> its commands, in order."""
    found: dict[str, list[Command]] = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        found[str(path.relative_to(ROOT))] = bash_block_commands(path)
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        found[str(path.relative_to(ROOT))] = config_header_commands(path)
    return {source: commands for source, commands in found.items() if commands}


COMMANDS = documented_commands()
_IGNORED = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", "runs",
                                  "demo_out", "build", "dist")


def _checkout_copy(dest: Path) -> Path:
    shutil.copytree(ROOT, dest, ignore=_IGNORED, symlinks=True)
    return dest


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    # This environment's irface, python and torchrun first; scripts/ fall back to python3 on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("PYTHONPATH", None)
    return env


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:]) or "    (nothing)"


def _describe(cmd: Command, extra: str) -> str:
    added = f"\n  with the test's additions: {extra}" if extra else ""
    return f"{cmd.source}, {cmd.where}:\n  {cmd.text}{added}"


def _run(cmd: Command, repo: Path, env: dict[str, str]) -> Optional[str]:
    """Run one command (with its TINY additions) in `repo`; None when it did its job, else what went wrong."""
    tiny = cmd.first_match(TINY)
    extra = tiny[1] if tiny else ""
    try:
        done = subprocess.run(["bash", "-c", f"{cmd.without_comment()} {extra}".strip()], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        out = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return f"{_describe(cmd, extra)}\ndid not finish in {TIMEOUT_S} s; last lines of stderr:\n{_tail(out)}"
    if done.returncode != 0:
        return (f"{_describe(cmd, extra)}\nexited with status {done.returncode}; last lines of stderr:\n"
                f"{_tail(done.stderr)}\n  stdout:\n{_tail(done.stdout, 5)}")
    expected = cmd.first_match(EXPECT)
    output = done.stdout + done.stderr
    missing = [text for text in (expected[1] if expected else []) if text not in output]
    if missing:
        return f"{_describe(cmd, extra)}\nran, but its output lacks {missing}; last lines:\n{_tail(output)}"
    return None


@pytest.mark.slow  # every documented command, in subprocesses
def test_documented_commands_run(tmp_path):
    """Each file's commands in order, all in one copy of the checkout; a command that already ran there
    for an earlier file (the same text) is not run twice. A file stops at its first failure, the others
    still run; every failure is reported."""
    repo = _checkout_copy(tmp_path / "checkout")
    env = _environment()
    ran: set[str] = set()
    failures: list[str] = []
    for source in sorted(COMMANDS):
        for cmd in COMMANDS[source]:
            key = cmd.without_comment()
            if cmd.first_match(SKIP) or key in ran:
                continue
            failure = _run(cmd, repo, env)
            if failure:
                failures.append(failure)
                break
            ran.add(key)
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


def test_every_table_entry_matches_a_documented_command():
    """A stale SKIP / TINY / EXPECT entry (its command changed or went) is reported, not silently kept."""
    every = [cmd.text for commands in COMMANDS.values() for cmd in commands]
    for name, table in (("SKIP", SKIP), ("TINY", TINY), ("EXPECT", EXPECT)):
        stale = [key for key in table if not any(key in text for text in every)]
        assert not stale, f"{name} entries that match no documented command: {stale}"


def test_collection_finds_the_known_commands():
    """The collector reads both kinds of source (a guard against a parser that finds nothing)."""
    texts = {cmd.text for commands in COMMANDS.values() for cmd in commands}
    assert "make demo    # creates .venv, installs irface (CPU torch), runs the end-to-end demo" in texts
    assert "irface data synth DATA --ids 30 --per-id 8" in {c.text for c in COMMANDS["configs/demo.yaml"]}
    assert Command("f", "w", "irface train a=1   # one process").without_comment() == "irface train a=1"
    assert Command("f", "w", "irface eval | jq '.a # b' # c").without_comment() == "irface eval | jq '.a # b'"
    continued = [t for t in texts if t.startswith("torchrun ")]
    assert continued and all("data_path=" in t for t in continued)  # the `\` continuation was joined
