"""The seed's scripts: one process, and two gloo processes through torchrun (with an elastic restart).

Two ranks with 4 images each see exactly the batches of one process with 4 images and two
accumulated micro-batches (same global order, same BatchNorm groups), so their loss trajectories
must agree to float noise: the only differences are the order of additions in the all-reduces.
"""

import re
import subprocess
import sys

import pytest
import torch

from engine_support import ROOT, fault_env, load, run, subprocess_env, tiny_overrides, write_config, write_image_folder
from irface.config import load_config
from irface.engine import train
from irface.engine.checkpoint import load_checkpoint
from irface.models.loading import load_backbone

SEED_LOSS = re.compile(r"^epoch: (\d+) step: (\d+), loss is ([0-9.e+-]+)$", re.M)


# One thread per process: equal float results between in-process and subprocess runs.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_torchrun_worker_leaves_with_its_output_flushed_and_its_exit_code():
    """`irface train` ends a torchrun worker through dist.leave, skipping the interpreter's teardown (where
    gloo's threads aborted workers that had finished): what it printed or logged still arrives, and the
    exit code is the one given."""
    code = ("import logging; from irface.dist import leave; logging.basicConfig(level=logging.INFO); "
            "print('printed', end=''); logging.getLogger('irface').info('logged'); leave(3)")
    r = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout) == (3, "printed") and "logged" in r.stderr


@pytest.mark.slow  # torchrun: two gloo ranks and a restart
@pytest.mark.faults
def test_distribute_script_two_gloo_ranks_survive_a_killed_worker_and_match_one_process(tmp_path):
    data = write_image_folder(tmp_path / "faces")
    out = tmp_path / "dist"
    config = write_config(tmp_path / "tiny.yaml", tiny_overrides(out, "", batch_size=4, checkpoint_every=5, resume="auto"))
    # Rank 1 is SIGKILLed after step 9 of the first attempt; torchrun restarts both workers, which
    # continue from the newest checkpoint (step 6).
    env = fault_env(tmp_path / "hooks", "kill", 9, rank=1)
    env["MAX_RESTARTS"] = "1"
    r = run(["bash", str(ROOT / "scripts" / "run_distribute_train.sh"), str(data), "2", "--config", str(config)],
            env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert "resumed from" in log and "checkpoint-e0001-s00000006.pt" in log
    final = load(out / "checkpoint-e0004-s00000024.pt")
    assert final["world_size"] == 2 and len(final["rng"]) == 2
    assert final["head_layout"]["class_ranges"] == [[0, 3], [3, 6]]
    assert final["head"]["weight"].shape == (6, 16)  # gathered whole

    # One process, 4 images x 2 accumulated micro-batches: the same global batches.
    one = tmp_path / "one"
    result = train(load_config(None, tiny_overrides(one, data, batch_size=4, grad_accum=2)))
    expected = [float(m[2]) for m in SEED_LOSS.findall((one / "train.log").read_text())]
    got = [float(m[2]) for m in SEED_LOSS.findall(log)]
    assert len(got) == len(expected) == 4
    # Float noise of the all-reduces grows over 24 steps at lr 0.1; a wrong gradient would not be noise.
    assert got[0] == pytest.approx(expected[0], rel=1e-5)
    assert got == pytest.approx(expected, rel=1e-2)
    reference = load(result.checkpoint)
    # BN running statistics are rank 0's own batches (DDP broadcasts them), so they are left out.
    keys = [k for k in reference["backbone"] if "running" not in k and "num_batches" not in k]
    ours = torch.cat([final["head"]["weight"].flatten()] + [final["backbone"][k].flatten() for k in keys])
    theirs = torch.cat([reference["head"]["weight"].flatten()] + [reference["backbone"][k].flatten() for k in keys])
    assert (ours - theirs).norm() / theirs.norm() < 1e-3

    # The checkpoint is usable by everything that reads model files, and it resumes in one process.
    model, info = load_backbone(out)
    assert info["arch"]["widths"] == [8, 16] and model(torch.zeros(2, 3, 16, 16)).shape == (2, 16)
    again = train(load_config(None, tiny_overrides(out, data, resume="auto", epoch_size=5, max_steps=26)))
    assert again.step == 26 and load_checkpoint(again.checkpoint)["world_size"] == 1


@pytest.mark.faults
@pytest.mark.parametrize("script,args,message", [
    ("run_standalone_train.sh", [], "Usage"),
    ("run_distribute_train.sh", ["/nonexistent"], "Usage"),
    ("run_distribute_train.sh", ["/nonexistent", "2"], "does not exist"),
    ("run_distribute_train.sh", [".", "two"], "positive integer"),
])
def test_scripts_check_their_arguments(script, args, message):
    r = subprocess.run(["bash", str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                       env=subprocess_env(), cwd=ROOT, timeout=30)
    assert r.returncode == 2 and message in r.stderr
