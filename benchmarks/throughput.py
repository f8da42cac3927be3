"""End-to-end pretraining throughput: visionssl against LightlySSL in the same run, and against the bare backbone.

For each method (SimCLR, BYOL, VICReg), configuration (ResNet-18 at 32 px, ResNet-50 at 224 px) and data
(synthetic uint8 images, elpv), three things are timed in interleaved rounds in one process:

  visionssl   the library's own ``Trainer``: uint8 batches in memory -> device (pinned, prefetched) -> fused
              batched views -> method -> loss -> optimizer (channels-last; bf16 autocast on CUDA).
  LightlySSL  the same backbone (the same module), LightlySSL's heads, loss and optimizer (its LARS), its
              transforms (``SimCLRTransform``, ``BYOLTransform``, ``VICRegTransform``) applied per image through a
              torch DataLoader with ``--workers`` processes (persistent, never restarted, pinned on CUDA) from the
              same uint8 images in memory; its default memory format. Timed at each ``--peer-precision``:
              ``fp32`` is what a LightlySSL user gets on a CPU unless they ask for more (Lightning's default),
              ``same`` is visionssl's precision (bf16 autocast where visionssl picks bf16).
  bare        the backbone's forward + backward on both views already on the device (2 x batch images,
              channels-last, same precision, no heads, no optimizer): the limit of any pipeline.

A step of every method is one batch of ``--batch-size`` images with two views each; images/s counts images.
Printed and saved: images/s (median over rounds), visionssl / LightlySSL (per peer precision), visionssl / bare (the pipeline
efficiency; BYOL also runs its target network, so its ceiling is about 0.75), and the peak memory per image
above the resting state (CUDA: max_memory_allocated; CPU: peak RSS of this process plus, for LightlySSL,
its workers' proportional memory).

    python benchmarks/throughput.py                      # CPU: the ResNet-18 32 px cases; CUDA: all cases
    python benchmarks/throughput.py --quick              # SimCLR on synthetic data, short rounds
    python benchmarks/throughput.py --configs r50_224 --large    # ResNet-50 at 224 px on a CPU (slow)

``OMP_WAIT_POLICY=PASSIVE`` is set for both sides (before torch loads) unless ``--omp-wait-policy`` says
otherwise: with the peer's worker processes sharing the cores, spinning OpenMP threads would only slow it down.
Writes benchmarks/results/throughput_<cpu|cuda>.json.
"""

from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__":  # must precede the first import of torch (libgomp reads it when it loads)
    _policy = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--omp-wait-policy=")), "passive")
    if _policy != "default":
        os.environ["OMP_WAIT_POLICY"] = _policy.upper()

import copy  # noqa: E402
import statistics  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, RandomSampler  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_name, timed, write_results  # noqa: E402

import visionssl as vs  # noqa: E402
from visionssl.engine.config import load_config  # noqa: E402
from visionssl.engine.runtime import resolve_precision  # noqa: E402
from visionssl.engine.trainer import Trainer  # noqa: E402

METHODS = ("simclr", "byol", "vicreg")
CONFIGS = {  # backbone, view size, side of the uint8 images in memory, batch size per device type
    "r18_32": {"backbone": "resnet18_cifar", "image_size": 32, "source": 36, "batch": {"cpu": 128, "cuda": 512}},
    "r50_224": {"backbone": "resnet50", "image_size": 224, "source": 256, "batch": {"cpu": 32, "cuda": 256}},
}
DATA = ("synthetic", "elpv")


# ------------------------------------------------------------------------------------------ memory
def _proc_kb(field: str, pid: str = "self", name: str = "status") -> int:
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children() -> list[str]:
    pids = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += (task / "children").read_text().split()
        except OSError:
            pass
    return pids


class PeakMemory:
    """Peak memory above the resting state while the block runs, in bytes."""

    def __init__(self, device: torch.device, workers: bool = False):
        self.device, self.workers, self.peak = device, workers, 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.base = _proc_kb("VmRSS") * 1024
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident size
            except OSError:
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = _proc_kb("VmHWM") * 1024 - self.base
            if self.workers:  # the DataLoader's processes: their proportional share (shared pages split)
                self.peak += sum(_proc_kb("Pss", pid, "smaps_rollup") for pid in _children()) * 1024


