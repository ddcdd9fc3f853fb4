"""AdaFace, MagFace, sub-center ArcFace and CurricularFace against naive per-sample formulas.

The naive versions are written from the papers' equations with Python's math module, sample by
sample, including each method's special cases (clipping, theta + m > pi, the EMA updates).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from irface.heads import PartialFC, create_head, dominant_centres, head_param_names
from test_heads import arcface_target, make_inputs
from test_partial_fc import ADAPTIVE_KINDS

E, C = 6, 5


def _norm(v):
    return math.sqrt(sum(a * a for a in v))


def _cos(x, w):
    return max(-1.0, min(1.0, sum(a * b for a, b in zip(x, w)) / (_norm(x) * _norm(w))))


def _ce(logits, y):
    mx = max(logits)
    return mx + math.log(sum(math.exp(v - mx) for v in logits)) - logits[y]


def _with_weight(kind, weight, **params):
    head = create_head(kind, embedding_size=E, num_classes=C, **params).double()
    with torch.no_grad():
        head.weight.copy_(weight)
    return head


def _scaled_inputs(scales):
    """make_inputs with each embedding rescaled to a chosen norm (the quality signal)."""
    emb, weight, labels = make_inputs()
    emb = F.normalize(emb) * torch.tensor(scales, dtype=torch.float64)[:, None]
    return emb, weight, labels


# --- AdaFace -------------------------------------------------------------------------------------
def naive_adaface(emb, weight, labels, mean0, std0, s=64.0, m=0.4, h=0.333, alpha=0.01):
    """Kim et al. 2022, eq. 10-12 with the reference's clipping: returns the loss and the new EMA."""
    eps = 1e-3
    norms = [min(100.0, max(0.001, _norm(x))) for x in emb.tolist()]
    mu = sum(norms) / len(norms)
    sd = math.sqrt(sum((a - mu) ** 2 for a in norms) / (len(norms) - 1))
    mean, std = alpha * mu + (1 - alpha) * mean0, alpha * sd + (1 - alpha) * std0
    total = 0.0
    for x, y, n in zip(emb.tolist(), labels.tolist(), norms):
        z = max(-1.0, min(1.0, (n - mean) / (std + eps) * h))
        logits = []
        for j, w in enumerate(weight.tolist()):
            c = max(-1 + eps, min(1 - eps, _cos(x, w)))
            if j == y:
                angle = max(eps, min(math.pi - eps, math.acos(c) - m * z))  # g_angle = -m z
                c = math.cos(angle) - (m + m * z)  # g_add = m z + m
            logits.append(s * c)
        total += _ce(logits, y)
    return total / len(labels), mean, std


