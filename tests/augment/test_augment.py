import pytest
import torch

import visionssl as vs
from visionssl.augment import to_float


def test_simclr_views_shapes_grayscale_and_float_inputs():
    aug = vs.augment.create("simclr", image_size=24)
    gray = torch.randint(0, 256, (6, 1, 40, 40), dtype=torch.uint8)
    views = aug(gray)
    assert len(views) == 2 and all(v.shape == (6, 3, 24, 24) and v.dtype == torch.float32 for v in views)
    assert aug(torch.rand(6, 3, 40, 40))[0].shape == (6, 3, 24, 24)


def test_views_differ_per_sample_and_per_view():
    aug = vs.augment.create("simclr", image_size=16)
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8).expand(8, -1, -1, -1).contiguous()
    v1, v2 = aug(x)
    assert not torch.allclose(v1, v2)
    assert not torch.allclose(v1[0], v1[1])  # per-sample random parameters within one batch


def aug_crop(aug):
    return aug.pipelines[0][0]


def test_simclr_preset_follows_image_size():
    small = vs.augment.create("simclr", image_size=32)
    large = vs.augment.create("simclr", image_size=96)

    def names(aug):
        return [type(m).__name__ for m in aug.pipelines[0]]

    assert names(small) == names(large) == ["RandomResizedCropFlip", "ColorJitterGrayscale"]
    assert aug_crop(small).blur is None and aug_crop(large).blur.p == 0.5  # the fused blur sits in the crop
    kornia = vs.augment.create("simclr", image_size=96, backend="kornia")
    assert names(kornia) == [
        "RandomResizedCrop",
        "RandomHorizontalFlip",
        "ColorJitter",
        "RandomGrayscale",
        "RandomGaussianBlur",
    ]


def test_eval_view_is_deterministic_and_normalised():
    aug = vs.augment.create("eval", image_size=8)
    x = torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)
    (v,) = aug(x)
    assert torch.equal(v, aug(x)[0])
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(v[0, :, 0, 0], expected, atol=1e-6)


def test_to_float_channels_and_errors():
    assert to_float(torch.zeros(1, 1, 2, 2, dtype=torch.uint8)).shape == (1, 3, 2, 2)
    assert to_float(torch.ones(1, 3, 2, 2), channels=1).shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        to_float(torch.zeros(3, 2, 2))
    with pytest.raises(vs.RegistryError, match="unknown augmentation"):
        vs.augment.create("simclrr")


@pytest.mark.parametrize("name", ["simclr", "byol", "moco", "rotation", "eval"])
def test_bf16_views_match_fp32_views_to_bf16_precision(name):
    images = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8)
    aug = vs.augment.create(name, image_size=32)
    torch.manual_seed(0)
    reference = aug(images)
    aug.dtype = torch.bfloat16
    torch.manual_seed(0)
    views = aug(images)
    for v, r in zip(views, reference):
        assert v.dtype == torch.bfloat16 and v.shape == r.shape
        # bf16 keeps 8 significant bits: on average well under one uint8 level (1/255/0.225 = 0.017) apart
        assert (v.float() - r).abs().mean() < 0.01
