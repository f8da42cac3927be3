"""DeepCluster: PCA whitening, FAISS k-means, empty-cluster repair, NMI, and the method's clustering hook."""

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import visionssl as vs
from visionssl.data.dataset import ImageDataset
from visionssl.methods.deepcluster import (
    DeepCluster,
    centroid_logits,
    cluster_features,
    fit_whitening,
    grayscale,
    kmeans,
    nmi,
    pca_whiten,
    repair_empty_clusters,
)

from conftest import TinyNet


class FakeTrainer:
    """The attributes of ``visionssl.engine.Trainer`` that DeepCluster's hook reads."""

    def __init__(self, train_set: ImageDataset, epoch: int = 0):
        self.train_set = train_set
        self.device = torch.device("cpu")
        self.epoch = epoch
        self.augment = vs.augment.create("deepcluster", image_size=16)
        self.logged: list[dict[str, float]] = []

    def log_scalars(self, scalars: dict[str, float]) -> None:
        self.logged.append(dict(scalars))


def two_kinds_of_images(n: int = 40) -> ImageDataset:
    """Dark and bright noise images (1 channel, 16 px), labelled by kind."""
    g = torch.Generator().manual_seed(0)
    kind = torch.arange(n) % 2
    low = torch.where(kind == 0, 0, 180).view(n, 1, 1, 1)
    images = (low + torch.randint(0, 76, (n, 1, 16, 16), generator=g)).to(torch.uint8)
    return ImageDataset(images, {"kind": kind}, "kind", {"kind": ["dark", "bright"]}, "toy")


def gaussian_blobs(k: int, n: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * 3
    truth = torch.arange(n) % k
    return centres[truth] + torch.randn(n, dim, generator=g), truth


# ------------------------------------------------------------------------ pure functions
def test_pca_whiten_matches_scikit_learn():
    decomposition = pytest.importorskip("sklearn.decomposition")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 10, generator=g, dtype=torch.float64) @ torch.diag(
        torch.arange(1.0, 11.0, dtype=torch.float64)
    )
    ours = pca_whiten(x.float(), dim=4, eps=0.0).double()
    theirs = torch.from_numpy(decomposition.PCA(4, whiten=True).fit_transform(x.numpy()))
    signs = torch.sign((ours * theirs).sum(0))  # each axis is defined up to its sign
    assert torch.allclose(ours * signs, theirs, atol=1e-3)
    assert torch.allclose(ours.T @ ours / 499, torch.eye(4, dtype=torch.float64), atol=1e-4)


def test_pca_whiten_keeps_at_most_the_rank():
    assert pca_whiten(torch.randn(5, 8), dim=256).shape == (5, 4)  # N - 1 directions have variance
    assert pca_whiten(torch.randn(50, 8), dim=256).shape == (50, 8)
    with pytest.raises(ValueError, match="N >= 2"):
        pca_whiten(torch.randn(1, 8))


