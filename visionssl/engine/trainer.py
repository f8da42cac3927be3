"""The pretraining loop: uint8 batches -> views on the device -> method -> loss -> optimizer.

Everything a run produces lives in its run directory::

    config.yaml        the resolved configuration
    metrics.jsonl      one JSON object per logged step and per evaluation
    tensorboard/       TensorBoard events (loss, lr, images/s, kNN accuracy, collapse metrics)
    checkpoints/last.pt  written atomically; ``resume=True`` continues from it exactly
"""
from __future__ import annotations

import inspect
import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from visionssl import augment as augment_lib
from visionssl.data import BatchLoader, ImageDataset, load_dataset
from visionssl.engine.checkpoint import CHECKPOINT_FORMAT, LAST, atomic_save, load_checkpoint
from visionssl.engine.config import ConfigError, to_dict
from visionssl.eval.features import input_channels
from visionssl.engine.optim import cosine_with_warmup, create_optimizer, set_lr
from visionssl.methods import SSLMethod, create_method

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA GPU is available; use 'cpu' or 'auto'")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device={name!r} is not a device; valid: auto, cpu, cuda, cuda:N") from None


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seeds python, numpy and torch; with ``deterministic`` also asks torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "gauss": float(gauss)}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Pretrains one method on one dataset as the config says.

    Args:
        config: a config from ``visionssl.engine.config.load_config``.
        method: an already built method (default: built from ``config.method`` and ``config.backbone``).
        train_set: the unlabelled training images (default: ``config.data`` train split).
        eval_sets: (bank, queries) labelled datasets for online kNN (default: the train and test splits).

    Attributes the method hooks may use: ``train_set``, ``device``, ``epoch``, ``augment``, ``config``,
    ``log_scalars``.

    Example:
        >>> from visionssl.engine.config import load_config
        >>> cfg = load_config("simclr", overrides=["data.name=synthetic:64", "backbone.name=resnet10t_cifar",
        ...     "augment.image_size=16", "data.image_size=16", "optim.batch_size=32", "train.epochs=1",
        ...     "train.progress=false", "method.proj_hidden_dim=64"])
        >>> result = Trainer(cfg).fit()
        >>> result["epoch"], "knn/top1" in result
        (1, True)
    """

    def __init__(
        self,
        config: DictConfig,
        method: SSLMethod | None = None,
        train_set: ImageDataset | None = None,
        eval_sets: tuple[ImageDataset, ImageDataset] | None = None,
    ):
        self.config = cfg = config
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.device = resolve_device(cfg.train.device)
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        self.out = Path(cfg.out) if cfg.out else None

        data = cfg.data
        self.train_set = train_set or load_dataset(data.name, "train", data.image_size, data.skip_bad_images)
        if self.train_set.skipped:
            logger.warning("skipped %d unreadable images: %s", len(self.train_set.skipped),
                           "; ".join(f"{p} ({r})" for p, r in self.train_set.skipped[:10]))
        self.eval_sets = eval_sets
        if cfg.optim.batch_size > len(self.train_set):
            raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} is larger than the dataset ({len(self.train_set)} images)")

        self.method = method or create_method(
            cfg.method["name"], backbone=cfg.backbone.name, backbone_kwargs=dict(cfg.backbone.kwargs),
            **{k: v for k, v in to_dict(cfg.method).items() if k != "name"},
        )
        self.method.to(self.device)
        self.channels_last = self.device.type == "cuda" and cfg.train.channels_last
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        channels = input_channels(self.method.backbone)
        self.augment = augment_lib.create(
            cfg.augment.name or self.method.augmentation, image_size=cfg.augment.image_size, channels=channels,
            **to_dict(cfg.augment.kwargs),
        ).to(self.device)
        self._forward = torch.compile(self.method) if cfg.train.compile else self.method
        self._pass_indices = "indices" in inspect.signature(self.method.forward).parameters

        self.loader = BatchLoader(self.train_set, cfg.optim.batch_size, self.device, seed=cfg.train.seed)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        self.warmup_steps = int(round(cfg.optim.warmup_epochs * self.steps_per_epoch))
        scale = {"linear": cfg.optim.batch_size / 256, "sqrt": math.sqrt(cfg.optim.batch_size / 256), "none": 1.0}
        self.lr = cfg.optim.lr * scale[cfg.optim.lr_scaling]
        self.optimizer = create_optimizer(
            self.method.param_groups(cfg.optim.weight_decay), cfg.optim.name, lr=self.lr,
            momentum=cfg.optim.momentum, betas=tuple(cfg.optim.betas),
        )
        precision = cfg.train.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        self.precision = precision
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.epoch, self.step, self.batch_in_epoch = 0, 0, 0
        self.metrics: dict[str, float] = {}
        self._writer = None
        self._metrics_file = None

    # ----------------------------------------------------------------- public
    def fit(self, resume: bool = False) -> dict[str, float]:
        """Trains to ``train.epochs``; with ``resume`` continues from the run directory's last checkpoint.

        Returns the last metrics (including ``knn/top1`` when the data is labelled).
        """
        cfg = self.config
        if resume:
            self.resume()
        self._open_run_dir()
        self.method.on_train_start(self)
        try:
            while self.epoch < cfg.train.epochs:
                self.train_epoch()
                last = self.epoch == cfg.train.epochs
                every = cfg.train.knn_every
                if every >= 0 and (last or (every > 0 and self.epoch % every == 0)):
                    self.log_scalars(self.evaluate_knn())
                if last or self.epoch % cfg.train.checkpoint_every == 0:
                    self.save_checkpoint()
        finally:
            self._close_run_dir()
        return {"epoch": self.epoch, "step": self.step, **self.metrics}

    def train_epoch(self) -> None:
        """Runs the rest of the current epoch (all of it unless resumed mid-epoch)."""
        cfg, method = self.config, self.method
        method.train()
        if self.batch_in_epoch == 0:
            method.on_epoch_start(self)
        self.loader.sample_weights = method.sample_weights
        log_every = cfg.train.log_every
        loss_sum = torch.zeros((), device=self.device)
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        seen, tic = 0, time.perf_counter()
        bar = self._progress_bar()
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
            if self.precision in ("bf16", "fp16") else nullcontext()
        )
        for indices, images in self.loader.epoch(self.epoch, start=self.batch_in_epoch):
            lr = set_lr(self.optimizer, cosine_with_warmup(self.step, self.total_steps, self.warmup_steps, cfg.optim.final_lr_ratio))
            views = self.augment(images)
            if self.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            with autocast:
                out = self._forward(views, indices=indices.to(self.device)) if self._pass_indices else self._forward(views)
            loss = out["loss"]
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.optim.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.optim.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step += 1
            self.batch_in_epoch += 1
            method.on_step_end(self.step, self.total_steps)
            loss_sum += loss.detach().float()
            nonfinite |= ~torch.isfinite(loss.detach())
            seen += len(images)
            if self.step % log_every == 0 or self.batch_in_epoch == self.steps_per_epoch:
                self._check_finite(nonfinite)  # the one host synchronisation, every log_every steps
                n = log_every if self.step % log_every == 0 else (self.batch_in_epoch - 1) % log_every + 1
                elapsed = time.perf_counter() - tic
                scalars = {"train/loss": loss_sum.item() / n, "train/lr": lr, "train/images_per_s": seen / elapsed}
                scalars.update(self._extra_scalars(out))
                self.log_scalars(scalars)
                if bar is not None:
                    bar.set_postfix(loss=f"{scalars['train/loss']:.4f}", img_s=f"{scalars['train/images_per_s']:.0f}")
                loss_sum.zero_()
                seen, tic = 0, time.perf_counter()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        self.epoch += 1
        self.batch_in_epoch = 0

    @torch.no_grad()
    def evaluate_knn(self) -> dict[str, float]:
        """kNN accuracy of the current backbone (bank: labelled train split, queries: test split)."""
        from visionssl import eval as eval_lib

        bank, queries = self._eval_sets()
        if bank is None or bank.targets is None:
            return {}
        cfg = self.config
        feats = [
            eval_lib.extract_features(self.method.backbone, ds, batch_size=max(cfg.optim.batch_size, 256),
                                      image_size=cfg.augment.image_size, device=self.device, progress=False)
            for ds in (bank, queries)
        ]
        self.method.train()
        k = min(cfg.train.knn_k, len(bank))
        result = eval_lib.knn(feats[0][0], feats[0][1], feats[1][0], feats[1][1], k=k, temperature=cfg.train.knn_temperature)
        return {f"knn/{key}": float(v) for key, v in result.items() if key in ("top1", "top5")}

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

    # ------------------------------------------------------------ checkpoints
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
        }

    def save_checkpoint(self) -> Path | None:
        """Writes ``checkpoints/last.pt`` atomically (no-op without a run directory)."""
        if self.checkpoint_path is None:
            return None
        return atomic_save(self.state_dict(), self.checkpoint_path)

    def resume(self) -> None:
        """Restores model, optimizer, scaler, progress and RNG state from the run directory."""
        if self.checkpoint_path is None:
            raise ConfigError("resume needs a run directory (--out)")
        if not self.checkpoint_path.is_file():
            raise ConfigError(f"nothing to resume: {self.checkpoint_path} does not exist")
        ckpt = load_checkpoint(self.checkpoint_path, map_location=self.device)
        self.method.load_state_dict(ckpt["method"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step, self.batch_in_epoch = ckpt["epoch"], ckpt["step"], ckpt.get("batch_in_epoch", 0)
        self.metrics = dict(ckpt.get("metrics", {}))
        set_rng_state(ckpt["rng"])
        logger.info("resumed %s at epoch %d, step %d", self.checkpoint_path, self.epoch, self.step)

    # --------------------------------------------------------------- helpers
    def _eval_sets(self) -> tuple[ImageDataset | None, ImageDataset | None]:
        if self.eval_sets is None:
            data = self.config.data
            if data.eval:
                self.eval_sets = (load_dataset(data.eval, "train", data.image_size), load_dataset(data.eval, "test", data.image_size))
            elif self.train_set.targets is not None:
                self.eval_sets = (self.train_set, load_dataset(data.name, "test", data.image_size, data.skip_bad_images))
            else:
                self.eval_sets = (None, None)
        return self.eval_sets

    def _check_finite(self, nonfinite: torch.Tensor) -> None:
        if bool(nonfinite):
            where = f"the last good checkpoint is kept at {self.checkpoint_path}" if self.checkpoint_path and self.checkpoint_path.is_file() else "no checkpoint was written yet"
            raise NonFiniteLossError(
                f"the loss became NaN or infinite near step {self.step} (epoch {self.epoch}); {where}. "
                f"Try a lower optim.lr, optim.grad_clip, or train.precision=fp32."
            )

    def _extra_scalars(self, out: dict[str, torch.Tensor]) -> dict[str, float]:
        scalars = {k: float(v) for k, v in out.items() if k not in ("loss", "embedding") and torch.is_tensor(v) and v.ndim == 0}
        emb = out.get("embedding")
        if emb is not None:
            from visionssl.engine.monitor import effective_rank, embedding_std

            scalars["collapse/embedding_std"] = float(embedding_std(emb))
            scalars["collapse/effective_rank"] = float(effective_rank(emb))
        return scalars

    def _progress_bar(self):
        if not self.config.train.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch, desc=f"epoch {self.epoch + 1}/{self.config.train.epochs}",
                    unit="step", leave=False, dynamic_ncols=True)

    def _open_run_dir(self) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(OmegaConf.to_yaml(self.config))
        self._metrics_file = open(self.out / "metrics.jsonl", "a")
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.step or None)

    def _close_run_dir(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
