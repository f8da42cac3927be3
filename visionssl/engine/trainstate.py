"""The trainer's checkpoints: its state as a dict, ``checkpoints/last.pt`` written atomically, and resume.

``Checkpointing`` is a mixin of ``visionssl.engine.Trainer``; it uses the trainer's ``config``, ``out``,
``method``, ``optimizer``, ``scaler``, ``epoch``, ``step``, ``batch_in_epoch``, ``metrics``,
``skipped_steps``, ``rank``, ``world_size``, ``device`` and ``_assert_finite_state`` (from ``Guards``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from visionssl import distributed
from visionssl.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    LAST,
    CheckpointError,
    atomic_save,
    load_checkpoint,
)
from visionssl.engine.config import ConfigError, to_dict
from visionssl.engine.runtime import rng_state, seed_everything, set_rng_state

logger = logging.getLogger("visionssl.engine.trainer")


class Checkpointing:
    """``checkpoint_path``, ``state_dict``, ``save_checkpoint`` and ``resume`` for the Trainer."""

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out / "checkpoints" / LAST if self.out else None

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "config": to_dict(self.config),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "rng": rng_state(),
            "metrics": dict(self.metrics),
            "skipped_steps": self.skipped_steps,
        }

    def save_checkpoint(self) -> Path | None:
        """Writes ``checkpoints/last.pt`` atomically (no-op without a run directory).

        A state holding NaN/inf is never written: the last good checkpoint is kept.
        """
        if self.checkpoint_path is None:
            return None
        distributed.sync_buffers(self.method)  # every rank holds what the file will hold
        self._assert_finite_state()
        state = self.state_dict()
        if distributed.is_distributed():  # every rank's RNG state: a resumed rank draws what it would have drawn
            state["rng_per_rank"] = distributed.all_gather_object(state["rng"])
        error = None
        if distributed.is_main():  # rank 0 alone writes; the others wait for it to succeed or fail
            try:
                atomic_save(state, self.checkpoint_path)
            except Exception as exc:  # noqa: BLE001  (re-raised below, after telling the other ranks)
                error = exc
        if distributed.any_rank(error is not None):
            if error is not None:
                raise error
            raise CheckpointError(f"rank 0 could not write the checkpoint {self.checkpoint_path}; see its log")
        return self.checkpoint_path

    def resume(self) -> None:
        """Restores model, optimizer, scaler, progress and RNG state from the run directory."""
        if self.checkpoint_path is None:
            raise ConfigError("resume needs a run directory (--out)")
        if not self.checkpoint_path.is_file():
            raise ConfigError(f"nothing to resume: {self.checkpoint_path} does not exist")
        ckpt = load_checkpoint(self.checkpoint_path, map_location=self.device)
        try:
            self.method.load_state_dict(ckpt["method"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scaler.load_state_dict(ckpt["scaler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"cannot resume from {self.checkpoint_path}: it does not match this run's "
                f"method/backbone/optimizer ({detail})"
            ) from None
        self.epoch, self.step, self.batch_in_epoch = ckpt["epoch"], ckpt["step"], ckpt.get("batch_in_epoch", 0)
        self.metrics = dict(ckpt.get("metrics", {}))
        self.skipped_steps = ckpt.get("skipped_steps", 0)
        per_rank = ckpt.get("rng_per_rank") or [ckpt["rng"]]
        if len(per_rank) == self.world_size:
            set_rng_state(per_rank[self.rank])
        else:  # another number of processes: same global batches and schedule, other augmentation draws
            logger.warning(
                "resuming on %d processes a run saved by %d: the batches and the schedule continue, the "
                "random augmentations differ",
                self.world_size,
                len(per_rank),
            )
            set_rng_state(per_rank[0])
            if self.rank:
                seed_everything(self.config.train.seed + 1_000_003 * self.step + self.rank)
        logger.info("resumed %s at epoch %d, step %d", self.checkpoint_path, self.epoch, self.step)