def test_nmi_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for ka, kb, n in [(2, 2, 10), (5, 3, 200), (50, 40, 1000), (1, 4, 20)]:
        a, b = rng.integers(0, ka, n), rng.integers(0, kb, n)
        b[: n // 2] = a[: n // 2] % kb  # partly dependent
        assert nmi(a, b) == pytest.approx(metrics.normalized_mutual_info_score(a, b), abs=1e-9)
    same = rng.integers(0, 7, 300)
    assert nmi(same, (same + 3) % 7) == pytest.approx(1.0)  # names of the clusters do not matter
    assert nmi(np.zeros(5), np.zeros(5)) == 1.0
    assert nmi(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="different lengths: 3 and 4"):
        nmi([0, 1, 2], [0, 1, 2, 3])


def test_clustering_step_recovers_well_separated_gaussians():
    x, truth = gaussian_blobs(k=10, n=1000, dim=64)
    assignments, centroids = cluster_features(x, 10, pca_dim=32, niter=20, seed=0)
    assert assignments.shape == (1000,) and assignments.dtype == torch.long and centroids.shape == (10, 32)
    assert nmi(assignments, truth) > 0.95


def test_kmeans_repairs_the_empty_clusters_it_cannot_avoid():
    # 12 points at 2 distinct places and k = 4: two centroids coincide, their twins end empty in FAISS
    x = torch.cat([torch.zeros(6, 4), torch.ones(6, 4)])
    assignments, _ = kmeans(x, 4, seed=0)
    assert torch.bincount(assignments, minlength=4).min() > 0
    with pytest.raises(ValueError, match="between 1 and the number of points"):
        kmeans(x, 13)


def test_warm_started_kmeans_keeps_the_cluster_indices():
    x, truth = gaussian_blobs(k=6, n=300, dim=16)
    cold, _ = kmeans(x, 6, seed=0)
    again, centroids = kmeans(x, 6, seed=5, init_assignments=cold)
    assert torch.equal(again, cold)  # cluster j is the same group of points, whatever the seed
    # started from the true groups, k-means keeps them and their indices; the centroids are their means
    labels, centroids = kmeans(x, 6, seed=1, init_assignments=truth)
    assert torch.equal(labels, truth)
    assert torch.allclose(centroids, torch.stack([x[truth == j].mean(0) for j in range(6)]), atol=1e-4)
    with pytest.raises(ValueError, match=r"init_assignments must be \(N,\) = \(300,\) cluster indices in \[0, 6\)"):
        kmeans(x, 6, init_assignments=truth[:10])
    with pytest.raises(ValueError, match="init_assignments"):
        kmeans(x, 6, init_assignments=truth + 1)


def test_repair_splits_a_random_non_empty_cluster():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20, 3, generator=g), torch.randn(20, 3, generator=g) + 10])
    assignments = torch.cat([torch.zeros(20), torch.full((20,), 3)]).long()  # clusters 1, 2 and 4 empty
    centroids = torch.stack(
        [x[:20].mean(0), torch.full((3,), 99.0), torch.full((3,), -99.0), x[20:].mean(0), torch.zeros(3)]
    )
    new_centroids, new_assignments = repair_empty_clusters(x, centroids, assignments, seed=0)
    counts = torch.bincount(new_assignments, minlength=5)
    assert counts.min() > 0 and counts.sum() == 40
    assert torch.equal(assignments, torch.cat([torch.zeros(20), torch.full((20,), 3)]).long())  # input untouched
    for c in range(5):  # every centroid is the mean of its points, and no cluster mixes the two blobs
        members = new_assignments == c
        assert torch.allclose(new_centroids[c], x[members].mean(0), atol=1e-5)
        assert not (members[:20].any() and members[20:].any())


def test_repair_of_identical_points():
    x = torch.ones(4, 2)
    c, a = repair_empty_clusters(x, torch.ones(2, 2), torch.zeros(4, dtype=torch.long))
    assert torch.bincount(a, minlength=2).tolist() == [2, 2]
    with pytest.raises(ValueError, match="cannot fill 5 clusters with 4 points"):
        repair_empty_clusters(x, torch.ones(5, 2), torch.zeros(4, dtype=torch.long))


# --------------------------------------------------------------------------- the method
def make_method(**kw) -> DeepCluster:
    kw = {"num_clusters": 4, "pca_dim": 8, "extract_batch_size": 16, **kw}
    return DeepCluster(backbone=TinyNet(), **kw)


def test_the_trainer_sees_an_indices_argument():
    assert DeepCluster.needs_indices  # what Trainer checks
    assert "indices" in inspect.signature(make_method().forward).parameters


def test_clustering_hook_sets_pseudo_labels_weights_and_logs():
    data = two_kinds_of_images()
    method = make_method()
    trainer = FakeTrainer(data, epoch=0)
    running_mean = method.backbone[1].running_mean.clone()
    classifier_before = method.classifier.weight.detach().clone()
    assert method.sample_weights is None
    method.train()
    method.on_epoch_start(trainer)

    labels = method.pseudo_labels
    assert labels.shape == (40,) and labels.dtype == torch.long
    counts = torch.bincount(labels, minlength=4)
    assert counts.min() > 0  # every cluster used
    weights = method.sample_weights
    assert weights.device.type == "cpu" and torch.allclose(weights, 1.0 / counts[labels].double())
    assert torch.allclose(
        torch.zeros(4, dtype=torch.float64).index_add_(0, labels, weights), torch.ones(4, dtype=torch.float64)
    )
    assert trainer.logged == [{"deepcluster/nmi_labels": pytest.approx(nmi(data.targets, labels))}]
    assert not torch.equal(method.classifier.weight, classifier_before)  # re-initialised
    assert torch.equal(method.backbone[1].running_mean, running_mean)  # features in eval mode
    assert method.training and method.backbone.training  # and the mode restored


