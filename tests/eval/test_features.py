import hashlib

import pytest
import torch
from torch import nn

import visionssl as vs


class TinyData:
    """The parts of ``ImageDataset`` that feature extraction uses."""

    def __init__(self, n=10, channels=3, size=12, seed=0, name="tiny"):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
        self.labels = {"class": torch.arange(n) % 3}
        self.label = "class"
        self.name = name

    @property
    def targets(self):
        return self.labels[self.label]

    def fingerprint(self):
        return hashlib.sha256(self.images.numpy().tobytes()).hexdigest()[:16]

    def __len__(self):
        return len(self.images)


class Counting(nn.Module):
    """Wraps a backbone and counts its forward calls."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0
        self.num_features = net.num_features

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def tiny_backbone(seed=0, **kw):
    torch.manual_seed(seed)
    return Counting(vs.create_backbone("resnet10t_cifar", **kw))


def test_features_equal_the_backbone_on_eval_views_in_batches():
    data, backbone = TinyData(n=10), tiny_backbone()
    feats, labels = vs.eval.extract_features(backbone, data, batch_size=4, image_size=16, progress=False)
    assert feats.shape == (10, 512) and feats.dtype == torch.float32 and labels.tolist() == data.targets.tolist()
    assert backbone.calls == 3  # ceil(10 / 4) batches
    backbone.eval()
    with torch.no_grad():
        expected = backbone(vs.augment.create("eval", image_size=16)(data.images)[0])
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-5)


def test_backbone_mode_is_restored_and_no_graph_is_built():
    data, backbone = TinyData(n=4), tiny_backbone()
    backbone.train()
    feats, _ = vs.eval.extract_features(backbone, data, progress=False)
    assert backbone.training and not feats.requires_grad
    running_mean = dict(backbone.named_buffers())["net.bn1.running_mean"].clone()
    vs.eval.extract_features(backbone, data, progress=False)
    assert torch.equal(dict(backbone.named_buffers())["net.bn1.running_mean"], running_mean)  # ran in eval mode


def test_second_call_reads_the_cache_without_running_the_backbone(tmp_path):
    data, backbone = TinyData(), tiny_backbone()
    first = vs.eval.extract_features(backbone, data, cache_dir=tmp_path, progress=False)
    calls = backbone.calls
    second = vs.eval.extract_features(backbone, data, cache_dir=tmp_path, progress=False)
    assert backbone.calls == calls  # not run again
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert [p.name for p in tmp_path.iterdir()] == [
        vs.eval.feature_cache_path(backbone, data, tmp_path).name
    ]  # no temp files


def test_cache_key_covers_weights_data_and_image_size(tmp_path):
    data, backbone = TinyData(), tiny_backbone(seed=0)
    vs.eval.extract_features(backbone, data, cache_dir=tmp_path, progress=False)
    calls = backbone.calls
    vs.eval.extract_features(backbone, data, image_size=16, cache_dir=tmp_path, progress=False)  # other transform
    assert backbone.calls > calls
    calls = backbone.calls
    vs.eval.extract_features(backbone, TinyData(seed=1), cache_dir=tmp_path, progress=False)  # other data
    assert backbone.calls > calls
    with torch.no_grad():
        next(backbone.parameters()).add_(1.0)  # changed weights -> new key
    calls = backbone.calls
    vs.eval.extract_features(backbone, data, cache_dir=tmp_path, progress=False)
    assert backbone.calls > calls
    assert len(list(tmp_path.glob("*.pt"))) == 4


def test_given_cache_key_replaces_the_weights_hash(tmp_path):
    data = TinyData()
    a, b = tiny_backbone(seed=0), tiny_backbone(seed=1)
    assert vs.eval.weights_hash(a) != vs.eval.weights_hash(b)
    first, _ = vs.eval.extract_features(a, data, cache_dir=tmp_path, cache_key="sha256:abc", progress=False)
    second, _ = vs.eval.extract_features(b, data, cache_dir=tmp_path, cache_key="sha256:abc", progress=False)
    assert b.calls == 0 and torch.equal(first, second)  # the key says "same checkpoint"


def test_a_damaged_cache_file_is_recomputed_with_a_warning(tmp_path):
    data, backbone = TinyData(), tiny_backbone()
    path = vs.eval.feature_cache_path(backbone, data, tmp_path)
    path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="ignoring unreadable feature cache"):
        feats, _ = vs.eval.extract_features(backbone, data, cache_dir=tmp_path, progress=False)
    assert backbone.calls > 0 and torch.equal(torch.load(path, weights_only=True)["features"], feats)


def test_grayscale_images_feed_three_and_one_channel_backbones():
    data = TinyData(n=5, channels=1)
    three, _ = vs.eval.extract_features(tiny_backbone(), data, progress=False)
    one, _ = vs.eval.extract_features(vs.create_backbone("resnet10t_cifar", in_chans=1), data, progress=False)
    assert three.shape == one.shape == (5, 512) and torch.isfinite(three).all() and torch.isfinite(one).all()


def test_real_dataset_and_unlabelled_data():
    from visionssl.data import load_dataset

    data = load_dataset("synthetic:6", image_size=12)
    feats, labels = vs.eval.extract_features(tiny_backbone(), data, progress=False)
    assert feats.shape == (6, 512) and torch.equal(labels, data.targets)
    data.label = None  # unlabelled: labels are -1
    assert vs.eval.extract_features(tiny_backbone(), data, progress=False)[1].tolist() == [-1] * 6


def test_bad_input():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        vs.eval.extract_features(tiny_backbone(), TinyData(), batch_size=0)
    with pytest.raises(ValueError, match="is empty"):
        vs.eval.extract_features(tiny_backbone(), TinyData(n=0))
    flat = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())  # (B, 2, H, W): not pooled features
    with pytest.raises(ValueError, match=r"must return \(B, D\) features"):
        vs.eval.extract_features(flat, TinyData(n=2), progress=False)
