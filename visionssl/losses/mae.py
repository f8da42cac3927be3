"""MAE: masked autoencoder reconstruction loss (He et al., 2022, arXiv 2111.06377)."""

from __future__ import annotations

import torch


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p * p * C) non-overlapping patches in row-major order, pixels of a patch
    row by row with the channels last (the reference code's order).

    Example:
        >>> patchify(torch.arange(16.0).view(1, 1, 4, 4), 2)[0, 1].tolist()
        [2.0, 3.0, 6.0, 7.0]
    """
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def mae(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """MAE's loss: mean squared error per patch, averaged over the masked patches only.

    With ``norm_pix`` each target patch is normalised by its own mean and (unbiased) variance first,
    (t - mean) / sqrt(var + eps), the paper's better-performing target.

    Args:
        pred: (B, L, P) reconstructed patches.
        target: (B, L, P) patches of the image (``patchify``).
        mask: (B, L), 1 where a patch was masked (hidden from the encoder), 0 where visible.
        norm_pix: normalise each target patch.
        eps: added to the variance.

    Example:
        >>> t = torch.randn(2, 4, 12)
        >>> float(mae(t, t, torch.ones(2, 4), norm_pix=False))
        0.0
    """
    if pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise ValueError(
            f"pred and target must be (B, L, P) and mask (B, L); got {tuple(pred.shape)}, "
            f"{tuple(target.shape)} and {tuple(mask.shape)}"
        )
    dtype = torch.promote_types(pred.dtype, torch.float32)
    pred, target, mask = pred.to(dtype), target.to(dtype), mask.to(dtype)
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / torch.sqrt(target.var(-1, keepdim=True) + eps)
    per_patch = (pred - target).pow(2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()