def test_features_come_from_the_eval_view_in_eval_mode():
    data = two_kinds_of_images(20)
    method = make_method(extract_batch_size=8)
    features = method.extract_features(data.images, "cpu", image_size=12)
    view = vs.augment.create("eval", image_size=12)
    with torch.no_grad():
        expected = method.backbone.eval()(view(data.images)[0])
    assert torch.allclose(features, expected, atol=1e-5)


def test_reclusters_every_cluster_every_epochs_and_logs_stability():
    data = two_kinds_of_images()
    method = make_method(cluster_every=2)
    trainer = FakeTrainer(data, epoch=0)
    method.on_epoch_start(trainer)
    first = method.pseudo_labels.clone()
    trainer.epoch = 1
    method.on_epoch_start(trainer)
    assert len(trainer.logged) == 1 and torch.equal(method.pseudo_labels, first)  # not due yet
    trainer.epoch = 2
    method.on_epoch_start(trainer)
    assert set(trainer.logged[-1]) == {"deepcluster/nmi_prev", "deepcluster/nmi_labels"}
    assert trainer.logged[-1]["deepcluster/nmi_prev"] == pytest.approx(nmi(first, method.pseudo_labels))
    assert int(method.num_clusterings) == 2 and int(method.clustered_epoch) == 2


def test_warm_start_reclusters_from_the_previous_pseudo_labels():
    data = two_kinds_of_images()
    cold, warm = make_method(seed=0), make_method(seed=0, warm_start=True)
    warm.load_state_dict(cold.state_dict())
    for method in (cold, warm):
        method.on_epoch_start(FakeTrainer(data, epoch=0))
    assert torch.equal(cold.pseudo_labels, warm.pseudo_labels)  # the first clustering has nothing to start from
    first = warm.pseudo_labels.clone()
    for method in (cold, warm):  # same features: only the k-means seed differs (the clustering count is added)
        method.on_epoch_start(FakeTrainer(data, epoch=1))
    assert torch.equal(warm.pseudo_labels, first)  # started from its own groups, k-means stays there
    assert not torch.equal(cold.pseudo_labels, first)  # a cold start renames (and regroups) the clusters


def test_grayscale_clustering_sees_the_colour_images_as_gray():
    g = torch.Generator().manual_seed(0)
    colour = torch.randint(0, 256, (6, 3, 16, 16), generator=g, dtype=torch.uint8)
    gray = grayscale(colour)
    luma = 0.2989 * colour[:, 0].float() + 0.587 * colour[:, 1].float() + 0.114 * colour[:, 2].float()
    assert gray.dtype == torch.uint8 and (gray[:, 0].float() - luma).abs().max() <= 0.5
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 0], gray[:, 2])
    assert torch.equal(grayscale(gray), gray)  # gray images are left as they are
    method = make_method(cluster_grayscale=True)
    features = method.extract_features(colour, "cpu", 16)
    assert torch.allclose(features, method.extract_features(gray, "cpu", 16))
    method.cluster_grayscale = False  # the same weights on the colour images: other features
    assert not torch.allclose(features, method.extract_features(colour, "cpu", 16))
    method.cluster_grayscale = True
    # two images that differ only in colour, at the same luma, fall in the same place
    red_ish = torch.tensor([150, 50, 100], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 16, 16)
    same_luma = grayscale(red_ish)
    both = method.extract_features(torch.cat([red_ish, same_luma]), "cpu", 16)
    assert torch.allclose(both[0], both[1])


