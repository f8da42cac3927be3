"""The clustering step of DeepCluster (Caron et al., 2018), as plain functions usable on their own.

``pca_whiten``, ``kmeans`` (FAISS, on the GPU when faiss sees one), ``repair_empty_clusters``,
``cluster_features`` (all three chained, as the paper) and ``nmi`` (normalized mutual information, numpy only).

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

import numpy as np
import torch
import torch.nn.functional as F


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
    x: torch.Tensor | np.ndarray,
    k: int,
    niter: int = 20,
    seed: int = 0,
    gpu: bool | None = None,
    init_assignments: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FAISS k-means: (assignments LongTensor (N,), centroids (k, D)), every cluster non-empty.

    Runs on the GPU when ``gpu`` is true, or when it is ``None`` and faiss sees a GPU. No
    subsampling of the points. Clusters left empty by the final assignment are repaired with
    ``repair_empty_clusters`` (FAISS already splits clusters that empty during its iterations).
    ``init_assignments`` (N,) starts the iterations from the means of those clusters instead of
    random points, so that cluster j stays about the same group of points (a warm start).

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
    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        seed=seed,
        gpu=bool(use_gpu),
        max_points_per_centroid=n,  # no subsampling
        min_points_per_centroid=1,
        verbose=False,
    )
    init = None
    if init_assignments is not None:
        groups = torch.as_tensor(init_assignments, dtype=torch.long).cpu()
        if groups.shape != (n,) or int(groups.min()) < 0 or int(groups.max()) >= k:
            raise ValueError(
                f"init_assignments must be (N,) = ({n},) cluster indices in [0, {k}), got {tuple(groups.shape)}"
            )
        sums = torch.zeros(k, d, dtype=torch.float64).index_add_(0, groups, torch.from_numpy(data).double())
        counts = torch.bincount(groups, minlength=k).clamp(min=1).unsqueeze(1)
        init = np.ascontiguousarray((sums / counts).float().numpy())
    km.train(data, init_centroids=init)
    _, labels = km.index.search(data, 1)
    centroids, assignments = repair_empty_clusters(
        torch.from_numpy(data),
        torch.from_numpy(km.centroids.copy()),
        torch.from_numpy(labels[:, 0].astype(np.int64)),
        seed,
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
    assignments, centroids, _, _ = fit_clustering(features, k, pca_dim, niter, seed)
    return assignments, centroids


def fit_clustering(
    features: torch.Tensor,
    k: int,
    pca_dim: int,
    niter: int,
    seed: int,
    init_assignments: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``cluster_features`` that also returns the whitening it fitted: (assignments, centroids, mean, projection).
    ``init_assignments`` warm-starts the k-means (see ``kmeans``)."""
    mean, projection = fit_whitening(features, pca_dim)
    whitened = whitened_unit(features, mean, projection)
    assignments, centroids = kmeans(whitened, k, niter=niter, seed=seed, init_assignments=init_assignments)
    return assignments, centroids, mean, projection


def whitened_unit(x: torch.Tensor, mean: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
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
    return -torch.cdist(whitened_unit(features, mean, projection), centroids.float()).square() / temperature


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
    mutual = float(
        np.sum(pab * (np.log(joint * n) - np.log(size_a[pairs // kb] * size_b[pairs % kb].astype(np.float64))))
    )
    ha, hb = -float(np.sum(pa * np.log(pa))), -float(np.sum(pb * np.log(pb)))
    return float(min(max(mutual / max((ha + hb) / 2, np.finfo(np.float64).eps), 0.0), 1.0))
