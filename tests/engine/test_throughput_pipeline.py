"""The fast training path: no host synchronisation in the step, device prefetch, channels-last, and the
streaming image-folder path (CPU workers decode + crop, the device does the rest)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

import visionssl as vs
from visionssl.augment.ops import RandomGaussianBlur
from visionssl.augment.preset_split import split_preset
from visionssl.data import BadImageError
from visionssl.data.crop_loader import (
    CropSpec,
    ImageFiles,
    StreamLoader,
    list_image_files,
    random_crop_box,
    read_crops,
)
from visionssl.data.loader import BatchLoader, prefetch_to_device
from visionssl.engine.optim import create_optimizer
from visionssl.engine.stream_loader import stream_loader
from visionssl.errors import DataError

# ------------------------------------------------------------------------------ host synchronisation
SYNCING_OPS = {"_local_scalar_dense", "is_nonzero", "nonzero", "_linalg_check_errors", "masked_select"}


class HostSyncs(TorchDispatchMode):
    """Records every op that makes the host wait for the device: reading a value (.item(), bool()),
    data-dependent shapes (nonzero), linalg error checks, and blocking host-to-device copies
    (``torch.tensor(..., device=)`` or ``.to(device)`` without ``non_blocking``)."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in SYNCING_OPS:
            self.found.append(name)
        elif name == "lift_fresh" and args[0].device.type != "cpu":
            self.found.append(f"torch.tensor(..., device={args[0].device})")
        elif (
            name == "_to_copy"
            and args[0].device.type == "cpu"
            and torch.device(kwargs.get("device") or "cpu").type != "cpu"
        ):
            if not kwargs.get("non_blocking", False):
                self.found.append(f"blocking copy of {tuple(args[0].shape)} to the device")
        return func(*args, **kwargs)


@pytest.mark.parametrize("preset", ["simclr", "byol", "vicreg", "moco"])
def test_augmentation_never_waits_for_the_device(preset):
    # the meta device stands for a GPU: every op runs, no data, and copies from the CPU show up as copies
    augment = vs.augment.create(preset, image_size=64).to("meta")  # 64 px: blur and solarisation are on
    images = torch.empty(4, 3, 72, 72, dtype=torch.uint8, device="meta")
    augment(images)  # the colour constants are made on the device once, on the first call
    with HostSyncs() as syncs:
        views = augment(images)
    assert syncs.found == []
    assert [tuple(v.shape) for v in views] == [(4, 3, 64, 64)] * 2


@pytest.mark.parametrize("method", ["simclr", "byol", "vicreg"])
def test_training_step_reads_nothing_back_from_the_device(method):
    torch.manual_seed(0)
    model = vs.create_method(method, backbone="resnet10t_cifar")
    optimizer = create_optimizer(model.param_groups(1e-5), "lars", lr=0.1)
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    with HostSyncs() as syncs:
        out = model(views)
        out["loss"].backward()
        optimizer.step()
        model.on_step_end(1, 10)
    assert syncs.found == []


def test_blur_selects_without_synchronising_and_matches_the_cpu_path():
    x = torch.rand(6, 3, 12, 12)
    blur = RandomGaussianBlur(5, p=0.5)
    torch.manual_seed(1)
    cpu_path = blur(x)  # blurs only the chosen samples (nonzero is free on the CPU)
    torch.manual_seed(1)
    chosen, sigma = torch.rand(6) < 0.5, torch.empty(6).uniform_(0.1, 2.0)
    device_path = torch.where(chosen.view(6, 1, 1, 1), blur.blur(x, sigma), x)  # what runs on a GPU
    assert 0 < int(chosen.sum()) < 6
    assert torch.allclose(cpu_path, device_path, atol=1e-6)
    assert torch.equal(cpu_path[~chosen], x[~chosen])


def test_prefetch_keeps_batches_and_order_on_the_cpu():
    ds = vs.data.load_dataset("synthetic:12", image_size=8)
    loader = BatchLoader(ds, batch_size=4, seed=1)
    got = list(loader.epoch(0))
    assert [i.tolist() for i, _ in got] == [b.tolist() for b in loader.order(0).split(4)]
    assert all(torch.equal(x, ds.images[i]) for i, x in got)
    assert list(prefetch_to_device(iter([]), "cpu")) == []


def test_trainer_uses_channels_last_on_the_cpu():
    from visionssl.engine.config import load_config
    from visionssl.engine.trainer import Trainer

    cfg = load_config(
        "simclr",
        overrides=[
            "data.name=synthetic:16",
            "backbone.name=resnet10t_cifar",
            "data.image_size=16",
            "augment.image_size=16",
            "optim.batch_size=8",
            "train.progress=false",
        ],
    )
    trainer = Trainer(cfg)
    conv = next(
        m for m in trainer.method.backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)
    )
    assert trainer.channels_last and conv.weight.is_contiguous(memory_format=torch.channels_last)
    cfg.train.channels_last = False
    assert not Trainer(cfg).channels_last