def test_forward_uses_the_pseudo_labels_of_the_batch_indices():
    data = two_kinds_of_images()
    method = make_method()
    method.on_epoch_start(FakeTrainer(data))
    method.eval()
    x = torch.randn(3, 3, 16, 16)
    indices = torch.tensor([5, 0, 17])
    out = method([x], indices=indices)
    with torch.no_grad():
        logits = method.classifier(method.backbone(x))
    assert torch.allclose(out["loss"], F.cross_entropy(logits, method.pseudo_labels[indices]), atol=1e-5)
    method.train()
    out = method([x], indices=indices)
    out["loss"].backward()
    assert method.classifier.weight.grad is not None and method.backbone[0].weight.grad.abs().sum() > 0
    assert out["embedding"].shape == (3, 16) and 0 <= float(out["deepcluster/accuracy"]) <= 1


def test_every_view_of_an_image_is_trained_on_its_pseudo_label():
    data = two_kinds_of_images()
    method = make_method()
    method.on_epoch_start(FakeTrainer(data))
    method.eval()  # BatchNorm on running statistics: each view's logits do not depend on the other's
    first, second = torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16)
    indices = torch.tensor([5, 0, 17])
    out = method([first, second], indices=indices)
    targets = method.pseudo_labels[indices]
    with torch.no_grad():
        per_view = [F.cross_entropy(method.classifier(method.backbone(x)), targets) for x in (first, second)]
    assert torch.allclose(out["loss"], (per_view[0] + per_view[1]) / 2, atol=1e-5)
    assert torch.allclose(out["embedding"], method.backbone(first), atol=1e-5)


def test_small_recipe_trains_on_two_colour_jittered_views():
    cfg = vs.engine.load_config(config="deepcluster")
    views = vs.augment.create(cfg.augment.name, image_size=16)(torch.zeros(4, 3, 20, 20, dtype=torch.uint8))
    assert cfg.augment.name == "simclr" and len(views) == 2 and views[0].shape == (4, 3, 16, 16)


def test_forward_with_a_cifar_resnet_on_32px():
    method = DeepCluster(backbone="resnet10t_cifar", num_clusters=3)
    method.set_pseudo_labels(torch.tensor([0, 1, 2, 0]))
    out = method([torch.randn(2, 3, 32, 32)], indices=torch.tensor([1, 2]))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and method.classifier.weight.grad is not None


def test_forward_errors_are_clear():
    method = make_method()
    with pytest.raises(RuntimeError, match="no pseudo-labels yet"):
        method([torch.randn(2, 3, 16, 16)], indices=torch.tensor([0, 1]))
    method.set_pseudo_labels(torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="needs `indices`"):
        method([torch.randn(2, 3, 16, 16)])
    with pytest.raises(ValueError, match=r"cluster indices in \[0, 4\)"):
        method.set_pseudo_labels(torch.tensor([0, 4]))


def test_more_clusters_than_images_is_an_error():
    with pytest.raises(ValueError, match="num_clusters=50 is larger than the training set \\(40 images\\)"):
        make_method(num_clusters=50).on_epoch_start(FakeTrainer(two_kinds_of_images()))


def test_optimizer_state_of_the_old_classifier_is_dropped():
    data = two_kinds_of_images()
    method = make_method()
    method.set_pseudo_labels(torch.arange(40) % 4)
    trainer = FakeTrainer(data)
    trainer.optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
    method([torch.randn(4, 3, 16, 16)], indices=torch.arange(4))["loss"].backward()
    trainer.optimizer.step()
    assert method.classifier.weight in trainer.optimizer.state
    method.on_epoch_start(trainer)
    assert method.classifier.weight not in trainer.optimizer.state
    assert method.backbone[0].weight in trainer.optimizer.state


def test_pseudo_labels_survive_a_checkpoint_round_trip():
    data = two_kinds_of_images()
    method = make_method()
    method.on_epoch_start(FakeTrainer(data, epoch=3))
    restored = make_method()
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.pseudo_labels, method.pseudo_labels)
    assert int(restored.clustered_epoch) == 3 and torch.equal(restored.sample_weights, method.sample_weights)
    trainer = FakeTrainer(data, epoch=3)
    restored.on_epoch_start(trainer)  # resumed within the same clustering period: keeps its labels
    assert trainer.logged == []


