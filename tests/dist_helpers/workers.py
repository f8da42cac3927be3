"""Worker processes for tests/test_distributed.py: each joins a gloo group on 127.0.0.1 and saves its results.

Kept free of pytest so that the spawned processes import little. The single-process references are
computed by the test itself, in the pytest process, from the same seeds.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

B = 4  # images per rank; the single-process reference uses the global batch 2 * B
WORLD = 2


# ----------------------------------------------------------------------------- shared by both sides
class TinyBackbone(nn.Sequential):
    """conv -> BatchNorm -> ReLU -> global pool: small enough for the tests, with BatchNorm to keep honest."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )


def build(name: str, **hparams) -> nn.Module:
    """The method with fixed initial weights (and queue), in train mode with BatchNorm on running statistics:
    batch statistics of B and 2B images differ, so an exact comparison needs BatchNorm out of the way
    (SyncBatchNorm, the real fix, runs on GPUs only)."""
    import visionssl as vs

    torch.manual_seed(0)
    method = vs.create_method(name, backbone=TinyBackbone(), **hparams)
    if name in FLOAT64:
        method.double()
    return freeze_batchnorm(method.train())


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return module


METHODS = {
    "simclr": {"proj_hidden_dim": 16, "proj_dim": 8, "temperature": 0.5},
    "moco": {"proj_hidden_dim": 16, "proj_dim": 8, "queue_size": 24, "temperature": 0.2, "momentum": 0.9},
    "vicreg": {"expander_dim": 16},
    "barlow_twins": {"proj_dim": 8},
    "swav": {"proj_hidden_dim": 16, "proj_dim": 8, "num_prototypes": 6, "freeze_prototypes_epochs": 0},
    "dino": {"out_dim": 12, "hidden_dim": 16, "bottleneck_dim": 8, "freeze_last_layer_epochs": 0, "momentum": 0.9},
    "mocov3": {"proj_hidden_dim": 16, "proj_dim": 8, "pred_hidden_dim": 16, "momentum": 0.9},
}


# Gradients too large for a 1e-5 bound in float32: Barlow Twins' reach ~80 at B = 4 (a batch normalisation of
# 4-8 samples; float32 alone differs from float64 by ~3e-5), DINO's ~7e3 (the L2 normalisation of a small
# bottleneck; float32 differs by ~4e-3). They are compared in float64 (gloo reduces float64 as well).
FLOAT64 = {"barlow_twins", "dino"}


def views_for(name: str):
    """``global_views`` in the dtype the method ``name`` is compared in."""
    return (lambda step: [v.double() for v in global_views(step)]) if name in FLOAT64 else global_views


def global_views(step: int) -> list[torch.Tensor]:
    """The two views of the global batch of 2B images at a step (the same on every process)."""
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(WORLD * B, 3, 8, 8, generator=g) for _ in range(2)]


def train_steps(method: nn.Module, model: nn.Module, views_of, steps: int = 2) -> dict:
    """``steps`` SGD steps through ``model`` (the method or its DDP wrapper): losses, gradients, queue."""
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    record: dict = {"loss": [], "grads": []}
    for step in range(steps):
        out = model(views_of(step))
        optimizer.zero_grad()
        out["loss"].backward()
        record["loss"].append(out["loss"].detach().clone())
        record["grads"].append({n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None})
        optimizer.step()
        method.on_step_end(step + 1, steps)
    for name in ("queue", "queue_ptr"):
        if hasattr(method, name):
            record[name] = getattr(method, name).clone()
    return record


def knn_data():
    from visionssl.data import load_dataset

    return load_dataset("synthetic:23", "train", image_size=8), load_dataset("synthetic:13", "test", image_size=8)


def deepcluster_trainer():
    from visionssl.data import load_dataset

    train_set = load_dataset("synthetic:21", "train", image_size=8)
    return SimpleNamespace(
        train_set=train_set,
        device=torch.device("cpu"),
        epoch=0,
        optimizer=None,
        config=SimpleNamespace(augment=SimpleNamespace(image_size=8)),
        augment=SimpleNamespace(channels=3),
        log_scalars=lambda scalars: None,
    )


