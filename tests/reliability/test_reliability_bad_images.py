"""Broken image files, fuzzed: every one gives a ``BadImageError`` naming the file (or, with
``skip_bad_images`` / ``--skip-bad-images``, is skipped, counted and listed); odd but valid modes decode;
the folder scan survives link loops and directories named like images; the CLI says it in one line."""

import io
import os
import random
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from visionssl.cli import main
from visionssl.data import BadImageError, decode_image, load_dataset, sources
from visionssl.data import decode as decode_module

# PIL warns about images above its own 89M-pixel threshold before visionssl refuses them above 100M.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


def png_header_only(width, height):
    """A tiny PNG that claims ``width`` x ``height`` pixels (a decompression bomb's header)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def encoded(fmt, mode="RGB", size=(20, 14), **save):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def make_bad_files(folder):
    """Writes one file per kind of damage; returns {file name: expected words in the reason}."""
    jpg, png = encoded("JPEG"), encoded("PNG")
    rng = random.Random(0)
    files = {
        "zero_bytes.jpg": (b"", "UnidentifiedImageError"),
        "truncated.jpg": (jpg[: len(jpg) // 3], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "random_bytes.png": (rng.randbytes(3000), "UnidentifiedImageError"),
        "random_bytes.jpg": (b"\xff\xd8\xff" + rng.randbytes(3000), "Error"),
        "text_file.bmp": (b"this is not a bitmap\n" * 20, "UnidentifiedImageError"),
        "bomb_pil_limit.png": (png_header_only(50_000, 50_000), "DecompressionBombError"),
        "bomb_our_limit.png": (png_header_only(10_000, 10_001), "exceeds the limit of 100000000"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    expected = {name: reason for name, (_, reason) in files.items()}
    os.symlink(folder / "loop_b.jpg", folder / "loop_a.jpg")
    os.symlink(folder / "loop_a.jpg", folder / "loop_b.jpg")
    os.symlink(folder / "missing.png", folder / "dangling.png")
    expected.update({n: "broken or looping symbolic link" for n in ("loop_a.jpg", "loop_b.jpg", "dangling.png")})
    return expected


def write_good(folder, n=4, size=(18, 18)):
    rng = np.random.default_rng(len(str(folder)))
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"good{i}.png")


@pytest.fixture
def no_cache(monkeypatch):
    monkeypatch.setenv("VISIONSSL_NO_CACHE", "1")


def test_every_kind_of_broken_file_is_a_bad_image_error_naming_it(tmp_path):
    expected = make_bad_files(tmp_path)
    for name, reason in expected.items():
        with pytest.raises(BadImageError) as err:
            decode_image(tmp_path / name, 16)
        assert err.value.path == str(tmp_path / name) and reason.lower() in err.value.reason.lower(), (
            name,
            err.value.reason,
        )
        assert str(tmp_path / name) in str(err.value) and "--skip-bad-images" in str(err.value)
        assert "\n" not in str(err.value)
    assert len(expected) == 11


def test_a_directory_or_a_vanished_file_is_named_for_what_it_is(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(BadImageError, match=r"folder\.jpg: a directory, not an image file"):
        decode_image(tmp_path / "folder.jpg", 16)
    with pytest.raises(BadImageError, match=r"gone\.png: no such file \(deleted after the folder was listed\?\)"):
        decode_image(tmp_path / "gone.png", 16)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its permissions: chmod 000 cannot be tested")
def test_an_unreadable_file_is_a_bad_image_error(tmp_path):
    path = tmp_path / "locked.png"
    path.write_bytes(encoded("PNG"))
    path.chmod(0)
    with pytest.raises(BadImageError, match=r"locked\.png: PermissionError"):
        decode_image(path, 16)


@pytest.mark.parametrize(
    "fmt,mode,save",
    [
        ("JPEG", "CMYK", {}),
        ("JPEG", "L", {}),
        ("PNG", "P", {}),
        ("PNG", "P", {"transparency": 0}),
        ("PNG", "RGBA", {}),
        ("PNG", "LA", {}),
        ("PNG", "1", {}),
        ("PNG", "I;16", {}),
        ("TIFF", "I", {}),
        ("TIFF", "F", {}),
        ("TIFF", "CMYK", {}),
        ("GIF", "P", {}),
        ("BMP", "RGB", {}),
        ("WEBP", "RGBA", {}),
        ("PPM", "RGB", {}),
    ],
)
@pytest.mark.parametrize("channels", [3, 1])
def test_every_valid_mode_decodes_to_uint8(tmp_path, fmt, mode, save, channels):
    path = tmp_path / f"x.{fmt.lower()}"
    if mode == "I;16":
        Image.fromarray(np.arange(14 * 20, dtype=np.uint16).reshape(14, 20) * 200).save(path)
    elif mode in ("I", "F"):  # scaled by bit depth (issue 23): I spans the 16-bit range, F a range of its own
        arr = np.arange(14 * 20).reshape(14, 20)
        Image.fromarray((arr * 200).astype(np.int32) if mode == "I" else arr.astype(np.float32)).save(path)
    else:
        path.write_bytes(encoded(fmt, mode, **save))
    out = decode_image(path, 8, channels)
    assert out.shape == (channels, 8, 8) and out.dtype == np.uint8
    if mode in ("I;16", "I", "F"):
        assert out.max() > 200 and out.min() < 20  # the range is kept, not clipped to black or white


@pytest.mark.filterwarnings("ignore:.*:UserWarning:PIL")  # PIL warns about the damage it can read past
def test_fuzzed_image_files_decode_or_fail_with_bad_image_error_only(tmp_path):
    """240 damaged copies of valid PNG, JPEG, GIF, BMP, TIFF and WebP files: bytes overwritten, runs of
    bytes deleted, files cut short. Each one decodes to the right shape or raises BadImageError."""
    rng = random.Random(0)
    originals = {
        "png": encoded("PNG"),
        "jpg": encoded("JPEG"),
        "gif": encoded("GIF", "P"),
        "bmp": encoded("BMP"),
        "tif": encoded("TIFF"),
        "webp": encoded("WEBP"),
    }
    outcomes = {"decoded": 0, "BadImageError": 0}
    for i in range(240):
        ext = list(originals)[i % len(originals)]
        data = bytearray(originals[ext])
        kind = i // len(originals) % 3
        if kind == 0:
            for _ in range(rng.randint(1, 10)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1:
            start = rng.randrange(len(data))
            del data[start : start + rng.randint(1, 64)]
        else:
            data = data[: rng.randrange(1, len(data))]
        path = tmp_path / f"fuzz{i}.{ext}"
        path.write_bytes(bytes(data))
        try:
            out = decode_image(path, 16)
            assert out.shape == (3, 16, 16) and out.dtype == np.uint8
            outcomes["decoded"] += 1
        except BadImageError as exc:
            assert exc.path == str(path)
            outcomes["BadImageError"] += 1
    assert outcomes["BadImageError"] >= 100 and outcomes["decoded"] >= 10, outcomes


def bad_folder(tmp_path):
    """An ImageFolder with good images, every kind of broken file, a link loop back to the root, and a
    directory named like an image (holding one good image, which counts: it is a sub-folder)."""
    root = tmp_path / "data"
    (root / "cats").mkdir(parents=True)
    (root / "dogs" / "x.jpg").mkdir(parents=True)
    write_good(root / "cats")
    write_good(root / "dogs")
    write_good(root / "dogs" / "x.jpg", n=1)
    expected = make_bad_files(root / "cats")
    os.symlink(root, root / "dogs" / "loop")  # a directory link loop: not followed
    return root, expected


def test_image_folder_stops_at_a_bad_file_or_skips_and_lists_them_all(tmp_path, no_cache):
    root, expected = bad_folder(tmp_path)
    with pytest.raises(BadImageError, match=rf"cannot read image {root / 'cats'}/\S+: .*--skip-bad-images"):
        load_dataset(str(root), split="all", image_size=16)
    ds = load_dataset(str(root), split="all", image_size=16, skip_bad_images=True)
    assert len(ds) == 9 and ds.images.shape == (9, 3, 16, 16)
    assert ds.targets.tolist() == [0] * 4 + [1] * 5
    skipped = {os.path.basename(path): reason for path, reason in ds.skipped}
    assert skipped.keys() == expected.keys()
    assert all(expected[name].lower() in reason.lower() for name, reason in skipped.items())


def test_a_file_deleted_after_the_listing_is_reported_not_a_crash(tmp_path, no_cache, monkeypatch):
    root = tmp_path / "data"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        write_good(root / c)
    decode_images = sources.decode_images

    def delete_first_then_decode(paths, *args, **kwargs):
        os.remove(paths[0])  # another job cleaned the folder between listing and decoding
        return decode_images(paths, *args, **kwargs)

    monkeypatch.setattr(sources, "decode_images", delete_first_then_decode)
    ds = load_dataset(str(root), split="all", image_size=16, skip_bad_images=True)
    assert len(ds) == 7 and ds.skipped == [
        (str(root / "a" / "good0.png"), "no such file (deleted after the folder was listed?)")
    ]


def test_decode_is_thread_safe_about_warnings(tmp_path):
    """decode_images runs in threads; it must not touch the global warnings filters (catch_warnings is not
    thread-safe), so the filters are the same after decoding, bombs included."""
    before = list(__import__("warnings").filters)
    (tmp_path / "bomb.png").write_bytes(png_header_only(10_000, 10_001))
    write_good(tmp_path, n=8)
    paths = sorted(tmp_path.iterdir())
    images, ok, skipped = decode_module.decode_images(paths, 8, skip_bad=True, workers=4)
    assert len(ok) == 8 and len(skipped) == 1 and list(__import__("warnings").filters) == before


def pretrain(tmp_path, folder, *extra):
    backbone = tmp_path / "tiny_backbone.py"
    backbone.write_text(
        "from torch import nn\n\ndef tiny(**kw):\n"
        "    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
        "    net.num_features = 8\n    return net\n"
    )
    return main(
        [
            "pretrain",
            "--data",
            str(folder),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--image-size",
            "16",
            "--batch-size",
            "4",
            "--backbone",
            f"{backbone}:tiny",
            "--no-progress",
            "train.knn_every=-1",
            "method.proj_hidden_dim=16",
            "method.proj_dim=8",
            *extra,
        ]
    )


def test_the_cli_gives_one_line_and_exit_2_for_a_bad_image(tmp_path, no_cache, capsys):
    root, expected = bad_folder(tmp_path)
    assert pretrain(tmp_path, root) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"visionssl: error: cannot read image {root / 'cats'}/") and err.count("\n") == 1
    assert "(pass --skip-bad-images to skip such files)" in err and "Traceback" not in err


def test_the_cli_with_skip_bad_images_trains_and_reports_how_many_and_which(tmp_path, no_cache, capsys):
    root, expected = bad_folder(tmp_path)
    assert pretrain(tmp_path, root, "--skip-bad-images") == 0
    out = capsys.readouterr().out
    assert f"skipped {len(expected)} unreadable images:" in out
    for name, reason in expected.items():
        line = next(line for line in out.splitlines() if line.strip().startswith(str(root / "cats" / name) + ":"))
        assert reason.lower() in line.lower()
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["step"] >= 1


def wide_png(width):
    """A few kB of PNG holding ``width`` x 1 black pixels: resized to a shorter side of 36 it would be
    ``36 * width`` x 36 pixels (15.5 GB for 3,000,000 wide), and 60,000,000 wide overflows."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, 1, 8, 0, 0, 0, 0)  # 8-bit grayscale
    pixels = zlib.compress(b"\0" * (width + 1), 9)  # one row: its filter byte and the pixels
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