# ------------------------------------------------ DeepCluster-v2's classifier: the centroids
def test_centroid_logits_are_negative_squared_distances_and_agree_with_kmeans():
    x, truth = gaussian_blobs(5, 300, 16)
    mean, projection = fit_whitening(x, dim=8)
    assert torch.allclose(pca_whiten(x, dim=8), (x - mean) @ projection, atol=1e-5)
    z = F.normalize((x - mean) @ projection, dim=1)
    assignments, centroids = kmeans(z, 5)
    logits = centroid_logits(x, mean, projection, centroids, temperature=0.5)
    by_hand = -((z[:, None, :] - centroids[None]) ** 2).sum(-1) / 0.5
    assert torch.allclose(logits, by_hand, atol=1e-4)
    assert torch.equal(logits.argmax(1), assignments) and nmi(assignments, truth) > 0.95


def test_centroids_classifier_has_no_weights_and_predicts_the_pseudo_labels_at_once():
    data = two_kinds_of_images()
    method = make_method(classifier="centroids", temperature=0.2)
    assert method.classifier is None
    trainer = FakeTrainer(data)
    trainer.optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
    method.on_epoch_start(trainer)
    assert method.whiten_mean.shape == (16,) and method.whiten_projection.shape == (16, 8)
    assert method.centroids.shape == (4, 8)
    method.eval()  # the clustering's own view and mode: the classifier reproduces the assignments exactly
    view = vs.augment.create("eval", image_size=16)
    out = method([view(data.images)[0]], indices=torch.arange(40))
    assert float(out["deepcluster/accuracy"]) == 1.0
    with torch.no_grad():
        logits = centroid_logits(
            method.backbone(view(data.images)[0]), method.whiten_mean, method.whiten_projection, method.centroids, 0.2
        )
    assert torch.allclose(out["loss"], F.cross_entropy(logits, method.pseudo_labels), atol=1e-5)
    method.train()
    method([torch.randn(4, 3, 16, 16)], indices=torch.arange(4))["loss"].backward()
    assert method.backbone[0].weight.grad.abs().sum() > 0  # gradients reach the backbone only


def test_centroids_survive_a_checkpoint_round_trip():
    method = make_method(classifier="centroids")
    method.on_epoch_start(FakeTrainer(two_kinds_of_images(), epoch=2))
    restored = make_method(classifier="centroids")
    restored.load_state_dict(method.state_dict())
    for name in ("pseudo_labels", "whiten_mean", "whiten_projection", "centroids"):
        assert torch.equal(getattr(restored, name), getattr(method, name)), name


def test_bad_classifier_settings_are_clear():
    with pytest.raises(ValueError, match="classifier must be 'reset' or 'centroids', got 'linear'"):
        make_method(classifier="linear")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        make_method(classifier="centroids", temperature=0.0)


def test_projection_head_is_what_gets_clustered_and_trained():
    data = two_kinds_of_images()
    method = make_method(classifier="centroids", proj_dim=6, proj_hidden_dim=12)
    method.on_epoch_start(FakeTrainer(data))
    assert method.whiten_mean.shape == (6,) and method.centroids.shape == (4, 6)  # clustered in the head's space
    features = method.extract_features(data.images[:5], "cpu", image_size=16)
    view = vs.augment.create("eval", image_size=16)
    method.eval()
    with torch.no_grad():
        expected = method.projector(method.backbone(view(data.images[:5])[0]))
    assert torch.allclose(features, expected, atol=1e-5)
    method.train()
    out = method([torch.randn(4, 3, 16, 16)], indices=torch.arange(4))
    out["loss"].backward()
    assert out["embedding"].shape == (4, 16)  # the backbone's features, not the head's
    assert method.projector[0].weight.grad.abs().sum() > 0 and method.backbone[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="proj_dim must be >= 0"):
        make_method(proj_dim=-1)
