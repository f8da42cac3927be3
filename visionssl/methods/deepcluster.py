"""DeepCluster (Caron et al., 2018, arXiv 1807.05520): k-means pseudo-labels, re-clustered every epoch.

The clustering step is made of plain functions usable on their own, in ``visionssl.methods.clustering``
(and re-exported here): ``pca_whiten``, ``kmeans``, ``repair_empty_clusters``, ``cluster_features``, ``nmi``.

The trainer passes each batch's dataset indices (``needs_indices``): they select the pseudo-labels.

Example:
    >>> import visionssl as vs
    >>> vs.methods.METHODS.get("deepcluster").needs_indices
    True
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from visionssl import distributed
from visionssl.augment.ops import LUMA
from visionssl.backbones.features import batched_features
from visionssl.methods import register_method
from visionssl.methods.base import SSLMethod, TrainingContext, mlp
from visionssl.methods.clustering import (  # noqa: F401  (re-exported: the clustering step's functions)
    centroid_logits,
    cluster_features,
    fit_clustering,
    fit_whitening,
    kmeans,
    nmi,
    pca_whiten,
    repair_empty_clusters,
)


@register_method("deepcluster")
class DeepCluster(SSLMethod):
    """DeepCluster: every ``cluster_every`` epochs, features of the whole training set (eval view,
    backbone in eval mode) are PCA-whitened, L2-normalised and clustered by k-means; the assignments
    become pseudo-labels for a linear classifier that is re-initialised after each clustering; the
    loss is the cross entropy against the pseudo-labels, and the trainer samples images uniformly
    over clusters as the reference's ``UnifLabelSampler`` (``sample_labels``: the same number of draws
    per cluster, without replacement inside clusters larger than that; ``sample_weights``, 1 / size of
    the image's cluster, states the same distribution for samplers that take weights).

    The classifier follows the reference: re-initialised after each clustering with N(0, 0.01) weights
    and zero bias, and trained by its own plain SGD (no momentum). The reference's separate
    ``optimizer_tl`` has the main optimizer's lr and weight decay and no momentum, so ``param_groups``
    puts the classifier in a group with ``momentum=0`` of the main SGD, which makes the same updates
    (the main schedule's lr applies to it; the reference's lr is constant).

    The trainer passes ``indices`` (LongTensor, the dataset indices of the batch) to every method
    whose ``forward`` accepts an ``indices`` argument; DeepCluster looks their pseudo-labels up
    with them. ``on_epoch_start`` logs ``deepcluster/nmi_prev`` (NMI between consecutive
    clusterings, a measure of stability) and ``deepcluster/nmi_labels`` (against the dataset's
    labels, when it has them) with ``trainer.log_scalars``.

    Views: one (the paper's crop and flip) or several of the same images, as DeepCluster-v2 trains on
    SwAV's crops; every view is trained on its image's pseudo-label, and the views run through the
    backbone as one batch. The small recipe gives it ``simclr``'s two views.

    Data-parallel training (torchrun): each rank extracts the features of its block of the training
    set, rank 0 gathers and clusters them, and broadcasts the assignments: the pseudo-labels (and so
    the sampling weights and every rank's targets) are identical on all ranks.

    ``classifier="centroids"`` is DeepCluster-v2's fix (Caron et al., 2020, the SwAV paper's appendix):
    instead of a linear layer re-initialised after each clustering, the logits are the negative squared
    distances of the whitened, L2-normalised features to the k-means centroids over ``temperature``
    (``centroid_logits``). The classifier then agrees with the pseudo-labels from the first step; a
    re-initialised one needs many steps before its gradients mean anything, which a small dataset's
    epoch (tens of steps) does not give it.

    Args:
        backbone: a backbone name for ``vs.create_backbone`` or a built module.
        num_clusters: k (paper: 10000 on ImageNet, about 10x the classes; 100 suits a few thousand images).
        cluster_every: epochs between clusterings (paper: 1).
        pca_dim: PCA output size (paper: 256; at most the feature size and N - 1).
        kmeans_iters: k-means iterations (the paper's code: 20).
        extract_batch_size: batch size of the feature extraction.
        seed: k-means seed (the clustering count is added, so each clustering starts differently).
        classifier: ``"reset"`` (the paper: a linear layer, re-initialised after each clustering) or
            ``"centroids"`` (DeepCluster-v2: the fixed centroids, no classifier weights to learn).
        temperature: softmax temperature of the ``"centroids"`` classifier.
        proj_dim: 0 (the paper) clusters the backbone's features; > 0 puts a projection MLP
            (``proj_hidden_dim`` wide) between the backbone and the clustering, as DeepCluster-v2,
            so the cluster geometry shapes the head and the backbone's features stay general.
        proj_hidden_dim: hidden width of that MLP.
        warm_start: False (the paper) starts each k-means from random points, so the clusters are renamed and
            regrouped at every clustering; True starts it from the previous pseudo-labels' groups (their means
            in the new feature space), so cluster j stays about the same images and what the network learnt
            about it carries over to the next epoch.
        cluster_grayscale: False clusters the features of the colour images; True of their grayscale versions
            (colour removed, as the paper's Sobel input does), so that k-means cannot group the images by
            colour, which an untrained network's features are full of. Only the clustering sees gray images.

    Returns (forward): ``loss``, ``embedding`` (backbone features of the first view, detached) and ``deepcluster/accuracy``
    (agreement of the classifier with the pseudo-labels, 0-d).

    Example:
        >>> import torch, visionssl as vs
        >>> m = vs.create_method("deepcluster", backbone="resnet10t_cifar", num_clusters=4)
        >>> m.set_pseudo_labels(torch.tensor([0, 1, 2, 3, 0, 1]))
        >>> out = m([torch.randn(3, 3, 16, 16)], indices=torch.tensor([0, 4, 5]))
        >>> out["loss"].backward(); m.sample_weights.tolist()
        [0.5, 0.5, 1.0, 1.0, 0.5, 0.5]
    """

    augmentation = "deepcluster"
    num_views = 1  # the paper's; any number works (each view is trained on the image's pseudo-label)
    needs_indices = True  # forward(views, indices): the pseudo-labels of the batch
    hparam_ranges: ClassVar[dict] = {"proj_dim": (0, None, True)}  # 0: no projection head
    hparam_choices: ClassVar[dict] = {"classifier": ("reset", "centroids")}

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        num_clusters: int = 100,
        cluster_every: int = 1,
        pca_dim: int = 256,
        kmeans_iters: int = 20,
        extract_batch_size: int = 256,
        seed: int = 0,
        classifier: str = "reset",
        temperature: float = 0.1,
        proj_dim: int = 0,
        proj_hidden_dim: int = 2048,
        warm_start: bool = False,
        cluster_grayscale: bool = False,
    ):
        super().__init__(backbone, backbone_kwargs)
        if classifier not in ("reset", "centroids"):
            raise ValueError(f"classifier must be 'reset' or 'centroids', got {classifier!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        for name, value in (
            ("num_clusters", num_clusters),
            ("cluster_every", cluster_every),
            ("pca_dim", pca_dim),
            ("kmeans_iters", kmeans_iters),
            ("extract_batch_size", extract_batch_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_clusters < 2:
            raise ValueError(f"num_clusters must be >= 2, got {num_clusters}")
        self.num_clusters = num_clusters
        self.cluster_every = cluster_every
        self.pca_dim = pca_dim
        self.kmeans_iters = kmeans_iters
        self.extract_batch_size = extract_batch_size
        self.seed = seed
        self.temperature = temperature
        self.warm_start = warm_start
        self.cluster_grayscale = cluster_grayscale
        if proj_dim < 0:
            raise ValueError(f"proj_dim must be >= 0 (0: no projection head), got {proj_dim}")
        self.projector = mlp(self.num_features, proj_hidden_dim, proj_dim) if proj_dim else nn.Identity()
        cluster_dim = proj_dim or self.num_features
        self.classifier = nn.Linear(cluster_dim, num_clusters) if classifier == "reset" else None
        self.reset_classifier()
        # "centroids": the whitening and the centroids of the last clustering (sizes set by each clustering)
        self.register_buffer("whiten_mean", torch.zeros(0))
        self.register_buffer("whiten_projection", torch.zeros(0, 0))
        self.register_buffer("centroids", torch.zeros(0, 0))
        # Saved with the weights, so that a resumed run keeps its pseudo-labels until the next clustering.
        self.register_buffer("pseudo_labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("clustered_epoch", torch.tensor(-1))
        self.register_buffer("num_clusterings", torch.tensor(0))

    @property
    def sample_labels(self) -> torch.Tensor | None:
        """The pseudo-labels on the CPU, for the trainer's uniform-over-clusters sampler (None before clustering)."""
        return self.pseudo_labels.cpu() if self.pseudo_labels.numel() else None

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The main groups, with the ``"reset"`` classifier in its own group without momentum (see the class)."""
        if self.classifier is None:
            return super().param_groups(weight_decay)
        head = {id(p) for p in self.classifier.parameters()}
        groups = super().param_groups(weight_decay)
        for g in groups:
            g["params"] = [p for p in g["params"] if id(p) not in head]
        return groups + [{"params": list(self.classifier.parameters()), "weight_decay": weight_decay, "momentum": 0.0}]

    def reset_classifier(self) -> None:
        """The reference's init of the top layer: weights N(0, 0.01), bias zero."""
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, 0.0, 0.01)
            nn.init.zeros_(self.classifier.bias)

    @property
    def sample_weights(self) -> torch.Tensor | None:  # type: ignore[override]
        """Per-image weights 1 / |cluster| on the CPU (uniform over clusters), or None before clustering."""
        if self.pseudo_labels.numel() == 0:
            return None
        labels = self.pseudo_labels.cpu()
        return 1.0 / torch.bincount(labels, minlength=self.num_clusters)[labels].double()

    def forward(self, views: list[torch.Tensor], indices: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if not views:
            raise ValueError("DeepCluster takes at least 1 view, got none")
        if indices is None:
            raise ValueError(
                "DeepCluster.forward needs `indices`, the dataset indices of the batch (the trainer passes them)"
            )
        if self.pseudo_labels.numel() == 0:
            raise RuntimeError(
                "DeepCluster has no pseudo-labels yet: the trainer's on_epoch_start clusters first "
                "(or call set_pseudo_labels)"
            )
        targets = self.pseudo_labels[indices.to(self.pseudo_labels.device)].repeat(len(views))
        features = self.backbone(torch.cat(views) if len(views) > 1 else views[0])
        projected = self.projector(features)
        if self.classifier is None:
            logits = centroid_logits(
                projected, self.whiten_mean, self.whiten_projection, self.centroids, self.temperature
            )
        else:
            logits = self.classifier(projected)
        return {
            "loss": F.cross_entropy(logits.float(), targets),
            "embedding": features[: len(indices)].detach(),
            "deepcluster/accuracy": (logits.argmax(1) == targets).float().mean().detach(),
        }

    # ------------------------------------------------------------------ clustering
    def on_epoch_start(self, trainer: TrainingContext) -> None:
        """Re-clusters the training set when due (first epoch, then every ``cluster_every`` epochs)."""
        n = len(trainer.train_set)
        due = int(trainer.epoch) - int(self.clustered_epoch) >= self.cluster_every
        if self.pseudo_labels.numel() == n and int(self.clustered_epoch) >= 0 and not due:
            return
        if self.num_clusters > n:
            raise ValueError(f"num_clusters={self.num_clusters} is larger than the training set ({n} images)")
        # data-parallel: each rank extracts its block of the training set, rank 0 clusters them all and
        # sends the assignments to every rank, so the pseudo-labels are identical everywhere
        start, stop = distributed.shard_bounds(n)
        local = self.extract_features(
            trainer.train_set.images[start:stop],
            trainer.device,
            _view_size(trainer),
            getattr(trainer.augment, "channels", 3),
        )
        features = distributed.gather_rows(local, n, dst=0)
        dim, reduced = local.shape[1], min(self.pca_dim, local.shape[1], n - 1)
        assignments = torch.empty(n, dtype=torch.long)
        mean, projection = torch.empty(dim, device=trainer.device), torch.empty(dim, reduced, device=trainer.device)
        centroids = torch.empty(self.num_clusters, reduced)
        if distributed.is_main():
            seed = self.seed + int(self.num_clusterings)
            features = features.to(trainer.device)  # PCA on the GPU when there is one
            previous = self.pseudo_labels.cpu() if self.warm_start and self.pseudo_labels.numel() == n else None
            assignments, centroids, mean, projection = fit_clustering(
                features, self.num_clusters, self.pca_dim, self.kmeans_iters, seed, previous
            )
        for tensor in (assignments, mean, projection, centroids):
            distributed.broadcast(tensor, src=0)
        scalars = {}
        if self.pseudo_labels.numel() == n:
            scalars["deepcluster/nmi_prev"] = nmi(self.pseudo_labels, assignments)
        targets = getattr(trainer.train_set, "targets", None)
        if targets is not None:
            scalars["deepcluster/nmi_labels"] = nmi(targets, assignments)
        self.set_pseudo_labels(assignments)
        device = self.whiten_mean.device
        self.whiten_mean, self.whiten_projection, self.centroids = (
            mean.to(device),
            projection.to(device),
            centroids.to(device),
        )
        self.clustered_epoch.fill_(int(trainer.epoch))
        self.num_clusterings += 1
        optimizer = getattr(trainer, "optimizer", None)
        if (
            optimizer is not None and self.classifier is not None
        ):  # momentum of the old classifier means nothing for the new clusters
            for p in self.classifier.parameters():
                optimizer.state.pop(p, None)
        trainer.log_scalars(scalars)

    def set_pseudo_labels(self, labels: torch.Tensor) -> None:
        """Installs new pseudo-labels (N,) and re-initialises the classifier, as after a clustering."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.ndim != 1 or labels.numel() == 0 or int(labels.min()) < 0 or int(labels.max()) >= self.num_clusters:
            raise ValueError(
                f"pseudo-labels must be a non-empty (N,) tensor of cluster indices in [0, {self.num_clusters})"
            )
        self.pseudo_labels = labels.to(self.pseudo_labels.device)
        self.reset_classifier()

    @torch.no_grad()
    def extract_features(
        self, images: torch.Tensor, device: torch.device | str, image_size: int, channels: int = 3
    ) -> torch.Tensor:
        """Features (N, D), float32 on the CPU, that are clustered: the ``eval`` view of uint8 images through the
        backbone (and the projection head, if any), in eval mode, batched (``backbones.features.batched_features``)."""
        from visionssl import augment

        view = augment.create("eval", image_size=image_size, channels=channels).to(device)
        gray = self.cluster_grayscale and images.shape[1] == 3
        was_training = self.training
        self.eval()
        try:
            return batched_features(
                lambda x: self.projector(self.backbone(x)),
                images,
                lambda x: view(grayscale(x) if gray else x)[0],
                self.extract_batch_size,
                device,
            )
        finally:
            self.train(was_training)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        for name in ("pseudo_labels", "whiten_mean", "whiten_projection", "centroids"):
            saved = state_dict.get(prefix + name)
            if saved is not None:  # sized by the dataset and the clustering: take the saved shape
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB images (N, 3, H, W) as uint8 grayscale in 3 channels (torchvision's luma weights, rounded):
    a gray image is returned unchanged.

    Example:
        >>> grayscale(torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1)).flatten().tolist()
        [76, 76, 76]
    """
    luma = torch.tensor(LUMA, device=images.device).view(1, 3, 1, 1)
    gray = (images.float() * luma).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    return gray.expand_as(images).contiguous()


def _view_size(trainer: TrainingContext) -> int:
    """The side of the training views: ``trainer.config.augment.image_size``, else the images' own."""
    try:
        return int(trainer.config.augment.image_size)
    except AttributeError:
        return int(trainer.train_set.images.shape[-1])


__all__ = [
    "DeepCluster",
    "centroid_logits",
    "cluster_features",
    "fit_whitening",
    "kmeans",
    "nmi",
    "pca_whiten",
    "repair_empty_clusters",
]
