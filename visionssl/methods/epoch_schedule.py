"""The base of methods whose schedules count epochs (SwAV, DINO): a step counter that survives checkpoints,
turned into epochs with the trainer's steps per epoch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from visionssl.methods.base import SSLMethod, TrainingContext


class EpochScheduledMethod(SSLMethod):
    """An ``SSLMethod`` whose schedules (a warm-up, a frozen layer, a queue's start) are set in epochs.

    ``iteration`` (a buffer, so a resumed run continues its schedules) counts the optimizer steps
    taken; ``steps_per_epoch`` comes from the trainer in ``on_train_start``. Outside the trainer it
    stays 1 (every step counts as an epoch) unless set by hand. The count is mirrored on the host, so
    reading ``epoch`` in the step costs no device synchronisation (the buffer is read once after
    construction or ``load_state_dict``).
    """

    iteration: torch.Tensor
    steps_per_epoch: int = 1

    def __init__(self, backbone: str | nn.Module = "resnet18", backbone_kwargs: dict[str, Any] | None = None):
        super().__init__(backbone, backbone_kwargs)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self._host_iteration: int | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_host_iteration", None))

    @property
    def epoch(self) -> float:
        """Epochs completed so far (fractional within an epoch)."""
        if self._host_iteration is None:
            self._host_iteration = int(self.iteration)
        return self._host_iteration / max(self.steps_per_epoch, 1)

    def on_train_start(self, trainer: TrainingContext) -> None:
        self.steps_per_epoch = int(trainer.steps_per_epoch or 1)

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.iteration.fill_(step)
        self._host_iteration = step


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` in the forward pass; its gradient multiplied by ``scale`` (0: a frozen parameter that still
    takes part in the graph, so DistributedDataParallel needs no ``find_unused_parameters``).

    Example:
        >>> w = torch.ones(2, requires_grad=True)
        >>> (3 * scale_grad(w, 0.0)).sum().backward(); w.grad.tolist()
        [0.0, 0.0]
    """
    if scale == 1.0:
        return x
    return x.detach() + (x - x.detach()) * scale
