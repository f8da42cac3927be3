"""The generated ``shapes`` set: deterministic, balanced, disjoint splits, and hard enough to tell methods apart."""

import pytest
import torch

import visionssl as vs
from visionssl.data import generate_shapes, load_dataset
from visionssl.data.shapes import SHAPES, TEXTURES
from visionssl.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _home(private_home):
    return private_home


def test_the_same_seed_draws_the_same_images_and_another_seed_others():
    a, la = generate_shapes(60, image_size=16, seed=3)
    b, lb = generate_shapes(60, image_size=16, seed=3)
    c, _ = generate_shapes(60, image_size=16, seed=4)
    assert torch.equal(a, b) and all(torch.equal(la[k], lb[k]) for k in la)
    assert not torch.equal(a, c)
    assert a.dtype == torch.uint8 and a.shape == (60, 3, 16, 16)
    assert int(a.float().std()) > 20  # not a blank canvas


def test_classes_are_balanced_and_every_split_keeps_them():
    train, test, holdout = (load_dataset("shapes:400", s, image_size=16) for s in ("train", "test", "holdout"))
    assert (len(train), len(test), len(holdout)) == (300, 100, 100)
    for ds in (train, test, holdout):
        assert ds.targets.bincount(minlength=10).tolist() == [len(ds) // 10] * 10
        assert ds.label == "shape" and ds.classes["shape"] == list(SHAPES) and ds.classes["texture"] == list(TEXTURES)
        assert ds.images.shape[1:] == (3, 16, 16) and ds.images.dtype == torch.uint8
        assert set(ds.labels["texture"].tolist()) == {0, 1, 2}
    assert len(load_dataset("shapes:400", "all", image_size=16)) == 400  # train + test; the holdout only by name
    assert load_dataset("shapes:400", "test", image_size=16, label="texture").num_classes == 3


def test_splits_are_disjoint_and_the_holdout_is_its_own_draw():
    splits = {s: load_dataset("shapes:200", s, image_size=16) for s in ("train", "test", "holdout")}
    seen = {}
    for name, ds in splits.items():
        for img in ds.images.flatten(1):
            key = img.numpy().tobytes()
            assert key not in seen, f"an image of {name} is also in {seen.get(key)}"
            seen[key] = name


def test_the_second_load_comes_from_the_cache(private_home):
    first = load_dataset("shapes:40", "train", image_size=8)
    assert list((private_home / "data").glob("shapes-40-0-8-*.npy"))
    assert torch.equal(load_dataset("shapes:40", "train", image_size=8).images, first.images)


def test_colour_alone_does_not_tell_the_shape():
    train, test = load_dataset("shapes:1000", "train"), load_dataset("shapes:1000", "test")

    def mean_colour(ds):
        return ds.images.float().mean((2, 3))

    top1 = vs.eval.knn(mean_colour(train), train.targets, mean_colour(test), test.targets, k=20)["top1"]
    assert top1 < 20  # chance is 10


def test_an_untrained_network_is_above_chance_and_far_below_perfect():
    train, test = load_dataset("shapes:1000", "train"), load_dataset("shapes:1000", "test")
    torch.manual_seed(0)
    backbone = vs.create_backbone("resnet10t_cifar")
    x, y = vs.eval.extract_features(backbone, train, image_size=32, progress=False)
    xq, yq = vs.eval.extract_features(backbone, test, image_size=32, progress=False)
    top1 = vs.eval.knn(x, y, xq, yq, k=20, temperature=0.07)["top1"]
    assert 12 < top1 < 60, top1


@pytest.mark.parametrize("spec", ["shapes:39", "shapes:abc", "shapes:-5"])
def test_a_bad_size_names_the_spec_and_the_minimum(spec):
    with pytest.raises(DataError, match=r"shapes:.*>= 40"):
        load_dataset(spec, "train", image_size=8)


def test_holdout_is_refused_by_a_dataset_without_one_and_shapes_refuses_other_splits():
    with pytest.raises(ConfigError, match=r"'synthetic:8' has no 'holdout' split; valid: train, test, all"):
        load_dataset("synthetic:8", "holdout", image_size=8)  # before: the train images, silently
    with pytest.raises(ConfigError, match=r"no 'unlabeled' split; valid: train, test, all, holdout"):
        load_dataset("shapes:40", "unlabeled", image_size=8)
    with pytest.raises(DataError, match="valid: shape, texture"):
        load_dataset("shapes:40", "train", image_size=8, label="colour")
