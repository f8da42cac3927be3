"""DeepCluster (Caron et al., 2018, arXiv 1807.05520): k-means pseudo-labels, re-clustered every epoch.

The clustering step is made of plain functions usable on their own: ``pca_whiten``, ``kmeans``
(FAISS, on the GPU when faiss sees one), ``repair_empty_clusters``, ``cluster_features`` (all three
chained, as the paper) and ``nmi`` (normalized mutual information, numpy only).

Example:
    >>> import torch
    >>> centres = torch.randn(5, 32) * 10
    >>> truth = torch.arange(500) % 5
    >>> x = centres[truth] + torch.randn(500, 32)
    >>> assignments, _ = cluster_features(x, 5, pca_dim=16)
    >>> nmi(assignments, truth) > 0.95
    True
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from visionssl import distributed
from visionssl.methods import register_method
from visionssl.methods.base import SSLMethod, mlp


def fit_whitening(x: torch.Tensor, dim: int = 256, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA whitening fitted to the rows of ``x``: ``(mean (D,), projection (D, k))``.

    With the covariance C = U diag(l) U^T of the centred data, the projection is U_k diag(l_k + eps)^-1/2
    for the k = min(dim, D, N - 1) largest eigenvalues, so ``(x - mean) @ projection`` is whitened
    (FAISS's PCAMatrix with eigen_power = -0.5). Runs on ``x``'s device; the eigendecomposition of the
    D x D covariance is done in float64.

    Example:
        >>> mean, projection = fit_whitening(torch.randn(100, 8), dim=3)
        >>> mean.shape, projection.shape
        (torch.Size([8]), torch.Size([8, 3]))
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"pca_whiten needs a (N, D) matrix with N >= 2 rows, got shape {tuple(x.shape)}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    n, d = x.shape
    k = min(dim, d, n - 1)
    x = x.float()
    mean = x.mean(0)
    centred = x - mean
    cov = (centred.T @ centred).double() / (n - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    top = eigenvalues[-k:].flip(0).clamp_min(0)
    projection = eigenvectors[:, -k:].flip(1) / torch.sqrt(top + eps)
    return mean, projection.to(x.dtype)


def pca_whiten(x: torch.Tensor, dim: int = 256, eps: float = 1e-5) -> torch.Tensor:
    """Projects centred rows on the top ``dim`` principal axes and scales each to unit variance.

    ``(x - mean) @ projection`` with ``fit_whitening(x, dim, eps)``.

    Example:
        >>> x = torch.randn(1000, 8) @ torch.randn(8, 8)
        >>> w = pca_whiten(x, dim=4)
        >>> w.shape, torch.allclose(w.T @ w / 999, torch.eye(4), atol=1e-3)
        (torch.Size([1000, 4]), True)
    """
    mean, projection = fit_whitening(x, dim, eps)
    return (x.float() - mean) @ projection


def kmeans(
    x: torch.Tensor | np.ndarray, k: int, niter: int = 20, seed: int = 0, gpu: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """FAISS k-means: (assignments LongTensor (N,), centroids (k, D)), every cluster non-empty.

    Runs on the GPU when ``gpu`` is true, or when it is ``None`` and faiss sees a GPU. No
    subsampling of the points. Clusters left empty by the final assignment are repaired with
    ``repair_empty_clusters`` (FAISS already splits clusters that empty during its iterations).

    Example:
        >>> x = torch.cat([torch.randn(50, 4), torch.randn(50, 4) + 20])
        >>> assignments, centroids = kmeans(x, 2)
        >>> sorted(torch.bincount(assignments).tolist()), centroids.shape
        ([50, 50], torch.Size([2, 4]))
    """
    import faiss

    data = np.ascontiguousarray(torch.as_tensor(x).detach().float().cpu().numpy())
    if data.ndim != 2:
        raise ValueError(f"kmeans needs a (N, D) matrix, got shape {data.shape}")
    n, d = data.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of points ({n}), got {k}")
    use_gpu = faiss.get_num_gpus() > 0 if gpu is None else gpu
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, gpu=bool(use_gpu), max_points_per_centroid=n,  # no subsampling
                      min_points_per_centroid=1, verbose=False)
    km.train(data)
    _, labels = km.index.search(data, 1)
    centroids, assignments = repair_empty_clusters(
        torch.from_numpy(data), torch.from_numpy(km.centroids.copy()), torch.from_numpy(labels[:, 0].astype(np.int64)), seed
    )
    return assignments, centroids


def repair_empty_clusters(
    x: torch.Tensor, centroids: torch.Tensor, assignments: torch.Tensor, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gives every empty cluster half of a random non-empty one, as DeepCluster does.

    For each empty cluster e: pick a random cluster c with at least 2 points, perturb c's centroid
    in opposite directions along a random member's offset, m +- eps (x_r - m), and reassign c's
    points to the nearer of the two (the hyperplane through m orthogonal to x_r - m splits them,
    and since m is their mean both sides are non-empty). The two halves become c and e, each with
    its mean as centroid. Needs N >= k, which guarantees a cluster to split.

    Returns:
        (centroids (k, D), assignments (N,)) with no empty cluster; the inputs are not modified.

    Example:
        >>> x = torch.tensor([[0.], [1.], [10.], [11.]])
        >>> c, a = repair_empty_clusters(x, torch.tensor([[0.5], [10.5], [99.]]), torch.tensor([0, 0, 1, 1]))
        >>> torch.bincount(a, minlength=3).tolist()
        [1, 2, 1]
    """
    k = centroids.shape[0]
    if len(x) < k:
        raise ValueError(f"cannot fill {k} clusters with {len(x)} points")
    centroids, assignments = centroids.clone(), assignments.clone()
    g = torch.Generator().manual_seed(seed)
    counts = torch.bincount(assignments, minlength=k)
    for empty in (counts == 0).nonzero().flatten().tolist():
        splittable = (counts >= 2).nonzero().flatten()
        source = int(splittable[torch.randint(len(splittable), (1,), generator=g)])
        members = (assignments == source).nonzero().flatten()
        offsets = x[members].float() - x[members].float().mean(0)
        direction = offsets[torch.randint(len(members), (1,), generator=g)].flatten()
        if not direction.any():  # the chosen member sits on the mean: take the farthest one
            direction = offsets[offsets.norm(dim=1).argmax()]
        moved = offsets @ direction > 0
        if moved.all() or not moved.any():  # identical points: any split is as good
            moved = torch.arange(len(members)) < len(members) // 2
        assignments[members[moved]] = empty
        centroids[empty] = x[members[moved]].float().mean(0)
        centroids[source] = x[members[~moved]].float().mean(0)
        counts[empty], counts[source] = int(moved.sum()), int((~moved).sum())
    return centroids, assignments


