"""Collectives on tensors and modules; each is a no-op (or returns its input) in a single process.

Example:
    >>> import torch
    >>> x = torch.randn(4, 8, requires_grad=True)
    >>> all_gather_with_grad(x) is x
    True
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from visionssl.distributed.group import (
    comm_device,
    host_group,
    is_distributed,
    rank,
    world_size,
)


# ----------------------------------------------------------------------------- tensors
class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: the ranks' tensors concatenated along dim 0. Backward: the gradients of every rank's
    copy of the result are summed (all-reduce) and each rank keeps the slice of its own input."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.rows = x.shape[0]
        return _all_gather(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()  # all_reduce works in place; autograd may share this buffer
        dist.all_reduce(grad)
        return grad.narrow(0, rank() * ctx.rows, ctx.rows)


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` (same shape on every rank) concatenated along dim 0 in rank order, differentiable.

    The gradient that reaches rank r's ``x`` is the sum, over all ranks, of the gradients of their
    losses with respect to rank r's slice: the negatives of SimCLR or the global-batch statistics of
    VICReg then train every rank's encoder as one large batch would (LightlySSL's ``GatherLayer``;
    solo-learn's copies only the local gradient, which loses the other ranks' terms). Returns ``x``
    itself when not distributed.

    Example:
        >>> x = torch.randn(3, 2, requires_grad=True)
        >>> all_gather_with_grad(x).sum().backward(); x.grad.tolist() == torch.ones(3, 2).tolist()
        True
    """
    if not is_distributed():
        return x
    return _AllGatherWithGrad.apply(x)


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated along dim 0 in rank order, detached (e.g. MoCo's keys).

    Example:
        >>> all_gather_no_grad(torch.arange(3)).tolist()
        [0, 1, 2]
    """
    if not is_distributed():
        return x.detach()
    return _all_gather(x.detach())


def all_reduce(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place ``sum``, ``mean`` or ``max`` of ``x`` over the ranks (no gradient); returns ``x``.

    Example:
        >>> all_reduce(torch.tensor([1.0, 2.0]), "mean").tolist()
        [1.0, 2.0]
    """
    ops = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
    if op not in ops:
        raise ValueError(f"op must be one of {', '.join(ops)}, got {op!r}")
    if is_distributed():
        with torch.no_grad(), _on_comm_device(x) as y:
            dist.all_reduce(y, ops[op])
            if op == "mean":
                y.div_(world_size())
    return x


def broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrites ``x`` in place with rank ``src``'s ``x`` (same shape and dtype everywhere); returns it.

    ``x`` may live on the CPU or the GPU whatever the backend.

    Example:
        >>> broadcast(torch.tensor([5])).tolist()
        [5]
    """
    if is_distributed():
        with torch.no_grad(), _on_comm_device(x) as y:
            dist.broadcast(y, src)
    return x


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (e.g. a dict of metrics).

    Example:
        >>> broadcast_object({"top1": 91.5})
        {'top1': 91.5}
    """
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src, group=host_group())
    return holder[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order (e.g. the RNG states a checkpoint keeps per rank).

    Example:
        >>> all_gather_object("state")
        ['state']
    """
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj, group=host_group())
    return out


def max_over_ranks(value: int) -> int:
    """The largest ``value`` over the ranks, exchanged on the host (no GPU synchronisation).

    Example:
        >>> max_over_ranks(3)
        3
    """
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.long)
    dist.all_reduce(t, dist.ReduceOp.MAX, group=host_group())
    return int(t)


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (a stop request, a skipped step).

    Example:
        >>> any_rank(False), any_rank(True)
        (False, True)
    """
    return bool(max_over_ranks(int(flag)))


def local_slice(x: torch.Tensor) -> torch.Tensor:
    """This rank's block of a tensor gathered in rank order (the inverse of the gathers above).

    Example:
        >>> local_slice(torch.arange(4)).tolist()
        [0, 1, 2, 3]
    """
    if world_size() == 1:
        return x
    rows = x.shape[0] // world_size()
    return x.narrow(0, rank() * rows, rows)


def shard_bounds(n: int, rank_: int | None = None, world_size_: int | None = None) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank_``'s contiguous block of ``n`` items; sizes differ by at most 1.

    Example:
        >>> [shard_bounds(10, r, 3) for r in range(3)]
        [(0, 4), (4, 7), (7, 10)]
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world_size_ is None else world_size_
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return start, start + base + (r < extra)


def gather_rows(
    local: torch.Tensor, total: int, dst: int | None = None, chunk_rows: int = 65536
) -> torch.Tensor | None:
    """Concatenates the ranks' blocks of ``shard_bounds(total)`` rows into the full (total, ...) tensor.

    The result is on the CPU (``local`` itself, wherever it is, when not distributed).

    The blocks travel ``chunk_rows`` at a time (on the GPU under NCCL), so device memory stays bounded
    whatever ``total``. With ``dst`` only that rank receives the result (the others get None and never
    hold more than one chunk); with ``dst=None`` every rank does.

    Example:
        >>> gather_rows(torch.ones(5, 2), 5).shape
        torch.Size([5, 2])
    """
    start, stop = shard_bounds(total)
    if local.shape[0] != stop - start:
        raise ValueError(f"rank {rank()} holds {local.shape[0]} rows, but its block of {total} is rows {start}:{stop}")
    if not is_distributed():
        return local
    device = comm_device()
    w, block = world_size(), -(-total // world_size())
    bounds = [shard_bounds(total, r, w) for r in range(w)]
    keep = dst is None or rank() == dst
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype) if keep else None
    for offset in range(0, block, chunk_rows):
        rows = min(chunk_rows, block - offset)
        piece = torch.zeros((rows, *local.shape[1:]), dtype=local.dtype, device=device)
        mine = local[offset : offset + rows]
        piece[: len(mine)] = mine.to(device)
        gathered = _all_gather(piece).cpu()
        if out is not None:
            for r, (s, e) in enumerate(bounds):
                n = max(0, min(rows, e - s - offset))
                out[s + offset : s + offset + n] = gathered[r * rows : r * rows + n]
    return out


@torch.no_grad()
def sync_buffers(module: nn.Module, src: int = 0) -> None:
    """Copies rank ``src``'s buffers (BatchNorm running statistics, queues) to every rank.

    The trainer calls it at the end of each epoch and before a checkpoint: DDP is built with
    ``broadcast_buffers=False`` (no per-step broadcast of large buffers such as MoCo's queue, which is
    identical on every rank by construction), so BatchNorm running statistics drift apart during an epoch.
    """
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src)