# ------------------------------------------------------------------------------------------ visionssl
class Ours:
    """visionssl's Trainer on the images, one round = ``steps`` optimizer steps."""

    name = "visionssl"

    def __init__(
        self,
        method: str,
        cfg: dict,
        images: vs.data.ImageDataset,
        batch: int,
        device: torch.device,
        precision: str,
        compile: bool,
    ):
        overrides = [
            f"backbone.name={cfg['backbone']}",
            f"augment.image_size={cfg['image_size']}",
            f"data.image_size={cfg['source']}",
            f"optim.batch_size={batch}",
            f"train.device={device}",
            f"train.precision={precision}",
            f"train.compile={str(compile).lower()}",
            "train.progress=false",
            "train.knn_every=-1",
            "train.epochs=1000000",
        ]
        self.config = load_config(method, overrides=overrides)
        self.trainer = Trainer(self.config, train_set=images, eval_sets=(None, None))
        self.trainer.method.on_train_start(self.trainer)

    def run(self, steps: int) -> int:
        """Trains at least ``steps`` steps (whole epochs of the dataset); returns the steps done."""
        start = self.trainer.step
        while self.trainer.step - start < steps:
            self.trainer.train_epoch()
        return self.trainer.step - start


# ------------------------------------------------------------------------------------------ LightlySSL
class PeerImages(Dataset):
    """The same uint8 images, served as PIL RGB images through LightlySSL's per-image transform."""

    def __init__(self, images: torch.Tensor, transform: Callable):
        self.images, self.transform = images.permute(0, 2, 3, 1).numpy(), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        a = self.images[i]
        return self.transform(Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).convert("RGB"))


def lightly_transform(method: str, size: int):
    """LightlySSL's own transforms; below 64 px without blur (as its CIFAR-10 benchmark and our presets)."""
    from lightly.transforms import (
        BYOLTransform,
        BYOLView1Transform,
        BYOLView2Transform,
        SimCLRTransform,
        VICRegTransform,
    )

    small = {"gaussian_blur": 0.0} if size < 64 else {}
    if method == "simclr":
        return SimCLRTransform(input_size=size, cj_strength=0.5 if size < 64 else 1.0, **small)
    if method == "byol":
        return BYOLTransform(BYOLView1Transform(input_size=size, **small), BYOLView2Transform(input_size=size, **small))
    return VICRegTransform(input_size=size, **small)


class LightlyModel(nn.Module):
    """LightlySSL's heads and loss on our backbone, with the widths of the visionssl method it is compared to."""

    def __init__(self, method: str, backbone: str, ours: vs.methods.SSLMethod):
        from lightly import loss, models
        from lightly.models import modules

        super().__init__()
        self.method = method
        self.backbone = vs.create_backbone(backbone)  # the same architecture, in its default memory format,
        self.backbone.load_state_dict(ours.backbone.state_dict())  # with the same initial weights
        feat = ours.num_features
        if method == "simclr":
            hidden, out = ours.projector[0].out_features, ours.projector[-1].out_features
            self.head = modules.SimCLRProjectionHead(feat, hidden, out)
            self.criterion = loss.NTXentLoss(temperature=ours.temperature)
        elif method == "byol":
            hidden, out = ours.projector[0].out_features, ours.projector[-1].out_features
            self.head = modules.BYOLProjectionHead(feat, hidden, out)
            self.predictor = modules.BYOLPredictionHead(out, ours.predictor[0].out_features, out)
            self.backbone_momentum, self.head_momentum = copy.deepcopy(self.backbone), copy.deepcopy(self.head)
            models.utils.deactivate_requires_grad(self.backbone_momentum)
            models.utils.deactivate_requires_grad(self.head_momentum)
            self.criterion = loss.NegativeCosineSimilarity()
        else:
            dim = ours.expander[0].out_features
            self.head = modules.BarlowTwinsProjectionHead(feat, dim, dim)
            self.criterion = loss.VICRegLoss()

    def training_step(self, x0: torch.Tensor, x1: torch.Tensor, step: int, total: int) -> torch.Tensor:
        """As LightlySSL's examples and benchmarks write it."""
        if self.method == "simclr":  # one pass over both views, as LightlySSL's ImageNet benchmark
            z0, z1 = self.head(self.backbone(torch.cat([x0, x1]))).chunk(2)
            return self.criterion(z0, z1)
        if self.method == "byol":
            from lightly.models.utils import update_momentum
            from lightly.utils.scheduler import cosine_schedule

            m = cosine_schedule(step, total, 0.996, 1)
            update_momentum(self.backbone, self.backbone_momentum, m=m)
            update_momentum(self.head, self.head_momentum, m=m)
            p0, p1 = self.predictor(self.head(self.backbone(x0))), self.predictor(self.head(self.backbone(x1)))
            with torch.no_grad():
                z0, z1 = self.head_momentum(self.backbone_momentum(x0)), self.head_momentum(self.backbone_momentum(x1))
            return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        return self.criterion(self.head(self.backbone(x0)), self.head(self.backbone(x1)))


