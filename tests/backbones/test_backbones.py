import pytest
import torch
from torch import nn

import visionssl as vs


@pytest.mark.parametrize("name,dim", [("resnet18_cifar", 512), ("resnet10t_cifar", 512), ("resnet18", 512)])
def test_backbones_return_pooled_features(name, dim):
    net = vs.create_backbone(name)
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, dim) and net.num_features == dim


def test_cifar_stem_keeps_resolution():
    net = vs.create_backbone("resnet18_cifar")
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)
    feats = net.forward_features(torch.randn(1, 3, 32, 32))
    assert feats.shape[-1] == 4  # 32 / 8: only the three stride-2 stages remain


def test_timm_kwargs_pass_through():
    net = vs.create_backbone("resnet18", in_chans=1)
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 512)
    vit = vs.create_backbone("vit_tiny_patch16_224", img_size=32, patch_size=8)
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, vit.num_features)


def test_user_registered_backbone_trains_in_a_method():
    @vs.register_backbone("test_tiny_cnn", override=True)
    def tiny_cnn(width: int = 8, **_):
        net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        net.num_features = width
        return net

    assert "test_tiny_cnn" in vs.list_backbones("test_*")
    method = vs.create_method("simclr", backbone="test_tiny_cnn", backbone_kwargs={"width": 4}, proj_hidden_dim=16)
    method([torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)])["loss"].backward()
    assert method.backbone[0].weight.grad is not None


def test_backbone_without_num_features_is_rejected():
    @vs.register_backbone("test_bad_backbone", override=True)
    def bad(**_):
        return nn.Flatten()

    with pytest.raises(vs.errors.ConfigError, match="num_features"):
        vs.create_backbone("test_bad_backbone")


def test_list_backbones_wildcard():
    names = vs.list_backbones("resnet1*")
    assert "resnet18_cifar" in names and "resnet18" in names
    assert all(n.startswith("resnet1") for n in names)