# ----------------------------------------------------------------------------- modules
def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replaces every BatchNorm layer by ``torch.nn.SyncBatchNorm`` (statistics over the global batch).

    torch's SyncBatchNorm runs on GPUs only; on one process it behaves as plain BatchNorm.

    Example:
        >>> m = convert_sync_batchnorm(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)))
        >>> type(m[1]).__name__
        'SyncBatchNorm'
    """
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def wrap_ddp(module: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` when distributed (itself otherwise).

    DDP averages the gradients over the ranks during ``backward``. Buffers are not broadcast at each
    forward pass (see ``sync_buffers``). Hooks such as ``on_step_end`` must be called on ``module``,
    not on the wrapper.

    Example:
        >>> m = torch.nn.Linear(2, 2)
        >>> wrap_ddp(m, torch.device("cpu")) is m
        True
    """
    if not is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # buffers: rank 0's copied once here, then no broadcast before each forward pass
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    no_forward_sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
    return DistributedDataParallel(
        module, device_ids=ids, find_unused_parameters=find_unused_parameters, **no_forward_sync
    )


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    if dist.get_backend() == "nccl":  # straight into one buffer
        out = torch.empty((world_size() * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
        dist.all_gather_into_tensor(out, x)
        return out
    parts = [torch.empty_like(x) for _ in range(world_size())]  # gloo: all torch versions
    dist.all_gather(parts, x)
    return torch.cat(parts)


@contextmanager
def _on_comm_device(x: torch.Tensor) -> Iterator[torch.Tensor]:
    """``x`` itself, or under NCCL a GPU copy of a CPU ``x`` whose result is copied back into ``x``."""
    device = comm_device()
    if x.device.type == device.type:
        yield x
    else:
        y = x.to(device)
        yield y
        x.copy_(y)
