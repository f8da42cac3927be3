"""The pretraining loop: uint8 batches -> views on the device -> method -> loss -> optimizer.

Everything a run produces lives in its run directory::

    config.yaml        the resolved configuration
    metrics.jsonl      one JSON object per logged step and per evaluation
    tensorboard/       TensorBoard events (loss, lr, images/s, kNN accuracy, collapse metrics)
    checkpoints/last.pt  written atomically; ``resume=True`` continues from it exactly
"""
from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import os
import random
import shlex
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from visionssl import augment as augment_lib
from visionssl import distributed
from visionssl.data import BatchLoader, ImageDataset, load_dataset
from visionssl.data.decode import display_path
from visionssl.engine.batchnorm import recalibrate_batchnorm
from visionssl.engine.checkpoint import (
    CHECKPOINT_FORMAT, LAST, CheckpointError, atomic_save, atomic_write_text, load_checkpoint, remove_stale_temp_files,
)
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


@functools.lru_cache(maxsize=None)
def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX; read from /proc/cpuinfo).

    On such CPUs oneDNN's bf16 convolutions are 1.5-2x faster than fp32; elsewhere bf16 is emulated
    and slower, so ``train.precision=auto`` keeps fp32 there.

    Example:
        >>> isinstance(cpu_computes_bf16(), bool)
        True
    """
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:  # not Linux
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def resolve_precision(precision: str, device: torch.device, cpu_bf16: bool = True) -> str:
    """``auto`` -> bf16 on CUDA and on CPUs with hardware bf16 (``cpu_computes_bf16``), else fp32.

    ``cpu_bf16=False`` (a method's ``cpu_bf16`` attribute) keeps fp32 on every CPU.

    Example:
        >>> resolve_precision("fp32", torch.device("cuda")), resolve_precision("auto", torch.device("cuda"))
        ('fp32', 'bf16')
    """
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_bf16 and cpu_computes_bf16()) else "fp32"


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

    Under ``torchrun`` (see docs/distributed.md) every process builds a Trainer: it joins the process
    group, wraps the method in DistributedDataParallel, takes its block of each global batch
    (``optim.batch_size`` is the global batch, the learning rate is scaled on it), and rank 0 alone
    writes the run directory; ``rank`` and ``world_size`` say where it stands (0 and 1 otherwise).

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
        # under torchrun: joins the process group (NCCL on GPUs, gloo on CPUs) and takes cuda:LOCAL_RANK
        self.device = distributed.init(resolve_device(cfg.train.device))
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        if self.device.type == "cuda" and not cfg.train.deterministic:
            torch.backends.cudnn.benchmark = True  # views have one fixed size: autotuned convolutions pay off
        self.out = Path(cfg.out) if cfg.out else None

        data = cfg.data
        self.precise_bn = bool(cfg.train.precise_bn)
        if self.precise_bn and data.stream:
            raise ConfigError("train.precise_bn=true needs the images in memory; it does not run with data.stream=true")
        if data.stream:  # files listed here, decoded and cropped batch by batch (visionssl.data.stream)
            from visionssl.data.stream import list_image_files

            self.train_set = train_set or list_image_files(data.name, "train")
        else:
            self.train_set = train_set or load_dataset(data.name, "train", data.image_size, data.skip_bad_images)
        if self.train_set.skipped:
            logger.warning("skipped %d unreadable images: %s", len(self.train_set.skipped),
                           "; ".join(f"{display_path(p)} ({r})" for p, r in self.train_set.skipped[:10]))
        self.eval_sets = eval_sets
        if cfg.optim.batch_size > len(self.train_set):
            raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} is larger than the dataset ({len(self.train_set)} images)")
        if cfg.optim.batch_size % self.world_size:
            raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} is the global batch, split over {self.world_size} "
                              f"processes: it must be a multiple of {self.world_size}")

        self.method = method or create_method(
            cfg.method["name"], backbone=cfg.backbone.name, backbone_kwargs=dict(cfg.backbone.kwargs),
            **{k: v for k, v in to_dict(cfg.method).items() if k != "name"},
        )
        if cfg.train.sync_bn and distributed.is_distributed():
            if self.device.type != "cuda":
                raise ConfigError("train.sync_bn=true needs GPUs: torch's SyncBatchNorm does not run on the CPU")
            self.method = distributed.convert_sync_batchnorm(self.method)
        self.method.to(self.device)
        self.channels_last = cfg.train.channels_last  # faster convolutions on CUDA, and on the CPU with oneDNN
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        channels = input_channels(self.method.backbone)
        self.augment = augment_lib.create(
            cfg.augment.name or self.method.augmentation, image_size=cfg.augment.image_size, channels=channels,
            **to_dict(cfg.augment.kwargs),
        ).to(self.device)
        # DDP averages the gradients over the ranks; hooks are called on self.method, never on the wrapper
        self._forward = distributed.wrap_ddp(self.method, self.device, cfg.train.find_unused_parameters)
        if cfg.train.compile:
            self._forward = torch.compile(self._forward)
        if self.rank:  # every rank draws its own augmentations (the weights are rank 0's: DDP copies them)
            seed_everything(cfg.train.seed + self.rank, cfg.train.deterministic)
        self._pass_indices = "indices" in inspect.signature(self.method.forward).parameters

        # optim.batch_size is the global batch: each rank takes its block of batch_size / world_size images
        if data.stream:  # the preset's crops move to the loader's workers; self.augment keeps the rest
            from visionssl.data.stream import stream_loader

            self.loader, self.augment = stream_loader(
                self.train_set, self.augment, cfg.optim.batch_size, self.device, seed=cfg.train.seed,
                num_workers=data.workers, gpu_decode=data.gpu_decode, skip_bad_images=data.skip_bad_images,
                rank=self.rank, world_size=self.world_size,
            )
            if self.eval_sets is None and not data.eval:
                self.eval_sets = (None, None)  # a kNN bank is held in memory: online kNN needs data.eval
        else:
            self.loader = BatchLoader(self.train_set, cfg.optim.batch_size, self.device, seed=cfg.train.seed,
                                      rank=self.rank, world_size=self.world_size)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        self.warmup_steps = int(round(cfg.optim.warmup_epochs * self.steps_per_epoch))
        scale = {"linear": cfg.optim.batch_size / 256, "sqrt": math.sqrt(cfg.optim.batch_size / 256), "none": 1.0}
        self.lr = cfg.optim.lr * scale[cfg.optim.lr_scaling]
        self.optimizer = create_optimizer(
            self.method.param_groups(cfg.optim.weight_decay), cfg.optim.name, lr=self.lr,
            momentum=cfg.optim.momentum, betas=tuple(cfg.optim.betas), trust_coefficient=cfg.optim.trust_coefficient,
        )
        self.precision = precision = resolve_precision(cfg.train.precision, self.device, self.method.cpu_bf16)
        if self.precision == "bf16" and isinstance(self.augment, augment_lib.MultiView):
            self.augment.dtype = torch.bfloat16  # autocast would round the views to bf16 at the first layer anyway
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.epoch, self.step, self.batch_in_epoch = 0, 0, 0
        self.metrics: dict[str, float] = {}
        self._writer = None
        self._metrics_file = None
        self.stop_signal: str | None = None  # "SIGTERM"/"SIGINT" caught during fit(): save and return at the next step
        self.skipped_steps = 0  # optimizer steps skipped for a NaN/inf loss or gradients (train.on_nonfinite=skip)
        self._skipped_in_a_row = 0
        self._buffers_before_step: list[torch.Tensor] | None = None
        self._low_scale_warned = False
        self.resume_command: str | None = None  # set when a signal stopped the run

    # ----------------------------------------------------------------- public
    def fit(self, resume: bool = False) -> dict[str, float]:
        """Trains to ``train.epochs``; with ``resume`` continues from the run directory's last checkpoint.

        Returns the last metrics (including ``knn/top1`` when the data is labelled).

        With a run directory, SIGTERM or SIGINT (a cluster's preemption, Ctrl-C) does not kill the run:
        the current step finishes, a checkpoint is written, a line says how to resume, and the result
        holds ``"stopped_by": "SIGTERM"`` (a second SIGINT interrupts at once).
        """
        with self._run_lock():  # one live run per directory (rank 0 holds it; the other ranks write nothing)
            return self._fit(resume)

    def _run_lock(self):
        if self.out is None or not distributed.is_main():
            return nullcontext()
        from visionssl.engine.rundir import run_lock

        return run_lock(self.out)

    def _fit(self, resume: bool) -> dict[str, float]:
        cfg = self.config
        if resume:
            self.resume()
        self._open_run_dir()
        restore_signals = self._catch_stop_signals()
        try:
            self.method.on_train_start(self)
            while self.epoch < cfg.train.epochs and not self._stop_requested():
                self.train_epoch()
                if self.batch_in_epoch:  # stopped mid-epoch by a signal
                    break
                last = self.epoch == cfg.train.epochs
                every = cfg.train.knn_every
                knn_due = every >= 0 and (last or (every > 0 and self.epoch % every == 0))
                if self.precise_bn and (last or knn_due):
                    self.recalibrate_batchnorm()
                if knn_due:
                    self.log_scalars(self.evaluate_knn())
                if last or self.epoch % cfg.train.checkpoint_every == 0:
                    self.save_checkpoint()
            if self._stop_requested() and self.epoch < cfg.train.epochs:
                self._save_on_stop()
        finally:
            restore_signals()
            self._close_run_dir()
        result = {"epoch": self.epoch, "step": self.step, **self.metrics}
        stopped = self.stop_signal is not None and self.epoch < cfg.train.epochs
        return {**result, "stopped_by": self.stop_signal} if stopped else result

    def train_epoch(self) -> None:
        """Runs the rest of the current epoch (all of it unless resumed mid-epoch)."""
        cfg, method = self.config, self.method
        method.train()
        if self.batch_in_epoch == 0:
            method.on_epoch_start(self)
        self.loader.sample_weights = method.sample_weights
        self.loader.sample_labels = getattr(method, "sample_labels", None)
        log_every = cfg.train.log_every
        loss_sum = torch.zeros((), device=self.device)
        counted = torch.zeros((), device=self.device)  # steps of the window whose loss was finite
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
            self._snapshot_buffers()
            with autocast:
                out = self._forward(views, indices=indices.to(self.device, non_blocking=True)) if self._pass_indices else self._forward(views)
            loss = out["loss"]
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            bad = self._optimizer_step(loss)
            self.step += 1
            self.batch_in_epoch += 1
            method.on_step_end(self.step, self.total_steps)
            loss_sum += torch.where(bad, 0.0, loss.detach().float())
            counted += ~bad
            nonfinite |= bad
            seen += len(images) * self.world_size  # images/s of all ranks together
            if self.step % log_every == 0 or self.batch_in_epoch == self.steps_per_epoch:
                self._check_finite(nonfinite)  # the one host synchronisation, every log_every steps
                distributed.all_reduce(loss_sum)  # the global batch's loss: the mean of the ranks' losses
                distributed.all_reduce(counted)
                n = counted.item()
                elapsed = time.perf_counter() - tic
                scalars = {"train/loss": loss_sum.item() / n if n else math.nan, "train/lr": lr, "train/images_per_s": seen / elapsed}
                scalars.update(self._extra_scalars(out))
                scalars.update(self._numerics_scalars())
                self.log_scalars(scalars)
                if bar is not None:
                    bar.set_postfix(loss=f"{scalars['train/loss']:.4f}", img_s=f"{scalars['train/images_per_s']:.0f}")
                loss_sum.zero_()
                counted.zero_()
                seen, tic = 0, time.perf_counter()
            if bar is not None:
                bar.update(1)
            if self._stop_requested():  # a step boundary: fit() saves a checkpoint and returns
                self._check_finite(nonfinite)
                break
        if bar is not None:
            bar.close()
        if self.batch_in_epoch == self.steps_per_epoch:  # not stopped mid-epoch
            self.epoch += 1
            self.batch_in_epoch = 0
            distributed.sync_buffers(self.method)  # rank 0's BatchNorm statistics for evaluation and clustering

    def recalibrate_batchnorm(self) -> int:
        """Re-estimates the backbone's BatchNorm statistics on whole training images (the eval view).

        Done before each kNN evaluation and the final checkpoint when ``train.precise_bn`` is true: for a
        backbone trained on inputs unlike the images it is used on (tiles, patches, rotations), whose
        running statistics describe those inputs. Returns the number of BatchNorm layers updated.
        """
        return recalibrate_batchnorm(self.method.backbone, self.train_set.images, self.config.augment.image_size,
                                     batch_size=max(self.config.optim.batch_size, 256), device=self.device)

    @torch.no_grad()
    def evaluate_knn(self) -> dict[str, float]:
        """kNN accuracy of the current backbone (bank: labelled train split, queries: test split)."""
        from visionssl import eval as eval_lib

        bank, queries = self._eval_sets()
        if bank is None or bank.targets is None:
            return {}
        from visionssl.eval.distributed import extract_features_distributed

        cfg = self.config
        feats = [  # under torchrun each rank extracts its block; rank 0 receives them all and searches
            extract_features_distributed(self.method.backbone, ds, batch_size=max(cfg.optim.batch_size, 256),
                                         image_size=cfg.augment.image_size, device=self.device, dst=0)
            for ds in (bank, queries)
        ]
        self.method.train()
        result = None
        if distributed.is_main():
            k = min(cfg.train.knn_k, len(bank))
            result = eval_lib.knn(feats[0][0], feats[0][1], feats[1][0], feats[1][1], k=k, temperature=cfg.train.knn_temperature)
            result = {f"knn/{key}": float(v) for key, v in result.items() if key in ("top1", "top5")}
        return distributed.broadcast_object(result)

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
            raise CheckpointError(f"cannot resume from {self.checkpoint_path}: it does not match this run's "
                                  f"method/backbone/optimizer ({detail})") from None
        self.epoch, self.step, self.batch_in_epoch = ckpt["epoch"], ckpt["step"], ckpt.get("batch_in_epoch", 0)
        self.metrics = dict(ckpt.get("metrics", {}))
        self.skipped_steps = ckpt.get("skipped_steps", 0)
        per_rank = ckpt.get("rng_per_rank") or [ckpt["rng"]]
        if len(per_rank) == self.world_size:
            set_rng_state(per_rank[self.rank])
        else:  # another number of processes: same global batches and schedule, other augmentation draws
            logger.warning("resuming on %d processes a run saved by %d: the batches and the schedule continue, the "
                           "random augmentations differ", self.world_size, len(per_rank))
            set_rng_state(per_rank[0])
            if self.rank:
                seed_everything(self.config.train.seed + 1_000_003 * self.step + self.rank)
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
        """With train.on_nonfinite=stop, raises if a step since the last check had a NaN/inf loss or gradient."""
        if self.config.train.on_nonfinite == "stop" and bool(nonfinite):
            raise NonFiniteLossError(
                f"the loss or the gradients became NaN or infinite near step {self.step} (epoch {self.epoch}); "
                f"{self._kept_checkpoint()}. Try a lower optim.lr, optim.grad_clip, train.precision=fp32, "
                f"or train.on_nonfinite=skip."
            )

    def _extra_scalars(self, out: dict[str, torch.Tensor]) -> dict[str, float]:
        scalars = {k: float(v) for k, v in out.items() if k not in ("loss", "embedding") and torch.is_tensor(v) and v.ndim == 0}
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

        return tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch, desc=f"epoch {self.epoch + 1}/{self.config.train.epochs}",
                    unit="step", leave=False, dynamic_ncols=True)

    def _open_run_dir(self) -> None:
        if self.out is None or not distributed.is_main():  # rank 0 alone writes the run directory
            return
        self.out.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.checkpoint_path)  # left by a run killed while saving
        atomic_write_text(OmegaConf.to_yaml(self.config), self.out / "config.yaml")  # --resume reads it
        from visionssl.backbones.trust import is_code_spec, record_trust

        if is_code_spec(str(self.config.backbone.name)):  # whoever built this Trainer vouched for that code
            record_trust(self.out, str(self.config.backbone.name))
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

    # ------------------------------------------- reliability: preemption and NaN/inf steps
    def _catch_stop_signals(self) -> Callable[[], None]:
        """Makes SIGTERM/SIGINT set ``stop_signal`` (checked at step boundaries); returns the undo.

        Only with a run directory (there is somewhere to save) and in the main thread (Python's rule).
        A second SIGINT raises KeyboardInterrupt at once.
        """
        if self.out is None or threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, frame: Any) -> None:
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_signal = signal.Signals(signum).name
            logger.warning("%s received: stopping after the current step to save a checkpoint (SIGINT again stops at once)",
                           self.stop_signal)

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old if old is not None else signal.SIG_DFL)

        return restore

    def _stop_requested(self) -> bool:
        """Whether to stop at this step boundary. (Under DDP every rank must return the same answer.)

        Distributed: a signal may reach the ranks at different steps (or only one of them), so the ranks
        agree here, on the host (no GPU synchronisation): any rank's signal stops them all at this step.
        """
        if distributed.is_distributed():
            mine = int(getattr(signal, self.stop_signal, signal.SIGTERM)) if self.stop_signal else 0
            signum = distributed.max_over_ranks(mine)
            if signum and self.stop_signal is None:
                self.stop_signal = signal.Signals(signum).name
        return self.stop_signal is not None

    def _save_on_stop(self) -> None:
        path = self.save_checkpoint()
        where = (f"epoch {self.epoch + 1}, batch {self.batch_in_epoch}/{self.steps_per_epoch}" if self.batch_in_epoch
                 else f"the end of epoch {self.epoch}")
        self.resume_command = f"visionssl pretrain --out {shlex.quote(str(self.out))} --resume"
        if self.world_size > 1:  # the same launcher again (any number of processes: the global batch is kept)
            self.resume_command = f"torchrun <the same options> -m {self.resume_command}"
        logger.warning("stopped by %s at step %d (%s); checkpoint saved to %s. Resume with: %s "
                       "(from Python: Trainer(config).fit(resume=True))", self.stop_signal, self.step, where, path,
                       self.resume_command)

    def _snapshot_buffers(self) -> None:
        """With train.on_nonfinite=skip, keeps the buffers (BatchNorm statistics, queues) from before the
        forward pass, so that a skipped step leaves no trace of its NaN/inf in them either."""
        if self.config.train.on_nonfinite != "skip":
            return
        buffers = list(self.method.buffers())
        if self._buffers_before_step is None or len(self._buffers_before_step) != len(buffers):
            self._buffers_before_step = [b.detach().clone() for b in buffers]
        else:
            for saved, b in zip(self._buffers_before_step, buffers):
                saved.copy_(b)

    def _optimizer_step(self, loss: torch.Tensor) -> torch.Tensor:
        """Unscales, clips and steps; returns a 0-d bool tensor: was the loss or a gradient NaN/inf?

        ``train.on_nonfinite=stop`` steps anyway (no host synchronisation; the next log step raises and
        no checkpoint of the damaged state is written). ``skip`` leaves weights, buffers and optimizer
        state as they were before this step, at the cost of one host synchronisation per step. Under
        fp16 the GradScaler skips steps with inf/NaN gradients itself: that is how it tunes its scale.
        """
        cfg, scaler = self.config, self.scaler
        if scaler.is_enabled() or cfg.optim.grad_clip:
            scaler.unscale_(self.optimizer)
        bad = ~torch.isfinite(loss.detach())
        if not scaler.is_enabled():
            grads = [p.grad for p in self.method.parameters() if p.grad is not None]
            if grads:  # the max-abs norm is NaN/inf exactly when some gradient entry is; it never overflows
                bad = bad | ~torch.isfinite(torch.nn.utils.get_total_norm(grads, float("inf")))
        if distributed.is_distributed():  # one verdict on every rank (an inf loss on one rank may leave finite gradients)
            bad = distributed.all_reduce(bad.float(), "max") > 0
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), cfg.optim.grad_clip)
        if cfg.train.on_nonfinite == "skip" and bool(bad):
            self._skip_step()
        else:
            self._skipped_in_a_row = 0
            scaler.step(self.optimizer)
        scaler.update()
        return bad

    def _skip_step(self) -> None:
        self.skipped_steps += 1
        self._skipped_in_a_row += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self._buffers_before_step is not None:
            for saved, b in zip(self._buffers_before_step, self.method.buffers()):
                b.copy_(saved)
        limit = self.config.train.max_skipped_steps
        logger.warning("step %d: NaN or infinite loss or gradients, optimizer step skipped (%d in a row, %d in all)",
                       self.step + 1, self._skipped_in_a_row, self.skipped_steps)
        if self._skipped_in_a_row > limit:
            raise NonFiniteLossError(
                f"{self._skipped_in_a_row} steps in a row had a NaN or infinite loss or gradients (more than "
                f"train.max_skipped_steps={limit}) at step {self.step + 1}; {self._kept_checkpoint()}. "
                f"Try a lower optim.lr, optim.grad_clip or train.precision=fp32."
            )

    def _numerics_scalars(self) -> dict[str, float]:
        """train/skipped_steps (skip mode) and train/loss_scale (fp16); warns once when the scale underflows."""
        scalars: dict[str, float] = {}
        if self.config.train.on_nonfinite == "skip":
            scalars["train/skipped_steps"] = float(self.skipped_steps)
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            scalars["train/loss_scale"] = scale
            low = scale < self.config.train.min_loss_scale
            if low and not self._low_scale_warned:
                logger.warning(
                    "fp16 loss scale fell to %.3g (below train.min_loss_scale=%g) at step %d: the gradients keep "
                    "overflowing, and those steps are skipped. Try train.precision=bf16 or fp32, a lower optim.lr "
                    "or optim.grad_clip.", scale, self.config.train.min_loss_scale, self.step)
            self._low_scale_warned = low
        return scalars

    def _assert_finite_state(self) -> None:
        state = {k: v for k, v in self.method.state_dict().items() if torch.is_floating_point(v)}
        if not state or bool(torch.stack([torch.isfinite(v).all() for v in state.values()]).all()):
            return
        name = next(k for k, v in state.items() if not bool(torch.isfinite(v).all()))
        raise NonFiniteLossError(
            f"not writing a checkpoint at step {self.step}: {name} holds NaN or infinite values; "
            f"{self._kept_checkpoint()}. Try a lower optim.lr, optim.grad_clip or train.on_nonfinite=skip."
        )

    def _kept_checkpoint(self) -> str:
        path = self.checkpoint_path
        return f"the last good checkpoint is kept at {path}" if path is not None and path.is_file() else "no checkpoint was written yet"
