"""The hand-written batched ops against torchvision's functional reference, op by op."""

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from visionssl.augment.ops import (
    ColorJitterGrayscale,
    RandomGaussianBlur,
    RandomResizedCropFlip,
    color_affine,
    resize_matrices,
)


def apply(matrix, x, offset=0.0):
    return torch.einsum("nij,njhw->nihw", matrix, x) + offset


def color_matrix(b, c, s, h, gray):
    return color_affine(torch.zeros(len(b), 3), b, c, s, h, gray)[0]


def test_color_matrix_matches_torchvision_brightness_saturation_grayscale():
    x = 0.2 + 0.5 * torch.rand(3, 3, 6, 6)  # mid-range: no clamping in the reference either
    one, zero, no = torch.ones(3), torch.zeros(3), torch.zeros(3, dtype=torch.bool)
    b = torch.tensor([0.7, 1.0, 1.2])
    assert torch.allclose(
        apply(color_matrix(b, one, one, zero, no), x),
        torch.stack([TF.adjust_brightness(x[i], float(b[i])) for i in range(3)]),
        atol=1e-5,
    )
    s = torch.tensor([0.0, 0.6, 1.3])
    expected = torch.stack([TF.adjust_saturation(x[i], float(s[i])) for i in range(3)])
    assert torch.allclose(apply(color_matrix(one, one, s, zero, no), x).clamp(0, 1), expected, atol=1e-5)
    gray = torch.tensor([True, False, True])
    out = apply(color_matrix(one, one, one, zero, gray), x)
    assert torch.allclose(out[0], TF.rgb_to_grayscale(x[0], 3), atol=1e-5) and torch.allclose(out[1], x[1])


def test_contrast_matches_torchvision():
    x = 0.3 + 0.4 * torch.rand(4, 3, 6, 6)
    jitter = ColorJitterGrayscale(0.0, 0.5, 0.0, 0.0, p=1.0, grayscale_p=0.0)
    torch.manual_seed(1)
    out = jitter(x)
    torch.manual_seed(1)  # replay the draws: jitter mask, brightness (fixed at 1), contrast
    torch.rand(4)
    torch.empty(4).uniform_(1.0, 1.0)
    c = torch.empty(4).uniform_(0.5, 1.5)
    expected = torch.stack([TF.adjust_contrast(x[i], float(c[i])) for i in range(4)])
    assert torch.allclose(out, expected.clamp(0, 1), atol=1e-5)


def test_hue_rotation_keeps_gray_and_luma_and_is_periodic():
    x = torch.rand(2, 3, 5, 5)
    one, no = torch.ones(2), torch.zeros(2, dtype=torch.bool)
    gray_img = x.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    m = color_matrix(one, one, one, torch.tensor([0.1, -0.3]), no)
    assert torch.allclose(apply(m, gray_img), gray_img, atol=1e-5)  # grays have no hue
    assert torch.allclose(apply(m, x).mean(1), x.mean(1), atol=1e-5)  # a rotation about the gray axis keeps the mean
    full_turn = color_matrix(one, one, one, torch.tensor([1.0, -1.0]), no)
    assert torch.allclose(full_turn, torch.eye(3).expand(2, 3, 3), atol=1e-5)


def test_crop_whole_image_is_identity_and_flip_mirrors():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    same = RandomResizedCropFlip(8, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0)(x)
    assert torch.allclose(same, x, atol=1e-4)
    flipped = RandomResizedCropFlip(8, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=1.0)(x)
    assert torch.allclose(flipped, x.flip(-1), atol=1e-4)


def test_crop_boxes_follow_scale_and_ratio():
    op = RandomResizedCropFlip(16, scale=(0.2, 0.5), ratio=(0.75, 4 / 3))
    x0, y0, w, h = op.boxes(2000, 100, 100, torch.device("cpu")).unbind(1)
    area = w * h / 100**2
    assert area.min() >= 0.2 - 1e-4 and area.max() <= 0.5 + 1e-4
    assert (w / h).min() >= 0.75 - 1e-4 and (w / h).max() <= 4 / 3 + 1e-4
    assert (x0 >= 0).all() and (x0 + w <= 100 + 1e-3).all() and (y0 + h <= 100 + 1e-3).all()


