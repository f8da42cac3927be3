"""Valid images decoded right and odd folders read (issue 23): non-UTF-8 file names, 16-bit depth, EXIF
orientation, GIF, a folder whose every image is bad; the same in the streaming path."""

import os

import numpy as np
import pytest
from PIL import Image

from visionssl.cli import main
from visionssl.data import decode_image, load_dataset
from visionssl.data.crop_loader import CropSpec, list_image_files, read_crops
from visionssl.data.decode import display_path

BAD_NAME = b"caf\xe9-\xff.png"  # Latin-1 bytes: not valid UTF-8


def make_folder(root, n=4, extra=()):
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (20, 20), (40 * i, 100, 0)).save(root / c / f"{i}.png")
    for raw, data in extra:
        with open(os.fsencode(root) + b"/" + raw, "wb") as f:
            f.write(data)
    return root


def png_bytes(img):
    import io

    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_a_non_utf8_file_name_is_read_in_memory_and_streaming(tmp_path):
    good = png_bytes(Image.new("RGB", (20, 20), (7, 7, 7)))
    root = make_folder(tmp_path / "f", extra=[(b"a/" + BAD_NAME, good)])
    with pytest.raises(UnicodeEncodeError):  # the mistake: the listing hash encoded names as UTF-8
        f"{os.fsdecode(os.fsencode(root) + b'/a/' + BAD_NAME)}".encode()
    ds = load_dataset(str(root), "all", 16, cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 9 and (ds.images == 7).all(dim=(1, 2, 3)).sum() == 1
    again = load_dataset(str(root), "all", 16, cache_dir=str(tmp_path / "cache"))  # from the cache
    assert len(again) == 9
    files = list_image_files(str(root), split="all")
    odd = [p for p in files.paths if os.fsencode(p).endswith(BAD_NAME)]
    assert len(odd) == 1 and read_crops(odd[0], [CropSpec(8)], 3, np.random.default_rng(0)).shape == (1, 3, 8, 8)


def test_a_bad_file_with_a_non_utf8_name_is_skipped_and_named_by_its_bytes(tmp_path, capsys):
    root = make_folder(tmp_path / "f", extra=[(b"b/" + BAD_NAME, b"not an image")])
    ds = load_dataset(str(root), "all", 16, skip_bad_images=True, cache_dir="")
    assert len(ds) == 8 and len(ds.skipped) == 1
    shown = display_path(ds.skipped[0][0])
    assert shown.startswith("b'") and "\\xe9-\\xff.png" in shown
    code = main(
        [
            "pretrain",
            "--data",
            str(root),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--backbone",
            "resnet18_cifar",
            "--image-size",
            "16",
            "--no-progress",
            "--skip-bad-images",
            "train.knn_every=-1",
            "method.proj_hidden_dim=16",
            "method.proj_dim=8",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "skipped 1 unreadable images:" in out and "\\xe9-\\xff.png" in out


def test_a_16_bit_png_is_scaled_by_its_bit_depth_not_its_maximum(tmp_path):
    Image.fromarray(np.full((12, 12), 1000, np.uint16)).save(tmp_path / "dark16.png")
    assert Image.open(tmp_path / "dark16.png").mode.startswith("I")
    out = decode_image(tmp_path / "dark16.png", 8, channels=1)
    assert (out == round(1000 / 65535 * 255)).all()  # 4, not 255 (white)
    Image.fromarray(np.full((12, 12), 65535, np.uint16)).save(tmp_path / "white16.png")
    assert (decode_image(tmp_path / "white16.png", 8, channels=1) == 255).all()
    Image.fromarray(np.full((12, 12), 0.25, np.float32)).save(tmp_path / "f.tiff")
    assert (decode_image(tmp_path / "f.tiff", 8, channels=1) == 64).all()  # a float image in [0, 1]


def exif_rotated_jpeg(path):
    """A 40x20 image, left half black and right half white, stored with EXIF orientation 6 (turn 90 deg clockwise)."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, 20:] = 255
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, "JPEG", exif=exif, quality=95)


def test_exif_orientation_is_applied_in_memory_and_streaming(tmp_path):
    exif_rotated_jpeg(tmp_path / "r.jpg")
    with Image.open(tmp_path / "r.jpg") as raw:  # the mistake: without the EXIF turn the halves are left/right
        assert raw.size == (40, 20)
    out = decode_image(tmp_path / "r.jpg", 20, channels=1)[0].astype(int)
    # upright (20 wide, 40 tall): after a clockwise turn the white right half is at the bottom
    assert out[:4].mean() < 30 and out[-4:].mean() > 225
    crop = read_crops(tmp_path / "r.jpg", [CropSpec(20, (1.0, 1.0), (0.5, 0.5))], 1, np.random.default_rng(0))[0, 0]
    assert crop[:4].mean() < 30 and crop[-4:].mean() > 225


def test_a_gif_is_read_as_its_first_frame(tmp_path):
    root = make_folder(tmp_path / "f")
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(root / "a" / "anim.gif", save_all=True, append_images=frames[1:])
    ds = load_dataset(str(root), "all", 16, cache_dir="")
    assert len(ds) == 9  # the mistake: .gif files were silently left out (8)
    red = ds.images[:, 0].float().mean(dim=(1, 2)) > 200
    assert red.sum() == 1 and ds.images[red][0, 2].float().mean() < 30  # red, the first frame, not blue


def test_every_image_bad_with_skip_bad_images_is_one_line_saying_all_were_skipped(tmp_path, capsys):
    (tmp_path / "f" / "a").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "f" / "a" / f"{i}.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"all 3 images of .* were skipped as unreadable"):
        load_dataset(str(tmp_path / "f"), "train", 16, skip_bad_images=True, cache_dir="")
    code = main(
        [
            "pretrain",
            "--data",
            str(tmp_path / "f"),
            "--out",
            str(tmp_path / "run"),
            "--skip-bad-images",
            "--epochs",
            "1",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "all 3 images" in err[0] and "concatenate" not in err[0]


def pretrain_on(root, out, *extra):
    return main(
        ["pretrain", "--data", root, "--out", str(out), "--epochs", "1", "--batch-size", "4", "--backbone"]
        + ["resnet18_cifar", "--image-size", "16", "--no-progress", "train.knn_every=-1", "method.proj_hidden_dim=16"]
        + ["method.proj_dim=8", *extra]
    )


def test_a_data_root_that_is_not_utf8_is_named_as_the_data_root(tmp_path, capsys):
    root = make_folder(tmp_path / os.fsdecode(b"caf\xe9"))
    assert pretrain_on(str(root), tmp_path / "run") == 2  # the mistake: "the key=value overrides: not valid YAML"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("visionssl: error: --data b'") and "caf\\xe9" in err
    assert "is not valid UTF-8 and the run's config.yaml cannot record it" in err and "ln -s" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_data_root_is_read_as_written_not_as_yaml(tmp_path, capsys):
    # unquoted, "#" starts a YAML comment ("d" was read) and "a: b" is a mapping
    for i, name in enumerate(["d #1", "a: b", "it's"]):
        root = make_folder(tmp_path / name, n=2)
        assert pretrain_on(str(root), tmp_path / f"run{i}") == 0, capsys.readouterr().err
        assert f"pretraining simclr on {root} (4 images)" in capsys.readouterr().out


@pytest.mark.parametrize("stream", [False, True])
def test_a_folder_without_class_folders_or_images_is_one_line_naming_it(tmp_path, capsys, stream):
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (20, 20)).save(flat / "0.png")  # images, but not in <class>/ sub-folders
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "notes.txt").write_text("no images here")
    cases = [
        (flat, f"image folder {flat} has no class sub-folders (expected {flat}/<class>/<image>)"),
        (tmp_path / "empty", f"image folder {tmp_path / 'empty'} holds no images with extensions .jpg, .jpeg"),
    ]
    if stream:
        cases.append((tmp_path / "nope", f"{tmp_path / 'nope'} is not a directory"))
    for i, (root, message) in enumerate(cases):
        assert pretrain_on(str(root), tmp_path / f"run{i}", f"data.stream={str(stream).lower()}") == 2
        err = capsys.readouterr().err
        assert err.startswith("visionssl: error: ") and err.count("\n") == 1 and message in err, err
