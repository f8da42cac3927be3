"""Run by tests/test_cuda.py under ``torchrun --standalone --nproc_per_node=1``: a group of one NCCL process.

Joins the group the way the trainer does (``distributed.init("cuda")``), runs the collectives the training
code uses, then trains a tiny SimCLR for one epoch; writes what it saw as JSON to ``argv[1]``.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist


def main(out: str) -> None:
    from visionssl import distributed
    from visionssl.engine import Trainer, load_config

    device = distributed.init("cuda")
    x = torch.arange(6.0, device=device, requires_grad=True)
    gathered = distributed.all_gather_with_grad(x)
    gathered.sum().backward()
    cfg = load_config(
        "simclr",
        overrides=[
            "data.name=synthetic:64",
            "data.image_size=20",
            "augment.image_size=16",
            "backbone.name=resnet10t_cifar",
            "optim.batch_size=16",
            "optim.warmup_epochs=0",
            "method.proj_hidden_dim=32",
            "method.proj_dim=16",
            "train.progress=false",
            "train.log_every=1",
            "train.epochs=1",
            "train.knn_every=-1",
            "train.device=cuda",
            f"out={out}.run",
        ],
    )
    result = Trainer(cfg).fit()
    report = {
        "backend": dist.get_backend(),
        "world_size": distributed.world_size(),
        "device": str(device),
        "all_reduce": distributed.all_reduce(torch.ones(3, device=device)).tolist(),
        "all_gather": gathered.detach().tolist(),
        "grad": x.grad.tolist(),
        "steps": result["step"],
        "loss": result.get("train/loss"),
    }
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
