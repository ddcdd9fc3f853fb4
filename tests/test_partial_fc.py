"""Partial FC: the sharded head equals the plain head (one process exactly; two gloo ranks to float noise)."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from irface.heads import PartialFC, class_range, create_head, distributed_cross_entropy

E, C, N = 8, 11, 6
KINDS = [("arcface", {}), ("cosface", {"s": 30.0}), ("combined", {"m1": 1.2, "m2": 0.2, "m3": 0.1}), ("softmax", {})]
# The heads with norms, sub-centres or batch statistics (tests/test_heads_adaptive.py); MagFace's
# magnitude range fits these small embeddings.
ADAPTIVE_KINDS = [("adaface", {}), ("magface", {"l_a": 1.0, "u_a": 20.0}), ("subcenter", {"k": 3}),
                  ("subcenter", {"k": 2, "base": "cosface", "s": 30.0}), ("curricularface", {})]


def _batch(seed=0, n=N):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, E, generator=g), torch.tensor([0, C - 1, 3, 3, 7, 5, 10, 1][:n])


@pytest.mark.parametrize("kind,params", KINDS + ADAPTIVE_KINDS)
def test_one_process_rate_one_equals_the_plain_head_exactly(kind, params):
    head = create_head(kind, E, C, **params)
    pfc = PartialFC.from_head(head)
    for seed in range(2):  # the second step starts from the batch statistics the first left
        x, y = _batch(seed)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        la, lb = head(xa, y), pfc(xb, y)
        la.backward()
        lb.backward()
        assert torch.equal(la, lb)
        assert torch.equal(xa.grad, xb.grad)
        assert torch.equal(head.weight.grad, pfc.weight.grad)
        if kind == "softmax":
            assert torch.equal(head.bias.grad, pfc.bias.grad)
    state = pfc.full_state_dict()  # the plain head's state_dict, buffers included
    assert state.keys() == head.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in head.state_dict().items())


@pytest.mark.faults
def test_class_ranges_cover_every_class_once():
    for world in (1, 2, 3, 8):
        ranges = [class_range(85742, r, world) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == 85742
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert max(e - s for s, e in ranges) - min(e - s for s, e in ranges) <= 1


@pytest.mark.parametrize("kind", ["arcface", "softmax"])
def test_initial_centres_do_not_depend_on_the_world_size(kind):
    whole = PartialFC(kind, E, 9000, sample_rate=1.0, rank=0, world_size=1, seed=5)
    shards = [PartialFC(kind, E, 9000, rank=r, world_size=3, seed=5) for r in range(3)]
    assert torch.equal(torch.cat([s.weight for s in shards]), whole.weight)
    if kind == "softmax":
        assert torch.equal(torch.cat([s.bias for s in shards]), whole.bias)
    assert not torch.equal(PartialFC(kind, E, 9000, seed=6).weight, whole.weight)


def test_distributed_cross_entropy_in_one_process_is_cross_entropy():
    logits = torch.randn(N, C, dtype=torch.float64) * 10
    y = torch.randint(0, C, (N,))
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    la, lb = F.cross_entropy(a, y), distributed_cross_entropy(b, y)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(a.grad, b.grad)


def test_sampling_keeps_positives_and_only_sampled_rows_learn():
    torch.manual_seed(0)
    head = create_head("arcface", E, 40)
    pfc = PartialFC.from_head(head, sample_rate=0.25, seed=3)
    x, _ = _batch(n=6)
    y = torch.tensor([1, 5, 5, 9, 30, 39])
    opt = torch.optim.SGD(pfc.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    before = pfc.weight.detach().clone()
    loss = pfc(x, y)
    touched = pfc._touched.clone()
    assert touched.sum() == 10  # 25 % of 40
    assert touched[y].all()  # every positive centre is in
    # The loss is the plain head's over the sampled classes only.
    index = touched.nonzero().squeeze(1)
    sub = create_head("arcface", E, len(index))
    with torch.no_grad():
        sub.weight.copy_(before[index])
    remap = torch.full((40,), -1)
    remap[index] = torch.arange(len(index))
    torch.testing.assert_close(loss, sub(x, remap[y]))
    loss.backward()
    with pfc.restrict_update(opt):
        opt.step()
    after = pfc.weight.detach()
    assert torch.equal(after[~touched], before[~touched])  # no weight decay on unsampled rows
    assert not torch.equal(after[touched], before[touched])
    momentum = opt.state[pfc.weight]["momentum_buffer"]
    assert (momentum[~touched] == 0).all() and (momentum[touched] != 0).any()
    # A second step with other samples: the first step's rows keep their momentum while unsampled.
    opt.zero_grad()
    pfc(x, y).backward()
    touched2 = pfc._touched.clone()
    saved = momentum.clone()
    with pfc.restrict_update(opt):
        opt.step()
    assert torch.equal(momentum[~touched2], saved[~touched2])
    assert not pfc._touched.any()


def test_sampling_is_refused_for_softmax():
    with pytest.raises(ValueError, match="margin head"):
        PartialFC("softmax", E, C, sample_rate=0.5)


def test_full_state_carries_a_stateful_margins_buffers():
    """A stateful margin (AdaFace, CurricularFace) keeps running statistics in buffers: checkpoints carry them."""
    pfc = PartialFC("arcface", 8, 10, seed=1)
    pfc.margin.register_buffer("running_t", torch.tensor([0.25]))
    state = pfc.full_state_dict()
    # Under the buffer's own name, as in the plain head's state_dict (create_head(...).load_state_dict works).
    assert torch.equal(state["running_t"], torch.tensor([0.25]))
    other = PartialFC("arcface", 8, 10, seed=2)
    other.margin.register_buffer("running_t", torch.zeros(1))
    other.load_full_state_dict(state)
    assert torch.equal(other.margin.running_t, torch.tensor([0.25])) and torch.equal(other.weight, pfc.weight)


def test_full_state_round_trip_and_layout():
    pfc = PartialFC("arcface", E, C, {"s": 32.0, "m": 0.3}, rank=1, world_size=3)
    assert (pfc.start, pfc.end) == class_range(C, 1, 3)
    layout = pfc.layout()
    assert layout["world_size"] == 3 and layout["class_ranges"][1] == [pfc.start, pfc.end]
    whole = torch.randn(C, E)
    pfc.load_full_state_dict({"weight": whole})
    assert torch.equal(pfc.weight.detach(), whole[pfc.start:pfc.end])
    with pytest.raises(ValueError, match="shape"):
        pfc.load_full_state_dict({"weight": torch.randn(C + 1, E)})


# --- two gloo ranks -------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    import torch.distributed as dist

    from irface.engine.checkpoint import gather_sharded_optimizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for i, (kind, params) in enumerate(TWO_RANK_KINDS):
            torch.manual_seed(0)
            head = create_head(kind, E, C, **params)  # same weights on every rank
            x, y = _batch(n=8)
            pfc = PartialFC.from_head(head)
            local = x[rank * 4:(rank + 1) * 4].clone().requires_grad_(True)
            loss = pfc(local, y[rank * 4:(rank + 1) * 4])
            loss.backward()
            opt = torch.optim.SGD(pfc.parameters(), lr=0.1, momentum=0.9)
            opt.step()
            full = pfc.full_state_dict()
            state = gather_sharded_optimizer(opt, pfc.shard_sizes)
            torch.save({"loss": loss.detach(), "x_grad": local.grad, "w_grad": pfc.weight.grad,
                        "range": (pfc.start, pfc.end), "full": full, "opt": state,
                        "buffers": {k: v.clone() for k, v in pfc.margin.named_buffers()},
                        "b_grad": None if pfc.bias is None else pfc.bias.grad}, f"{out_dir}/{i}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


TWO_RANK_KINDS = [KINDS[0], KINDS[3]] + ADAPTIVE_KINDS


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("pfc2")
    # fork: the children start in milliseconds instead of importing torch again.
    mp.start_processes(_worker, args=(2, _free_port(), str(out)), nprocs=2, start_method="fork")
    return out


@pytest.mark.faults
@pytest.mark.parametrize("index", range(len(TWO_RANK_KINDS)), ids=[f"{k}-{i}" for i, (k, _) in enumerate(TWO_RANK_KINDS)])
def test_two_ranks_equal_the_plain_head_on_the_global_batch(two_rank_results, index):
    kind, params = TWO_RANK_KINDS[index]
    torch.manual_seed(0)
    head = create_head(kind, E, C, **params)
    x, y = _batch(n=8)
    x = x.clone().requires_grad_(True)
    loss = head(x, y)
    loss.backward()
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    opt.step()
    r = [torch.load(two_rank_results / f"{index}-rank{i}.pt", weights_only=True) for i in range(2)]
    for i in range(2):
        # Every rank reports the global loss (MagFace's regulariser counted once).
        torch.testing.assert_close(r[i]["loss"], loss.detach())
        for name, value in head.named_buffers():
            # AdaFace's and CurricularFace's statistics: the global batch's, the same on every rank.
            torch.testing.assert_close(r[i]["buffers"][name], value)
        start, end = r[i]["range"]
        # The all-reduced softmax sums in another order: float32 noise near 1e-5 on gradients of order 1.
        torch.testing.assert_close(r[i]["w_grad"], head.weight.grad[start:end], rtol=1e-4, atol=1e-4)
        if kind == "softmax":
            torch.testing.assert_close(r[i]["b_grad"], head.bias.grad[start:end])
    # Each rank gets the whole gradient of its own embeddings (not the regulariser's twice).
    torch.testing.assert_close(torch.cat([r[0]["x_grad"], r[1]["x_grad"]]), x.grad)
    # Gathered on rank 0: the whole head after the step, and its whole momentum.
    torch.testing.assert_close(r[0]["full"]["weight"], head.weight.detach())
    assert r[1]["full"] is None and r[1]["opt"] is None
    torch.testing.assert_close(r[0]["opt"]["state"][0]["momentum_buffer"], opt.state[head.weight]["momentum_buffer"],
                               rtol=1e-4, atol=1e-4)