ADDRESS_SPACE = 8 << 30  # torch itself needs between 4 and 8 GiB of address space to import
LIMITED_CLI = f"""
import contextlib, io, json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE}, {ADDRESS_SPACE}))
from visionssl.cli import main
results = []
for args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    results.append((code, out.getvalue(), err.getvalue()))
print(json.dumps(results))
"""


def pretrain_limited(tmp_path, *runs):
    """``visionssl pretrain`` once per list of extra arguments, in one process whose address space is limited
    to 8 GiB (``--image-size 32``: images are kept at 36 pixels); returns (exit code, stdout, stderr) of each."""
    import json
    import subprocess
    import sys

    backbone = tmp_path / "tiny_backbone.py"
    backbone.write_text(
        "from torch import nn\n\ndef tiny(**kw):\n"
        "    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
        "    net.num_features = 8\n    return net\n"
    )
    common = ["--epochs", "1", "--image-size", "32", "--batch-size", "4", "--backbone", f"{backbone}:tiny"]
    common += [
        "--no-progress",
        "--threads",
        "1",
        "train.knn_every=-1",
        "method.proj_hidden_dim=16",
        "method.proj_dim=8",
    ]
    env = dict(os.environ, VISIONSSL_NO_CACHE="1", VISIONSSL_HOME=str(tmp_path / "home"))
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(decode_module.__file__)), *sys.path])
    argv = json.dumps([["pretrain", *common, *run] for run in runs])
    done = subprocess.run(
        [sys.executable, "-c", LIMITED_CLI, argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr  # the interpreter itself ran under the limit
    return json.loads(done.stdout.splitlines()[-1])


def test_a_resize_bomb_is_refused_from_its_header_and_skipped_under_an_8_gib_address_space(tmp_path):
    folder = tmp_path / "data" / "a"
    folder.mkdir(parents=True)
    write_good(folder, n=8)
    (folder / "wide.png").write_bytes(wide_png(3_000_000))
    (folder / "wider.png").write_bytes(wide_png(60_000_000))
    assert os.path.getsize(folder / "wide.png") < 4000
    data = ["--data", str(tmp_path / "data")]
    skipping, stopping = pretrain_limited(
        tmp_path, [*data, "--out", str(tmp_path / "r1"), "--skip-bad-images"], [*data, "--out", str(tmp_path / "r2")]
    )
    code, out, err = skipping
    assert code == 0 and "skipped 2 unreadable images:" in out, err
    for name, width in (("wide.png", 3_000_000), ("wider.png", 60_000_000)):
        assert f"{folder / name}: {width}x1 pixels: an aspect ratio of {width}:1, above the limit of 100:1" in out
    code, out, err = stopping
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"visionssl: error: cannot read image {folder / 'wide.png'}: 3000000x1 pixels: an aspect")
    # in this process (no address-space limit) only once the limited ones have shown it allocates nothing
    with pytest.raises(BadImageError, match=r"wide\.png: 3000000x1 pixels: an aspect ratio of 3000000:1, above the"):
        decode_image(folder / "wide.png", 36)


def test_an_image_resized_to_too_many_pixels_is_refused_before_the_resize(tmp_path):
    Image.new("L", (2000, 100)).save(tmp_path / "a.png")  # 20:1, 200k pixels: fine at 224, not at 3000
    assert decode_image(tmp_path / "a.png", 224).shape == (3, 224, 224)
    with pytest.raises(BadImageError, match=r"resized to a shorter side of 3000 would be 60000x3000, above the limit"):
        decode_image(tmp_path / "a.png", 3000)


def eps_bytes():
    buf = io.BytesIO()
    Image.new("RGB", (12, 12), "red").save(buf, "EPS")
    return buf.getvalue()


def test_eps_content_named_png_is_skipped_without_pillow_looking_for_ghostscript(tmp_path, no_cache, monkeypatch):
    import shutil
    import subprocess

    from PIL import EpsImagePlugin

    from visionssl.data.crop_loader import CropSpec, read_crops

    calls = []  # recorded, not raised: decoding turns any exception into a BadImageError

    def record(name):
        def called(*args, **kwargs):
            calls.append(name)
            raise OSError(f"{name} must not be called")

        return called

    for owner, name in [(EpsImagePlugin, "Ghostscript"), (EpsImagePlugin, "has_ghostscript"), (shutil, "which")]:
        monkeypatch.setattr(owner, name, record(name))
    for name in ("check_call", "run", "Popen"):
        monkeypatch.setattr(subprocess, name, record(name))
    root = tmp_path / "data"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        write_good(root / c)
    (root / "a" / "x.png").write_bytes(eps_bytes())
    reason = "UnidentifiedImageError: not a PNG, JPEG, BMP, TIFF, WEBP, GIF or PPM image"
    with pytest.raises(BadImageError, match=rf"cannot read image {root / 'a' / 'x.png'}: {reason}"):
        load_dataset(str(root), split="all", image_size=16)
    ds = load_dataset(str(root), split="all", image_size=16, skip_bad_images=True)
    assert len(ds) == 8 and ds.skipped == [(str(root / "a" / "x.png"), reason)]
    with pytest.raises(BadImageError, match=reason):
        read_crops(root / "a" / "x.png", [CropSpec(8)], 3, np.random.default_rng(0))
    assert calls == []
