"""The run directory's logs: config.yaml, metrics.jsonl, TensorBoard events, the progress bar.

``RunLog`` is a mixin of ``visionssl.engine.Trainer``; it uses the trainer's ``config``, ``out``,
``step``, ``epoch``, ``batch_in_epoch``, ``steps_per_epoch`` and ``checkpoint_path``.
"""

from __future__ import annotations

import json
import os

import torch
from omegaconf import OmegaConf

from visionssl import distributed
from visionssl.engine.checkpoint import atomic_write_text, remove_stale_temp_files
from visionssl.files import open_no_follow


class RunLog:
    """Scalars to metrics.jsonl and TensorBoard (rank 0 only), and the run directory they live in."""

    def log_scalars(self, scalars: dict[str, float], step: int | None = None) -> None:
        """Records scalars in metrics.jsonl and TensorBoard (and in ``self.metrics``)."""
        if not scalars:
            return
        step = self.step if step is None else step
        self.metrics.update(scalars)
        if self._metrics_file is not None:
            epoch = self.epoch + self.batch_in_epoch / self.steps_per_epoch  # epochs completed, fractional mid-epoch
            self._metrics_file.write(json.dumps({"step": step, "epoch": round(epoch, 4), **scalars}) + "\n")
            self._metrics_file.flush()
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, step)

    def _extra_scalars(self, out: dict[str, torch.Tensor]) -> dict[str, float]:
        scalars = {
            k: float(v) for k, v in out.items() if k not in ("loss", "embedding") and torch.is_tensor(v) and v.ndim == 0
        }
        emb = out.get("embedding")
        if emb is not None and bool(torch.isfinite(emb).all()):  # a skipped step's embedding may be NaN
            from visionssl.engine.monitor import effective_rank, embedding_std

            scalars["collapse/embedding_std"] = float(embedding_std(emb))
            scalars["collapse/effective_rank"] = float(effective_rank(emb))
        return scalars

    def _progress_bar(self):
        if not self.config.train.progress or not distributed.is_main():
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.steps_per_epoch,
            initial=self.batch_in_epoch,
            desc=f"epoch {self.epoch + 1}/{self.config.train.epochs}",
            unit="step",
            leave=False,
            dynamic_ncols=True,
        )

    def _open_run_dir(self) -> None:
        if self.out is None or not distributed.is_main():  # rank 0 alone writes the run directory
            return
        self.out.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.checkpoint_path)  # left by a run killed while saving
        atomic_write_text(OmegaConf.to_yaml(self.config), self.out / "config.yaml")  # --resume reads it
        from visionssl.backbones.trust import is_code_spec, record_trust

        if is_code_spec(str(self.config.backbone.name)):  # whoever built this Trainer vouched for that code
            record_trust(self.out, str(self.config.backbone.name), OmegaConf.to_container(self.config.backbone.kwargs))
        fd = open_no_follow(self.out / "metrics.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self._metrics_file = os.fdopen(fd, "a", encoding="utf-8")
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.step or None)

    def _close_run_dir(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
