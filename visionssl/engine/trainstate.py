"""The trainer's checkpoints: its state as a dict, ``checkpoints/last.pt`` written atomically, and resume.

``Checkpointer`` is a part of ``visionssl.engine.Trainer``, built with the run directory, the config, the
method, optimizer and GradScaler it saves; the progress (epoch, step, ...) is handed to it at each save
and handed back by ``resume``.

Example:
    >>> import tempfile, torch
    >>> from omegaconf import OmegaConf
    >>> net = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> ckpt = Checkpointer(tempfile.mkdtemp(), OmegaConf.create({"train": {"seed": 0}}), net, opt,
    ...                     torch.amp.GradScaler("cpu", enabled=False))
    >>> path = ckpt.save({"epoch": 1, "step": 4, "batch_in_epoch": 0, "metrics": {}, "skipped_steps": 0})
    >>> path.name, ckpt.resume()["step"]
    ('last.pt', 4)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from visionssl import distributed
from visionssl.engine.checkpoint import CHECKPOINT_FORMAT, LAST, CheckpointError, atomic_save, load_checkpoint
from visionssl.engine.config import ConfigError, to_dict
from visionssl.engine.guards import assert_finite_state
from visionssl.engine.runtime import rng_state, seed_everything, set_rng_state

logger = logging.getLogger("visionssl.engine.trainer")

PROGRESS = ("epoch", "step", "batch_in_epoch", "metrics", "skipped_steps")  # what the trainer hands over


class Checkpointer:
    """``path``, ``state_dict``, ``save`` and ``resume`` of one run.

    Args:
        run_dir: the run directory (None: no checkpoints; ``save`` does nothing, ``resume`` refuses).
        config: the resolved run config (saved in the checkpoint; ``train.seed`` reseeds a resumed rank).
        method, optimizer, scaler: what is saved and restored.
        device: where a resumed state is loaded. rank, world_size: this process in a data-parallel job.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike | None,
        config: DictConfig,
        method: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        *,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ):
        self.path = Path(run_dir) / "checkpoints" / LAST if run_dir else None
        self.config, self.method, self.optimizer, self.scaler = config, method, optimizer, scaler
        self.device, self.rank, self.world_size = device, rank, world_size

    def state_dict(self, progress: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint's dict (``visionssl.engine.checkpoint`` lists its keys) for the given progress."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "config": to_dict(self.config),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": progress["epoch"],
            "step": progress["step"],
            "batch_in_epoch": progress["batch_in_epoch"],
            "rng": rng_state(),
            "metrics": dict(progress["metrics"]),
            "skipped_steps": progress["skipped_steps"],
        }

    def save(self, progress: dict[str, Any]) -> Path | None:
        """Writes ``checkpoints/last.pt`` atomically (no-op without a run directory).

        A state holding NaN/inf is never written: the last good checkpoint is kept.
        """
        if self.path is None:
            return None
        distributed.sync_buffers(self.method)  # every rank holds what the file will hold
        assert_finite_state(self.method, progress["step"], self.path)
        state = self.state_dict(progress)
        if distributed.is_distributed():  # every rank's RNG state: a resumed rank draws what it would have drawn
            state["rng_per_rank"] = distributed.all_gather_object(state["rng"])
        error = None
        if distributed.is_main():  # rank 0 alone writes; the others wait for it to succeed or fail
            try:
                atomic_save(state, self.path)
            except Exception as exc:  # noqa: BLE001  (re-raised below, after telling the other ranks)
                error = exc
        if distributed.any_rank(error is not None):
            if error is not None:
                raise error
            raise CheckpointError(f"rank 0 could not write the checkpoint {self.path}; see its log")
        return self.path

    def resume(self) -> dict[str, Any]:
        """Restores model, optimizer, scaler and RNG state; returns the saved progress (``PROGRESS`` keys)."""
        if self.path is None:
            raise ConfigError("resume needs a run directory (--out)")
        if not self.path.is_file():
            raise ConfigError(f"nothing to resume: {self.path} does not exist")
        ckpt = load_checkpoint(self.path, map_location=self.device)
        try:
            self.method.load_state_dict(ckpt["method"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scaler.load_state_dict(ckpt["scaler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"cannot resume from {self.path}: it does not match this run's method/backbone/optimizer ({detail})"
            ) from None
        progress = {
            "epoch": ckpt["epoch"],
            "step": ckpt["step"],
            "batch_in_epoch": ckpt.get("batch_in_epoch", 0),
            "metrics": dict(ckpt.get("metrics", {})),
            "skipped_steps": ckpt.get("skipped_steps", 0),
        }
        self._restore_rng(ckpt, progress["step"])
        logger.info("resumed %s at epoch %d, step %d", self.path, progress["epoch"], progress["step"])
        return progress

    def _restore_rng(self, ckpt: dict[str, Any], step: int) -> None:
        per_rank = ckpt.get("rng_per_rank") or [ckpt["rng"]]
        if len(per_rank) == self.world_size:
            set_rng_state(per_rank[self.rank])
            return
        # another number of processes: same global batches and schedule, other augmentation draws
        logger.warning(
            "resuming on %d processes a run saved by %d: the batches and the schedule continue, the "
            "random augmentations differ",
            self.world_size,
            len(per_rank),
        )
        set_rng_state(per_rank[0])
        if self.rank:
            seed_everything(self.config.train.seed + 1_000_003 * step + self.rank)
