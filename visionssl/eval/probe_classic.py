"""The classic linear-probe protocol of solo-learn, LightlySSL and VISSL, for comparison with published numbers:
augmented images through the frozen backbone every epoch, SGD with a cosine schedule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from visionssl.backbones.features import input_channels, resolve_device
from visionssl.errors import ConfigError
from visionssl.eval.features import extract_features
from visionssl.eval.knn import rank_accuracy

__all__ = ["linear_probe_classic"]


def linear_probe_classic(
    backbone: nn.Module,
    train_set,
    test_set,
    *,
    epochs: int = 100,
    lr: float | None = None,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    augment: bool | str = True,
    batchnorm: bool = False,
    image_size: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """The classic protocol: every epoch, augmented images go through the frozen backbone into one linear layer.

    SGD (``lr`` default ``0.1 * batch_size / 256``, momentum, weight decay) with a cosine schedule over all
    steps, as in solo-learn / LightlySSL. The backbone stays in eval mode without gradients. ``augment``:
    True for random resized crop (scale 0.08-1) + horizontal flip, False for the plain eval view, or the name
    of an augmentation preset (its first view is used). ``batchnorm=True`` puts a BatchNorm without affine
    parameters in front of the linear layer (MAE's linear-probe recipe), for features whose scale is far from
    1, such as those of a randomly initialised network. The test split is scored on eval views (its features
    are extracted once, before training, so scoring after every epoch is cheap).

    Returns ``top1``, ``top5`` (percent), ``lr``, ``epochs`` and ``history``: per epoch, the test ``top1`` and
    the ``seconds`` of training so far.

    Example:
        >>> import torch, visionssl as vs
        >>> from visionssl.data.dataset import ImageDataset
        >>> ds = ImageDataset(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8),
        ...                   {"c": torch.arange(8) % 2}, "c", {"c": ["a", "b"]}, "toy")
        >>> out = linear_probe_classic(vs.create_backbone("resnet10t_cifar"), ds, ds, epochs=1, progress=False)
        >>> sorted(out), len(out["history"])
        (['epochs', 'history', 'lr', 'top1', 'top5'], 1)
    """
    import time

    from tqdm.auto import tqdm

    from visionssl import augment as augmentations

    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"epochs and batch_size must be >= 1, got epochs={epochs}, batch_size={batch_size}")
    if train_set.targets is None or test_set.targets is None:
        raise ConfigError("the linear probe needs labelled train and test sets")
    device = resolve_device(device)
    image_size = int(image_size or train_set.images.shape[-1])
    channels = input_channels(backbone)
    if augment is True:
        import kornia.augmentation as K

        views = augmentations.MultiView(
            [nn.Sequential(K.RandomResizedCrop((image_size, image_size), scale=(0.08, 1.0)), K.RandomHorizontalFlip())],
            channels=channels,
            normalize=augmentations.Normalize(),
        )
    else:
        views = augmentations.create("eval" if augment is False else augment, image_size=image_size, channels=channels)
    views = views.to(device)
    labels = torch.as_tensor(train_set.targets).long()
    num_classes = 1 + int(max(labels.max(), torch.as_tensor(test_set.targets).max()))
    was_training = backbone.training
    backbone.to(device).eval()
    dim = _feature_dim(backbone, views, train_set, device)
    classifier = nn.Linear(dim, num_classes)
    if batchnorm:
        classifier = nn.Sequential(nn.BatchNorm1d(dim, affine=False), classifier)
    classifier = classifier.to(device)
    lr = lr if lr is not None else 0.1 * batch_size / 256
    opt = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = len(train_set)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * math.ceil(n / batch_size))
    g = torch.Generator().manual_seed(seed)
    history = []
    try:
        test_x, test_y = extract_features(backbone, test_set, batch_size, image_size, device, progress=progress)
        test_x = test_x.to(device)
        started = time.perf_counter()
        for epoch in tqdm(range(1, epochs + 1), desc="linear probe (classic)", disable=not progress, leave=False):
            order = torch.randperm(n, generator=g)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                if batchnorm and len(idx) < 2:
                    continue  # batch statistics need two samples
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    feats = backbone(views(train_set.images[idx].to(device, non_blocking=True))[0])
                loss = F.cross_entropy(classifier(feats.float()), labels[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            with torch.no_grad():
                logits = classifier.eval()(test_x).cpu()
            classifier.train()
            history.append(
                {
                    "epoch": epoch,
                    "top1": rank_accuracy(logits, test_y)["top1"],
                    "seconds": round(time.perf_counter() - started, 3),
                }
            )
    finally:
        backbone.train(was_training)
    return {**rank_accuracy(logits, test_y), "lr": lr, "epochs": epochs, "history": history}


def _feature_dim(backbone: nn.Module, views: nn.Module, dataset, device: torch.device) -> int:
    dim = getattr(backbone, "num_features", None)
    if dim:
        return int(dim)
    with torch.no_grad():
        return int(backbone(views(dataset.images[:1].to(device))[0]).shape[1])
