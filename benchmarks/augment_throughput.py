"""Two-view SimCLR augmentation: visionssl's batched Kornia views vs per-image torchvision/PIL transforms.

The peer is what the anchor libraries do: the same recipe (random resized crop, flip, colour jitter
p=0.8, grayscale p=0.2, blur from 64 px) applied image by image with torchvision on PIL images,
through a DataLoader with 2 workers, collated into float tensors. Both sides start from the same
uint8 images in memory and end with two normalised float views per image on the device.
visionssl is timed twice: fp32 views, and bf16 views (what a bf16 run makes: ``train.precision=auto``
on CUDA and on CPUs with hardware bf16) where the device computes bf16 natively.

    python benchmarks/augment_throughput.py              # CPU (and CUDA when present), 32 and 96 px
    python benchmarks/augment_throughput.py --quick
    python benchmarks/augment_throughput.py --backends fused kornia --sizes 224   # both backends
Prints images/s and the ratio; writes benchmarks/results/augment_throughput_<device>.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_name, timed, write_results  # noqa: E402

import visionssl as vs  # noqa: E402
from visionssl.augment.crop_jitter import blur_kernel_size  # noqa: E402
from visionssl.engine.runtime import cpu_computes_bf16  # noqa: E402


def torchvision_simclr(image_size: int):
    """The same recipe as visionssl's ``simclr`` preset, per image, with torchvision on PIL images."""
    from torchvision import transforms as T

    s = 0.5 if image_size < 64 else 1.0
    ops = [
        T.RandomResizedCrop(image_size, scale=(0.08, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    if image_size >= 64:
        ops.append(T.RandomApply([T.GaussianBlur(blur_kernel_size(image_size), (0.1, 2.0))], p=0.5))
    ops += [T.ToTensor(), T.Normalize(vs.augment.IMAGENET_MEAN, vs.augment.IMAGENET_STD)]
    return T.Compose(ops)


class TwoViewDataset(Dataset):
    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i])
        return self.transform(img), self.transform(img)


def measure(
    image_size: int,
    n: int,
    batch_size: int,
    device: torch.device,
    workers: int,
    dtypes: tuple[torch.dtype, ...],
    backends: tuple[str, ...] = ("fused",),
) -> dict:
    source = int(image_size * 1.125)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, source, source, 3), dtype=np.uint8)

    loader = DataLoader(
        TwoViewDataset(images, torchvision_simclr(image_size)),
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        shuffle=True,
        drop_last=True,
    )

    def peer_epoch():
        for v1, v2 in loader:  # noqa: F821  (never called after `del loader`)
            v1.to(device), v2.to(device)

    peer_epoch()  # start the workers and warm up
    peer_s = min(timed(peer_epoch, device) for _ in range(2))
    del loader

    uint8 = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    batches = [uint8[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
    done = len(batches) * batch_size
    result = {
        "image_size": image_size,
        "images": done,
        "batch_size": batch_size,
        "peer_workers": workers,
        "torchvision_dataloader_images_per_s": done / peer_s,
    }

    for backend in backends:
        aug = vs.augment.create("simclr", image_size=image_size, backend=backend).to(device)

        def ours_epoch(aug=aug):
            for x in batches:
                aug(x.to(device, non_blocking=True))

        for dtype in dtypes:
            aug.dtype = dtype
            ours_epoch()
            ours_s = min(timed(ours_epoch, device) for _ in range(2))
            tag = str(dtype).removeprefix("torch.").replace("bfloat16", "bf16").replace("float32", "fp32")
            tag = tag if backend == "fused" else f"{backend}_{tag}"  # the fused keys keep their earlier names
            result[f"visionssl_{tag}_images_per_s"] = done / ours_s
            result[f"ratio_{tag}"] = done / ours_s / result["torchvision_dataloader_images_per_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 96])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the per-image peer")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["fused"],
        choices=("fused", "kornia"),
        help="visionssl's augmentation backends to time (keys of kornia rows start with kornia_)",
    )
    parser.add_argument("--quick", action="store_true", help="512 images")
    parser.add_argument("--out", default=None, help="results name or path (default: augment_throughput_<device>)")
    args = parser.parse_args()
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    n = 512 if args.quick else args.images
    rows = []
    print(f"device: {device_name(device)}; peer: torchvision per image, DataLoader with {args.workers} workers")
    native_bf16 = device.type == "cuda" or cpu_computes_bf16()
    dtypes = (torch.float32, torch.bfloat16) if native_bf16 else (torch.float32,)
    tags = [t if b == "fused" else f"{b}_{t}" for b in args.backends for t in ["fp32", "bf16"][: len(dtypes)]]
    print(f"{'px':>4} {'torchvision img/s':>18}" + "".join(f" {'visionssl ' + t:>15} {'ratio':>6}" for t in tags))
    for size in args.sizes:
        r = measure(size, n, args.batch_size, device, args.workers, dtypes, tuple(args.backends))
        rows.append(r)
        print(
            f"{size:>4} {r['torchvision_dataloader_images_per_s']:>18.0f}"
            + "".join(f" {r[f'visionssl_{t}_images_per_s']:>15.0f} {r[f'ratio_{t}']:>5.1f}x" for t in tags),
            flush=True,
        )
    tag = "cuda" if device.type == "cuda" else "cpu"
    path = write_results(args.out or f"augment_throughput_{tag}", {"device": device_name(device), "results": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
