"""The guards around the training loop: a clean stop on SIGTERM/SIGINT, and NaN/inf steps stopped or skipped.

Two parts of ``visionssl.engine.Trainer``, each given what it needs when it is built:
``StopSignals`` (preemption) and ``NonFiniteGuard`` (``train.on_nonfinite``: the optimizer step,
unscaled, clipped and checked).

Example:
    >>> import torch
    >>> net = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> guard = NonFiniteGuard(net, opt, torch.amp.GradScaler("cpu", enabled=False), on_nonfinite="skip")
    >>> guard.snapshot_buffers()
    >>> loss = net(torch.ones(1, 2)).sum() * float("nan")
    >>> loss.backward()
    >>> bool(guard.optimizer_step(loss, step=0)), guard.skipped_steps
    (True, 1)
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionssl import distributed
from visionssl.errors import NonFiniteLossError

logger = logging.getLogger("visionssl.engine.trainer")


def kept_checkpoint(path: Path | None) -> str:
    """What an error about NaN/inf says of the run's checkpoint.

    Example:
        >>> kept_checkpoint(None)
        'no checkpoint was written yet'
    """
    if path is not None and path.is_file():
        return f"the last good checkpoint is kept at {path}"
    return "no checkpoint was written yet"


def assert_finite_state(module: nn.Module, step: int, checkpoint_path: Path | None) -> None:
    """Raises ``NonFiniteLossError`` naming the first floating-point entry of the state that holds NaN/inf.

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> assert_finite_state(net, 3, None)
        >>> _ = net.bias.data.fill_(float("nan"))
        >>> assert_finite_state(net, 3, None)
        Traceback (most recent call last):
        visionssl.errors.NonFiniteLossError: not writing a checkpoint at step 3: bias holds NaN or infinite values; ...
    """
    state = {k: v for k, v in module.state_dict().items() if torch.is_floating_point(v)}
    if not state or bool(torch.stack([torch.isfinite(v).all() for v in state.values()]).all()):
        return
    name = next(k for k, v in state.items() if not bool(torch.isfinite(v).all()))
    raise NonFiniteLossError(
        f"not writing a checkpoint at step {step}: {name} holds NaN or infinite values; "
        f"{kept_checkpoint(checkpoint_path)}. Try a lower optim.lr, optim.grad_clip or train.on_nonfinite=skip."
    )


class StopSignals:
    """SIGTERM/SIGINT during ``fit`` set ``signal`` (checked at step boundaries) instead of killing the run.

    Only when ``enabled`` (the run has a directory to save to) and in the main thread (Python's rule).
    A second SIGINT raises KeyboardInterrupt at once.

    Example:
        >>> stop = StopSignals(enabled=False)
        >>> restore = stop.catch(); stop.requested(); restore()
        False
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.signal: str | None = None  # "SIGTERM"/"SIGINT" once caught

    def catch(self) -> Callable[[], None]:
        """Installs the handlers; returns the function that puts the previous ones back."""
        if not self.enabled or threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, frame: Any) -> None:
            if self.signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signal = signal.Signals(signum).name
            logger.warning(
                "%s received: stopping after the current step to save a checkpoint (SIGINT again stops at once)",
                self.signal,
            )

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old if old is not None else signal.SIG_DFL)

        return restore

    def requested(self) -> bool:
        """Whether to stop at this step boundary. (Under DDP every rank must return the same answer.)

        Distributed: a signal may reach the ranks at different steps (or only one of them), so the ranks
        agree here, on the host (no GPU synchronisation): any rank's signal stops them all at this step.
        """
        if distributed.is_distributed():
            mine = int(getattr(signal, self.signal, signal.SIGTERM)) if self.signal else 0
            signum = distributed.max_over_ranks(mine)
            if signum and self.signal is None:
                self.signal = signal.Signals(signum).name
        return self.signal is not None


