import numpy as np
import pytest
import torch
from PIL import Image

import visionssl as vs
from visionssl.data import BadImageError, BatchLoader, load_dataset, stratified_split


@pytest.fixture
def folder(tmp_path):
    """A tiny ImageFolder: 2 classes x 3 images of different sizes and modes."""
    rng = np.random.default_rng(0)
    for c, mode in (("cats", "RGB"), ("dogs", "L")):
        (tmp_path / c).mkdir()
        for i in range(3):
            arr = rng.integers(0, 256, (20 + i, 30, 3) if mode == "RGB" else (24, 20 + i), dtype=np.uint8)
            Image.fromarray(arr, mode).save(tmp_path / c / f"{i}.png")
    return tmp_path


def test_elpv_is_the_embedded_default(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONSSL_HOME", str(tmp_path))
    train = load_dataset("elpv", "train", image_size=16)
    test = load_dataset("elpv", "test", image_size=16)
    assert len(train) + len(test) == 2624
    assert train.images.shape[1:] == (1, 16, 16) and train.images.dtype == torch.uint8
    assert train.label == "defect" and set(train.labels) >= {"defect", "type"}
    everything = load_dataset("elpv", "all", image_size=16)
    assert int(everything.labels["defect"].sum()) == 106 + 715  # probability >= 0.5
    assert int(everything.labels["type"].sum()) == 1550  # poly
    # stratified: the defect rate is the same in both splits to within one image per stratum
    assert abs(train.targets.float().mean() - test.targets.float().mean()) < 0.01
    # the split is fixed: loading again gives the same images, and the second load hits the cache
    assert torch.equal(load_dataset("elpv", "test", image_size=16).images, test.images)
    assert list((tmp_path / "data").glob("elpv-16-*.npy"))
    assert load_dataset("elpv:type", "test", image_size=16).label == "type"


def test_stratified_split_is_seeded_and_disjoint():
    strata = np.repeat([0, 1, 2], [40, 20, 8])
    a_train, a_test = stratified_split(strata, 0.25, seed=3)
    b_train, b_test = stratified_split(strata, 0.25, seed=3)
    assert np.array_equal(a_test, b_test) and not set(a_train) & set(a_test)
    assert [int((strata[a_test] == s).sum()) for s in range(3)] == [10, 5, 2]


def test_imagefolder_decodes_once_to_uint8(folder, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    ds = load_dataset(str(folder), split="all", image_size=16, cache_dir=str(cache))
    assert ds.images.shape == (6, 3, 16, 16) and ds.classes["class"] == ["cats", "dogs"]
    assert ds.targets.tolist() == [0, 0, 0, 1, 1, 1]
    again = load_dataset(f"imagefolder:{folder}", split="all", image_size=16, cache_dir=str(cache))
    assert torch.equal(again.images, ds.images) and again.fingerprint() == ds.fingerprint()


def test_corrupt_jpeg_names_the_file_and_skip_reports_it(folder):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "cats" / "broken.jpg")
    data = (folder / "cats" / "broken.jpg").read_bytes()
    (folder / "cats" / "broken.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(BadImageError, match=r"broken\.jpg.*--skip-bad-images"):
        load_dataset(str(folder), split="all", image_size=16, cache_dir="")
    ds = load_dataset(str(folder), split="all", image_size=16, skip_bad_images=True, cache_dir="")
    assert len(ds) == 6 and len(ds.skipped) == 1 and ds.skipped[0][0].endswith("broken.jpg")


@pytest.mark.parametrize("mode,dtype", [("CMYK", None), ("P", None), ("RGBA", None), ("I;16", np.uint16)])
def test_unusual_modes_become_rgb(tmp_path, mode, dtype):
    path = tmp_path / "x.png" if mode != "CMYK" else tmp_path / "x.jpg"
    if dtype is not None:
        Image.fromarray(np.full((10, 10), 60000, dtype)).save(path)
    else:
        Image.new(mode, (10, 10)).save(path)
    assert vs.data.decode_image(path, 8).shape == (3, 8, 8)


def test_bad_specs_fail_clearly(tmp_path):
    with pytest.raises(vs.errors.DataError, match="does not exist"):
        load_dataset(str(tmp_path / "missing") + "/")
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_dataset(str(tmp_path))
    with pytest.raises(vs.RegistryError, match="unknown dataset"):
        load_dataset("imagenett")
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("synthetic", split="val")
    with pytest.raises(vs.errors.DataError, match="never downloads"):
        load_dataset(f"cifar10:{tmp_path}")
    with pytest.raises(ValueError, match="no label 'colour'"):
        load_dataset("elpv:colour", image_size=8)


def test_batch_loader_order_is_seeded_and_resumable():
    ds = load_dataset("synthetic:20", image_size=8)
    loader = BatchLoader(ds, batch_size=6, seed=1)
    full = [idx for idx, _ in loader.epoch(3)]
    assert len(full) == len(loader) == 3  # drop_last
    resumed = [idx for idx, _ in loader.epoch(3, start=1)]
    assert all(torch.equal(a, b) for a, b in zip(full[1:], resumed))
    assert not torch.equal(torch.cat(full), torch.cat([i for i, _ in loader.epoch(4)]))
    idx, x = next(iter(loader.epoch(0)))
    assert torch.equal(x, ds.images[idx])
    loader.sample_weights = torch.tensor([1.0] + [0.0] * 19)
    assert set(torch.cat([i for i, _ in loader.epoch(0)]).tolist()) == {0}
    with pytest.raises(ValueError, match="larger than the dataset"):
        BatchLoader(ds, batch_size=21)
