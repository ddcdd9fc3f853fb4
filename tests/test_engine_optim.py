"""Learning-rate schedules (the seed's table), parameter groups, loss scaling, gradient norm and clipping."""

import math

import pytest
import torch

from irface.config import load_config
from irface.engine.optim import LRSchedule, build_optimizer, clip_gradients, global_grad_norm, param_groups
from irface.engine.precision import MAX_CONSECUTIVE_SKIPS, LossScaler
from irface.models import IResNet
from engine_support import ROOT

STEPS = 5686  # the seed's steps per epoch: 5,822,653 images / (128 x 8)


def test_the_seeds_table_on_8_x_128():
    cfg = load_config(ROOT / "configs" / "lresnet100e_ir_config_gpu.yaml")
    sched = LRSchedule.from_config(cfg, STEPS, world_size=8)
    expected = {0: 0.2, 10: 0.02, 16: 0.002, 21: 0.0002}
    for epoch, lr in expected.items():
        assert sched.lr_at(epoch * STEPS) == pytest.approx(lr, rel=1e-9), epoch
    # The step before each boundary still has the previous rate; the last step of the run has 0.0002.
    assert sched.lr_at(10 * STEPS - 1) == pytest.approx(0.2)
    assert sched.lr_at(16 * STEPS - 1) == pytest.approx(0.02)
    assert sched.lr_at(21 * STEPS - 1) == pytest.approx(0.002)
    assert sched.lr_at(25 * STEPS - 1) == pytest.approx(0.0002)
    # One device: 0.1 x 128 / 512.
    assert LRSchedule.from_config(cfg, STEPS, world_size=1).lr_at(0) == pytest.approx(0.025)


def test_warmup_then_poly_and_cosine():
    warm = LRSchedule("poly", 1.0, steps_per_epoch=10, epochs=10, power=2.0, warmup_epochs=1)
    assert warm.lr_at(0) == pytest.approx(0.1)
    assert warm.lr_at(9) == pytest.approx(1.0)
    assert warm.lr_at(10) == pytest.approx(1.0)
    assert warm.lr_at(55) == pytest.approx(0.25)  # halfway through the 90 steps after warm-up: (1/2)^2
    assert warm.lr_at(99) > 0 and warm.lr_at(100) == 0.0
    cos = LRSchedule("cosine", 2.0, steps_per_epoch=4, epochs=5)
    assert cos.lr_at(0) == pytest.approx(2.0) and cos.lr_at(10) == pytest.approx(1.0) and cos.lr_at(20) == pytest.approx(0.0)
    multi = LRSchedule("multistep", 1.0, 10, 5, milestones=[2], warmup_epochs=0.5)
    assert multi.lr_at(0) == pytest.approx(0.2) and multi.lr_at(4) == pytest.approx(1.0)
    assert multi.lr_at(19) == pytest.approx(1.0) and multi.lr_at(20) == pytest.approx(0.1)


def test_apply_sets_every_group():
    model = IResNet([1, 1], [8, 16], embedding_size=16, input_size=16)
    cfg = load_config(None, ["wd_exclude_norm_bias=true"])
    opt = build_optimizer(model, cfg, 0.5)
    LRSchedule("multistep", 0.3, 10, 2).apply([opt], 0)
    assert [g["lr"] for g in opt.param_groups] == [0.3, 0.3]


def test_weight_decay_exclusion():
    model = IResNet([1, 1], [8, 16], embedding_size=16, input_size=16)
    (everything,) = param_groups(model, 5e-4, exclude_norm_bias=False)
    assert len(everything["params"]) == sum(1 for p in model.parameters() if p.requires_grad)
    decay, no_decay = param_groups(model, 5e-4, exclude_norm_bias=True)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 4 or p is model.fc.weight for p in decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    excluded = {names[id(p)] for p in no_decay["params"]}
    assert "prelu.weight" in excluded and "bn1.bias" in excluded and "fc.bias" in excluded
    assert "features.weight" not in excluded  # frozen, in no group at all


def test_adamw_uses_momentum_as_beta1():
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, load_config(None, ["optimizer=adamw", "momentum=0.8"]), 1e-3)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["betas"] == (0.8, 0.999)


def test_loss_scaler_backs_off_grows_and_gives_up():
    s = LossScaler(True, init_scale=1024.0, growth_interval=2)
    assert s.scale(torch.tensor(2.0)).item() == 2048.0
    assert s.update(False) is False and s.scale_value == 512.0
    assert s.update(True) and s.update(True) and s.scale_value == 1024.0
    state = s.state_dict()
    again = LossScaler(True)
    again.load_state_dict(state)
    assert again.scale_value == 1024.0
    for _ in range(MAX_CONSECUTIVE_SKIPS - 1):
        s.update(False)
    assert not s.gave_up
    s.update(False)
    assert s.gave_up
    off = LossScaler(False)
    assert off.scale(torch.tensor(3.0)).item() == 3.0 and off.update(True) and not off.update(False) and not off.gave_up


def test_global_norm_and_clipping():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0, 0.0])
    norm = global_grad_norm([a], [b], torch.device("cpu")).item()
    assert norm == pytest.approx(5.0)
    assert clip_gradients([a, b], norm, 10.0) is None
    clip_gradients([a, b], norm, 1.0)
    assert math.hypot(*a.grad.tolist(), *b.grad.tolist()) == pytest.approx(1.0, rel=1e-5)
