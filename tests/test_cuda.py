"""The GPU paths: every test marked ``cuda`` needs a CUDA device and is skipped without one.

Run them with ``python -m pytest -m cuda tests/test_cuda.py`` (``benchmarks/gpu_check.py`` does, on a GPU machine).
Tolerances are stated next to each comparison. The one unmarked test checks, on the CPU, the harness the view
comparisons rely on: with ``draws_on_cpu`` every random parameter of every preset comes from one seeded CPU
generator, so a CPU run and a CUDA run of a preset use the same parameters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

import visionssl as vs

CUDA = torch.cuda.is_available()
cuda = pytest.mark.cuda
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
ROOT = Path(__file__).resolve().parents[1]

CROP_PRESETS = ("simclr", "moco", "simsiam", "byol", "vicreg")  # these take backend="fused" | "kornia"
PRESET_CASES = [(p, b) for p in CROP_PRESETS for b in ("fused", "kornia")] + [
    (p, None) for p in vs.augment.list_augmentations() if p not in CROP_PRESETS
]
VIEW_ATOL = 1e-3  # normalised views (values about -2..2.6): float32 on both devices, TF32 off
VIEW_OUTLIERS = 1e-4  # fraction of values allowed beyond VIEW_ATOL (Kornia's HSV hue of near-grey pixels)


# ------------------------------------------------------------------------------------------ the harness
@contextmanager
def draws_on_cpu(seed: int) -> Iterator[None]:
    """torch's samplers draw from one seeded CPU generator and move the draws to the device asked for.

    The fused ops call ``torch.rand(n, device=...)`` and ``Tensor.uniform_``; Kornia's samplers are ``torch.distributions`` whose
    ``rsample``/``sample`` call ``torch.rand`` and ``torch.bernoulli``. CUDA's generator gives other numbers
    than the CPU's for the same seed; drawn here, both devices see the same parameters.
    """
    g = torch.Generator().manual_seed(seed)
    originals = {
        name: getattr(torch, name) for name in ("rand", "randn", "randint", "randperm", "bernoulli", "multinomial")
    }

    def sized(fn: Callable) -> Callable:
        def draw(*args, device=None, generator=None, **kwargs):
            out = fn(*args, generator=g, **kwargs)
            return out.to(device) if device is not None else out

        return draw

    def from_tensor(fn: Callable) -> Callable:
        def draw(input, *args, generator=None, **kwargs):
            return fn(input.cpu(), *args, generator=g, **kwargs).to(input.device)

        return draw

    def in_place(fn: Callable) -> Callable:
        def draw(self, *args, generator=None, **kwargs):
            return self.copy_(fn(torch.empty(self.shape, dtype=self.dtype), *args, generator=g, **kwargs))

        return draw

    wrapped = {
        name: (from_tensor if name in ("bernoulli", "multinomial") else sized)(fn) for name, fn in originals.items()
    }
    methods = {
        name: getattr(torch.Tensor, name) for name in ("uniform_", "normal_", "bernoulli_", "random_", "exponential_")
    }
    try:
        for name, fn in wrapped.items():
            setattr(torch, name, fn)
        for name, fn in methods.items():
            setattr(torch.Tensor, name, in_place(fn))
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch, name, fn)
        for name, fn in methods.items():
            setattr(torch.Tensor, name, fn)


def make_views(
    preset: str,
    backend: str | None,
    images: torch.Tensor,
    device: str,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    kwargs = {"backend": backend} if backend else {}
    aug = vs.augment.create(preset, image_size=64, **kwargs).to(device)
    aug.dtype = dtype
    with draws_on_cpu(seed):
        return [v.float().cpu() for v in aug(images.to(device))]


def test_draws_on_cpu_fix_every_random_parameter_of_every_preset():
    images = torch.randint(0, 256, (3, 3, 68, 68), dtype=torch.uint8)  # 64 px views: blur is part of the recipes
    for preset, backend in PRESET_CASES:
        torch.manual_seed(1)
        first = make_views(preset, backend, images, "cpu", seed=5)
        torch.manual_seed(2)  # another global seed: nothing may depend on it
        second = make_views(preset, backend, images, "cpu", seed=5)
        other = make_views(preset, backend, images, "cpu", seed=6)
        assert all(torch.equal(a, b) for a, b in zip(first, second)), (preset, backend)
        if preset != "eval":  # the one deterministic preset
            assert not all(torch.equal(a, b) for a, b in zip(first, other)), (preset, backend)


# ------------------------------------------------------------------------------------------ views on CUDA
@contextmanager
def no_tf32() -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@cuda
@needs_cuda
@pytest.mark.parametrize("preset,backend", PRESET_CASES)
def test_cuda_views_equal_cpu_views_for_the_same_parameters(preset, backend):
    images = torch.randint(0, 256, (32, 3, 72, 72), dtype=torch.uint8)
    with no_tf32():
        on_cpu = make_views(preset, backend, images, "cpu")
        on_cuda = make_views(preset, backend, images, "cuda")
    assert len(on_cpu) == len(on_cuda)
    for a, b in zip(on_cpu, on_cuda):
        diff = (a - b).abs()
        assert (diff > VIEW_ATOL).float().mean() <= VIEW_OUTLIERS, f"max {diff.max():.3g}, mean {diff.mean():.3g}"


@cuda
@needs_cuda
@pytest.mark.parametrize("backend", ["fused", "kornia"])
def test_bf16_views_on_cuda_follow_the_fp32_views(backend):
    images = torch.randint(0, 256, (32, 3, 72, 72), dtype=torch.uint8)
    aug = vs.augment.create("simclr", image_size=64, backend=backend).cuda()
    aug.dtype = torch.bfloat16
    with draws_on_cpu(0):
        views = aug(images.cuda())
    assert all(v.dtype == torch.bfloat16 and v.is_cuda and v.shape == (32, 3, 64, 64) for v in views)
    fp32 = make_views("simclr", backend, images, "cuda")
    for a, b in zip(fp32, views):
        # bf16 keeps 8 bits of mantissa: about 0.4% of a value; the resampling products add a little more
        assert (a - b.float().cpu()).abs().mean() < 0.02


# ------------------------------------------------------------------------------------------ prefetch stream
@cuda
@needs_cuda
def test_prefetch_side_stream_delivers_the_batches_of_the_plain_path():
    ds = vs.data.load_dataset("synthetic:200", image_size=24)
    on_cuda = vs.data.BatchLoader(ds, batch_size=32, device="cuda", seed=3)
    plain = vs.data.BatchLoader(ds, batch_size=32, device="cpu", seed=3)
    seen = 0
    for (ia, xa), (ib, xb) in zip(on_cuda.epoch(1), plain.epoch(1)):
        xa.float().mul_(2)  # queue work on the compute stream while the next copy is in flight
        assert xa.is_cuda and torch.equal(ia, ib) and torch.equal(xa.cpu(), xb)
        seen += 1
    assert seen == len(plain) == 6


# ------------------------------------------------------------------------------------------ nvJPEG
def _jpeg_folder(root: Path, n: int = 8) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64]
    for i in range(n):  # smooth images: JPEG decoders then agree to a level or two
        pixels = np.stack([(xx * 4 + 20 * i) % 256, (yy * 5) % 256, (xx + yy + 30 * i) % 256], -1).astype(np.uint8)
        pixels = np.clip(pixels.astype(int) + rng.integers(-3, 4, pixels.shape), 0, 255).astype(np.uint8)
        (root / ("a" if i % 2 else "b")).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / ("a" if i % 2 else "b") / f"{i}.jpg", quality=95)
    return root


@cuda
@needs_cuda
def test_nvjpeg_decode_equals_pil_within_two_levels(tmp_path):
    from PIL import Image

    from visionssl.data.decode import decode_jpegs

    paths = sorted(_jpeg_folder(tmp_path).rglob("*.jpg"))
    decoded = decode_jpegs([torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths], 3, "cuda")
    for path, image in zip(paths, decoded):
        reference = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        diff = (image.cpu().int() - reference.int()).abs()
        assert image.is_cuda and image.shape == reference.shape
        assert diff.float().mean() < 2 and diff.max() <= 16, (path.name, float(diff.float().mean()), int(diff.max()))


@cuda
@needs_cuda
def test_stream_loader_gpu_decode_on_cuda_equals_the_cpu_decoder(tmp_path):
    from visionssl.data.crop_loader import list_image_files
    from visionssl.engine.stream_loader import stream_loader

    files = list_image_files(str(_jpeg_folder(tmp_path)), split="all")
    aug = vs.augment.create("simclr", image_size=32)
    kw = {"batch_size": 4, "seed": 0, "num_workers": 0, "gpu_decode": True, "shuffle": False}
    on_cuda, _ = stream_loader(files, aug, device="cuda", **kw)
    on_cpu, _ = stream_loader(files, aug, device="cpu", **kw)
    for (ia, xa), (ib, xb) in zip(on_cuda.epoch(0), on_cpu.epoch(0)):
        assert xa.is_cuda and torch.equal(ia, ib) and xa.shape == xb.shape
        assert (xa.cpu().float() - xb.float()).abs().mean() < 2  # same boxes, same resize: decoders differ only


# ------------------------------------------------------------------------------------------ FAISS on the GPU
def _faiss_gpus() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


needs_faiss_gpu = pytest.mark.skipif(not CUDA or _faiss_gpus() == 0, reason="needs faiss-gpu and a CUDA device")


@cuda
@needs_faiss_gpu
def test_gpu_faiss_knn_equals_cpu_faiss():
    rng = np.random.default_rng(0)
    bank, queries = (
        rng.standard_normal((20_000, 64), dtype=np.float32),
        rng.standard_normal((500, 64), dtype=np.float32),
    )
    sims_gpu, ids_gpu = vs.eval.knn_search(bank, queries, 10, device="cuda")
    sims_cpu, ids_cpu = vs.eval.knn_search(bank, queries, 10, device="cpu")
    assert np.abs(sims_gpu - sims_cpu).max() < 1e-4
    assert (ids_gpu == ids_cpu).mean() > 0.999  # a swap between two equally similar rows is allowed
    y = rng.integers(0, 5, len(bank))
    assert vs.eval.knn(bank, y, queries[:200], y[:200], k=10, device="cuda") == vs.eval.knn(
        bank, y, queries[:200], y[:200], k=10, device="cpu"
    )


@cuda
@needs_cuda
def test_torch_cuda_knn_fallback_equals_cpu_faiss(monkeypatch):
    import faiss

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)  # as with faiss-cpu on a GPU machine
    rng = np.random.default_rng(1)
    bank, queries = (
        rng.standard_normal((20_000, 64), dtype=np.float32),
        rng.standard_normal((500, 64), dtype=np.float32),
    )
    sims_gpu, ids_gpu = vs.eval.knn_search(bank, queries, 10, device="cuda")
    sims_cpu, ids_cpu = vs.eval.knn_search(bank, queries, 10, device="cpu")
    assert np.abs(sims_gpu - sims_cpu).max() < 1e-4 and (ids_gpu == ids_cpu).mean() > 0.999


@cuda
@needs_faiss_gpu
def test_gpu_kmeans_gives_the_cpu_assignments_on_separable_data():
    from visionssl.methods.deepcluster import kmeans

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((8, 32)).astype(np.float32) * 20
    truth = rng.integers(0, 8, 4000)
    x = torch.from_numpy(centers[truth] + rng.standard_normal((4000, 32)).astype(np.float32))
    on_gpu, _ = kmeans(x, 8, seed=0, gpu=True)
    on_cpu, _ = kmeans(x, 8, seed=0, gpu=False)
    # cluster ids are arbitrary: the same partition means a one-to-one map from one labelling to the other
    pairs = set(zip(on_gpu.tolist(), on_cpu.tolist()))
    assert len(pairs) == 8 == len(set(on_gpu.tolist())) == len(set(on_cpu.tolist()))
    assert len(set(zip(on_cpu.tolist(), truth.tolist()))) == 8  # and it is the true partition


# ------------------------------------------------------------------------------------------ NCCL, compile
@cuda
@needs_cuda
def test_one_process_nccl_group_runs_the_distributed_training_path(tmp_path):
    out = tmp_path / "nccl.json"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        str(ROOT / "tests" / "dist_helpers" / "nccl_one.py"),
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["backend"] == "nccl" and report["world_size"] == 1 and report["device"].startswith("cuda")
    assert report["all_reduce"] == [1.0, 1.0, 1.0]
    assert report["all_gather"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] and report["grad"] == [1.0] * 6
    assert report["steps"] == 4  # 64 images / batch 16
    assert (tmp_path / "nccl.json.run" / "checkpoints" / "last.pt").is_file()


@cuda
@needs_cuda
def test_compiled_training_runs_a_few_steps_with_finite_losses(tmp_path):
    from visionssl.engine import Trainer, load_config

    cfg = load_config(
        "simclr",
        overrides=[
            "data.name=synthetic:96",
            "data.image_size=36",
            "augment.image_size=32",
            "backbone.name=resnet18_cifar",
            "optim.batch_size=32",
            "optim.warmup_epochs=0",
            "train.progress=false",
            "train.log_every=1",
            "train.epochs=1",
            "train.knn_every=-1",
            "train.device=cuda",
            "train.compile=true",
            f"out={tmp_path}",
        ],
    )
    result = Trainer(cfg).fit()
    assert result["step"] == 3
    losses = [
        json.loads(line)["train/loss"]
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if "train/loss" in line
    ]
    assert len(losses) == 3 and all(np.isfinite(losses))
