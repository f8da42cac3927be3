"""The guards around the training loop: a clean stop on SIGTERM/SIGINT, and NaN/inf steps stopped or skipped.

``Guards`` is a mixin of ``visionssl.engine.Trainer``; it uses the trainer's ``config``, ``method``,
``optimizer``, ``scaler``, ``out``, ``step``, ``epoch`` and ``save_checkpoint``.
"""

from __future__ import annotations

import logging
import shlex
import signal
import threading
from collections.abc import Callable
from typing import Any

import torch

from visionssl import distributed
from visionssl.errors import NonFiniteLossError

logger = logging.getLogger("visionssl.engine.trainer")


class Guards:
    """Preemption (``train``'s stop signals) and non-finite steps (``train.on_nonfinite``) for the Trainer."""

    def _check_finite(self, nonfinite: torch.Tensor) -> None:
        """With train.on_nonfinite=stop, raises if a step since the last check had a NaN/inf loss or gradient."""
        if self.config.train.on_nonfinite == "stop" and bool(nonfinite):
            raise NonFiniteLossError(
                f"the loss or the gradients became NaN or infinite near step {self.step} (epoch {self.epoch}); "
                f"{self._kept_checkpoint()}. Try a lower optim.lr, optim.grad_clip, train.precision=fp32, "
                f"or train.on_nonfinite=skip."
            )

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
            logger.warning(
                "%s received: stopping after the current step to save a checkpoint (SIGINT again stops at once)",
                self.stop_signal,
            )

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
        if (
            distributed.is_distributed()
        ):  # one verdict on every rank (an inf loss on one rank may leave finite gradients)
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
        logger.warning(
            "step %d: NaN or infinite loss or gradients, optimizer step skipped (%d in a row, %d in all)",
            self.step + 1,
            self._skipped_in_a_row,
            self.skipped_steps,
        )
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
                    "or optim.grad_clip.",
                    scale,
                    self.config.train.min_loss_scale,
                    self.step,
                )
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
        return (
            f"the last good checkpoint is kept at {path}"
            if path is not None and path.is_file()
            else "no checkpoint was written yet"
        )