# ---------------------------------------------------------------------------------------- streaming
@pytest.fixture
def folder(tmp_path):
    """Two classes of 6 JPEGs each, of different sizes, with smooth random content."""
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(6):
            h, w = 40 + 4 * i, 56 - 2 * i
            small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
            Image.fromarray(small).resize((w, h), Image.BILINEAR).save(tmp_path / c / f"{i}.jpg", quality=95)
    return tmp_path


def make_loader(folder, **kw) -> StreamLoader:
    files = list_image_files(str(folder), split="all")
    kw.setdefault("num_workers", 0)
    return StreamLoader(files, [CropSpec(16), CropSpec(16, (0.5, 1.0))], kw.pop("batch_size", 4), **kw)


def test_stream_batches_are_uint8_crops_of_every_view(folder):
    loader = make_loader(folder)
    batches = list(loader.epoch(0))
    assert len(batches) == len(loader) == 3
    for indices, crops in batches:
        assert crops.dtype == torch.uint8 and crops.shape == (4, 2, 3, 16, 16) and len(indices) == 4
    gray = make_loader(folder, channels=1)
    assert next(iter(gray.epoch(0)))[1].shape == (4, 2, 1, 16, 16)


def test_stream_order_and_crops_are_seeded_resumable_and_worker_independent(folder):
    a, b = make_loader(folder, seed=7), make_loader(folder, seed=7, num_workers=2)
    first = list(a.epoch(0))
    assert [i.tolist() for i, _ in first] == [t.tolist() for t in a.order(0).split(4)]
    for (ia, xa), (ib, xb) in zip(first, b.epoch(0)):  # two worker processes: the same batches
        assert torch.equal(ia, ib) and torch.equal(xa, xb)
    resumed = list(a.epoch(0, start=1))
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(first[1:], resumed))
    again = [x for _, x in a.epoch(1)]  # a new epoch: new order and new crops
    assert not all(torch.equal(x, y) for (_, x), y in zip(first, again))
    other = [i.tolist() for i, _ in make_loader(folder, seed=8).epoch(0)]
    assert other != [i.tolist() for i, _ in first]