def cluster_features(
    features: torch.Tensor, k: int, pca_dim: int = 256, niter: int = 20, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepCluster's clustering step: PCA-whiten to ``pca_dim``, L2-normalise, k-means.

    Returns (assignments (N,) on the CPU, centroids (k, pca_dim)).

    Example:
        >>> a, c = cluster_features(torch.randn(200, 64), 10, pca_dim=32)
        >>> a.shape, c.shape, int(torch.bincount(a).min()) > 0
        (torch.Size([200]), torch.Size([10, 32]), True)
    """
    assignments, centroids, _, _ = _fit_clustering(features, k, pca_dim, niter, seed)
    return assignments, centroids


def _fit_clustering(
    features: torch.Tensor, k: int, pca_dim: int, niter: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``cluster_features`` that also returns the whitening it fitted: (assignments, centroids, mean, projection)."""
    mean, projection = fit_whitening(features, pca_dim)
    assignments, centroids = kmeans(_whitened_unit(features, mean, projection), k, niter=niter, seed=seed)
    return assignments, centroids, mean, projection


def _whitened_unit(x: torch.Tensor, mean: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """The space k-means clusters in: whitened with ``fit_whitening``'s result, then L2-normalised."""
    return F.normalize((x.float() - mean) @ projection, dim=1)


def centroid_logits(
    features: torch.Tensor, mean: torch.Tensor, projection: torch.Tensor, centroids: torch.Tensor, temperature: float
) -> torch.Tensor:
    """DeepCluster-v2's classifier: the clustering itself. Features are whitened and L2-normalised as
    for k-means, and the logit of cluster j is -||z - c_j||^2 / temperature, so the arg max is exactly
    the k-means assignment and nothing has to be re-learnt after a clustering.

    Example:
        >>> x = torch.cat([torch.randn(50, 4), torch.randn(50, 4) + 20])
        >>> mean, projection = fit_whitening(x, dim=4)
        >>> assignments, centroids = kmeans(F.normalize((x - mean) @ projection, dim=1), 2)
        >>> bool((centroid_logits(x, mean, projection, centroids, 0.1).argmax(1) == assignments).all())
        True
    """
    return -torch.cdist(_whitened_unit(features, mean, projection), centroids.float()).square() / temperature


def nmi(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Normalized mutual information I(a; b) / mean(H(a), H(b)) of two labelings of the same items.

    Equal to scikit-learn's ``normalized_mutual_info_score`` (arithmetic mean); 1 for identical
    partitions (whatever the label names), near 0 for independent ones. Memory is linear in the
    number of items (the contingency table is kept sparse), so k = 10000 clusters are fine.

    Example:
        >>> round(nmi([0, 0, 1, 1], [5, 5, 3, 3]), 6), round(nmi([0, 0, 1, 1], [0, 1, 0, 1]), 6)
        (1.0, 0.0)
    """
    a = np.asarray(torch.as_tensor(a).cpu()).ravel()
    b = np.asarray(torch.as_tensor(b).cpu()).ravel()
    if a.shape != b.shape:
        raise ValueError(f"labelings have different lengths: {a.size} and {b.size}")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    ka, kb, n = int(ai.max(initial=-1)) + 1, int(bi.max(initial=-1)) + 1, a.size
    if ka == kb <= 1:
        return 1.0
    pairs, joint = np.unique(ai.astype(np.int64) * kb + bi, return_counts=True)
    size_a, size_b = np.bincount(ai), np.bincount(bi)
    pa, pb, pab = size_a / n, size_b / n, joint / n
    mutual = float(np.sum(pab * (np.log(joint * n) - np.log(size_a[pairs // kb] * size_b[pairs % kb].astype(np.float64)))))
    ha, hb = -float(np.sum(pa * np.log(pa))), -float(np.sum(pb * np.log(pb)))
    return float(min(max(mutual / max((ha + hb) / 2, np.finfo(np.float64).eps), 0.0), 1.0))


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
        projection_dim: 0 (the paper) clusters the backbone's features; > 0 puts a projection MLP
            (``projection_hidden_dim`` wide) between the backbone and the clustering, as DeepCluster-v2,
            so the cluster geometry shapes the head and the backbone's features stay general.
        projection_hidden_dim: hidden width of that MLP.

    Returns (forward): ``loss``, ``embedding`` (backbone features, detached) and ``deepcluster/accuracy``
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
    num_views = 1
    hparam_ranges: ClassVar[dict] = {"projection_dim": (0, None, True)}  # 0: no projection head

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
        projection_dim: int = 0,
        projection_hidden_dim: int = 2048,
    ):
        super().__init__(backbone, backbone_kwargs)
        if classifier not in ("reset", "centroids"):
            raise ValueError(f"classifier must be 'reset' or 'centroids', got {classifier!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        for name, value in (("num_clusters", num_clusters), ("cluster_every", cluster_every), ("pca_dim", pca_dim),
                            ("kmeans_iters", kmeans_iters), ("extract_batch_size", extract_batch_size)):
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
        if projection_dim < 0:
            raise ValueError(f"projection_dim must be >= 0 (0: no projection head), got {projection_dim}")
        self.projector = mlp(self.num_features, projection_hidden_dim, projection_dim) if projection_dim else nn.Identity()
        cluster_dim = projection_dim or self.num_features
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
        if len(views) != 1:
            raise ValueError(f"DeepCluster takes 1 view, got {len(views)}")
        if indices is None:
            raise ValueError("DeepCluster.forward needs `indices`, the dataset indices of the batch (the trainer passes them)")
        if self.pseudo_labels.numel() == 0:
            raise RuntimeError("DeepCluster has no pseudo-labels yet: the trainer's on_epoch_start clusters first "
                               "(or call set_pseudo_labels)")
        targets = self.pseudo_labels[indices.to(self.pseudo_labels.device)]
        features = self.backbone(views[0])
        projected = self.projector(features)
        if self.classifier is None:
            logits = centroid_logits(projected, self.whiten_mean, self.whiten_projection, self.centroids, self.temperature)
        else:
            logits = self.classifier(projected)
        return {
            "loss": F.cross_entropy(logits.float(), targets),
            "embedding": features.detach(),
            "deepcluster/accuracy": (logits.argmax(1) == targets).float().mean().detach(),
        }

    # ------------------------------------------------------------------ clustering
    def on_epoch_start(self, trainer: Any) -> None:
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
        local = self.extract_features(trainer.train_set.images[start:stop], trainer.device, _view_size(trainer),
                                      getattr(trainer.augment, "channels", 3))
        features = distributed.gather_rows(local, n, dst=0)
        dim, reduced = local.shape[1], min(self.pca_dim, local.shape[1], n - 1)
        assignments = torch.empty(n, dtype=torch.long)
        mean, projection = torch.empty(dim, device=trainer.device), torch.empty(dim, reduced, device=trainer.device)
        centroids = torch.empty(self.num_clusters, reduced)
        if distributed.is_main():
            seed = self.seed + int(self.num_clusterings)
            features = features.to(trainer.device)  # PCA on the GPU when there is one
            assignments, centroids, mean, projection = _fit_clustering(
                features, self.num_clusters, self.pca_dim, self.kmeans_iters, seed)
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
        self.whiten_mean, self.whiten_projection, self.centroids = mean.to(device), projection.to(device), centroids.to(device)
        self.clustered_epoch.fill_(int(trainer.epoch))
        self.num_clusterings += 1
        optimizer = getattr(trainer, "optimizer", None)
        if optimizer is not None and self.classifier is not None:  # momentum of the old classifier means nothing for the new clusters
            for p in self.classifier.parameters():
                optimizer.state.pop(p, None)
        trainer.log_scalars(scalars)

    def set_pseudo_labels(self, labels: torch.Tensor) -> None:
        """Installs new pseudo-labels (N,) and re-initialises the classifier, as after a clustering."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.ndim != 1 or labels.numel() == 0 or int(labels.min()) < 0 or int(labels.max()) >= self.num_clusters:
            raise ValueError(f"pseudo-labels must be a non-empty (N,) tensor of cluster indices in [0, {self.num_clusters})")
        self.pseudo_labels = labels.to(self.pseudo_labels.device)
        self.reset_classifier()

    @torch.no_grad()
    def extract_features(
        self, images: torch.Tensor, device: torch.device | str, image_size: int, channels: int = 3
    ) -> torch.Tensor:
        """Features (N, D) that are clustered: the ``eval`` view of uint8 images through the backbone
        (and the projection head, if any), in eval mode, batched."""
        from visionssl import augment

        device = torch.device(device)
        view = augment.create("eval", image_size=image_size, channels=channels).to(device)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
        was_training = self.training
        self.eval()
        try:
            chunks = []
            for start in range(0, len(images), self.extract_batch_size):
                batch = images[start : start + self.extract_batch_size].to(device, non_blocking=True)
                with autocast:
                    chunks.append(self.projector(self.backbone(view(batch)[0])).float())
            return torch.cat(chunks)
        finally:
            self.train(was_training)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        for name in ("pseudo_labels", "whiten_mean", "whiten_projection", "centroids"):
            saved = state_dict.get(prefix + name)
            if saved is not None:  # sized by the dataset and the clustering: take the saved shape
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _view_size(trainer: Any) -> int:
    """The side of the training views: ``trainer.config.augment.image_size``, else the images' own."""
    try:
        return int(trainer.config.augment.image_size)
    except AttributeError:
        return int(trainer.train_set.images.shape[-1])


__all__ = ["DeepCluster", "centroid_logits", "cluster_features", "fit_whitening", "kmeans", "nmi", "pca_whiten",
           "repair_empty_clusters"]
