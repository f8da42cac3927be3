"""The run directory's logs: config.yaml, metrics.jsonl, TensorBoard events, the progress bar.

``RunLog`` is a part of ``visionssl.engine.Trainer``, built with the config and the run directory;
it writes on rank 0 only, between ``open`` and ``close``.

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> from omegaconf import OmegaConf
    >>> out = Path(tempfile.mkdtemp())
    >>> log = RunLog(OmegaConf.create({"backbone": {"name": "resnet18", "kwargs": {}}}), out)
    >>> log.open(step=0)
    >>> log.write({"train/loss": 1.5}, step=1, epoch=0.5)
    >>> log.close()
    >>> json.loads((out / "metrics.jsonl").read_text())
    {'step': 1, 'epoch': 0.5, 'train/loss': 1.5}
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from visionssl import distributed
from visionssl.engine.checkpoint import LAST, atomic_write_text, remove_stale_temp_files
from visionssl.files import open_no_follow


class RunLog:
    """Scalars to metrics.jsonl and TensorBoard (rank 0 only), and the run directory they live in.

    Args:
        config: the resolved run config (written to config.yaml).
        run_dir: the run directory (None: nothing is written).
    """

    def __init__(self, config: DictConfig, run_dir: str | os.PathLike | None):
        self.config = config
        self.run_dir = Path(run_dir) if run_dir else None
        self._writer = None
        self._metrics_file = None

    def open(self, step: int, init: dict[str, Any] | None = None) -> None:
        """Writes config.yaml (and the trust record of a code backbone) and opens the logs (rank 0 only).

        ``init``: where the backbone's starting weights came from (``backbone.init``), TensorBoard text
        ``backbone/init`` (config.yaml holds the spec and its sha256).
        """
        if self.run_dir is None or not distributed.is_main():  # rank 0 alone writes the run directory
            return
        out = self.run_dir
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(out / "checkpoints" / LAST)  # left by a run killed while saving
        atomic_write_text(OmegaConf.to_yaml(self.config), out / "config.yaml")  # --resume reads it
        from visionssl.backbones.trust import is_code_spec, record_trust

        backbone = self.config.backbone
        if is_code_spec(str(backbone.name)):  # whoever built this Trainer vouched for that code
            record_trust(out, str(backbone.name), OmegaConf.to_container(backbone.kwargs))
        fd = open_no_follow(out / "metrics.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self._metrics_file = os.fdopen(fd, "a", encoding="utf-8")
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(out / "tensorboard"), purge_step=step or None)
        if init is not None:  # JSON as a Markdown code block
            self._writer.add_text("backbone/init", "    " + json.dumps(init, indent=2).replace("\n", "\n    "), step)

    def write(self, scalars: dict[str, float], step: int, epoch: float) -> None:
        """One line of metrics.jsonl (``epoch``: completed epochs, fractional mid-epoch) and the TensorBoard points."""
        if self._metrics_file is not None:
            self._metrics_file.write(json.dumps({"step": step, "epoch": round(epoch, 4), **scalars}) + "\n")
            self._metrics_file.flush()
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def step_scalars(out: dict[str, torch.Tensor]) -> dict[str, float]:
    """The method's own 0-d outputs, and the collapse statistics of its ``embedding``.

    Example:
        >>> sorted(step_scalars({"loss": torch.tensor(1.0), "acc": torch.tensor(0.5), "embedding": torch.eye(4)}))
        ['acc', 'collapse/effective_rank', 'collapse/embedding_std']
    """
    scalars = {
        k: float(v) for k, v in out.items() if k not in ("loss", "embedding") and torch.is_tensor(v) and v.ndim == 0
    }
    emb = out.get("embedding")
    if emb is not None and bool(torch.isfinite(emb).all()):  # a skipped step's embedding may be NaN
        from visionssl.engine.monitor import effective_rank, embedding_std

        scalars["collapse/embedding_std"] = float(embedding_std(emb))
        scalars["collapse/effective_rank"] = float(effective_rank(emb))
    return scalars


def progress_bar(config: DictConfig, epoch: int, steps_per_epoch: int, done: int) -> Any:
    """A tqdm bar for one epoch (``done`` steps of it already run), or None (``train.progress=false``, rank > 0)."""
    if not config.train.progress or not distributed.is_main():
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=steps_per_epoch,
        initial=done,
        desc=f"epoch {epoch + 1}/{config.train.epochs}",
        unit="step",
        leave=False,
        dynamic_ncols=True,
    )


class LogWindow:
    """The steps since the last log line: their summed finite losses, NaN/inf flag and images, kept on the
    device (read on the host only when logged).

    Example:
        >>> w = LogWindow(torch.device("cpu"))
        >>> w.add(torch.tensor(2.0), torch.tensor(False), 8); w.add(torch.tensor(float("nan")), torch.tensor(True), 8)
        >>> w.scalars(lr=0.1)["train/loss"], bool(w.nonfinite)
        (2.0, True)
    """

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.counted = torch.zeros((), device=device)  # steps whose loss was finite
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self.reset()

    def add(self, loss: torch.Tensor, bad: torch.Tensor, images: int) -> None:
        self.loss_sum += torch.where(bad, 0.0, loss.detach().float())
        self.counted += ~bad
        self.nonfinite |= bad
        self.images += images

    def scalars(self, lr: float) -> dict[str, float]:
        """train/loss (the global batch's: the mean of the ranks'), train/lr, train/images_per_s."""
        distributed.all_reduce(self.loss_sum)
        distributed.all_reduce(self.counted)
        n = self.counted.item()
        self.images_per_s = self.images / (time.perf_counter() - self.tic)
        return {
            "train/loss": self.loss_sum.item() / n if n else math.nan,
            "train/lr": lr,
            "train/images_per_s": self.images_per_s,
        }

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.counted.zero_()
        self.images, self.tic = 0, time.perf_counter()
