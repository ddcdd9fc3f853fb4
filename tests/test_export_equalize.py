"""Activation equalisation before int8: same function in float, flatter per-channel input ranges."""

import numpy as np
import pytest
import torch

from infer_export_util import faces, tiny_model, torch_embed
from irface.export.equalize import equalize_activations
from irface.export.fold import fold_batchnorm
from irface.export.quantize import normalised_batch
from irface.models import IBasicBlock


def _batches(seed=0, n=24):
    return [torch.from_numpy(normalised_batch(faces(n, seed=seed)))]


def _spread_inputs(model):
    """Give each block's conv inputs channels of very different ranges (as trained networks have)."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for block in (m for m in model.modules() if isinstance(m, IBasicBlock)):
            block.bn1.weight.mul_(torch.logspace(-1.5, 1.0, block.bn1.weight.numel())[
                torch.randperm(block.bn1.weight.numel(), generator=g)])
            block.bn2.weight.mul_(torch.logspace(-1.5, 1.0, block.bn2.weight.numel())[
                torch.randperm(block.bn2.weight.numel(), generator=g)])
    return model


def _input_spread(model, batches):
    """Per conv input of every block: largest channel |max| over smallest channel |max|."""
    spreads = []

    def record(module, inputs):
        amax = inputs[0].transpose(0, 1).flatten(1).abs().amax(1)
        spreads.append(float(amax.max() / amax.min()))

    convs = [c for b in model.modules() if isinstance(b, IBasicBlock) for c in (b.conv1, b.conv2)]
    hooks = [c.register_forward_pre_hook(record) for c in convs]
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in hooks:
        h.remove()
    return np.array(spreads)


@pytest.mark.parametrize("folded", [False, True])
def test_equalised_model_computes_the_same_embeddings(folded):
    model = _spread_inputs(tiny_model())
    net = fold_batchnorm(model) if folded else model
    eq = equalize_activations(net, _batches(), alpha=0.5)
    test = faces(7, seed=3)
    np.testing.assert_allclose(torch_embed(eq, test), torch_embed(model, test), rtol=1e-4, atol=1e-4)
    # The input model is left as it was.
    np.testing.assert_allclose(torch_embed(net, test), torch_embed(model, test), rtol=1e-4, atol=1e-4)


def test_equalisation_flattens_the_channel_ranges_int8_sees():
    model = fold_batchnorm(_spread_inputs(tiny_model()))
    batches = _batches()
    before, after = _input_spread(model, batches), _input_spread(equalize_activations(model, batches, 0.5), batches)
    # alpha 0.5 takes about the square root of each spread (the weights take the rest).
    assert (after < before ** 0.75).all(), (before, after)
    full = _input_spread(equalize_activations(model, batches, 1.0), batches)
    assert np.allclose(full, 1.0, rtol=1e-3)  # alpha 1: every channel's range the same


def test_a_folded_leading_bn_leaves_conv1_inputs_alone():
    model = _spread_inputs(tiny_model())
    net = fold_batchnorm(model, leading=True)
    eq = equalize_activations(net, _batches(), alpha=0.5)
    for a, b in zip(net.modules(), eq.modules()):
        if isinstance(a, IBasicBlock):
            # conv1's output channels are rescaled (for conv2), its input channels are not: one factor per row.
            ratio = (b.conv1.weight / a.conv1.weight).flatten(1)
            torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-5, atol=0)
    test = faces(5, seed=4)
    np.testing.assert_allclose(torch_embed(eq, test), torch_embed(model, test), rtol=1e-4, atol=1e-4)


def test_alpha_out_of_range_is_refused():
    with pytest.raises(ValueError, match="alpha"):
        equalize_activations(tiny_model(), _batches(), alpha=1.5)
