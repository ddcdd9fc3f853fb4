"""Each head against a naive per-sample formula written with Python's math module."""

import math

import pytest
import torch
import torch.nn.functional as F

from irface.heads import create_head

E, C = 6, 5


def naive_loss(emb, weight, labels, target_fn, s):
    """Per sample: cosines with every centre, margin on the target, scale, log-softmax; then the mean."""
    total = 0.0
    for x, y in zip(emb.tolist(), labels.tolist()):
        nx = math.sqrt(sum(v * v for v in x))
        logits = []
        for j, w in enumerate(weight.tolist()):
            nw = math.sqrt(sum(v * v for v in w))
            cos = sum(a * b for a, b in zip(x, w)) / (nx * nw)
            cos = max(-1.0, min(1.0, cos))
            logits.append(s * (target_fn(cos) if j == y else cos))
        mx = max(logits)
        lse = mx + math.log(sum(math.exp(v - mx) for v in logits))
        total += lse - logits[y]
    return total / len(labels)


def arcface_target(m):
    def f(cos):
        theta = math.acos(cos)
        if theta + m < math.pi:  # the reference: cos(theta + m) while theta + m < pi ...
            return math.cos(theta + m)
        return cos - math.sin(math.pi - m) * m  # ... then cos(theta) - m sin(m)
    return f


def make_inputs(n=8, hard=True):
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(C, E, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, C - 1, 2, 0, C - 1, 1, 3, 4][:n])  # both class edges
    emb = torch.randn(n, E, generator=g, dtype=torch.float64)
    if hard:
        # Make some targets nearly opposite their centre, so theta + m > pi happens.
        emb[0] = -weight[0] + 0.01 * emb[0]
        emb[1] = -weight[C - 1] + 0.05 * emb[1]
    return emb, weight, labels


@pytest.mark.parametrize("kind,params,target", [
    ("arcface", {}, arcface_target(0.5)),
    ("arcface", {"s": 30.0, "m": 0.3}, arcface_target(0.3)),
    ("cosface", {}, lambda c: c - 0.4),
    ("combined", {"m1": 1.0, "m2": 0.5, "m3": 0.0}, arcface_target(0.5)),
    ("combined", {"m1": 1.0, "m2": 0.3, "m3": 0.2}, lambda c: arcface_target(0.3)(c) - 0.2),
    ("combined", {"m1": 1.35, "m2": 0.0, "m3": 0.0},
     lambda c: math.cos(1.35 * math.acos(c)) if 1.35 * math.acos(c) < math.pi else c),
    ("combined", {"m1": 1.0, "m2": 0.0, "m3": 0.4}, lambda c: c - 0.4),
])
def test_margin_heads_equal_the_naive_formula(kind, params, target):
    emb, weight, labels = make_inputs()
    head = create_head(kind, embedding_size=E, num_classes=C, **params).double()
    with torch.no_grad():
        head.weight.copy_(weight)
    if kind == "arcface" or (kind == "combined" and params["m1"] == 1.0 and params["m2"] > 0):
        # The hard samples really exercise the theta + m > pi branch.
        cos0 = F.cosine_similarity(emb[0], weight[0], dim=0).item()
        assert math.acos(cos0) + params.get("m", params.get("m2", 0.5)) > math.pi
    loss = head(emb, labels)
    expected = naive_loss(emb, weight, labels, target, params.get("s", 64.0))
    # float64 end to end except acos's clamp a hair inside [-1, 1] for m1 != 1.
    assert loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_margin_gradients_are_finite_and_real():
    emb, weight, labels = make_inputs()
    head = create_head("arcface", embedding_size=E, num_classes=C)
    with torch.no_grad():
        head.weight.copy_(weight.float())
    x = emb.float().requires_grad_(True)
    head(x, labels).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.isfinite(head.weight.grad).all()
    # Against finite differences in float64 on the smooth branch.
    head64 = create_head("arcface", embedding_size=E, num_classes=C).double()
    with torch.no_grad():
        head64.weight.copy_(weight)
    x64 = emb[2:].clone().requires_grad_(True)
    torch.autograd.gradcheck(lambda t: head64(t, labels[2:]), (x64,), eps=1e-6, atol=1e-3)


def test_softmax_head_is_linear_with_bias_and_cross_entropy():
    head = create_head("softmax", embedding_size=E, num_classes=C)
    assert head.weight.shape == (C, E) and head.bias.shape == (C,)
    emb, _, labels = make_inputs(hard=False)
    emb = emb.float()
    expected = F.cross_entropy(emb @ head.weight.T + head.bias, labels)
    torch.testing.assert_close(head(emb, labels), expected)


