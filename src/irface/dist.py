"""Distributed helpers that make one process look like a world of one.

Rank, world size and local rank come from the environment torchrun sets (RANK, WORLD_SIZE,
LOCAL_RANK). Without it nothing is initialised and every collective is a no-op, so callers never
branch on "am I distributed?".
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(device: torch.device, timeout_s: float = 1800) -> None:
    """Join the process group torchrun describes; does nothing in a single process.

    The backend follows the device: NCCL on CUDA, gloo on CPU.
    """
    if is_initialized() or int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {}
    if device.type == "cuda":
        # One GPU per process: collectives and all_gather_object use this device.
        torch.cuda.set_device(device)
        kwargs = {"device_id": device}
    timeout = timedelta(seconds=timeout_s)
    from torch.distributed.rendezvous import rendezvous

    store, rank, world_size = next(rendezvous("env://", timeout=timeout))
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is not None and int(os.environ.get("GROUP_WORLD_SIZE", 1)) == 1:
        # torchrun's store outlives a restart and still holds the dead workers' addresses; a fast
        # new rank can read one and fail to connect. On one machine every worker of an attempt
        # shares the restart count, so a prefix per attempt keeps the attempts apart.
        store = dist.PrefixStore(f"irface/attempt-{restart}", store)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout, **kwargs)


def destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()


def leave(code: int) -> NoReturn:
    """End this torchrun worker now, its output flushed, skipping the interpreter's teardown. There the
    gloo threads of the process group (still owned by the DDP model after `destroy`) could abort the
    process ("terminate called without an active exception", exit -6, no Python frame left) after a run
    that had finished and saved everything, and torchrun then failed the job: twice in 57 runs of
    tests/test_engine_dist.py's restart test with the CPUs busy, none in 24 runs since."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum, max, min or mean); returns the tensor."""
    if not is_initialized():
        return tensor
    if op == "mean":
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= get_world_size()
        return tensor
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    dist.all_reduce(tensor, op=ops[op])
    return tensor


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    if is_initialized():
        dist.broadcast(tensor, src)
    return tensor


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equally-shaped tensors from every rank along dim 0 (no gradient)."""
    if not is_initialized():
        return tensor
    out = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(out, tensor.contiguous())
    return torch.cat(out)


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.batch = tensor.shape[0]
        ctx.rank = dist.get_rank()
        return all_gather(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank's loss depends on every rank's embeddings: sum the gradients, keep our slice.
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.batch:(ctx.rank + 1) * ctx.batch]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather whose backward routes the summed gradient back to each rank's slice."""
    if not is_initialized():
        return tensor
    return _AllGatherWithGrad.apply(tensor)


def all_gather_object(obj):
    """Gather any picklable object from every rank into a list (a one-element list in one process)."""
    if not is_initialized():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_rows(tensor: torch.Tensor, sizes: list[int], dst: int = 0) -> torch.Tensor | None:
    """Concatenate row-shards of unequal length (rank r holds `sizes[r]` rows) on rank `dst` only.

    Returns the whole tensor on `dst` and None elsewhere; in one process it returns `tensor`. Every
    rank must call it (it is a collective). Shards are padded to the longest for the transfer.
    """
    if not is_initialized():
        return tensor
    rank, longest = get_rank(), max(sizes)
    if tensor.shape[0] != sizes[rank]:
        raise ValueError(f"rank {rank} holds {tensor.shape[0]} rows, expected {sizes[rank]}")
    padded = tensor.new_zeros((longest,) + tuple(tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    out = [torch.empty_like(padded) for _ in sizes] if rank == dst else None
    dist.gather(padded, out, dst=dst)
    if rank != dst or out is None:
        return None
    return torch.cat([part[:n] for part, n in zip(out, sizes)])


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when `flag` is true on at least one (e.g. a stop request)."""
    if not is_initialized():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
