"""Data-parallel training on ``torch.distributed``: one process per GPU (NCCL) or per CPU worker (gloo).

``torchrun`` starts the processes and describes them in environment variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); ``init`` joins that process group. Every function
here also works in a single, non-distributed process, where it is a no-op (rank 0 of 1), so methods and
losses call them unconditionally and behave exactly as before when run on one device.

The collectives with gradients follow one rule, which makes a data-parallel step equal to a
single-process step on the global batch: each rank returns a loss ``L_r`` whose mean over the ranks is
the global loss, ``all_gather_with_grad`` sums the gradients of every rank's copy of a gathered slice
back onto the rank that owns it, and DistributedDataParallel averages the parameter gradients.

Example (one process: rank 0 of 1, the gathers return their input):
    >>> import torch
    >>> rank(), world_size(), is_main()
    (0, 1, True)
    >>> x = torch.randn(4, 8, requires_grad=True)
    >>> all_gather_with_grad(x) is x
    True
"""

from visionssl.distributed.collectives import (
    all_gather_no_grad,
    all_gather_object,
    all_gather_with_grad,
    all_reduce,
    any_rank,
    broadcast,
    broadcast_object,
    convert_sync_batchnorm,
    gather_rows,
    local_slice,
    max_over_ranks,
    shard_bounds,
    sync_buffers,
    wrap_ddp,
)
from visionssl.distributed.group import (
    barrier,
    init,
    is_distributed,
    is_main,
    local_rank,
    rank,
    shutdown,
    world_size,
)

__all__ = [
    "init",
    "shutdown",
    "is_distributed",
    "rank",
    "world_size",
    "local_rank",
    "is_main",
    "barrier",
    "all_gather_with_grad",
    "all_gather_no_grad",
    "all_reduce",
    "broadcast",
    "broadcast_object",
    "all_gather_object",
    "any_rank",
    "max_over_ranks",
    "local_slice",
    "shard_bounds",
    "gather_rows",
    "sync_buffers",
    "convert_sync_batchnorm",
    "wrap_ddp",
]
