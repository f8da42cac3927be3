"""The pretraining loop: uint8 batches -> views on the device -> method -> loss -> optimizer.

Everything a run produces lives in its run directory::

    config.yaml        the resolved configuration
    metrics.jsonl      one JSON object per logged step and per evaluation
    tensorboard/       TensorBoard events (loss, lr, images/s, kNN accuracy, collapse metrics)
    checkpoints/last.pt  written atomically; ``resume=True`` continues from it exactly

The Trainer is the loop; its parts are built from the config and handed what they need:
``visionssl.engine.build`` (data, method, views, loader, optimizer), ``trainstate.Checkpointer``,
``runlog.RunLog``, ``guards.StopSignals`` and ``guards.NonFiniteGuard``, ``online_knn``.
"""

from __future__ import annotations

import logging
import shlex
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from visionssl import augment as augment_lib
from visionssl import distributed
from visionssl.backbones.features import resolve_device
from visionssl.data import ImageDataset
from visionssl.engine.batchnorm import recalibrate_batchnorm
from visionssl.engine.build import (
    InitLoader,
    build_augment,
    build_init,
    build_loader,
    build_method,
    build_optimizer,
    build_train_set,
)
from visionssl.engine.guards import NonFiniteGuard, NonFiniteLossError, StopSignals  # noqa: F401  (re-exported)
from visionssl.engine.online_knn import knn_datasets, online_knn
from visionssl.engine.optim import cosine_with_warmup, set_lr
from visionssl.engine.runlog import LogWindow, RunLog, progress_bar, step_scalars
from visionssl.engine.runtime import (  # noqa: F401  (cpu_computes_bf16: re-exported)
    cpu_computes_bf16,
    resolve_precision,
    seed_everything,
)
from visionssl.engine.trainstate import PROGRESS, Checkpointer
from visionssl.errors import ConfigError
from visionssl.methods import SSLMethod

logger = logging.getLogger(__name__)