def test_blur_matches_torchvision_for_the_drawn_sigma():
    x = torch.rand(3, 3, 12, 12)
    torch.manual_seed(5)
    out = RandomGaussianBlur(5, sigma=(0.5, 1.5), p=1.0)(x)
    torch.manual_seed(5)
    torch.rand(3)
    sigma = torch.empty(3).uniform_(0.5, 1.5)
    expected = torch.stack([TF.gaussian_blur(x[i], [5, 5], [float(sigma[i])] * 2) for i in range(3)])
    assert torch.allclose(out, expected, atol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        RandomGaussianBlur(4)


def grid_sample_crop(x, boxes, hflip, vflip, size):
    """The reference: one bilinear grid_sample per batch (border padding) over each box, flips by sign."""
    n, _, height, width = x.shape
    x0, y0, w, h = boxes.unbind(1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w / width * torch.where(hflip, -1.0, 1.0)
    theta[:, 0, 2] = (2 * x0 + w) / width - 1
    theta[:, 1, 1] = h / height * torch.where(vflip, -1.0, 1.0)
    theta[:, 1, 2] = (2 * y0 + h) / height - 1
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def test_separable_crop_equals_grid_sample_with_both_flips():
    x = torch.rand(64, 3, 40, 30)
    op = RandomResizedCropFlip(16, scale=(0.08, 1.0), hflip_p=0.5, vflip_p=0.5)
    torch.manual_seed(3)
    out = op(x)
    torch.manual_seed(3)  # the same draws, in the same order: boxes, horizontal, vertical flips
    boxes = op.boxes(64, 40, 30, x.device)
    hflip, vflip = torch.rand(64) < 0.5, torch.rand(64) < 0.5
    assert hflip.any() and (~hflip).any() and vflip.any() and (~vflip).any()
    assert torch.allclose(out, grid_sample_crop(x, boxes, hflip, vflip, 16), atol=1e-5)


def test_resize_matrices_rows_are_bilinear_weights():
    R = resize_matrices(torch.tensor([2.0, 0.0]), torch.tensor([4.0, 8.0]), 8, 4, flip=torch.tensor([False, True]))
    assert torch.allclose(R.sum(2), torch.ones(2, 4))
    assert torch.equal(R[0], torch.eye(8)[2:6])  # a 4-pixel segment at 4 outputs: a copy
    assert torch.allclose(R[1], 0.5 * (torch.eye(8)[0::2] + torch.eye(8)[1::2]).flip(0))  # halved, mirrored


def test_fused_blur_equals_crop_then_blur():
    x = torch.rand(8, 3, 40, 40)
    fused = RandomResizedCropFlip(24, blur_p=1.0, blur_kernel=5, blur_sigma=(0.5, 1.5))
    torch.manual_seed(9)
    out = fused(x)
    torch.manual_seed(9)
    cropped = RandomResizedCropFlip(24)(x)  # the same box and flip draws
    torch.rand(8)  # blur's choice
    sigma = torch.empty(8).uniform_(0.5, 1.5)
    expected = torch.stack([TF.gaussian_blur(cropped[i], [5, 5], [float(sigma[i])] * 2) for i in range(8)])
    assert torch.allclose(out, expected, atol=1e-5)


def test_uncropped_keeps_flips_and_blur_only():
    op = RandomResizedCropFlip(8, scale=(0.1, 0.2), hflip_p=1.0, blur_p=0.3, blur_kernel=3)
    plain = op.uncropped()
    assert plain.blur is op.blur and (plain.scale, plain.ratio) == ((1.0, 1.0), (1.0, 1.0))
    plain.blur = None
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(plain(x), x.flip(-1), atol=1e-6)
