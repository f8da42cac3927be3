"""Listing an image folder (torchvision's ImageFolder layout): one lister for the in-memory and streaming paths.

Both paths list the same files in the same order, so one folder always splits the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from visionssl.data.decode import IMAGE_EXTENSIONS, display_path
from visionssl.errors import DataError


class FolderListing(NamedTuple):
    """The images of one split of a folder: ``paths`` with class index ``targets`` into ``classes``.

    ``presplit`` is True when the folder has ``train/`` and ``test/`` (or ``val/``) sub-folders and
    ``folder`` is the one that was listed.
    """

    folder: Path
    presplit: bool
    paths: list[Path]
    targets: list[int]
    classes: list[str]


def list_image_folder(root: Path, split: str) -> FolderListing:
    """Lists ``root/<class>/<image>`` (sub-folders and files sorted) without decoding anything.

    With ``train/`` and ``test/`` (or ``val/``) sub-folders, ``split`` ("train" or "test") picks one;
    "all", or a folder without them, lists ``root`` itself. Raises ``DataError`` for a folder without
    class sub-folders or without images.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for c in ("b", "a"):
        ...     (root / c).mkdir(); (root / c / "1.png").touch(); (root / c / "0.jpg").touch()
        >>> listing = list_image_folder(root, "all")
        >>> listing.classes, [p.name for p in listing.paths], listing.targets
        (['a', 'b'], ['0.jpg', '1.png', '0.jpg', '1.png'], [0, 0, 1, 1])
    """
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    presplit = (root / "train").is_dir() and test_dir.is_dir()
    folder = {"train": root / "train", "test": test_dir}.get(split, root) if presplit else root
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        shown = display_path(folder)
        raise DataError(f"image folder {shown} has no class sub-folders (expected {shown}/<class>/<image>)")
    paths, targets = [], []
    for c, name in enumerate(classes):
        for dirpath, dirnames, files in os.walk(folder / name, followlinks=False):
            dirnames.sort()
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(Path(dirpath) / f)
                    targets.append(c)
    if not paths:
        raise DataError(
            f"image folder {display_path(folder)} holds no images with extensions {', '.join(IMAGE_EXTENSIONS)}"
        )
    return FolderListing(folder, presplit, paths, targets, classes)