class Peer:
    """LightlySSL: per-image transforms in DataLoader workers, its heads, loss and optimizer."""

    def __init__(
        self,
        method: str,
        cfg: dict,
        images: torch.Tensor,
        ours: Ours,
        batch: int,
        device: torch.device,
        precision: str,
        workers: int,
    ):
        from lightly.utils.lars import LARS

        self.name = f"LightlySSL {precision}"
        self.device, self.step = device, 0
        self.model = LightlyModel(method, cfg["backbone"], ours.trainer.method).to(device)
        o = ours.config.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        lr = ours.trainer.lr
        if o.name == "lars":
            self.optimizer = LARS(
                params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay, trust_coefficient=o.trust_coefficient
            )
        elif o.name == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=o.weight_decay)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
        dataset = PeerImages(images, lightly_transform(method, cfg["image_size"]))
        sampler = RandomSampler(dataset, num_samples=10**9)  # one endless epoch: never a restart or a drain
        self.loader = DataLoader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            num_workers=workers,
            drop_last=True,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
        )
        self.batches = iter(self.loader)

    def run(self, steps: int) -> int:
        self.model.train()
        for _ in range(steps):
            x0, x1 = next(self.batches)
            x0, x1 = x0.to(self.device, non_blocking=True), x1.to(self.device, non_blocking=True)
            with self.autocast:
                loss = self.model.training_step(x0, x1, self.step, 10**6)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
        return steps


# ------------------------------------------------------------------------------------------ bare
class Bare:
    """The backbone's forward + backward on both views already on the device (channels-last, same precision)."""

    name = "bare"

    def __init__(self, cfg: dict, batch: int, device: torch.device, precision: str):
        self.backbone = vs.create_backbone(cfg["backbone"]).to(device, memory_format=torch.channels_last)
        s = cfg["image_size"]
        self.views = torch.randn(2 * batch, 3, s, s, device=device).contiguous(memory_format=torch.channels_last)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    def run(self, steps: int) -> int:
        for _ in range(steps):
            self.backbone.zero_grad(set_to_none=True)
            with self.autocast:
                features = self.backbone(self.views)
            features.float().sum().backward()
        return steps


# ------------------------------------------------------------------------------------------ driver
def load_images(data: str, cfg: dict, n: int) -> vs.data.ImageDataset:
    if data == "synthetic":
        return vs.data.load_dataset(f"synthetic:{n}", image_size=cfg["source"])
    ds = vs.data.load_dataset("elpv", "train", image_size=cfg["source"])
    return ds.subset(torch.arange(min(n, len(ds))))


