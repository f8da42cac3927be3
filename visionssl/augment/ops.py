"""Batched augmentations written by hand where the per-op library versions are slow.

Each op draws per-sample random parameters in one call and works on any device. Colour jitter is the
main one: brightness, contrast, saturation, a hue rotation and grayscale are all affine maps of the RGB
vector (contrast's offset is the image's mean gray, itself affine in the image), so, in each sample's own
random order, they compose into one per-sample 3x3 matrix and offset, applied with one batched matrix
product — instead of an RGB->HSV->RGB round trip per op. Two approximations remain against torchvision
(``ColorJitterGrayscale`` states them, docs/performance.md measures them): the hue shift is a rotation
about the gray axis, not torchvision's HSV shift, and the output is clamped to [0, 1] once, at the end
(torchvision clamps after each op; the difference is confined to saturated pixels).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

SMALL_IMAGE = 64  # below this side (pixels) the presets are the papers' small-image (CIFAR) recipes: no blur
LUMA = (0.2989, 0.587, 0.114)  # the weights of torchvision's rgb_to_grayscale (ITU-R 601)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # the op indices of an order, as torchvision's ColorJitter


@functools.cache
def _color_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """LUMA (3,) and the cross-product matrix of the unit gray axis (3, 3) on ``device``, made once per
    device: creating them per call would be a blocking host-to-device copy at every step on a GPU."""
    k = 1 / math.sqrt(3)
    cross = torch.tensor([[0.0, -k, k], [k, 0.0, -k], [-k, k, 0.0]])
    return torch.tensor(LUMA).to(device), cross.to(device)


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high)


def hue_matrix(hue: torch.Tensor) -> torch.Tensor:
    """Per-sample (n, 3, 3) rotation about the gray axis (1, 1, 1) by ``hue`` turns (Rodrigues' formula).

    HSV's hue is the angle about that axis (on a hexagon, not a circle): the rotation turns red to
    yellow to green as torchvision's ``adjust_hue`` does, keeps grays and the channel mean, and is exact
    for a third of a turn on the primaries; between, it approximates the HSV shift.

    Example:
        >>> red_to = hue_matrix(torch.tensor([1 / 3]))[0] @ torch.tensor([1.0, 0.0, 0.0])
        >>> torch.allclose(red_to, torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
        True
    """
    n, device = len(hue), hue.device
    angle = (hue * 2 * math.pi).view(n, 1, 1)
    eye = torch.eye(3, device=device)
    cross = _color_constants(device)[1]
    return (
        torch.cos(angle) * eye
        + torch.sin(angle) * cross
        + (1 - torch.cos(angle)) * torch.full((3, 3), 1 / 3, device=device)
    )


def color_affine(
    x_mean: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
    gray: torch.Tensor,
    order: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (matrix (n, 3, 3), offset (n, 3)) of the colour ops applied in ``order``, then grayscale.

    ``x_mean`` (n, 3) is each image's mean colour (contrast blends towards the mean gray of the image
    as it is when contrast comes, which the composition tracks). ``order`` (n, 4) holds a permutation of
    the op indices BRIGHTNESS, CONTRAST, SATURATION, HUE per sample (default: that order).

    Example:
        >>> one, zero = torch.ones(1), torch.zeros(1)
        >>> m, t = color_affine(torch.rand(1, 3), one, one, one, zero, zero.bool())
        >>> torch.allclose(m, torch.eye(3).expand(1, 3, 3), atol=1e-6), torch.allclose(t, torch.zeros(1, 3))
        (True, True)
    """
    n, device = len(brightness), brightness.device
    luma = _color_constants(device)[0]
    eye = torch.eye(3, device=device).expand(n, 3, 3)
    to_gray = torch.ones(3, 1, device=device) * luma  # every channel becomes the luma
    s = saturation.view(n, 1, 1)
    ops = torch.stack(
        [brightness.view(n, 1, 1) * eye, contrast.view(n, 1, 1) * eye, s * eye + (1 - s) * to_gray, hue_matrix(hue)],
        dim=1,
    )  # (n, 4, 3, 3), indexed by op
    if order is None:
        order = torch.arange(4, device=device).expand(n, 4)
    rows = torch.arange(n, device=device)
    matrix, offset = eye, torch.zeros(n, 3, 1, device=device)
    for step in range(4):
        op = order[:, step]
        step_m = ops[rows, op]
        mean_gray = (matrix @ x_mean.unsqueeze(2) + offset).squeeze(2) @ luma  # (n,): the image as it is now
        blend = torch.where(op == CONTRAST, (1 - contrast) * mean_gray, 0.0)
        matrix = step_m @ matrix
        offset = step_m @ offset + blend.view(n, 1, 1)
    gray_m = torch.where(gray.view(n, 1, 1), to_gray.expand(n, 3, 3), eye)
    return gray_m @ matrix, (gray_m @ offset).squeeze(2)


class ColorJitterGrayscale(nn.Module):
    """Colour jitter with probability ``p`` and grayscale with probability ``grayscale_p``, fused.

    Factors are drawn as torchvision's ``ColorJitter`` draws them (brightness, contrast and saturation
    in [1 - v, 1 + v], hue in [-v, v] of a turn), and each sample applies the four ops in its own random
    order, as torchvision's ``ColorJitter`` shuffles them per call. Against torchvision with the same
    factors and order, brightness, contrast, saturation and grayscale agree to float precision wherever
    no intermediate value leaves [0, 1] (torchvision clamps after each op, this op once at the end); the
    hue shift is a rotation about the gray axis, which differs from torchvision's HSV shift
    (docs/performance.md gives the measured difference).

    Example:
        >>> x = torch.rand(4, 3, 8, 8)
        >>> ColorJitterGrayscale(0.4, 0.4, 0.4, 0.1)(x).shape
        torch.Size([4, 3, 8, 8])
    """

    def __init__(
        self,
        brightness: float,
        contrast: float,
        saturation: float,
        hue: float,
        p: float = 0.8,
        grayscale_p: float = 0.2,
    ):
        super().__init__()
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.p, self.grayscale_p = p, grayscale_p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, device = x.shape[0], x.device
        jitter = torch.rand(n, device=device) < self.p
        one = torch.ones(n, device=device)

        def draw(v: float) -> torch.Tensor:
            return torch.where(jitter, _uniform(n, max(0.0, 1 - v), 1 + v, device), one)

        b, c, s = draw(self.brightness), draw(self.contrast), draw(self.saturation)
        h = torch.where(jitter, _uniform(n, -self.hue, self.hue, device), one - 1)
        gray = torch.rand(n, device=device) < self.grayscale_p
        order = torch.rand(n, 4, device=device).argsort(1)  # a random permutation per sample
        matrix, offset = color_affine(x.mean(dim=(2, 3)).float(), b, c, s, h, gray, order)
        out = torch.baddbmm(offset.unsqueeze(2).to(x.dtype), matrix.to(x.dtype), x.reshape(n, 3, -1))
        return out.clamp_(0, 1).view_as(x)


def resize_matrices(
    start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample (n, out_size, in_size) bilinear resampling matrices along one axis.

    Row i of matrix k holds the weights with which output pixel i reads the input segment
    ``[start[k], start[k] + length[k])`` (pixel centres, ``align_corners=False``, edge pixels repeated),
    in reverse order where ``flip[k]``: exactly what ``grid_sample`` computes along that axis.

    Example:
        >>> R = resize_matrices(torch.tensor([0.0]), torch.tensor([4.0]), 4, 2)
        >>> R[0].tolist()
        [[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]
    """
    j = torch.arange(out_size, device=start.device, dtype=torch.float32) + 0.5
    if flip is not None:
        j = torch.where(flip.view(-1, 1), out_size - j, j)
    pos = (start.view(-1, 1) + j * (length.view(-1, 1) / out_size) - 0.5).clamp(0, in_size - 1)
    low = pos.floor()
    frac = (pos - low).unsqueeze(2)
    low = low.long().unsqueeze(2)
    out = torch.zeros(len(start), out_size, in_size, device=start.device)
    return out.scatter_add_(2, low, 1 - frac).scatter_add_(2, (low + 1).clamp(max=in_size - 1), frac)


def separable(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``rows[k] @ x[k, c] @ cols[k]^T`` for every sample k and channel c: a separable linear map per image.

    Example:
        >>> x = torch.rand(2, 3, 5, 4)
        >>> torch.allclose(separable(x, torch.eye(5).expand(2, 5, 5), torch.eye(4).expand(2, 4, 4)), x)
        True
    """
    n, c, height, width = x.shape
    y = x.reshape(n, c * height, width) @ cols.transpose(1, 2).to(x.dtype)  # along the width
    return rows.unsqueeze(1).to(x.dtype) @ y.view(n, c, height, -1)  # along the height


class RandomResizedCropFlip(nn.Module):
    """Random resized crop (torchvision's sampling of scale and ratio), flips and an optional Gaussian
    blur, all in one per-sample separable resampling: two batched matrix products per view.

    Bilinear resampling is separable, so the crop and resize of sample k along each axis is a small
    matrix; a flip reverses its rows, and a blur of the output (``blur_p`` > 0: a Gaussian with sigma
    drawn from ``blur_sigma``, SimCLR's kernel of ``blur_kernel`` taps, reflect padding) multiplies it
    from the left. Resampling equals ``grid_sample`` (bilinear, border) to float precision; on a CPU
    the products are faster than ``grid_sample`` and make the blur free. Moving the blur before the
    colour ops of a recipe changes nothing (both are linear) except at pixels the colour ops clip.

    Example:
        >>> RandomResizedCropFlip(16, blur_p=0.5)(torch.rand(4, 3, 40, 30)).shape
        torch.Size([4, 3, 16, 16])
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip_p: float = 0.5,
        tries: int = 10,
        vflip_p: float = 0.0,
        blur_p: float = 0.0,
        blur_kernel: int = 3,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
    ):
        super().__init__()
        self.size, self.scale, self.ratio, self.hflip_p, self.tries = size, tuple(scale), tuple(ratio), hflip_p, tries
        self.vflip_p = vflip_p
        self.blur = RandomGaussianBlur(blur_kernel, blur_sigma, p=blur_p) if blur_p > 0 else None

    def boxes(self, n: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(n, 4) crop boxes (x0, y0, w, h) in pixels; the first of ``tries`` draws that fits, else the whole image."""
        area = height * width
        target = area * torch.empty(n, self.tries, device=device).uniform_(*self.scale)
        log_ratio = torch.empty(n, self.tries, device=device).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        aspect = torch.exp(log_ratio)
        w, h = torch.sqrt(target * aspect), torch.sqrt(target / aspect)
        fits = (w <= width) & (h <= height)
        first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1, device=device))
        pick = first.clamp(min=0).unsqueeze(1)
        w = torch.where(first >= 0, w.gather(1, pick).squeeze(1), torch.full((n,), float(width), device=device))
        h = torch.where(first >= 0, h.gather(1, pick).squeeze(1), torch.full((n,), float(height), device=device))
        x0 = torch.rand(n, device=device) * (width - w)
        y0 = torch.rand(n, device=device) * (height - h)
        return torch.stack([x0, y0, w, h], 1)

    def uncropped(self) -> RandomResizedCropFlip:
        """The same flips and blur without the crop, for images already cut to ``size`` (streaming)."""
        op = RandomResizedCropFlip(self.size, (1.0, 1.0), (1.0, 1.0), self.hflip_p, 1, self.vflip_p)
        op.blur = self.blur
        return op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        device = x.device
        x0, y0, w, h = self.boxes(n, height, width, device).unbind(1)
        hflip = torch.rand(n, device=device) < self.hflip_p
        vflip = torch.rand(n, device=device) < self.vflip_p if self.vflip_p > 0 else None
        rows = resize_matrices(y0, h, height, self.size, vflip).to(x.dtype)
        cols = resize_matrices(x0, w, width, self.size, hflip).to(x.dtype)
        if self.blur is not None:
            blur = self.blur.matrices(n, self.size, device).to(x.dtype)
            rows, cols = blur @ rows, blur @ cols
        return separable(x, rows, cols)


def blur_matrices(sigma: torch.Tensor, size: int, kernel_size: int) -> torch.Tensor:
    """Per-sample (n, size, size) matrices B with ``out = x @ B^T``: a 1-d Gaussian of ``sigma`` along
    the last axis, reflect padding folded in (row i holds the weights of output pixel i).

    Example:
        >>> B = blur_matrices(torch.tensor([1.0]), 8, 5)
        >>> B.shape, torch.allclose(B.sum(2), torch.ones(1, 8))
        (torch.Size([1, 8, 8]), True)
    """
    r = kernel_size // 2
    taps = torch.arange(-r, r + 1, device=sigma.device)
    weights = torch.exp(-(taps.float() ** 2) / (2 * sigma.view(-1, 1).float() ** 2))
    weights = weights / weights.sum(1, keepdim=True)  # (n, k)
    source = (torch.arange(size, device=sigma.device).view(-1, 1) + taps.view(1, -1)).abs()
    source = torch.where(source >= size, 2 * size - 2 - source, source)  # reflect at both edges
    out = torch.zeros(len(sigma), size, size, device=sigma.device)
    return out.scatter_add_(2, source.expand(len(sigma), -1, -1), weights.unsqueeze(1).expand(-1, size, -1))


class RandomGaussianBlur(nn.Module):
    """Gaussian blur with a per-sample sigma, applied with probability ``p``.

    Each separable pass is one batched matrix product with a per-sample banded matrix (reflect
    padding folded in): on CPU about twice as fast as a grouped convolution with one group per
    image and channel, and equal to torchvision's ``gaussian_blur`` to float precision.

    Example:
        >>> RandomGaussianBlur(5, p=1.0)(torch.rand(2, 3, 16, 12)).shape
        torch.Size([2, 3, 16, 12])
    """

    def __init__(self, kernel_size: int, sigma: tuple[float, float] = (0.1, 2.0), p: float = 0.5):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.kernel_size, self.sigma, self.p = kernel_size, tuple(sigma), p

    def blur(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Blurs every image of ``x`` (n, c, h, w) with its own ``sigma`` (n,)."""
        height, width = x.shape[-2:]
        k = min(self.kernel_size, 2 * min(height, width) - 1)  # reflect padding needs the kernel inside the image
        return separable(x, blur_matrices(sigma, height, k), blur_matrices(sigma, width, k))

    def matrices(self, n: int, size: int, device: torch.device) -> torch.Tensor:
        """(n, size, size) blur matrices of a square image, drawn as ``forward`` draws (identity where not chosen)."""
        chosen = torch.rand(n, device=device) < self.p
        sigma = _uniform(n, *self.sigma, device)
        blur = blur_matrices(sigma, size, min(self.kernel_size, 2 * size - 1))
        return torch.where(chosen.view(n, 1, 1), blur, torch.eye(size, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        chosen = torch.rand(n, device=x.device) < self.p
        sigma = _uniform(n, *self.sigma, x.device)
        if x.device.type != "cpu":  # selecting by index would read the mask back: blur all, keep the chosen
            return torch.where(chosen.view(n, 1, 1, 1), self.blur(x, sigma), x)
        idx = chosen.nonzero().squeeze(1)  # on the CPU, blur only the chosen images
        out = x.clone()
        out[idx] = self.blur(x[idx], sigma[idx])
        return out


class RandomSolarize(nn.Module):
    """Inverts pixels at or above ``threshold`` with probability ``p`` per sample (BYOL's solarisation).

    Example:
        >>> RandomSolarize(p=1.0)(torch.tensor([[[[0.25, 0.75]]]])).tolist()
        [[[[0.25, 0.25]]]]
    """

    def __init__(self, threshold: float = 0.5, p: float = 0.2):
        super().__init__()
        self.threshold, self.p = threshold, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chosen = (torch.rand(x.shape[0], device=x.device) < self.p).view(-1, 1, 1, 1)
        return torch.where(chosen & (x >= self.threshold), 1 - x, x)
