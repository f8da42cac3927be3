"""k-nearest-neighbour evaluation of frozen features, searched with FAISS.

Features are L2-normalised, so the inner product is the cosine similarity. Every query looks up its
``k`` most similar training features and each neighbour votes for its label:

* ``vote="weighted"``: a neighbour with similarity ``s`` adds ``exp(s / T)`` to its class (the weighting of
  InstDisc, Wu et al. 2018, used by solo-learn and LightlySSL; ``T`` is ``temperature``);
* ``vote="majority"``: every neighbour adds 1.

Classes are ranked by their votes (ties go to the smaller class index, as in scikit-learn) and the test label
is compared with the first (top-1) and first five (top-5) classes.

Search backends (``index=``): ``"flat"`` exact search of the whole bank in memory (``faiss.IndexFlatIP``);
``"ivf"`` approximate search (``faiss.IndexIVFFlat``: ``nlist`` k-means cells trained on a sample, ``nprobe``
cells visited per query) for large banks; ``"sharded"`` exact search that reads the bank ``shard_size`` rows
at a time (a ``numpy.memmap`` bank never has to fit in memory). When faiss sees a GPU the index lives there;
when only torch sees one, the exact search runs as a chunked ``torch.mm`` + top-k on that GPU.

Example:
    >>> import torch, visionssl as vs
    >>> train_x, train_y = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), torch.tensor([0, 0, 1])
    >>> vs.eval.knn(train_x, train_y, torch.tensor([[0.1, 1.0]]), torch.tensor([1]), k=1)
    {'top1': 100.0, 'top5': 100.0, 'top1@k1': 100.0, 'top5@k1': 100.0}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from visionssl.errors import ConfigError, DataError
from visionssl.eval.knn_search import DEVICES, INDEXES, Array, Bank, feature_rows, knn_search  # noqa: F401  (re-exported)

VOTES = ("weighted", "majority")

__all__ = ["knn", "knn_predict", "knn_search", "knn_scores", "rank_accuracy"]


def knn(
    train_x: Bank,
    train_y: Array,
    test_x: Array,
    test_y: Array,
    k: int | Sequence[int] = 200,
    temperature: float = 0.07,
    *,
    vote: str = "weighted",
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    shard_size: int = 262_144,
    device: str = "auto",
    num_classes: int | None = None,
) -> dict[str, float]:
    """kNN classification accuracy (percent) of ``test_x`` against the labelled bank ``train_x``.

    Args:
        train_x, test_x: features (N, D) and (Q, D), torch tensors or numpy arrays; they are L2-normalised
            here (a normalised copy). The bank ``train_x`` may also be the path of a ``.npy`` file: with
            ``index="sharded"`` or ``"ivf"`` it is read ``shard_size`` rows at a time, never whole.
        train_y, test_y: integer class labels (N,) and (Q,).
        k: number of neighbours, or several: all of them come from ONE search at the largest ``k``.
        temperature: ``T`` of the weighted vote ``exp(similarity / T)``.
        vote: ``"weighted"`` or ``"majority"``.
        index: ``"flat"`` (exact), ``"ivf"`` (approximate; ``nlist``, ``nprobe``) or ``"sharded"`` (exact, the
            bank read ``shard_size`` rows at a time).
        nlist: IVF cells (default ``round(sqrt(N))``, at most N / 39). nprobe: cells visited per query
            (default ``nlist / 8``, at least 1); ``nprobe == nlist`` makes the IVF search exact.
        shard_size: bank rows normalised and searched at a time by ``"sharded"`` and added at a time by ``"ivf"``.
        device: ``"auto"`` (a GPU when faiss or torch sees one), ``"cpu"`` or ``"cuda"``.
        num_classes: number of classes (default: largest label + 1).

    Returns:
        ``top1@k{k}`` and ``top5@k{k}`` for every ``k``; when ``k`` is a single int, also plain ``top1`` and
        ``top5``. Top-5 counts the ``min(5, num_classes)`` best-voted classes.

    Example:
        >>> import torch
        >>> x, y = torch.randn(100, 8), torch.randint(0, 3, (100,))
        >>> sorted(knn(x, y, x, y, k=(1, 10), vote="majority"))
        ['top1@k1', 'top1@k10', 'top5@k1', 'top5@k10']
        >>> knn(x, y, x, y, k=1)["top1"]  # every query finds itself
        100.0
    """
    ks = _check_ks(k)
    test_labels = check_labels(test_y, "test_y", len(test_x))
    scores = knn_predict(
        train_x,
        train_y,
        test_x,
        ks,
        temperature,
        vote=vote,
        index=index,
        nlist=nlist,
        nprobe=nprobe,
        shard_size=shard_size,
        device=device,
        num_classes=num_classes if num_classes is not None else _num_classes(train_y, test_labels),
    )
    metrics: dict[str, float] = {}
    if isinstance(k, (int, np.integer)):
        metrics.update(rank_accuracy(scores[ks[0]], test_labels))
    for kk in ks:
        for name, value in rank_accuracy(scores[kk], test_labels).items():
            metrics[f"{name}@k{kk}"] = value
    return metrics


def knn_predict(
    train_x: Bank,
    train_y: Array,
    test_x: Array,
    k: int | Sequence[int] = 200,
    temperature: float = 0.07,
    *,
    vote: str = "weighted",
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    shard_size: int = 262_144,
    device: str = "auto",
    num_classes: int | None = None,
) -> dict[int, torch.Tensor]:
    """Class votes (Q, num_classes) of every test feature, for each ``k``; arguments as in ``knn``.

    ``scores[k].argmax(1)`` is the prediction (smallest class index on ties). For ``vote="majority"`` the
    votes are neighbour counts; weighted votes are scaled per query (only their ratios matter).

    Example:
        >>> import torch
        >>> bank, labels = torch.eye(3), torch.tensor([0, 1, 1])
        >>> knn_predict(bank, labels, torch.tensor([[1.0, 0.9, 0.0]]), k=2, vote="majority")[2].tolist()
        [[1.0, 1.0]]
    """
    ks = _check_ks(k)
    if vote not in VOTES:
        raise ConfigError(f"unknown vote {vote!r}; valid: {', '.join(VOTES)}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    train_x = feature_rows(train_x, "train_x")
    bank_labels = check_labels(train_y, "train_y", len(train_x))
    if num_classes is None:
        num_classes = _num_classes(bank_labels)
    elif int(bank_labels.max()) >= num_classes:
        raise DataError(f"train_y has label {int(bank_labels.max())} but num_classes={num_classes}")
    sims, ids = knn_search(
        train_x, test_x, max(ks), index=index, nlist=nlist, nprobe=nprobe, shard_size=shard_size, device=device
    )
    sims, ids = torch.from_numpy(sims), torch.from_numpy(ids)
    found = ids >= 0  # IVF returns -1 where a query's visited cells hold fewer than k vectors
    neighbour_labels = bank_labels[ids.clamp(min=0)]
    return {
        kk: knn_scores(sims[:, :kk], neighbour_labels[:, :kk], num_classes, temperature, vote, found[:, :kk])
        for kk in ks
    }


def knn_scores(
    similarities: torch.Tensor,
    neighbour_labels: torch.Tensor,
    num_classes: int,
    temperature: float = 0.07,
    vote: str = "weighted",
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-class votes (Q, num_classes) from the neighbours' similarities and labels (both (Q, k)).

    Weighted votes are ``exp((s - s_max) / T)``: the per-query shift ``s_max`` (the best similarity) keeps
    small temperatures from overflowing and leaves every ranking unchanged.

    Example:
        >>> s, l = torch.tensor([[0.9, 0.8, 0.1]]), torch.tensor([[2, 0, 0]])
        >>> knn_scores(s, l, 3, vote="majority").tolist()
        [[2.0, 0.0, 1.0]]
        >>> knn_scores(s, l, 3, temperature=1.0).argmax(1).tolist()  # class 0: exp(-0.1) + exp(-0.8) > class 2: 1
        [0]
    """
    if vote == "weighted":
        weights = ((similarities - similarities[:, :1]) / temperature).exp()
    elif vote == "majority":
        weights = torch.ones_like(similarities)
    else:
        raise ConfigError(f"unknown vote {vote!r}; valid: {', '.join(VOTES)}")
    if valid is not None:
        weights = weights * valid
    scores = torch.zeros(len(similarities), num_classes, dtype=weights.dtype)
    return scores.scatter_add_(1, neighbour_labels.long(), weights)


