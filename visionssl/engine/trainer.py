"""The pretraining loop: uint8 batches -> views on the device -> method -> loss -> optimizer.

Everything a run produces lives in its run directory::

    config.yaml        the resolved configuration
    metrics.jsonl      one JSON object per logged step and per evaluation
    tensorboard/       TensorBoard events (loss, lr, images/s, kNN accuracy, collapse metrics)
    checkpoints/last.pt  written atomically; ``resume=True`` continues from it exactly
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from omegaconf import DictConfig

from visionssl import augment as augment_lib
from visionssl import distributed
from visionssl.backbones.features import input_channels, resolve_device
from visionssl.data import BatchLoader, ImageDataset, load_dataset
from visionssl.data.decode import display_path
from visionssl.engine.batchnorm import recalibrate_batchnorm
from visionssl.engine.config import ConfigError, to_dict
from visionssl.engine.evaluators import EVALUATORS
from visionssl.engine.guards import Guards, NonFiniteLossError  # noqa: F401  (NonFiniteLossError: re-exported)
from visionssl.engine.optim import cosine_with_warmup, create_optimizer, set_lr
from visionssl.engine.runlog import RunLog
from visionssl.engine.runtime import (  # noqa: F401  (cpu_computes_bf16: re-exported)
    cpu_computes_bf16,
    resolve_precision,
    seed_everything,
)
from visionssl.engine.trainstate import Checkpointing
from visionssl.methods import SSLMethod, create_method

logger = logging.getLogger(__name__)


class Trainer(Checkpointing, RunLog, Guards):
    """Pretrains one method on one dataset as the config says.

    Args:
        config: a config from ``visionssl.engine.config.load_config``.
        method: an already built method (default: built from ``config.method`` and ``config.backbone``).
        train_set: the unlabelled training images (default: ``config.data`` train split).
        eval_sets: (bank, queries) labelled datasets for online kNN (default: the train and test splits).

    The method hooks see it as a ``visionssl.methods.base.TrainingContext``: ``train_set``, ``device``,
    ``epoch``, ``augment``, ``config``, ``optimizer``, ``log_scalars``.

    Under ``torchrun`` (see docs/distributed.md) every process builds a Trainer: it joins the process
    group, wraps the method in DistributedDataParallel, takes its block of each global batch
    (``optim.batch_size`` is the global batch, the learning rate is scaled on it), and rank 0 alone
    writes the run directory; ``rank`` and ``world_size`` say where it stands (0 and 1 otherwise).
    Checkpoints (``save_checkpoint``, ``resume``) come from ``visionssl.engine.trainstate``.

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
        try:
            device = resolve_device(cfg.train.device, "train.device")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.device = distributed.init(device)
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
            logger.warning(
                "skipped %d unreadable images: %s",
                len(self.train_set.skipped),
                "; ".join(f"{display_path(p)} ({r})" for p, r in self.train_set.skipped[:10]),
            )
        self.eval_sets = eval_sets
        if cfg.optim.batch_size > len(self.train_set):
            raise ConfigError(
                f"optim.batch_size={cfg.optim.batch_size} is larger than the dataset ({len(self.train_set)} images)"
            )
        if cfg.optim.batch_size % self.world_size:
            raise ConfigError(
                f"optim.batch_size={cfg.optim.batch_size} is the global batch, split over {self.world_size} "
                f"processes: it must be a multiple of {self.world_size}"
            )

        self.method = method or create_method(
            cfg.method["name"],
            backbone=cfg.backbone.name,
            backbone_kwargs=dict(cfg.backbone.kwargs),
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
            cfg.augment.name or self.method.augmentation,
            image_size=cfg.augment.image_size,
            channels=channels,
            **to_dict(cfg.augment.kwargs),
        ).to(self.device)
        # DDP averages the gradients over the ranks; hooks are called on self.method, never on the wrapper
        self._forward = distributed.wrap_ddp(self.method, self.device, cfg.train.find_unused_parameters)
        if cfg.train.compile:
            self._forward = torch.compile(self._forward)
        if self.rank:  # every rank draws its own augmentations (the weights are rank 0's: DDP copies them)
            seed_everything(cfg.train.seed + self.rank, cfg.train.deterministic)
        self._pass_indices = self.method.needs_indices

        # optim.batch_size is the global batch: each rank takes its block of batch_size / world_size images
        if data.stream:  # the preset's crops move to the loader's workers; self.augment keeps the rest
            from visionssl.engine.stream import stream_loader

            self.loader, self.augment = stream_loader(
                self.train_set,
                self.augment,
                cfg.optim.batch_size,
                self.device,
                seed=cfg.train.seed,
                num_workers=data.workers,
                gpu_decode=data.gpu_decode,
                skip_bad_images=data.skip_bad_images,
                rank=self.rank,
                world_size=self.world_size,
            )
            if self.eval_sets is None and not data.eval:
                self.eval_sets = (None, None)  # a kNN bank is held in memory: online kNN needs data.eval
        else:
            self.loader = BatchLoader(
                self.train_set,
                cfg.optim.batch_size,
                self.device,
                seed=cfg.train.seed,
                rank=self.rank,
                world_size=self.world_size,
            )
        self.steps_per_epoch = len(self.loader)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        self.warmup_steps = int(round(cfg.optim.warmup_epochs * self.steps_per_epoch))
        scale = {"linear": cfg.optim.batch_size / 256, "sqrt": math.sqrt(cfg.optim.batch_size / 256), "none": 1.0}
        self.lr = cfg.optim.lr * scale[cfg.optim.lr_scaling]
        self.optimizer = create_optimizer(
            self.method.param_groups(cfg.optim.weight_decay),
            cfg.optim.name,
            lr=self.lr,
            momentum=cfg.optim.momentum,
            betas=tuple(cfg.optim.betas),
            trust_coefficient=cfg.optim.trust_coefficient,
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
        self.loader.sample_labels = method.sample_labels
        log_every = cfg.train.log_every
        loss_sum = torch.zeros((), device=self.device)
        counted = torch.zeros((), device=self.device)  # steps of the window whose loss was finite
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        seen, tic = 0, time.perf_counter()
        bar = self._progress_bar()
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
            if self.precision in ("bf16", "fp16")
            else nullcontext()
        )
        for indices, images in self.loader.epoch(self.epoch, start=self.batch_in_epoch):
            lr = set_lr(
                self.optimizer,
                cosine_with_warmup(self.step, self.total_steps, self.warmup_steps, cfg.optim.final_lr_ratio),
            )
            views = self.augment(images)
            if self.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            self._snapshot_buffers()
            with autocast:
                out = (
                    self._forward(views, indices=indices.to(self.device, non_blocking=True))
                    if self._pass_indices
                    else self._forward(views)
                )
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
                scalars = {
                    "train/loss": loss_sum.item() / n if n else math.nan,
                    "train/lr": lr,
                    "train/images_per_s": seen / elapsed,
                }
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
        return recalibrate_batchnorm(
            self.method.backbone,
            self.train_set.images,
            self.config.augment.image_size,
            batch_size=max(self.config.optim.batch_size, 256),
            device=self.device,
        )

    @torch.no_grad()
    def evaluate_knn(self) -> dict[str, float]:
        """kNN accuracy of the current backbone (bank: labelled train split, queries: test split)."""
        bank, queries = self.load_eval_sets()
        if bank is None or bank.targets is None:
            return {}
        cfg = self.config
        evaluate = EVALUATORS.get("knn")  # registered by visionssl.eval
        result = evaluate(
            self.method.backbone,
            bank,
            queries,
            batch_size=max(cfg.optim.batch_size, 256),
            image_size=cfg.augment.image_size,
            device=self.device,
            k=min(cfg.train.knn_k, len(bank)),
            temperature=cfg.train.knn_temperature,
        )
        self.method.train()
        if result is not None:
            result = {f"knn/{key}": float(v) for key, v in result.items() if key in ("top1", "top5")}
        return distributed.broadcast_object(result)

    def load_eval_sets(self) -> tuple[ImageDataset | None, ImageDataset | None]:
        """The kNN (bank, queries) datasets, loaded at the first call (``(None, None)`` for unlabelled data).

        ``visionssl pretrain --overwrite`` calls it before removing the old run, so that a bad
        ``data.eval`` is refused while the old run is still there.

        Example:
            >>> bank, queries = trainer.load_eval_sets()  # doctest: +SKIP
        """
        if self.eval_sets is None:
            data = self.config.data
            if data.eval:
                self.eval_sets = (
                    load_dataset(data.eval, "train", data.image_size),
                    load_dataset(data.eval, "test", data.image_size),
                )
            elif self.train_set.targets is not None:
                self.eval_sets = (
                    self.train_set,
                    load_dataset(data.name, "test", data.image_size, data.skip_bad_images),
                )
            else:
                self.eval_sets = (None, None)
        return self.eval_sets
