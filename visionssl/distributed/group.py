"""The process group: joining the one ``torchrun`` describes, and where this process stands in it.

Every function also works in a single, non-distributed process (rank 0 of 1).

Example:
    >>> rank(), world_size(), is_main()
    (0, 1, True)
"""

from __future__ import annotations

import atexit
import logging
import os
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


_started_here = False  # init() created the process group (so shutdown() may destroy it)
_cpu_group: Any = None  # a gloo group for small host-side values when the default backend is NCCL


# ----------------------------------------------------------------------------- process group
def init(device: str | torch.device = "cpu", timeout_s: float | None = None) -> torch.device:
    """Joins the process group that ``torchrun`` describes, and returns this rank's device.

    Does nothing when the group already exists (started by the caller, e.g. with ``torch.multiprocessing``)
    or when the process was not started by torchrun. Under ``torchrun --nproc_per_node=1`` a group of one
    process is joined, so that every collective really runs (a cheap check of a cluster setup). The backend is NCCL
    for a CUDA ``device`` and gloo otherwise; on CUDA each rank uses ``cuda:LOCAL_RANK``.

    Args:
        device: the device asked for (``"cpu"``, ``"cuda"``, a ``torch.device``); on CUDA under several
            processes its index is replaced by ``LOCAL_RANK``.
        timeout_s: collective timeout (default: torch's).

    Example:
        >>> init("cpu")  # a plain process: nothing to join
        device(type='cpu')
    """
    global _started_here
    device = torch.device(device)
    if not dist.is_available():
        return device
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1 and missing:
        raise RuntimeError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: "
            "start the processes with torchrun (see docs/distributed.md)"
        )
    if not dist.is_initialized() and not missing:  # started by torchrun (even --nproc_per_node=1)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(_rank_device(device))
        kwargs = {"timeout": _timedelta(timeout_s)} if timeout_s else {}
        dist.init_process_group(backend, **kwargs)
        _started_here = True
        atexit.register(shutdown)
        logger.info("rank %d of %d joined the process group (%s)", rank(), world_size(), backend)
    if is_distributed() and device.type == "cuda":
        device = _rank_device(device)
        torch.cuda.set_device(device)
    return device


def shutdown() -> None:
    """Destroys the process group if ``init`` created it (a no-op otherwise)."""
    global _started_here, _cpu_group
    if _started_here and dist.is_initialized():
        dist.destroy_process_group()
    _started_here, _cpu_group = False, None


def is_distributed() -> bool:
    """True when a process group is running (even of one process: its collectives then run for real)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """The rank within this node (``LOCAL_RANK`` set by torchrun; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on rank 0, the process that writes logs, TensorBoard events and checkpoints."""
    return rank() == 0


def barrier() -> None:
    """Waits for every rank (a no-op when not distributed)."""
    if is_distributed():
        dist.barrier(group=host_group())


# ----------------------------------------------------------------------------- internals
def host_group() -> Any:
    """The group for small host-side exchanges: the default one under gloo, a gloo group under NCCL
    (created on first use, which every rank reaches at the same point since it is a collective)."""
    global _cpu_group
    if dist.get_backend() == "gloo":
        return None
    if _cpu_group is None:
        _cpu_group = dist.new_group(backend="gloo")
    return _cpu_group


def comm_device() -> torch.device:
    """The device collectives run on: this rank's GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _rank_device(device: torch.device) -> torch.device:
    index = local_rank()
    count = torch.cuda.device_count()
    if index >= count:
        raise RuntimeError(
            f"LOCAL_RANK={index} but only {count} GPU(s) are visible: start at most {count} "
            "processes per node (torchrun --nproc_per_node)"
        )
    if device.index is not None and device.index != index and world_size() > 1:
        logger.warning("device %s ignored under torchrun: rank %d uses cuda:%d (LOCAL_RANK)", device, rank(), index)
    return torch.device("cuda", index)


def _timedelta(seconds: float):  # noqa: ANN202
    from datetime import timedelta

    return timedelta(seconds=seconds)
