"""One image-folder lister for the in-memory and streaming paths: same files, same order, same split."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from visionssl.data import load_dataset
from visionssl.data.crop_loader import list_image_files
from visionssl.data.decode import decode_images
from visionssl.data.folders import list_image_folder


def make_folder(root, nested_order=("zeta", "alpha", "mid")):
    """Two classes whose images sit in nested sub-folders created out of alphabetical order."""
    value = 0
    for c in ("cat", "dog"):
        for sub in nested_order:
            (root / c / sub).mkdir(parents=True)
            for i in range(3):
                Image.new("L", (10, 10), value).save(root / c / sub / f"{i}.png")
                value += 3
    return root


def test_nested_sub_folders_are_listed_in_sorted_order(tmp_path):
    listing = list_image_folder(make_folder(tmp_path), "all")
    names = [p.relative_to(tmp_path).as_posix() for p in listing.paths]
    assert names == sorted(names)  # cat/alpha/0.png ... dog/zeta/2.png, whatever order the disk returns
    assert listing.classes == ["cat", "dog"] and listing.targets == [0] * 9 + [1] * 9


def test_in_memory_and_streaming_paths_split_a_folder_the_same_way(tmp_path):
    root = make_folder(tmp_path / "data")
    for split in ("train", "test"):
        in_memory = load_dataset(str(root), split, 10, channels=1, cache_dir="")
        streamed = list_image_files(str(root), split)
        decoded, ok, _ = decode_images(streamed.paths, 10, channels=1)
        assert ok == list(range(len(streamed)))
        assert torch.equal(in_memory.targets, streamed.targets)
        assert np.array_equal(in_memory.images.numpy(), decoded)  # the same images in the same order