# ----------------------------------------------------------------------------- launching
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(fn, out: Path, timeout_s: float = 240.0) -> None:
    """Runs ``fn(rank, out)`` in WORLD spawned processes joined in a gloo group; raises a worker's error, or on a hang."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ctx = mp.start_processes(_entry, args=(fn, free_port(), str(out)), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            raise TimeoutError(f"{fn.__name__}: the worker processes did not finish within {timeout_s:.0f} s")


def _entry(rank: int, fn, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        fn(rank, Path(out))
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- session 1: equivalence
def equivalence(rank: int, out: Path) -> None:
    from visionssl import distributed
    from visionssl.eval import knn
    from visionssl.eval.sharded import extract_features_distributed

    results: dict = {}

    # the collectives themselves
    x = torch.full((2, 3), float(rank + 1), requires_grad=True)
    weights = torch.arange(12.0).reshape(4, 3) * (rank + 1)  # rank r's loss weighs the gathered rows
    gathered = distributed.all_gather_with_grad(x)
    (gathered * weights).sum().backward()
    results["gather"] = {"value": gathered.detach(), "grad": x.grad}
    local = torch.arange(10.0).reshape(5, 2)[slice(*distributed.shard_bounds(5))]
    results["rows_all"] = distributed.gather_rows(local, 5, chunk_rows=2)
    results["rows_dst1"] = distributed.gather_rows(local, 5, dst=1, chunk_rows=2)
    results["any"] = (distributed.any_rank(rank == 1), distributed.any_rank(False))
    results["object"] = distributed.broadcast_object({"rank": rank}, src=1)
    results["buffer"] = distributed.broadcast(torch.tensor([rank]), src=1)

    # SimCLR, MoCo, VICReg, Barlow Twins, MoCo v3, ...: one DDP step per process on its B images
    for name, hparams in METHODS.items():
        method = build(name, **hparams)
        model = distributed.wrap_ddp(method, torch.device("cpu"))
        views_of = views_for(name)
        results[name] = train_steps(
            method, model, lambda s, views_of=views_of: [v[rank * B : (rank + 1) * B] for v in views_of(s)]
        )

    # kNN on features extracted by both ranks
    bank, queries = knn_data()
    torch.manual_seed(0)
    backbone = TinyBackbone()
    bank_x, bank_y = extract_features_distributed(backbone, bank, batch_size=4)
    query_x, query_y = extract_features_distributed(backbone, queries, batch_size=4, dst=0)
    results["knn_bank"] = bank_x
    results["knn_queries"] = query_x
    if rank == 0:
        results["knn"] = knn(bank_x, bank_y, query_x, query_y, k=5)

    # DeepCluster: pseudo-labels from features gathered on rank 0, clustered there, broadcast
    method = build("deepcluster", num_clusters=3, pca_dim=4)
    method.on_epoch_start(deepcluster_trainer())
    results["deepcluster"] = method.pseudo_labels.clone()

    torch.save(results, out / f"equivalence_rank{rank}.pt")


# ----------------------------------------------------------------------------- session 2: trainer, stop and resume
def trainer_config(out: Path, **overrides):
    from visionssl.engine.config import load_config

    items = {
        "data.name": "synthetic:32",
        "data.image_size": 10,
        "augment.image_size": 8,
        "optim.batch_size": 8,
        "optim.name": "sgd",
        "optim.lr": 0.5,
        "optim.warmup_epochs": 0,
        "train.epochs": 2,
        "train.knn_every": -1,
        "train.log_every": 1,
        "train.progress": False,
        "train.num_threads": 1,
        "out": str(out),
        "method.proj_hidden_dim": 16,
        "method.proj_dim": 8,
        **overrides,
    }
    return load_config("simclr", overrides=[f"{k}={v}" for k, v in items.items()])


def resume(rank: int, out: Path) -> None:
    from visionssl.engine import ConfigError, Trainer

    results: dict = {}

    def method():
        import visionssl as vs

        torch.manual_seed(0)
        return vs.create_method("simclr", backbone=TinyBackbone(), proj_hidden_dim=16, proj_dim=8)

    # uninterrupted: 2 epochs of 4 steps
    trainer = Trainer(trainer_config(out / "whole"), method=method())
    results["whole"] = trainer.fit()
    results["whole_state"] = {k: v.clone() for k, v in trainer.method.state_dict().items()}

    # rank 1 alone gets SIGTERM after step 3 (mid-epoch); both ranks must stop there, then resume
    trainer = Trainer(trainer_config(out / "stopped"), method=method())
    original = trainer.method.on_step_end

    def on_step_end(step: int, total_steps: int) -> None:
        original(step, total_steps)
        if rank == 1 and step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    trainer.method.on_step_end = on_step_end
    results["stopped"] = trainer.fit()
    trainer = Trainer(trainer_config(out / "stopped"), method=method())
    results["resumed"] = trainer.fit(resume=True)
    results["resumed_state"] = {k: v.clone() for k, v in trainer.method.state_dict().items()}

    # configuration errors every rank reports the same way
    for key, overrides in {"indivisible": {"optim.batch_size": 7}, "sync_bn_cpu": {"train.sync_bn": True}}.items():
        try:
            Trainer(trainer_config(out / key, **overrides), method=method())
            results[key] = None
        except ConfigError as exc:
            results[key] = str(exc)
    torch.save(results, out / f"resume_rank{rank}.pt")