class NonFiniteGuard:
    """The optimizer step under ``train.on_nonfinite``: ``stop`` raises at the next check, ``skip`` undoes the step.

    Args:
        module: the method (its parameters are clipped and checked, its buffers restored on a skip).
        optimizer, scaler: the run's optimizer and GradScaler.
        on_nonfinite: ``"stop"`` or ``"skip"``. grad_clip: ``optim.grad_clip`` (None: none).
        max_skipped_steps: skipped steps in a row before giving up. min_loss_scale: the fp16 warning line.
        checkpoint_path: the run's checkpoint, named by the errors (None without a run directory).
    """

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        *,
        on_nonfinite: str = "stop",
        grad_clip: float | None = None,
        max_skipped_steps: int = 10,
        min_loss_scale: float = 1.0,
        checkpoint_path: Path | None = None,
    ):
        self.module, self.optimizer, self.scaler = module, optimizer, scaler
        self.on_nonfinite, self.grad_clip = on_nonfinite, grad_clip
        self.max_skipped_steps, self.min_loss_scale = max_skipped_steps, min_loss_scale
        self.checkpoint_path = checkpoint_path
        self.skipped_steps = 0  # optimizer steps skipped for a NaN/inf loss or gradients (on_nonfinite=skip)
        self._skipped_in_a_row = 0
        self._buffers_before_step: list[torch.Tensor] | None = None
        self._low_scale_warned = False

    def check(self, nonfinite: torch.Tensor, step: int, epoch: int) -> None:
        """With on_nonfinite=stop, raises if a step since the last check had a NaN/inf loss or gradient."""
        if self.on_nonfinite == "stop" and bool(nonfinite):
            raise NonFiniteLossError(
                f"the loss or the gradients became NaN or infinite near step {step} (epoch {epoch}); "
                f"{kept_checkpoint(self.checkpoint_path)}. Try a lower optim.lr, optim.grad_clip, "
                f"train.precision=fp32, or train.on_nonfinite=skip."
            )

    def snapshot_buffers(self) -> None:
        """With on_nonfinite=skip, keeps the buffers (BatchNorm statistics, queues) from before the
        forward pass, so that a skipped step leaves no trace of its NaN/inf in them either."""
        if self.on_nonfinite != "skip":
            return
        buffers = list(self.module.buffers())
        if self._buffers_before_step is None or len(self._buffers_before_step) != len(buffers):
            self._buffers_before_step = [b.detach().clone() for b in buffers]
        else:
            for saved, b in zip(self._buffers_before_step, buffers):
                saved.copy_(b)

    def optimizer_step(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """Unscales, clips and steps; returns a 0-d bool tensor: was the loss or a gradient NaN/inf?

        ``stop`` steps anyway (no host synchronisation; the next check raises and no checkpoint of the
        damaged state is written). ``skip`` leaves weights, buffers and optimizer state as they were
        before this step, at the cost of one host synchronisation per step. Under fp16 the GradScaler
        skips steps with inf/NaN gradients itself: that is how it tunes its scale.
        """
        scaler = self.scaler
        if scaler.is_enabled() or self.grad_clip:
            scaler.unscale_(self.optimizer)
        bad = ~torch.isfinite(loss.detach())
        if not scaler.is_enabled():
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            if grads:  # the max-abs norm is NaN/inf exactly when some gradient entry is; it never overflows
                bad = bad | ~torch.isfinite(torch.nn.utils.get_total_norm(grads, float("inf")))
        if distributed.is_distributed():  # one verdict on every rank (an inf loss on one rank may leave finite grads)
            bad = distributed.all_reduce(bad.float(), "max") > 0
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        if self.on_nonfinite == "skip" and bool(bad):
            self._skip_step(step)
        else:
            self._skipped_in_a_row = 0
            scaler.step(self.optimizer)
        scaler.update()
        return bad

    def _skip_step(self, step: int) -> None:
        self.skipped_steps += 1
        self._skipped_in_a_row += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self._buffers_before_step is not None:
            for saved, b in zip(self._buffers_before_step, self.module.buffers()):
                b.copy_(saved)
        logger.warning(
            "step %d: NaN or infinite loss or gradients, optimizer step skipped (%d in a row, %d in all)",
            step + 1,
            self._skipped_in_a_row,
            self.skipped_steps,
        )
        if self._skipped_in_a_row > self.max_skipped_steps:
            raise NonFiniteLossError(
                f"{self._skipped_in_a_row} steps in a row had a NaN or infinite loss or gradients (more than "
                f"train.max_skipped_steps={self.max_skipped_steps}) at step {step + 1}; "
                f"{kept_checkpoint(self.checkpoint_path)}. Try a lower optim.lr, optim.grad_clip or "
                f"train.precision=fp32."
            )

    def scalars(self, step: int) -> dict[str, float]:
        """train/skipped_steps (skip mode) and train/loss_scale (fp16); warns once when the scale underflows."""
        scalars: dict[str, float] = {}
        if self.on_nonfinite == "skip":
            scalars["train/skipped_steps"] = float(self.skipped_steps)
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            scalars["train/loss_scale"] = scale
            low = scale < self.min_loss_scale
            if low and not self._low_scale_warned:
                logger.warning(
                    "fp16 loss scale fell to %.3g (below train.min_loss_scale=%g) at step %d: the gradients keep "
                    "overflowing, and those steps are skipped. Try train.precision=bf16 or fp32, a lower optim.lr "
                    "or optim.grad_clip.",
                    scale,
                    self.min_loss_scale,
                    step,
                )
            self._low_scale_warned = low
        return scalars