def rank_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) of class scores (Q, C); ties rank the smaller class first.

    Top-5 uses the ``min(5, C)`` best classes.

    Example:
        >>> rank_accuracy(torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0]]), torch.tensor([2, 0]))
        {'top1': 50.0, 'top5': 100.0}
    """
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    hits = order[:, : min(5, scores.shape[1])] == labels.view(-1, 1)
    return {"top1": 100.0 * hits[:, 0].double().mean().item(), "top5": 100.0 * hits.any(1).double().mean().item()}


def check_labels(y: Array, name: str, n: int) -> torch.Tensor:
    """``y`` as a CPU long tensor of ``n`` class indices; ``ValueError`` naming ``name`` when it is not that.

    Example:
        >>> check_labels([2, 0, 1], "train_y", 3).tolist()
        [2, 0, 1]
    """
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).detach().cpu()
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{name} must hold one label per feature row: expected shape ({n},), got {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise DataError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if n and int(y.min()) < 0:
        raise DataError(f"{name} holds a negative label ({int(y.min())}); labels are class indices >= 0")
    return y.long()


def _num_classes(*labels: Array) -> int:
    return 1 + max(int(torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).max()) for y in labels)


def _check_ks(k: int | Sequence[int]) -> list[int]:
    ks = [k] if isinstance(k, (int, np.integer)) else list(k)
    if not ks or any(not isinstance(kk, (int, np.integer)) or isinstance(kk, bool) or kk < 1 for kk in ks):
        raise ConfigError(f"k must be a positive int or a non-empty sequence of them, got {k!r}")
    return sorted({int(kk) for kk in ks}, key=ks.index)