def test_adaface_equals_the_paper_formula_and_updates_its_ema():
    # Norms from 0.0005 (clipped up to 0.001) to 300 (clipped down to 100): z hits both clip ends.
    emb, weight, labels = _scaled_inputs([0.0005, 300.0, 22.0, 35.0, 8.0, 60.0, 25.0, 18.0])
    head = _with_weight("adaface", weight, t_alpha=0.5, h=1.0)
    with torch.no_grad():
        head.batch_mean.fill_(30.0)
        head.batch_std.fill_(10.0)
    loss = head(emb, labels)
    expected, mean, std = naive_adaface(emb, weight, labels, 30.0, 10.0, h=1.0, alpha=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert head.batch_mean.item() == pytest.approx(mean, rel=1e-12)
    assert head.batch_std.item() == pytest.approx(std, rel=1e-12)
    # Both clips of z are exercised, and the angle clip at pi - eps: sample 0 (theta near pi, z = -1).
    z = (emb.norm(dim=1).clamp(0.001, 100) - mean) / (std + 1e-3)
    assert z.min() < -1 and z.max() > 1
    # A second batch continues from the EMA, not from the initial values.
    expected2, mean2, _ = naive_adaface(emb[2:], weight, labels[2:], mean, std, h=1.0, alpha=0.5)
    assert head(emb[2:], labels[2:]).item() == pytest.approx(expected2, rel=1e-9)
    assert head.batch_mean.item() == pytest.approx(mean2, rel=1e-12)


def test_adaface_defaults_are_the_papers():
    # A default head against the formula with the published values written out: h = 0.333 and
    # t_alpha = 0.01 (Kim et al. 2022; mk-minchul/AdaFace's scripts and config.py), m = 0.4, s = 64, and the
    # reference's starting statistics, mean 20 and std 100. Norms far from 20 give z of about +-0.25.
    emb, weight, labels = _scaled_inputs([95.0, 2.0, 60.0, 80.0, 5.0, 40.0, 99.0, 1.0])
    head = _with_weight("adaface", weight)
    loss = head(emb, labels)
    expected, mean, std = naive_adaface(emb, weight, labels, 20.0, 100.0, s=64.0, m=0.4, h=0.333, alpha=0.01)
    assert head.batch_mean.item() == pytest.approx(mean, rel=1e-12)
    assert head.batch_std.item() == pytest.approx(std, rel=1e-12)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_adaface_eval_mode_and_single_sample_batches_leave_the_statistics():
    emb, weight, labels = _scaled_inputs([20.0] * 8)
    head = _with_weight("adaface", weight)
    head.eval()
    head(emb, labels)
    assert head.batch_mean.item() == 20.0 and head.batch_std.item() == 100.0
    head.train()
    loss = head(emb[:1], labels[:1])
    assert torch.isfinite(loss) and head.batch_std.item() == 100.0
    assert head.batch_mean.item() == pytest.approx(20.0)
    # The margin sees no gradient through the norm (the reference detaches it), the angle does.
    x = emb.clone().requires_grad_(True)
    head(x, labels).backward()
    assert torch.isfinite(x.grad).all()
    radial = (x.grad * F.normalize(emb)).sum(1)
    assert radial.abs().max() < 1e-12  # the loss depends on the direction only


# --- MagFace -------------------------------------------------------------------------------------
def naive_magface(emb, weight, labels, s=64.0, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8, lam=35.0, easy=True):
    """Meng et al. 2021, eq. 3-5: m(a) linear in the clipped norm, g(a) = a / u_a^2 + 1 / a."""
    total = reg = 0.0
    for x, y in zip(emb.tolist(), labels.tolist()):
        a = min(u_a, max(l_a, _norm(x)))
        m = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m
        logits = []
        for j, w in enumerate(weight.tolist()):
            c = _cos(x, w)
            if j == y:
                if easy:
                    c = math.cos(math.acos(c) + m) if c > 0 else c
                else:
                    c = arcface_target(m)(c)
            logits.append(s * c)
        total += _ce(logits, y)
        reg += a / u_a ** 2 + 1 / a
    return total / len(labels) + lam * reg / len(labels)


@pytest.mark.parametrize("easy", [True, False])
def test_magface_equals_the_paper_formula(easy):
    # Norms below l_a, inside and above u_a: all three pieces of the clipped margin and regulariser.
    emb, weight, labels = _scaled_inputs([5.0, 150.0, 30.0, 60.0, 110.0, 10.0, 80.0, 45.0])
    head = _with_weight("magface", weight, easy_margin=easy)
    expected = naive_magface(emb, weight, labels, easy=easy)
    assert head(emb, labels).item() == pytest.approx(expected, rel=1e-9)
    if not easy:  # sample 0 is nearly opposite its centre: theta + m(a) > pi is taken
        assert math.acos(F.cosine_similarity(emb[0], weight[0], dim=0).item()) + 0.45 > math.pi
    # The norm gets a gradient inside [l_a, u_a] only, from the margin and the regulariser.
    x = emb.clone().requires_grad_(True)
    head(x, labels).backward()
    radial = (x.grad * F.normalize(emb)).sum(1)
    assert radial[:2].abs().max() < 1e-12 and (radial[2:4].abs() > 1e-3).all()
    torch.autograd.gradcheck(lambda t: head(t, labels[2:4]), (emb[2:4].clone().requires_grad_(True),), eps=1e-6, atol=1e-4)


def test_magface_regulariser_pulls_the_norm_up_to_its_minimum():
    # g(a) = a / u_a^2 + 1 / a is smallest at a = u_a: below it the gradient raises the norm.
    head = create_head("magface", E, C, lambda_g=1.0).double()
    norms = torch.tensor([20.0, 60.0], dtype=torch.float64, requires_grad=True)
    head.regularizer(norms).backward()
    assert (norms.grad < 0).all()


# --- sub-center ArcFace --------------------------------------------------------------------------
@pytest.mark.parametrize("base,m,target", [("arcface", 0.5, arcface_target(0.5)), ("cosface", 0.4, lambda c: c - 0.4)])
def test_subcenter_equals_the_max_over_subcentres_formula(base, m, target):
    k = 3
    emb, _, labels = make_inputs()
    g = torch.Generator().manual_seed(5)
    centres = torch.randn(C, k, E, generator=g, dtype=torch.float64)
    centres[0, 1] = -emb[0]  # the best sub-centre of sample 0 is nearly opposite: theta + m > pi
    centres[0, 0], centres[0, 2] = -emb[0] + 0.01, -emb[0] - 0.02
    head = create_head("subcenter", E, C, base=base, k=k).double()
    assert head.weight.shape == (C, k, E) and head.m == m
    with torch.no_grad():
        head.weight.copy_(centres)
    total = 0.0
    for x, y in zip(emb.tolist(), labels.tolist()):
        cos = [max(_cos(x, w) for w in sub) for sub in centres.tolist()]  # eq. 1: max over the k
        logits = [64.0 * (target(c) if j == y else c) for j, c in enumerate(cos)]
        total += _ce(logits, y)
    assert head(emb, labels).item() == pytest.approx(total / len(labels), rel=1e-9)


def test_subcenter_with_one_centre_is_arcface_exactly():
    emb, weight, labels = make_inputs()
    arc = _with_weight("arcface", weight)
    sub = create_head("subcenter", E, C, k=1).double()
    with torch.no_grad():
        sub.weight.copy_(weight[:, None])
    assert torch.equal(arc(emb, labels), sub(emb, labels))


def test_dominant_centres_keep_the_most_voted_subcentre_and_flag_far_samples():
    k = 3
    weight = torch.zeros(2, k, 4)
    weight[0, 0, 0] = weight[0, 1, 1] = weight[0, 2, 2] = 1.0  # class 0: three orthogonal sub-centres
    weight[1, :, 3] = 1.0
    emb = torch.tensor([[1.0, 0.1, 0, 0], [0.1, 1.0, 0, 0], [0, 1.0, 0.1, 0], [0, 0.9, 0, 0.1],  # 3 votes for 1
                        [0, 0, 0, 1.0], [0, 0, -1.0, 0.2]])
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    centres, keep = dominant_centres(weight, emb, labels)
    assert torch.equal(centres[0], weight[0, 1]) and torch.equal(centres[1], weight[1, 0])
    # Sample 0 lies 84 degrees from the dominant centre, sample 5 79 degrees from its class's.
    assert keep.tolist() == [False, True, True, True, True, False]


# --- CurricularFace ------------------------------------------------------------------------------
def naive_curricular(emb, weight, labels, t0, s=64.0, m=0.5, alpha=0.01):
    """Huang et al. 2020, eq. 7-9 and the t update (eq. 10), as the reference orders them."""
    cos = [[_cos(x, w) for w in weight.tolist()] for x in emb.tolist()]
    targets = [row[y] for row, y in zip(cos, labels.tolist())]
    t = alpha * sum(targets) / len(targets) + (1 - alpha) * t0  # updated before use
    total = 0.0
    for row, y in zip(cos, labels.tolist()):
        theta_m = math.cos(math.acos(row[y]) + m)  # the hardness threshold, cos(theta_y + m)
        logits = []
        for j, c in enumerate(row):
            if j == y:
                c = arcface_target(m)(c)
            elif c > theta_m:
                c = c * (t + c)  # a hard negative: N(t, cos) = cos (t + cos)
            logits.append(s * c)
        total += _ce(logits, y)
    return total / len(labels), t


def test_curricularface_equals_the_paper_formula_and_updates_t():
    emb, weight, labels = make_inputs()
    head = _with_weight("curricularface", weight, t_alpha=0.3)
    loss = head(emb, labels)
    expected, t = naive_curricular(emb, weight, labels, 0.0, alpha=0.3)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert head.t.item() == pytest.approx(t, rel=1e-12)
    expected, t = naive_curricular(emb, weight, labels, t, alpha=0.3)
    assert head(emb, labels).item() == pytest.approx(expected, rel=1e-9)
    assert head.t.item() == pytest.approx(t, rel=1e-12)
    # Hard negatives exist in this batch, so t really enters the loss.
    cos = F.normalize(emb) @ F.normalize(weight).T
    target = cos[torch.arange(len(labels)), labels]
    hard = cos > torch.cos(torch.acos(target) + 0.5)[:, None]
    hard[torch.arange(len(labels)), labels] = False
    assert hard.any()
    head.eval()
    head(emb, labels)
    assert head.t.item() == pytest.approx(t, rel=1e-12)  # evaluation leaves t alone


# --- all of them ---------------------------------------------------------------------------------
NEW = ADAPTIVE_KINDS  # two gloo ranks: tests/test_partial_fc.py runs these too


@pytest.mark.parametrize("kind,params", NEW)
def test_partial_fc_sampling_trains_every_new_head(kind, params):
    torch.manual_seed(0)
    pfc = PartialFC(kind, 8, 40, params, sample_rate=0.25, seed=3)
    x = torch.randn(6, 8) * 5
    y = torch.tensor([1, 5, 5, 9, 30, 39])
    opt = torch.optim.SGD(pfc.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    before = pfc.weight.detach().clone()
    pfc(x, y).backward()
    touched = pfc._touched.clone()
    assert touched.sum() == 10 and touched[y].all()
    with pfc.restrict_update(opt):
        opt.step()
    assert torch.equal(pfc.weight.detach()[~touched], before[~touched])
    assert not torch.equal(pfc.weight.detach()[touched], before[touched])


def test_buffers_round_trip_through_the_full_state_and_follow_the_module():
    pfc = PartialFC("adaface", 8, 11, {"t_alpha": 0.5})
    pfc(torch.randn(6, 8) * 5, torch.tensor([0, 1, 2, 3, 4, 5]))
    state = pfc.full_state_dict()
    assert state["batch_mean"].item() != 20.0
    other = PartialFC("adaface", 8, 11, {"t_alpha": 0.5}, rank=1, world_size=2)
    other.load_full_state_dict(state)
    assert torch.equal(other.full_state_dict()["batch_std"], state["batch_std"])
    assert other.to(torch.float64).margin.batch_mean.dtype == torch.float64
    with pytest.raises(ValueError, match="batch_mean"):
        other.load_full_state_dict({"weight": state["weight"]})


def test_create_head_names_unknown_parameters():
    assert head_param_names("adaface") == ["s", "m", "h", "t_alpha"]
    with pytest.raises(ValueError, match="magface takes no parameter m; its parameters: s, l_a"):
        create_head("magface", E, C, m=0.5)
    with pytest.raises(ValueError, match="base must be arcface or cosface"):
        create_head("subcenter", E, C, base="sphereface")

