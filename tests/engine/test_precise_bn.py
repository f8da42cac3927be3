"""Precise BatchNorm: statistics re-estimated on whole images, and the trainer's use of it."""

import pytest
import torch
from torch import nn

import visionssl as vs
from visionssl.engine import Trainer, load_config
from visionssl.engine.batchnorm import recalibrate_batchnorm


def conv_bn() -> nn.Sequential:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    net.num_features = 4
    return net


def test_statistics_are_those_of_the_eval_view_of_the_images():
    torch.manual_seed(0)
    net = conv_bn().eval()
    images = torch.randint(0, 256, (10, 3, 12, 12), dtype=torch.uint8)
    weight = net[0].weight.detach().clone()
    assert recalibrate_batchnorm(net, images, image_size=12, batch_size=10) == 1
    with torch.no_grad():
        conv = net[0](vs.augment.create("eval", image_size=12)(images)[0])
    bn = net[1]
    assert torch.allclose(bn.running_mean, conv.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, conv.transpose(0, 1).flatten(1).var(1, unbiased=True), atol=1e-4)
    assert torch.equal(net[0].weight, weight) and not net.training and bn.momentum == 0.1


def test_several_batches_average_and_max_images_subsamples_evenly():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 12, 12), dtype=torch.uint8)
    net = conv_bn()
    recalibrate_batchnorm(net, images, image_size=12, batch_size=4)
    with torch.no_grad():
        conv = net[0](vs.augment.create("eval", image_size=12)(images)[0])
    expected = (conv[:4].mean((0, 2, 3)) + conv[4:].mean((0, 2, 3))) / 2  # the mean of the two batch means
    assert torch.allclose(net[1].running_mean, expected, atol=1e-5) and net.training  # train mode restored
    sub = conv_bn()
    sub.load_state_dict(net.state_dict())
    recalibrate_batchnorm(sub, images, image_size=12, max_images=2)  # images 0 and 7
    assert torch.allclose(sub[1].running_mean, conv[[0, 7]].mean((0, 2, 3)), atol=1e-5)


def test_bad_input_is_clear_and_a_net_without_batchnorm_is_left_alone():
    with pytest.raises(ValueError, match="uint8"):
        recalibrate_batchnorm(conv_bn(), torch.rand(2, 3, 8, 8), 8)
    with pytest.raises(ValueError, match="max_images must be >= 1"):
        recalibrate_batchnorm(conv_bn(), torch.zeros(2, 3, 8, 8, dtype=torch.uint8), 8, max_images=0)
    plain = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert recalibrate_batchnorm(plain, torch.zeros(2, 3, 8, 8, dtype=torch.uint8), 8) == 0


TINY_JIGSAW = [
    "data.name=synthetic:64",
    "data.image_size=32",
    "augment.image_size=32",
    "backbone.name=resnet10t_cifar",
    "optim.batch_size=16",
    "optim.warmup_epochs=0",
    "method.num_permutations=10",
    "method.tile_dim=16",
    "method.head_hidden_dim=32",
    "train.progress=false",
    "train.epochs=1",
    "train.knn_k=5",
]


def test_with_precise_bn_the_run_ends_with_whole_image_statistics(tmp_path):
    trainer = Trainer(load_config("jigsaw", overrides=TINY_JIGSAW + ["train.precise_bn=true", f"out={tmp_path}"]))
    trainer.fit()
    saved = vs.zoo.load_backbone(tmp_path)  # the checkpoint holds the re-estimated statistics
    stats = [m.running_mean.clone() for m in saved.modules() if isinstance(m, nn.BatchNorm2d)]
    recalibrate_batchnorm(saved, trainer.train_set.images, 32)  # again: nothing changes
    again = [m.running_mean for m in saved.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(stats, again))


def test_without_it_the_statistics_are_the_training_inputs(tmp_path):
    assert load_config("jigsaw").train.precise_bn and load_config("context").train.precise_bn  # their recipes
    assert not load_config("rotation").train.precise_bn and not load_config("simclr").train.precise_bn  # the default
    off = Trainer(load_config("jigsaw", overrides=TINY_JIGSAW + ["train.precise_bn=false", f"out={tmp_path}"]))
    assert not off.precise_bn
    off.fit()
    stats = [m.running_mean.clone() for m in off.method.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    recalibrate_batchnorm(off.method.backbone, off.train_set.images, 32)  # tile statistics differ from whole images'
    again = [m.running_mean for m in off.method.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not all(torch.allclose(a, b, atol=1e-3) for a, b in zip(stats, again))


def test_precise_bn_needs_images_in_memory(tmp_path):
    folder = tmp_path / "images" / "a"
    folder.mkdir(parents=True)
    from PIL import Image

    for i in range(8):
        Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(folder / f"{i}.png")
    cfg = load_config(
        "simclr",
        overrides=[
            f"data.name=imagefolder:{tmp_path / 'images'}",
            "data.stream=true",
            "optim.batch_size=2",
            "train.precise_bn=true",
            "backbone.name=resnet10t_cifar",
        ],
    )
    with pytest.raises(vs.engine.ConfigError, match="precise_bn=true needs the images in memory"):
        Trainer(cfg)