def test_arcface_equals_the_widely_used_formulation():
    """cos of the normalised embedding and centre, margin on the target, scale s, cross-entropy."""
    emb, weight, labels = make_inputs()
    emb, weight = emb.float(), weight.float()
    s, m = 64.0, 0.5
    cos = F.normalize(emb) @ F.normalize(weight).T
    sin = torch.sqrt(1 - cos ** 2)
    phi = cos * math.cos(m) - sin * math.sin(m)
    phi = torch.where(cos > math.cos(math.pi - m), phi, cos - math.sin(math.pi - m) * m)
    one_hot = F.one_hot(labels, C).bool()
    expected = F.cross_entropy(s * torch.where(one_hot, phi, cos), labels)
    head = create_head("arcface", embedding_size=E, num_classes=C)
    with torch.no_grad():
        head.weight.copy_(weight)
    torch.testing.assert_close(head(emb, labels), expected, rtol=1e-5, atol=1e-4)

    cosface = create_head("cosface", embedding_size=E, num_classes=C)
    with torch.no_grad():
        cosface.weight.copy_(weight)
    expected = F.cross_entropy(s * torch.where(one_hot, cos - 0.4, cos), labels)
    torch.testing.assert_close(cosface(emb, labels), expected, rtol=1e-5, atol=1e-4)


def test_unknown_head():
    with pytest.raises(KeyError, match="arcface"):
        create_head("sphereface", embedding_size=4, num_classes=3)


def test_the_registry_and_the_config_name_the_same_heads():
    from irface.config import HEADS, TrainConfig
    from irface.heads import head_class, head_kind, list_heads

    assert list_heads() == list(HEADS)
    for kind in list_heads():
        head = create_head(kind, embedding_size=4, num_classes=3)
        assert isinstance(head, head_class(kind)) and head_kind(head) == kind
        assert TrainConfig(head=kind, sample_rate=1.0).head == kind
    # The config's documented list (docs/config.md, from the field's comment) names each of them.
    import inspect

    from irface import config

    line = next(line for line in inspect.getsource(config).splitlines() if line.strip().startswith("head: str ="))
    assert all(kind in line for kind in list_heads())


@pytest.mark.parametrize("kind", ["softmax", "arcface", "adaface", "magface", "subcenter", "curricularface"])
def test_every_head_answers_the_hooks_partial_fc_calls(kind):
    # Partial FC computes a head's logits as margin_logits(cosine_to(x, weight, bias), ...) * s on its
    # shard, with no branch per kind: for the whole head that must be the head's own logits.
    torch.manual_seed(0)
    head = create_head(kind, embedding_size=E, num_classes=C).eval()
    emb, labels = torch.randn(8, E) * 20, torch.randint(0, C, (8,))
    rows = torch.arange(8)
    norms = emb.norm(dim=1)
    got = head.margin_logits(head.cosine_to(emb, head.weight, getattr(head, "bias", None)), rows, labels, norms) * head.s
    torch.testing.assert_close(got.float(), head.logits(emb, labels).float(), rtol=0, atol=0)
    assert tuple(head.weight.shape) == tuple(head.centre_shape(C))
    assert tuple(head.init_rows(head.centre_shape(C)).shape) == tuple(head.weight.shape)
    assert (head.regularizer(norms) is None) == (kind != "magface")


@pytest.mark.parametrize("kind, params, expected", [
    ("softmax", {}, {}),
    ("arcface", {"s": 30, "m": 0.3}, {"s": 30.0, "m": 0.3}),
    ("cosface", {"m": 0.35}, {"s": 64.0, "m": 0.35}),
    ("combined", {"m2": 0.3, "m3": 0.2}, {"s": 64.0, "m1": 1.0, "m2": 0.3, "m3": 0.2}),
    ("curricularface", {"t_alpha": 0.05}, {"s": 64.0, "m": 0.5, "t_alpha": 0.05}),
    ("subcenter", {"base": "cosface"}, {"s": 64.0, "m": 0.4, "k": 3, "base": "cosface"}),
])
def test_hparams_are_the_arguments_that_rebuild_the_head(kind, params, expected):
    head = create_head(kind, 8, 4, **params)
    assert head.hparams() == expected
    assert create_head(kind, 8, 4, **head.hparams()).hparams() == expected