def measure_case(method: str, config: str, data: str, args: argparse.Namespace, device: torch.device) -> dict:
    cfg = CONFIGS[config]
    batch = args.batch_size or cfg["batch"][device.type]
    images = load_images(data, cfg, max(batch, min(args.steps * batch, args.max_images)))
    torch.manual_seed(0)
    ours = Ours(method, cfg, images, batch, device, args.precision, args.compile)
    peers = [Peer(method, cfg, images.images, ours, batch, device, p, args.workers) for p in args.peer_precisions]
    sides = [ours, *peers, Bare(cfg, batch, device, args.precision)]
    rates: dict[str, list[float]] = {s.name: [] for s in sides}
    peaks: dict[str, int] = {s.name: 0 for s in sides}
    for round_ in range(args.rounds + 1):  # round 0 warms up (workers, allocator, autotuning, compilation)
        for side in sides if round_ % 2 else sides[::-1]:  # alternate the order against drift
            steps_done = []
            with PeakMemory(device, workers=isinstance(side, Peer)) as mem:
                seconds = timed(lambda: steps_done.append(side.run(args.steps)), device)  # noqa: B023  (called at once)
            peaks[side.name] = max(peaks[side.name], mem.peak)
            if round_:
                rates[side.name].append(steps_done[0] * batch / seconds)
    median = {k: statistics.median(v) for k, v in rates.items()}
    del sides, ours
    return {
        "method": method,
        "config": config,
        "backbone": cfg["backbone"],
        "image_size": cfg["image_size"],
        "data": data,
        "batch_size": batch,
        "images_per_s": median,
        "rounds_images_per_s": rates,
        "vs_lightly": {p.name.split()[1]: median["visionssl"] / median[p.name] for p in peers},
        "efficiency": median["visionssl"] / median["bare"],
        "peak_mb_per_image": {k: v / batch / 2**20 for k, v in peaks.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--configs", nargs="+", default=None, choices=list(CONFIGS), help="default: r18_32 on a CPU, all on CUDA"
    )
    parser.add_argument("--data", nargs="+", default=list(DATA), choices=DATA)
    parser.add_argument("--steps", type=int, default=None, help="steps per round (default: 2 on a CPU, 20 on CUDA)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per side (after one warm-up round)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: per config and device (CPU: 128 at 32 px)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="LightlySSL's DataLoader workers (default: every core)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=None,
        help="both sides (default: what train.precision=auto picks: bf16 on CUDA and on CPUs with "
        "hardware bf16, else fp32)",
    )
    parser.add_argument(
        "--peer-precision",
        nargs="+",
        choices=("fp32", "same"),
        default=["fp32", "same"],
        help="LightlySSL's precision, each timed as its own side (same: visionssl's)",
    )
    parser.add_argument("--compile", action="store_true", help="train.compile=true for visionssl")
    parser.add_argument("--max-images", type=int, default=4096, help="images held in memory per case")
    parser.add_argument("--large", action="store_true", help="allow the 224 px ResNet-50 cases on a CPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="SimCLR on synthetic data, 2 rounds of 1 step (CPU)")
    parser.add_argument(
        "--omp-wait-policy",
        choices=("passive", "active", "default"),
        default="passive",
        help="OMP_WAIT_POLICY for both sides (read before torch loads)",
    )
    parser.add_argument("--out", default=None, help="results name (default: throughput_<cpu|cuda>)")
    args = parser.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    args.configs = args.configs or (list(CONFIGS) if cuda else ["r18_32"])
    if not cuda and "r50_224" in args.configs and not args.large:
        parser.error("the 224 px ResNet-50 cases take hours on a CPU; add --large to run them anyway")
    if args.quick:
        args.methods, args.data, args.rounds = ["simclr"], ["synthetic"], 2
        args.steps = args.steps or (1 if not cuda else 10)
    args.steps = args.steps or (20 if cuda else 2)
    args.precision = args.precision or resolve_precision("auto", device)
    args.peer_precisions = list(dict.fromkeys(args.precision if p == "same" else p for p in args.peer_precision))

    print(
        f"device: {device_name(device)}; precision {args.precision}; LightlySSL DataLoader workers: {args.workers}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; {args.rounds} rounds of {args.steps} steps"
    )
    peers = [f"LightlySSL {p}" for p in args.peer_precisions]
    header = (
        f"{'method':<7} {'config':<8} {'data':<9} {'batch':>5} {'visionssl':>10}"
        + "".join(f" {p:>16}" for p in peers)
        + f" {'bare':>8}"
        + "".join(f" {'vs ' + p.split()[1]:>8}" for p in peers)
        + f" {'efficiency':>10} {'MB/img ours':>11}"
        + "".join(f" {'MB/img ' + p.split()[1]:>12}" for p in peers)
    )
    print(header)
    rows = []
    for config in args.configs:
        for data in args.data:
            for method in args.methods:
                r = measure_case(method, config, data, args, device)
                rows.append(r)
                ips, mb = r["images_per_s"], r["peak_mb_per_image"]
                print(
                    f"{method:<7} {config:<8} {data:<9} {r['batch_size']:>5} {ips['visionssl']:>10.1f}"
                    + "".join(f" {ips[p]:>16.1f}" for p in peers)
                    + f" {ips['bare']:>8.1f}"
                    + "".join(f" {r['vs_lightly'][p.split()[1]]:>7.2f}x" for p in peers)
                    + f" {r['efficiency']:>10.2f} {mb['visionssl']:>11.2f}"
                    + "".join(f" {mb[p]:>12.2f}" for p in peers),
                    flush=True,
                )
    import lightly

    payload = {
        "device": device_name(device),
        "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:]),
        "settings": {
            "precision": args.precision,
            "peer_precisions": args.peer_precisions,
            "steps": args.steps,
            "rounds": args.rounds,
            "workers": args.workers,
            "compile": args.compile,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "torch_threads": torch.get_num_threads(),
            "lightly": lightly.__version__,
        },
        "results": rows,
    }
    path = write_results(args.out or f"throughput_{'cuda' if cuda else 'cpu'}", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