def test_crop_of_the_whole_image_is_the_antialiased_resize(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    crops = read_crops(tmp_path / "x.png", [CropSpec(10, (1.0, 1.0), (1.0, 1.0))], 3, np.random.default_rng(0))
    expected = np.asarray(Image.fromarray(pixels).resize((10, 10), Image.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(crops[0], expected)


def test_reduced_scale_jpeg_decoding_stays_close_to_the_full_decode(folder, monkeypatch):
    path = folder / "cat" / "5.jpg"  # 60 x 46 px: crops to 8 px allow decoding at 1/2 scale or less
    spec = [CropSpec(8, (1.0, 1.0), (1.0, 1.0))]
    fast = read_crops(path, spec, 3, np.random.default_rng(0)).astype(float)
    monkeypatch.setattr(Image.Image, "draft", lambda self, mode, size: None)
    full = read_crops(path, spec, 3, np.random.default_rng(0)).astype(float)
    assert np.abs(fast - full).mean() < 6


def test_crop_boxes_follow_scale_and_ratio():
    rng = np.random.default_rng(0)
    boxes = np.array([random_crop_box(100, 80, CropSpec(16, (0.2, 0.6), (0.75, 4 / 3)), rng) for _ in range(500)])
    x0, y0, w, h = boxes.T
    assert (w * h / 8000).min() >= 0.2 - 1e-9 and (w * h / 8000).max() <= 0.6 + 1e-9
    assert (w / h).min() >= 0.75 - 1e-9 and (w / h).max() <= 4 / 3 + 1e-9
    assert (x0 >= 0).all() and (x0 + w <= 100).all() and (y0 + h <= 80).all()


def test_bad_file_is_named_or_skipped_keeping_the_batch_size(folder):
    bad = folder / "dog" / "2.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(BadImageError, match="2.jpg"):
        list(make_loader(folder, shuffle=False).epoch(0))
    loader = make_loader(folder, shuffle=False, skip_bad_images=True)
    batches = list(loader.epoch(0))
    assert all(x.shape[0] == 4 for _, x in batches)
    assert [p for p, _ in loader.files.skipped] == [str(bad)]
    bad_index = loader.files.paths.index(bad)
    assert bad_index not in torch.cat([i for i, _ in batches]).tolist()  # its slot holds another image


def test_decoding_the_jpeg_bytes_in_the_main_process_gives_the_same_batches(folder):
    # gpu_decode on a CPU device runs the nvJPEG code path with the CPU decoder (data.decode.decode_jpegs)
    Image.new("RGB", (40, 40), (200, 30, 90)).save(folder / "cat" / "solid.png")  # not a JPEG: decoded by PIL
    cpu, bytes_path = make_loader(folder, shuffle=False), make_loader(folder, shuffle=False, gpu_decode=True)
    for (ia, xa), (ib, xb) in zip(cpu.epoch(0), bytes_path.epoch(0)):
        assert torch.equal(ia, ib) and xa.shape == xb.shape and xb.dtype == torch.uint8
        assert (xa.float() - xb.float()).abs().mean() < 12  # same boxes; only the resize filters differ
    solid = cpu.files.paths.index(folder / "cat" / "solid.png")
    indices, crops = next((i, x) for i, x in bytes_path.epoch(0) if solid in i.tolist())
    assert (
        crops[indices.tolist().index(solid)] == torch.tensor([200, 30, 90], dtype=torch.uint8).view(1, 3, 1, 1)
    ).all()


def test_split_preset_moves_the_crop_and_keeps_the_rest_on_the_device():
    for backend in ("fused", "kornia"):
        specs, views = split_preset(vs.augment.create("moco", image_size=24, backend=backend))
        assert specs == [CropSpec(24, (0.2, 1.0), (3 / 4, 4 / 3))] * 2
        out = views(torch.randint(0, 256, (3, 2, 3, 24, 24), dtype=torch.uint8))
        assert [tuple(v.shape) for v in out] == [(3, 3, 24, 24)] * 2
    with pytest.raises(ValueError, match="expected crops"):
        views(torch.zeros(3, 3, 24, 24, dtype=torch.uint8))
    with pytest.raises(ValueError, match="no random resized crop"):
        split_preset(vs.augment.create("eval", image_size=24))


def test_stream_views_replicate_grayscale_and_only_flip_without_colour():
    augment = vs.augment.create("simclr", image_size=8, channels=3)
    _, views = split_preset(augment)
    for pipeline in views.pipelines:  # keep the flip only: colour ops off
        pipeline[0].hflip_p = 1.0  # the crop without cropping: flips (and blur) only
        pipeline[1].p, pipeline[1].grayscale_p = 0.0, 0.0
    crops = torch.randint(0, 256, (2, 2, 1, 8, 8), dtype=torch.uint8)
    flipped = crops.flip(-1).float().div(255).expand(-1, -1, 3, -1, -1)
    mean, std = (
        torch.tensor(vs.augment.IMAGENET_MEAN).view(1, 3, 1, 1),
        torch.tensor(vs.augment.IMAGENET_STD).view(1, 3, 1, 1),
    )
    for v, out in enumerate(views(crops)):
        assert torch.allclose(out, (flipped[:, v] - mean) / std, atol=1e-5)


def test_files_list_splits_like_load_dataset_and_refuse_in_memory_use(folder):
    train, test = list_image_files(str(folder), "train"), list_image_files(f"imagefolder:{folder}", "test")
    assert len(train) + len(test) == 12 and not set(train.paths) & set(test.paths)
    assert len(test) == 4 and sorted(train.targets.tolist()) == [0] * 4 + [1] * 4  # stratified 75/25
    with pytest.raises(AttributeError, match="data.stream=false"):
        _ = train.images
    with pytest.raises(DataError, match="not a directory"):
        list_image_files(str(folder / "nope"))
    assert isinstance(train, ImageFiles)


def test_trainer_streams_a_folder(folder):
    from visionssl.engine.config import load_config
    from visionssl.engine.trainer import Trainer

    cfg = load_config(
        "byol",
        overrides=[
            f"data.name={folder}",
            "data.stream=true",
            "data.workers=0",
            "backbone.name=resnet10t_cifar",
            "augment.image_size=16",
            "optim.batch_size=4",
            "train.epochs=1",
            "train.progress=false",
            "method.proj_hidden_dim=32",
            "method.pred_hidden_dim=32",
        ],
    )
    trainer = Trainer(cfg)
    assert isinstance(trainer.loader, StreamLoader) and len(trainer.train_set) == 8
    result = trainer.fit()
    assert result["epoch"] == 1 and result["step"] == 2 and np.isfinite(result["train/loss"])
    assert "knn/top1" not in result  # the kNN bank must be in memory: data.eval enables it


def test_stream_loader_pairs_with_the_preset_views(folder):
    files = list_image_files(str(folder), "all")
    loader, views = stream_loader(files, vs.augment.create("byol", image_size=16), 4, num_workers=0)
    indices, crops = next(iter(loader.epoch(0)))
    assert crops.shape == (4, 2, 3, 16, 16) and loader.order(0)[:4].tolist() == indices.tolist()
    assert [tuple(v.shape) for v in views(crops)] == [(4, 3, 16, 16)] * 2
    gray, _ = stream_loader(files, vs.augment.create("byol", image_size=16, channels=1), 4, num_workers=0)
    assert next(iter(gray.epoch(0)))[1].shape == (4, 2, 1, 16, 16)  # a 1-channel backbone gets grayscale crops
