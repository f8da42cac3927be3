"""Self-supervised losses as pure functions: no state, no modules.

Example:
    >>> import torch, visionssl as vs
    >>> float(vs.losses.nt_xent(torch.randn(4, 8), torch.randn(4, 8))) > 0
    True
"""
from visionssl.losses.nt_xent import nt_xent

__all__ = ["nt_xent"]
