"""The new heads in the engine: Partial FC training in one and two processes, state through resume."""

import os

import pytest
import torch

from engine_support import assert_same_weights, load, tiny_dataset, tiny_overrides
from irface.config import load_config
from irface.engine import train
from irface.engine.trainer import Trainer
from irface.engine.checkpoint import load_checkpoint
from irface.models.loading import newest_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Tiny embeddings (16-d) have norms near 4: MagFace's magnitude range is scaled down to match.
HEADS = {
    "adaface": {"margin": 0.2},
    "magface": {"margin": "null", "head_options": "{l_a: 1, u_a: 20, lambda_g: 5}"},
    "subcenter": {"margin": 0.2, "head_options": "{k: 2}"},
    "curricularface": {"margin": 0.2},
}
INITIAL = {"batch_mean": 20.0, "batch_std": 100.0, "t": 0.0}


def cfg_for(out, kind, **extra):
    return load_config(None, tiny_overrides(out, head=kind, sample_rate=0.5, epoch_size=2, **HEADS[kind], **extra))


@pytest.mark.parametrize("kind", HEADS)
def test_one_process_trains_and_resumes_bit_identically(tmp_path, kind):
    whole = train(cfg_for(tmp_path / "whole", kind), tiny_dataset())
    first = train(cfg_for(tmp_path / "split", kind, max_steps=5), tiny_dataset())
    assert first.step == 5
    second = train(cfg_for(tmp_path / "split", kind, resume="auto"), tiny_dataset())
    assert second.step == whole.step == 12
    # The head's state (centres and batch statistics) is in the checkpoint and resumes exactly.
    assert_same_weights(load(whole.checkpoint), load(second.checkpoint))
    head = load(whole.checkpoint)["head"]
    for name, start in INITIAL.items():
        if name in head:
            assert head[name].item() != start
    if kind == "subcenter":
        assert head["weight"].shape == (6, 2, 16)
    assert whole.loss < first.loss * 1.5 and whole.loss == whole.loss


def _rank_worker(rank, port, out, kind):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = Trainer(cfg_for(out, kind, batch_size=4, max_steps=6), tiny_dataset())
    trainer.fit()
    # A forked child can hang in the destructors of what the parent's earlier runs left (thread
    # pools it does not have); the run is complete and on disk, so leave without them.
    os._exit(0)


@pytest.mark.faults
@pytest.mark.parametrize("kind", HEADS)
def test_two_processes_train_and_one_resumes(tmp_path, kind):
    import torch.multiprocessing as mp

    from test_partial_fc import _free_port

    out = tmp_path / "two"
    mp.start_processes(_rank_worker, args=(_free_port(), out, kind), nprocs=2, start_method="fork")
    ckpt = load_checkpoint(newest_checkpoint(out))
    assert ckpt["world_size"] == 2 and ckpt["step"] == 6
    assert ckpt["head_layout"]["class_ranges"] == [[0, 3], [3, 6]]
    for name, start in INITIAL.items():
        if name in ckpt["head"]:
            assert ckpt["head"][name].item() != start
    # One process picks the two ranks' run up, batch statistics included.
    again = train(cfg_for(out, kind, batch_size=4, resume="auto", max_steps=8), tiny_dataset())
    assert again.step == 8 and again.loss == again.loss


@pytest.mark.parametrize("extra,message", [
    ({"head": "adaface", "head_options": "{k: 3}"}, "config key 'head': head adaface takes no parameter k; its parameters: s, m, h, t_alpha"),
    ({"head": "subcenter", "head_options": "{m: 0.3}"}, "config key 'head_options': set m with the key margin"),
    ({"head": "magface", "margin": 0.5}, "config key 'margin': magface's margin follows the feature norm"),
    ({"head": "curricularface", "head_options": "{t_alpha: 2}"}, "t_alpha must be in (0, 1], got 2"),
    ({"head": "adaface", "head_options": "[1, 2]"}, "config key 'head_options': expected a mapping"),
])
def test_bad_head_options_are_one_line_before_any_work(tmp_path, extra, message):
    from irface.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        train(load_config(None, tiny_overrides(tmp_path, **extra)), tiny_dataset())
    assert message in str(e.value) and "\n" not in str(e.value)


def test_shipped_head_recipes_build_their_heads():
    from pathlib import Path

    from irface.heads import create_head

    root = Path(__file__).resolve().parents[1] / "configs"
    expected = {"adaface": {"s": 64.0, "m": 0.4, "h": 0.333, "t_alpha": 0.01},
                "magface": {"s": 64.0, "l_a": 10.0, "u_a": 110.0, "l_m": 0.45, "u_m": 0.8, "lambda_g": 35.0,
                            "easy_margin": True},
                "subcenter": {"s": 64.0, "m": 0.5, "k": 3, "base": "arcface"}}
    for kind, params in expected.items():
        cfg = load_config(root / f"ms1mv2_r100_{kind}.yaml")
        assert cfg.head == kind and cfg.num_classes == 85742
        assert create_head(kind, 8, 4, **cfg.head_params()).hparams() == params
