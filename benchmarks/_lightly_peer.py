"""The LightlySSL side of ``methods_peer.py``: its transforms, heads, losses and loops, as its examples write them.

The examples read are LightlySSL's ``examples/pytorch/{simclr,moco,byol,simsiam,vicreg,swav,barlowtwins,dino}.py``.
Every head gets the widths of the visionssl method it is compared with (``widths``), so the two sides differ in
recipe and code, not in size. The loop is the same for every method and differs from the examples in three ways:
the momentum schedule runs per step, not per epoch (``cosine_schedule(step, total, start, 1)``); the learning rate
decays along a cosine per step; the two-view methods' SGD has momentum 0.9 and weight decay 5e-4 (the examples: plain
SGD at lr 0.06). SwAV and DINO keep their examples' optimizer, Adam without weight decay (lr 1e-3; ``OPTIMIZERS``).
As in the examples, SwAV runs every crop through the network on its own and normalises its prototypes before each
step (none frozen, no queue); DINO's teacher backbone is a copy of the student's, its teacher head a head of its own
initialisation, and the student's last layer takes no step in the first epoch.
"""

from __future__ import annotations

import copy
import math
import statistics

import torch
import torch.nn.functional as F
from throughput import PeerImages
from torch import nn
from torch.utils.data import DataLoader

import visionssl as vs
from visionssl.augment.multicrop import local_crop_size

MULTI_CROP = ("swav", "dino")  # 2 global crops first, then the local crops; every crop is trained on
MOMENTUM = ("moco", "byol", "dino")  # a momentum copy (DINO: the teacher) follows the network
OPTIMIZERS = {"swav": "adam", "dino": "adam"}  # the others: SGD
OPTIMIZER_NAMES = {"sgd": "SGD", "adam": "Adam"}


def widths(head: nn.Module) -> tuple[int, int]:
    """(hidden, output) width of an MLP head: the first and the last ``nn.Linear``'s outputs."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return linears[0].out_features, linears[-1].out_features


def optimizer_of(method: str) -> str:
    """``"adam"`` or ``"sgd"``: the optimizer of LightlySSL's example of ``method``."""
    return OPTIMIZERS.get(method, "sgd")


def lightly_transform(method: str, size: int, min_scale: float | None = None, views: str = "own"):
    """LightlySSL's transform of ``method`` at its defaults; no blur below 64 px (its CIFAR-10 benchmark's choice).

    ``min_scale`` replaces its crops' smallest area fraction (a control: visionssl's elpv views crop 0.6-1.0); for
    SwAV and DINO that of the global crops. ``views="simclr"`` gives every two-view method the plain small-image
    loop's views: ``SimCLRTransform`` with colour jitter strength 0.5 and no blur. SwAV and DINO always keep their
    multi-crop transform: global crops of ``size``, local crops of ``local_crop_size(size)`` (the examples' 96/224 of
    the global side, in multiples of 8, as visionssl's multi-crop), the examples' counts (2 + 6) and scales.
    """
    from lightly import transforms as T

    small = {"gaussian_blur": 0.0} if size < 64 else {}
    if method == "swav":
        scales = {"crop_min_scales": (min_scale, 0.05)} if min_scale is not None else {}
        return T.SwaVTransform(crop_sizes=(size, local_crop_size(size)), **scales, **small)
    if method == "dino":
        return T.DINOTransform(
            global_crop_size=size,
            global_crop_scale=(0.4 if min_scale is None else min_scale, 1.0),
            local_crop_size=local_crop_size(size),
            **({"gaussian_blur": (0.0, 0.0, 0.0)} if size < 64 else {}),
        )
    if min_scale is not None:
        small["min_scale"] = min_scale
    if views == "simclr":
        return T.SimCLRTransform(input_size=size, cj_strength=0.5, **small)
    if method == "simclr":
        return T.SimCLRTransform(input_size=size, cj_strength=0.5 if size < 64 else 1.0, **small)
    if method == "moco":
        return T.MoCoV2Transform(input_size=size, **small)
    if method in ("byol", "barlow_twins"):  # Barlow Twins' example trains on BYOL's views
        return T.BYOLTransform(
            T.BYOLView1Transform(input_size=size, **small), T.BYOLView2Transform(input_size=size, **small)
        )
    if method == "simsiam":
        return T.SimSiamTransform(input_size=size, **small)
    return T.VICRegTransform(input_size=size, **small)


