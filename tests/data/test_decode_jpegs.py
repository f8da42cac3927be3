"""``decode_jpegs``, the one home of the batched JPEG decode behind ``gpu_decode``: torchcodec's decoder, or
torchvision's deprecated one when torchcodec is missing; equal to PIL's decode, broken files as None, and no
deprecation warning reaching the caller. (The CUDA/nvJPEG side: tests/test_cuda.py.)"""

import io
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from visionssl.data.decode import decode_jpegs


def jpeg(seed, size=(24, 16)):
    """Random-colour blocks (smooth enough that JPEG keeps them close), encoded; returns (bytes tensor, PIL RGB)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    image = Image.fromarray(blocks.repeat(8, 0).repeat(8, 1))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8), Image.open(io.BytesIO(buf.getvalue()))


@pytest.fixture(params=["torchcodec", "torchvision"])
def backend(request, monkeypatch):
    if request.param == "torchcodec":
        pytest.importorskip("torchcodec.decoders", reason="torchcodec (the [dev] and [gpu] extras) is not installed")
    else:
        monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # the import fails: torchvision's fallback
    return request.param


def test_equals_pil_and_marks_broken_files(backend):
    (a, pil_a), (b, pil_b) = jpeg(0), jpeg(1, size=(16, 32))
    broken = a[: len(a) // 3].clone()  # a truncated file
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchvision's DeprecationWarning is silenced inside decode_jpegs only
        out = decode_jpegs([a, broken, b], 3, "cpu")
    assert out[1] is None
    for image, pil in ((out[0], pil_a), (out[2], pil_b)):
        reference = torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1)
        assert image.dtype == torch.uint8 and image.shape == reference.shape
        assert torch.equal(image, reference)  # the same libjpeg decode as PIL's, bit for bit


def test_grayscale_is_one_channel_close_to_pil(backend):
    data, pil = jpeg(2)
    (gray,) = decode_jpegs([data], 1, "cpu")
    reference = torch.from_numpy(np.array(pil.convert("L"))).int()
    assert gray.shape == (1, 16, 24)
    assert (gray[0].int() - reference).abs().max() <= 8  # libjpeg's own YCbCr -> Y vs PIL's RGB -> L
