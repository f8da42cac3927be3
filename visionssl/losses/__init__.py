"""Self-supervised losses as pure functions: no state, no modules.

Example:
    >>> import torch, visionssl as vs
    >>> float(vs.losses.nt_xent(torch.randn(4, 8), torch.randn(4, 8))) > 0
    True
"""

from visionssl.losses.barlow_twins import barlow_twins
from visionssl.losses.dino import dino, dino_center
from visionssl.losses.infonce import infonce
from visionssl.losses.infonce_queue import infonce_queue
from visionssl.losses.mae import mae, patchify
from visionssl.losses.negative_cosine import negative_cosine
from visionssl.losses.nt_xent import nt_xent
from visionssl.losses.swav import sinkhorn, swav
from visionssl.losses.vicreg import vicreg

__all__ = [
    "barlow_twins",
    "dino",
    "dino_center",
    "infonce",
    "infonce_queue",
    "mae",
    "negative_cosine",
    "nt_xent",
    "patchify",
    "sinkhorn",
    "swav",
    "vicreg",
]