class LightlyMethod(nn.Module):
    """LightlySSL's heads, loss and momentum update around a copy of visionssl's initial backbone."""

    def __init__(self, method: str, backbone: nn.Module, ours: vs.methods.SSLMethod, momentum: float = 0.996):
        from lightly import loss
        from lightly.models import modules, utils

        super().__init__()
        self.method, self.backbone, feat, self.momentum = method, backbone, ours.num_features, momentum
        if method == "simclr":
            self.head = modules.SimCLRProjectionHead(feat, *widths(ours.projector))
            self.criterion = loss.NTXentLoss(temperature=ours.temperature)
        elif method == "moco":
            hidden, out = widths(ours.projector)
            self.head = modules.MoCoProjectionHead(feat, hidden, out)
            self.criterion = loss.NTXentLoss(temperature=ours.temperature, memory_bank_size=(ours.queue.shape[0], out))
        elif method == "byol":
            hidden, out = widths(ours.projector)
            self.head = modules.BYOLProjectionHead(feat, hidden, out)
            self.predictor = modules.BYOLPredictionHead(out, widths(ours.predictor)[0], out)
            self.criterion = loss.NegativeCosineSimilarity()
        elif method == "simsiam":
            hidden, out = widths(ours.projector)
            self.head = modules.SimSiamProjectionHead(feat, hidden, out)
            self.predictor = modules.SimSiamPredictionHead(out, widths(ours.predictor)[0], out)
            self.criterion = loss.NegativeCosineSimilarity()
        elif method == "vicreg":
            hidden, out = widths(ours.expander)
            self.head = modules.BarlowTwinsProjectionHead(feat, hidden, out)  # LightlySSL's VICReg example's head
            self.criterion = loss.VICRegLoss()
        elif method == "barlow_twins":
            self.head = modules.BarlowTwinsProjectionHead(feat, *widths(ours.projector))
            self.criterion = loss.BarlowTwinsLoss()
        elif method == "swav":
            hidden, out = widths(ours.projector)
            self.head = modules.SwaVProjectionHead(feat, hidden, out)
            self.prototypes = modules.SwaVPrototypes(out, n_prototypes=ours.prototypes.out_features)
            self.criterion = loss.SwaVLoss()
        elif method == "dino":
            hidden, out = widths(ours.head)
            dims = (feat, hidden, ours.head.last_layer.in_features, out)
            self.head = modules.DINOProjectionHead(*dims, freeze_last_layer=1)
            self.criterion = loss.DINOLoss(output_dim=out, warmup_teacher_temp_epochs=5)
            # the example builds the teacher's head anew (its own initialisation) rather than copying the student's
            self.head_momentum = modules.DINOProjectionHead(*dims)
        else:
            raise ValueError(f"no LightlySSL loop for {method!r}")
        if method in MOMENTUM:
            self.backbone_momentum = copy.deepcopy(self.backbone)
            if method != "dino":
                self.head_momentum = copy.deepcopy(self.head)
            utils.deactivate_requires_grad(self.backbone_momentum)
            utils.deactivate_requires_grad(self.head_momentum)

    def training_step(self, views: list[torch.Tensor], step: int, total: int, epoch: int = 0) -> torch.Tensor:
        """The loss of one batch of ``views`` (multi-crop: global crops first), as LightlySSL's examples write it."""
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        if self.method in MOMENTUM:
            m = cosine_schedule(step, total, self.momentum, 1)
            update_momentum(self.backbone, self.backbone_momentum, m=m)
            update_momentum(self.head, self.head_momentum, m=m)
        if self.method == "swav":
            self.prototypes.normalize()
            scores = [self.prototypes(F.normalize(self.head(self.backbone(v)), dim=1)) for v in views]
            return self.criterion(scores[:2], scores[2:])
        if self.method == "dino":
            with torch.no_grad():
                teacher = [self.head_momentum(self.backbone_momentum(v)) for v in views[:2]]
            student = [self.head(self.backbone(v)) for v in views]
            return self.criterion(teacher, student, epoch=epoch)
        x0, x1 = views[:2]
        if self.method == "moco":
            query = self.head(self.backbone(x0))
            with torch.no_grad():
                key = self.head_momentum(self.backbone_momentum(x1))
            return self.criterion(query, key)
        if self.method == "byol":
            p0, p1 = self.predictor(self.head(self.backbone(x0))), self.predictor(self.head(self.backbone(x1)))
            with torch.no_grad():
                z0, z1 = self.head_momentum(self.backbone_momentum(x0)), self.head_momentum(self.backbone_momentum(x1))
            return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        if self.method == "simsiam":
            z0, z1 = self.head(self.backbone(x0)), self.head(self.backbone(x1))
            p0, p1 = self.predictor(z0), self.predictor(z1)
            return 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach()))
        return self.criterion(self.head(self.backbone(x0)), self.head(self.backbone(x1)))

    def before_optimizer_step(self, epoch: int) -> None:
        """DINO: the head's last layer takes no step in the first epoch (``cancel_last_layer_gradients``)."""
        if self.method == "dino":
            self.head.cancel_last_layer_gradients(current_epoch=epoch)


def train_lightly(
    method: str, initial: nn.Module, ours: vs.methods.SSLMethod, train, args, device: torch.device, lr: float
) -> tuple[nn.Module, bool, list[float]]:
    """Pretrains a copy of ``initial`` the LightlySSL way for ``args.epochs`` at learning rate ``lr`` (of the
    example's optimizer, ``optimizer_of``); returns its backbone, whether the loss stayed finite and the mean loss
    of each epoch."""
    model = LightlyMethod(method, copy.deepcopy(initial), ours, args.peer_momentum).to(device)
    stored = train.images  # uint8 (N, C, H, W); PeerImages serves PIL RGB images
    loader = DataLoader(
        PeerImages(stored, lightly_transform(method, args.image_size, args.peer_min_scale, args.peer_views)),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    total = args.epochs * len(loader)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer_of(method) == "adam":
        optimizer = torch.optim.Adam(params, lr=lr)
    else:
        optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(total, 1))
    used = None if method in MULTI_CROP else 2
    model.train()
    step, curve = 0, []
    for epoch in range(args.epochs):
        losses = []
        for views in loader:
            loss = model.training_step([v.to(device, non_blocking=True) for v in views[:used]], step, total, epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            model.before_optimizer_step(epoch)
            optimizer.step()
            schedule.step()
            step += 1
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                return model.backbone, False, [*curve, losses[-1]]
        curve.append(statistics.mean(losses))
    return model.backbone, True, curve
