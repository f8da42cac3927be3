"""Online evaluators: what the trainer runs on the frozen backbone during training (``train.knn_every``).

The engine only names them; ``visionssl.eval`` fills the registry (it registers ``"knn"``), so the
training loop never imports the evaluation package. The package root imports ``visionssl.eval``, so
the built-in evaluators are registered whenever visionssl is imported.

Example:
    >>> import visionssl
    >>> "knn" in EVALUATORS
    True
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from visionssl.registry import Registry

EVALUATORS = Registry("evaluator")


class Evaluator(Protocol):
    """An evaluator: a collective (every rank calls it) returning metrics on rank 0, ``None`` elsewhere.

    Args:
        backbone: the frozen feature extractor (run in eval mode; its mode is the caller's to restore).
        bank, queries: labelled datasets (``.images`` uint8, ``.targets``).
        batch_size, image_size, device: how to extract features.
        options: the evaluator's own settings (for ``"knn"``: ``k`` and ``temperature``).
    """

    def __call__(
        self,
        backbone: nn.Module,
        bank: Any,
        queries: Any,
        *,
        batch_size: int,
        image_size: int,
        device: torch.device,
        **options: Any,
    ) -> dict[str, float] | None: ...


def register_evaluator(name: str):  # noqa: ANN201  (a decorator)
    """Registers an ``Evaluator`` under ``name`` (see ``EVALUATORS``)."""
    return EVALUATORS.register(name)