class Trainer:
    """Pretrains one method on one dataset as the config says.

    Args:
        config: a config from ``visionssl.engine.config.load_config``.
        method: an already built method (default: built from ``config.method`` and ``config.backbone``).
        train_set: the unlabelled training images (default: ``config.data`` train split).
        eval_sets: (bank, queries) labelled datasets for online kNN (default: the train and test splits).
        resume: continue the run in ``config.out`` (``fit``'s default): ``backbone.init`` is not loaded again.
        init_loader: reads ``backbone.init`` (default: ``visionssl.zoo.init_weights``; see ``engine.build``).

    The method hooks see it as a ``visionssl.methods.base.TrainingContext``: ``train_set``, ``device``,
    ``epoch``, ``augment``, ``config``, ``optimizer``, ``log_scalars``.

    Under ``torchrun`` (see docs/distributed.md) every process builds a Trainer: it joins the process
    group, wraps the method in DistributedDataParallel, takes its block of each global batch
    (``optim.batch_size`` is the global batch, the learning rate is scaled on it), and rank 0 alone
    writes the run directory; ``rank`` and ``world_size`` say where it stands (0 and 1 otherwise).
    Checkpoints (``save_checkpoint``, ``resume``) are written and read by ``visionssl.engine.trainstate``.

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
        *,
        resume: bool = False,
        init_loader: InitLoader | None = None,
    ):
        self.config = config
        self.resuming, self.init_loader = resume, init_loader
        self._join_processes()
        self.out = Path(config.out) if config.out else None
        self.precise_bn = bool(config.train.precise_bn)
        self._build_data(train_set, eval_sets)
        self._build_method(method)
        self._build_loader()
        self._build_optimizer()
        self._build_parts()
        self.epoch, self.step, self.batch_in_epoch = 0, 0, 0
        self.metrics: dict[str, float] = {}
        self.resume_command: str | None = None  # set when a signal stopped the run

    def _join_processes(self) -> None:
        """Threads, device, rank and seeds; under torchrun it joins the process group (NCCL on GPUs, gloo on CPUs)."""
        cfg = self.config
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.device = distributed.init(resolve_device(cfg.train.device, "train.device"))  # takes cuda:LOCAL_RANK
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        if self.device.type == "cuda" and not cfg.train.deterministic:
            torch.backends.cudnn.benchmark = True  # views have one fixed size: autotuned convolutions pay off

    def _build_data(self, train_set: ImageDataset | None, eval_sets: tuple | None) -> None:
        cfg = self.config
        self.train_set = build_train_set(cfg, train_set, self.world_size)
        self.eval_sets = eval_sets
        if cfg.data.stream and eval_sets is None and not cfg.data.eval:
            self.eval_sets = (None, None)  # a kNN bank is held in memory: online kNN needs data.eval

    def _build_method(self, method: SSLMethod | None) -> None:
        """The method on the device, its views, and the forward pass the loop calls (DDP, torch.compile)."""
        cfg = self.config
        init = None if self.resuming else build_init(cfg, self.init_loader, method)  # resumed: the checkpoint's
        self.init_record = init.record if init else None  # where the weights came from, logged by fit
        self.method = build_method(cfg, self.device, method, init)
        self.channels_last = cfg.train.channels_last
        self.augment = build_augment(cfg, self.method, self.device)
        # DDP averages the gradients over the ranks; hooks are called on self.method, never on the wrapper
        self._forward = distributed.wrap_ddp(self.method, self.device, cfg.train.find_unused_parameters)
        if cfg.train.compile:
            self._forward = torch.compile(self._forward)
        if self.rank:  # every rank draws its own augmentations (the weights are rank 0's: DDP copies them)
            seed_everything(cfg.train.seed + self.rank, cfg.train.deterministic)
        self._pass_indices = self.method.needs_indices

    def _build_loader(self) -> None:
        cfg = self.config
        self.loader, self.augment = build_loader(
            cfg, self.train_set, self.augment, self.device, self.rank, self.world_size
        )
        self.steps_per_epoch = len(self.loader)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        self.warmup_steps = int(round(cfg.optim.warmup_epochs * self.steps_per_epoch))

    def _build_optimizer(self) -> None:
        """The optimizer, the precision and the GradScaler."""
        cfg = self.config
        self.lr, self.optimizer = build_optimizer(cfg, self.method)
        self.precision = resolve_precision(cfg.train.precision, self.device, self.method.cpu_bf16)
        if self.precision == "bf16" and isinstance(self.augment, augment_lib.MultiView):
            self.augment.dtype = torch.bfloat16  # autocast would round the views to bf16 at the first layer anyway
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def _build_parts(self) -> None:
        """The checkpointer, the run log and the guards, each given what it uses."""
        cfg = self.config
        self.checkpointer = Checkpointer(
            self.out,
            cfg,
            self.method,
            self.optimizer,
            self.scaler,
            device=self.device,
            rank=self.rank,
            world_size=self.world_size,
        )
        self.run_log = RunLog(cfg, self.out)
        self.stop = StopSignals(enabled=self.out is not None)
        self.guard = NonFiniteGuard(
            self.method,
            self.optimizer,
            self.scaler,
            on_nonfinite=cfg.train.on_nonfinite,
            grad_clip=cfg.optim.grad_clip,
            max_skipped_steps=cfg.train.max_skipped_steps,
            min_loss_scale=cfg.train.min_loss_scale,
            checkpoint_path=self.checkpointer.path,
        )

    # ----------------------------------------------------------------- public
    @property
    def checkpoint_path(self) -> Path | None:
        """``checkpoints/last.pt`` in the run directory (None without one)."""
        return self.checkpointer.path

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped for a NaN/inf loss or gradients (``train.on_nonfinite=skip``)."""
        return self.guard.skipped_steps

    @property
    def stop_signal(self) -> str | None:
        """``"SIGTERM"``/``"SIGINT"`` once caught during ``fit``: it saves and returns at the next step."""
        return self.stop.signal

    def fit(self, resume: bool | None = None) -> dict[str, float]:
        """Trains to ``train.epochs``; with ``resume`` (default: the Trainer's) continues from the last checkpoint.

        Returns the last metrics (including ``knn/top1`` when the data is labelled).

        With a run directory, SIGTERM or SIGINT (a cluster's preemption, Ctrl-C) does not kill the run:
        the current step finishes, a checkpoint is written, a line says how to resume, and the result
        holds ``"stopped_by": "SIGTERM"`` (a second SIGINT interrupts at once).
        """
        resume = self.resuming if resume is None else resume
        if self.resuming and not resume and self.config.backbone.init != "random":
            raise ConfigError("a Trainer built with resume=True did not load backbone.init: build one for a new run")
        with self._run_lock():  # one live run per directory (rank 0 holds it; the other ranks write nothing)
            return self._fit(resume)

    def _run_lock(self):
        if self.out is None or not distributed.is_main():
            return nullcontext()
        from visionssl.engine.rundir import run_lock

        return run_lock(self.out)

    def _fit(self, resume: bool) -> dict[str, float]:
        epochs = self.config.train.epochs
        if resume:
            self.resume()
        self.run_log.open(self.step, init=None if resume else self.init_record)
        restore_signals = self.stop.catch()
        try:
            self.method.on_train_start(self)
            while self.epoch < epochs and not self.stop.requested():
                self.train_epoch()
                if self.batch_in_epoch:  # stopped mid-epoch by a signal
                    break
                self._end_epoch()
            if self.stop.requested() and self.epoch < epochs:
                self._save_on_stop()
        finally:
            restore_signals()
            self.run_log.close()
        result = {"epoch": self.epoch, "step": self.step, **self.metrics}
        stopped = self.stop_signal is not None and self.epoch < epochs
        return {**result, "stopped_by": self.stop_signal} if stopped else result

    def _end_epoch(self) -> None:
        """After a whole epoch: precise BatchNorm, the online kNN and the checkpoint, when they are due."""
        train = self.config.train
        last = self.epoch == train.epochs
        every = train.knn_every
        knn_due = every >= 0 and (last or (every > 0 and self.epoch % every == 0))
        if self.precise_bn and (last or knn_due):
            self.recalibrate_batchnorm()
        if knn_due:
            self.log_scalars(self.evaluate_knn())
        if last or self.epoch % train.checkpoint_every == 0:
            self.save_checkpoint()

    def train_epoch(self) -> None:
        """Runs the rest of the current epoch (all of it unless resumed mid-epoch)."""
        method = self.method
        method.train()
        if self.batch_in_epoch == 0:
            method.on_epoch_start(self)
        self.loader.sample_weights = method.sample_weights
        self.loader.sample_labels = method.sample_labels
        window = LogWindow(self.device)
        bar = progress_bar(self.config, self.epoch, self.steps_per_epoch, self.batch_in_epoch)
        for indices, images in self.loader.epoch(self.epoch, start=self.batch_in_epoch):
            out, lr, bad = self._train_step(indices, images)
            window.add(out["loss"], bad, len(images) * self.world_size)  # images/s of all ranks together
            if self.step % self.config.train.log_every == 0 or self.batch_in_epoch == self.steps_per_epoch:
                self.guard.check(window.nonfinite, self.step, self.epoch)  # the one host sync every log_every steps
                self.log_scalars({**window.scalars(lr), **step_scalars(out), **self.guard.scalars(self.step)})
                if bar is not None:
                    bar.set_postfix(loss=f"{self.metrics['train/loss']:.4f}", img_s=f"{window.images_per_s:.0f}")
                window.reset()
            if bar is not None:
                bar.update(1)
            if self.stop.requested():  # a step boundary: fit() saves a checkpoint and returns
                self.guard.check(window.nonfinite, self.step, self.epoch)
                break
        if bar is not None:
            bar.close()
        if self.batch_in_epoch == self.steps_per_epoch:  # not stopped mid-epoch
            self.epoch += 1
            self.batch_in_epoch = 0
            distributed.sync_buffers(self.method)  # rank 0's BatchNorm statistics for evaluation and clustering

    def _train_step(self, indices: torch.Tensor, images: torch.Tensor) -> tuple[dict[str, Any], float, torch.Tensor]:
        """One optimizer step on one batch: ``(method outputs, lr, was the loss or a gradient NaN/inf)``."""
        optim = self.config.optim
        lr = set_lr(
            self.optimizer, cosine_with_warmup(self.step, self.total_steps, self.warmup_steps, optim.final_lr_ratio)
        )
        views = self.augment(images)
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        self.guard.snapshot_buffers()
        with self._autocast():
            if self._pass_indices:
                out = self._forward(views, indices=indices.to(self.device, non_blocking=True))
            else:
                out = self._forward(views)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out["loss"]).backward()
        bad = self.guard.optimizer_step(out["loss"], self.step)
        self.step += 1
        self.batch_in_epoch += 1
        self.method.on_step_end(self.step, self.total_steps)
        return out, lr, bad

    def _autocast(self):
        if self.precision not in ("bf16", "fp16"):
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    def log_scalars(self, scalars: dict[str, float], step: int | None = None) -> None:
        """Records scalars in metrics.jsonl and TensorBoard (and in ``self.metrics``)."""
        if not scalars:
            return
        self.metrics.update(scalars)
        epoch = self.epoch + self.batch_in_epoch / self.steps_per_epoch  # epochs completed, fractional mid-epoch
        self.run_log.write(scalars, self.step if step is None else step, epoch)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's dict (``visionssl.engine.checkpoint`` lists its keys)."""
        return self.checkpointer.state_dict(self._progress())

    def save_checkpoint(self) -> Path | None:
        """Writes ``checkpoints/last.pt`` atomically (no-op without a run directory).

        A state holding NaN/inf is never written: the last good checkpoint is kept.
        """
        return self.checkpointer.save(self._progress())

    def resume(self) -> None:
        """Restores model, optimizer, scaler, progress and RNG state from the run directory."""
        progress = self.checkpointer.resume()
        self.epoch, self.step, self.batch_in_epoch = progress["epoch"], progress["step"], progress["batch_in_epoch"]
        self.metrics = progress["metrics"]
        self.guard.skipped_steps = progress["skipped_steps"]

    def _progress(self) -> dict[str, Any]:
        return dict(zip(PROGRESS, (self.epoch, self.step, self.batch_in_epoch, self.metrics, self.skipped_steps)))

    def _save_on_stop(self) -> None:
        path = self.save_checkpoint()
        where = (
            f"epoch {self.epoch + 1}, batch {self.batch_in_epoch}/{self.steps_per_epoch}"
            if self.batch_in_epoch
            else f"the end of epoch {self.epoch}"
        )
        self.resume_command = f"visionssl pretrain --out {shlex.quote(str(self.out))} --resume"
        if self.world_size > 1:  # the same launcher again (any number of processes: the global batch is kept)
            self.resume_command = f"torchrun <the same options> -m {self.resume_command}"
        logger.warning(
            "stopped by %s at step %d (%s); checkpoint saved to %s. Resume with: %s "
            "(from Python: Trainer(config).fit(resume=True))",
            self.stop_signal,
            self.step,
            where,
            path,
            self.resume_command,
        )

    # ------------------------------------------------------------- evaluation
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
        result = online_knn(
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
            result = {f"knn/{key}": float(v) for key, v in result.items()}
        return distributed.broadcast_object(result)

    def load_eval_sets(self) -> tuple[ImageDataset | None, ImageDataset | None]:
        """The kNN (bank, queries) datasets, loaded at the first call (``(None, None)`` for unlabelled data).

        ``visionssl pretrain --overwrite`` calls it before removing the old run, so that a bad
        ``data.eval`` is refused while the old run is still there.

        Example:
            >>> bank, queries = trainer.load_eval_sets()  # doctest: +SKIP
        """
        if self.eval_sets is None:
            self.eval_sets = knn_datasets(self.config.data, self.train_set)
        return self.eval_sets
