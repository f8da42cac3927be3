"""Disk full and other write errors while saving a checkpoint, the run's config, the feature cache and the
dataset cache: the previous file stays whole and loadable, the error names the path, no temporary file is
left behind. The fault is a real ``OSError(ENOSPC)`` raised by the file object the data is written to,
after part of the data went to disk, as a full disk does."""

import errno
import io
import os
import time
import warnings

import numpy as np
import pytest
import torch

from visionssl.cli import main
from visionssl.data.cache import cached_arrays
from visionssl.data.dataset import ImageDataset
from visionssl.engine import Trainer, atomic_save, load_checkpoint, load_config
from visionssl.engine.checkpoint import atomic_write_text
from visionssl.eval.features import _write_cache, extract_features, feature_cache_path

from conftest import TINY_BACKBONE_SOURCE

REAL_FDOPEN = os.fdopen


class FullDisk(io.RawIOBase):
    """Passes ``room`` bytes to the real file, then fails every write with ENOSPC."""

    def __init__(self, f, room):
        super().__init__()
        self.f, self.room, self.written = f, room, 0

    def writable(self):
        return True

    def write(self, b):
        free = max(self.room - self.written, 0)
        if len(b) > free:
            self.written += self.f.write(bytes(b[:free]))
            self.f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += self.f.write(b)
        return len(b)

    def fileno(self):
        return self.f.fileno()

    def flush(self):
        self.f.flush()

    def close(self):
        if not self.closed:
            super().close()
            self.f.close()


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(room, text=False)``: from now on, new binary (or text) files take ``room`` bytes."""

    def install(room=1000, text=False):
        def fdopen(fd, mode="r", *args, **kwargs):
            if "w" not in mode or ("b" in mode) == text:
                return REAL_FDOPEN(fd, mode, *args, **kwargs)
            disk = FullDisk(REAL_FDOPEN(fd, "wb"), room)
            return io.TextIOWrapper(disk) if text else disk

        monkeypatch.setattr(os, "fdopen", fdopen)

    yield install
    monkeypatch.setattr(os, "fdopen", REAL_FDOPEN)


def only(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    path = tmp_path_factory.mktemp("code") / "tiny_backbone.py"
    path.write_text(TINY_BACKBONE_SOURCE)
    return f"{path}:tiny"


def tiny_trainer(out, backbone, *extra):
    cfg = load_config(
        "simclr",
        overrides=[
            "data.name=synthetic:32",
            "data.image_size=16",
            "augment.image_size=16",
            f"backbone.name={backbone}",
            "optim.batch_size=16",
            "method.proj_hidden_dim=16",
            "method.proj_dim=8",
            "train.knn_every=-1",
            "train.progress=false",
            f"out={out}",
            *extra,
        ],
    )
    return Trainer(cfg)


@pytest.mark.parametrize("room", [0.0, 0.01, 0.9])  # share of the checkpoint that fits: none, the header, most data
def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, tiny_backbone, full_disk, room):
    trainer = tiny_trainer(tmp_path, tiny_backbone, "train.epochs=2")
    trainer.fit()
    path = trainer.checkpoint_path
    good = path.read_bytes()
    trainer.train_epoch()
    full_disk(int(room * len(good)))
    with pytest.raises(
        OSError, match=rf"could not write {path}: No space left on device \(.* MiB free on that disk\)"
    ) as err:
        trainer.save_checkpoint()
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == good and load_checkpoint(path)["step"] == 4
    assert only(path.parent) == ["last.pt"]  # no temporary file left


def test_disk_full_during_training_is_one_line_from_the_cli_and_the_run_resumes(
    tmp_path, tiny_backbone, capsys, monkeypatch, full_disk
):
    out = tmp_path / "run"
    args = [
        "pretrain",
        "--out",
        str(out),
        "--epochs",
        "3",
        "--backbone",
        tiny_backbone,
        "--data",
        "synthetic:32",
        "--image-size",
        "16",
        "--batch-size",
        "16",
        "--no-progress",
        "method.proj_hidden_dim=16",
        "method.proj_dim=8",
        "train.knn_every=-1",
        "data.image_size=16",
    ]
    saves = []
    real_save = Trainer.save_checkpoint

    def save_then_fill_the_disk(self):  # the first checkpoint fits on the disk, the second does not
        saves.append(self.step)
        if len(saves) == 2:
            full_disk(5000)
        return real_save(self)

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_fill_the_disk)
    assert main(args) == 2
    err = capsys.readouterr().err
    ckpt = out / "checkpoints" / "last.pt"
    assert f"visionssl: error: [Errno 28] could not write {ckpt}: No space left on device" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert load_checkpoint(ckpt)["epoch"] == 1 and only(ckpt.parent) == ["last.pt"]

    monkeypatch.setattr(os, "fdopen", REAL_FDOPEN)  # space was freed: the run goes on from epoch 1
    assert main(args + ["--resume"]) == 0
    assert load_checkpoint(ckpt)["epoch"] == 3


def test_a_failed_rename_or_an_interrupt_mid_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"v": torch.ones(3)}, path)

    def no_rename(src, dst):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match=rf"could not write {path}: Permission denied"):
        atomic_save({"v": torch.zeros(3)}, path)
    monkeypatch.undo()

    def interrupted(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half of a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"v": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert only(tmp_path) == ["last.pt"] and load_checkpoint(path)["v"].tolist() == [1.0, 1.0, 1.0]


def test_the_run_config_is_written_atomically(tmp_path, full_disk):
    path = tmp_path / "config.yaml"
    atomic_write_text("train:\n  epochs: 3\n", path)
    full_disk(5, text=True)
    with pytest.raises(OSError, match=rf"could not write {path}: No space left on device"):
        atomic_write_text("train:\n  epochs: 300\n", path)
    assert path.read_text() == "train:\n  epochs: 3\n" and only(tmp_path) == ["config.yaml"]


def small_dataset(n=6):
    g = torch.Generator().manual_seed(0)
    return ImageDataset(
        torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g),
        {"c": torch.arange(n) % 2},
        "c",
        {"c": ["a", "b"]},
        "toy",
    )


def test_disk_full_while_writing_the_feature_cache_costs_only_the_cache(tmp_path, full_disk):
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    ds = small_dataset()
    expected, _ = extract_features(backbone, ds, progress=False)
    full_disk(50)
    with pytest.warns(UserWarning, match=r"feature cache not written: could not write .*\.pt: No space left on device"):
        features, labels = extract_features(backbone, ds, cache_dir=tmp_path, progress=False)
    assert torch.equal(features, expected) and labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert only(tmp_path) == []  # neither a cache file nor a temporary one


def test_a_failed_feature_cache_write_keeps_the_previous_cache_file(tmp_path, full_disk):
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    ds = small_dataset()
    features, _ = extract_features(backbone, ds, cache_dir=tmp_path, progress=False)
    path = feature_cache_path(backbone, ds, tmp_path, device="cpu")
    good = path.read_bytes()
    full_disk(50)
    with pytest.warns(UserWarning, match=rf"could not write {path}: No space left"):
        _write_cache(path, torch.zeros_like(features))
    assert path.read_bytes() == good and only(tmp_path) == [path.name]
    again, _ = extract_features(backbone, ds, cache_dir=tmp_path, progress=False)  # read from the intact cache
    assert torch.equal(again, features)


def build(n=5):
    images = np.arange(n * 3 * 8 * 8, dtype=np.uint8).reshape(n, 3, 8, 8)
    return lambda: (images, {"n": n})


@pytest.mark.parametrize("room", [0, 64, 1000])
def test_disk_full_while_writing_the_dataset_cache_warns_and_goes_on(tmp_path, full_disk, room):
    cached_arrays("older", build(2), tmp_path)  # a cache written before the disk filled up
    full_disk(room)
    with pytest.warns(UserWarning, match=rf"could not write the dataset cache {tmp_path / 'fresh.npy'}: No space left"):
        images, info = cached_arrays("fresh", build(), tmp_path)
    assert images.shape == (5, 3, 8, 8) and info == {"n": 5}
    assert only(tmp_path) == ["older.json", "older.npy"]  # no temporary file, no images without their metadata
    older, info = cached_arrays("older", lambda: pytest.fail("the older cache must still load"), tmp_path)
    assert older.shape == (2, 3, 8, 8) and info == {"n": 2}


def test_a_damaged_dataset_cache_is_rebuilt_and_stale_temporaries_are_cleaned(tmp_path):
    images, _ = cached_arrays("k", build(), tmp_path)
    npy = tmp_path / "k.npy"
    npy.write_bytes(npy.read_bytes()[:100])  # truncated by a crash of another tool
    stale, fresh = tmp_path / ".k.npy.old1", tmp_path / ".k.npy.new2"
    stale.write_bytes(b"left by a killed process")
    fresh.write_bytes(b"another process is writing this one")
    hour_ago = time.time() - 2 * 3600
    os.utime(stale, (hour_ago, hour_ago))
    rebuilt = []

    def again():
        rebuilt.append(True)
        return build()()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images2, _ = cached_arrays("k", again, tmp_path)
    assert rebuilt and np.array_equal(images2, images)
    assert only(tmp_path) == [".k.npy.new2", "k.json", "k.npy"]
    assert np.array_equal(cached_arrays("k", lambda: pytest.fail("cached"), tmp_path)[0], images)
