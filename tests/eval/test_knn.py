import importlib

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

import visionssl as vs

knn_module = importlib.import_module("visionssl.eval.knn")  # vs.eval.knn is the function


def clustered(n, q, dim=16, classes=5, seed=0, noise=1.0):
    g = np.random.default_rng(seed)
    centers = g.standard_normal((classes, dim)) * 1.5
    y, yq = g.integers(0, classes, n), g.integers(0, classes, q)
    x = (centers[y] + noise * g.standard_normal((n, dim))).astype("float32")
    xq = (centers[yq] + noise * g.standard_normal((q, dim))).astype("float32")
    return x, y, xq, yq


def reference_weighted_votes(bank, labels, queries, k, temperature, num_classes):
    """The InstDisc / LightlySSL weighted kNN written out in torch: full similarity matrix, top-k, exp(s / T)."""
    bank = torch.nn.functional.normalize(torch.as_tensor(bank, dtype=torch.float64), dim=1)
    queries = torch.nn.functional.normalize(torch.as_tensor(queries, dtype=torch.float64), dim=1)
    sims, idx = (queries @ bank.T).topk(k, dim=1)
    one_hot = torch.nn.functional.one_hot(torch.as_tensor(labels)[idx], num_classes).double()
    return (one_hot * (sims / temperature).exp().unsqueeze(-1)).sum(1)


@pytest.mark.parametrize("k", [1, 4, 15, 40])
def test_majority_vote_matches_sklearn_brute_force_cosine(k):
    x, y, xq, yq = clustered(400, 150, noise=2.0)  # overlapping classes: many wrong and tied votes
    sk = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(x, y)
    votes = vs.eval.knn_predict(x, y, xq, k=k, vote="majority")[k]
    np.testing.assert_array_equal(votes.argmax(1).numpy(), sk.predict(xq))  # ties: the smaller class, as sklearn
    np.testing.assert_allclose(votes.numpy() / k, sk.predict_proba(xq), atol=1e-6)
    metrics = vs.eval.knn(x, y, xq, yq, k=k, vote="majority")
    assert metrics["top1"] == pytest.approx(100 * (sk.predict(xq) == yq).mean())


def test_several_k_come_from_one_search_and_match_single_k_runs(monkeypatch):
    x, y, xq, yq = clustered(300, 80)
    separate = {k: vs.eval.knn(x, y, xq, yq, k=k) for k in (3, 10, 50)}
    calls = []
    search = knn_module.knn_search
    monkeypatch.setattr(knn_module, "knn_search", lambda *a, **kw: calls.append(a[2]) or search(*a, **kw))
    together = vs.eval.knn(x, y, xq, yq, k=(10, 3, 50))
    assert calls == [50]
    assert list(together) == ["top1@k10", "top5@k10", "top1@k3", "top5@k3", "top1@k50", "top5@k50"]
    for k, metrics in separate.items():
        assert together[f"top1@k{k}"] == metrics["top1"] == metrics[f"top1@k{k}"]
        assert together[f"top5@k{k}"] == metrics["top5"]


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_weighted_vote_equals_reference(temperature):
    x, y, xq, yq = clustered(300, 100, classes=7, noise=2.5)
    k = 20
    ours = vs.eval.knn_predict(
        torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xq), k=k, temperature=temperature
    )[k].double()
    ref = reference_weighted_votes(x, y, xq, k, temperature, 7)
    # ours is scaled per query by exp(-s_max / T); the normalised votes and the ranking are the same
    torch.testing.assert_close(ours / ours.sum(1, keepdim=True), ref / ref.sum(1, keepdim=True), rtol=1e-4, atol=1e-6)
    assert torch.equal(ours.argmax(1), ref.argmax(1))
    ref_top5 = ref.topk(5, dim=1).indices
    metrics = vs.eval.knn(x, y, xq, yq, k=k, temperature=temperature)
    assert metrics["top1"] == pytest.approx(100 * (ref.argmax(1).numpy() == yq).mean())
    assert metrics["top5"] == pytest.approx(100 * (ref_top5.numpy() == yq[:, None]).any(1).mean())


def test_top5_on_a_hand_built_example():
    # 7 classes on a circle of directions; the query sits at angle 0, class c's two points at angle 0.1 * c
    angles = np.repeat(np.arange(7) * 0.1, 2)
    bank = np.stack([np.cos(angles), np.sin(angles)], 1).astype("float32")
    labels = np.repeat(np.arange(7), 2)
    query = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype="float32")
    # 12 nearest neighbours: classes 0..5 with two votes each; ranking 0 > 1 > ... > 5, class 6 absent
    votes = vs.eval.knn_predict(bank, labels, query, k=12, vote="majority")[12]
    assert votes[0].tolist() == [2, 2, 2, 2, 2, 2, 0]
    truth = np.array([4, 5, 6])  # in the top 5, not top-1 / sixth / absent
    assert vs.eval.knn(bank, labels, query, truth, k=12, vote="majority") == {
        "top1": 0.0,
        "top5": pytest.approx(100 / 3),
        "top1@k12": 0.0,
        "top5@k12": pytest.approx(100 / 3),
    }
    weighted = vs.eval.knn(bank, labels, query, np.array([0, 4, 5]), k=12)  # closer classes weigh more
    assert weighted["top1"] == pytest.approx(100 / 3) and weighted["top5"] == pytest.approx(200 / 3)


def test_ivf_with_every_cell_probed_equals_exact_and_sharded_equals_flat():
    x, _, xq, _ = clustered(2000, 100, dim=32, classes=10)
    exact_sims, exact_ids = vs.eval.knn_search(x, xq, 25)
    ivf_sims, ivf_ids = vs.eval.knn_search(x, xq, 25, index="ivf", nlist=16, nprobe=16)
    np.testing.assert_array_equal(ivf_ids, exact_ids)
    np.testing.assert_allclose(ivf_sims, exact_sims, atol=1e-5)
    sharded_sims, sharded_ids = vs.eval.knn_search(
        x, xq, 25, index="sharded", shard_size=300
    )  # 300 does not divide 2000
    np.testing.assert_array_equal(sharded_ids, exact_ids)
    np.testing.assert_allclose(sharded_sims, exact_sims, atol=1e-5)
    np.testing.assert_allclose(exact_sims, np.sort(exact_sims, axis=1)[:, ::-1])  # most similar first
    approx = vs.eval.knn_search(x, xq, 25, index="ivf", nlist=16, nprobe=2)[1]
    assert (approx == exact_ids).mean() > 0.5  # approximate, but finds most neighbours on clustered data


def test_a_bank_on_disk_is_read_in_shards(tmp_path):
    x, y, xq, yq = clustered(500, 40)
    bank = np.lib.format.open_memmap(tmp_path / "bank.npy", mode="w+", dtype="float32", shape=x.shape)
    bank[:] = x
    bank.flush()
    exact = vs.eval.knn(x, y, xq, yq, k=10)
    assert vs.eval.knn(bank, y, xq, yq, k=10, index="sharded", shard_size=64) == exact  # a memmap
    for index in ("sharded", "flat"):  # a path: rows read on demand, never mapped whole
        assert vs.eval.knn(tmp_path / "bank.npy", y, xq, yq, k=10, index=index, shard_size=64) == exact
    ivf = vs.eval.knn(str(tmp_path / "bank.npy"), y, xq, yq, k=10, index="ivf", nlist=8, nprobe=8, shard_size=64)
    assert ivf == exact
    with pytest.raises(ValueError, match="train_x file .*missing.npy does not exist"):
        vs.eval.knn(tmp_path / "missing.npy", y, xq, yq, k=10)


def test_tiny_temperature_neither_overflows_nor_changes_meaning():
    x, y, xq, _ = clustered(200, 50, noise=2.0)
    votes = vs.eval.knn_predict(x, y, xq, k=30, temperature=1e-4)[30]
    assert torch.isfinite(votes).all()
    nearest = vs.eval.knn_predict(x, y, xq, k=1, vote="majority")[1]
    assert torch.equal(votes.argmax(1), nearest.argmax(1))  # T -> 0 is the 1-NN rule


def test_knn_scores_ignores_missing_neighbours():
    sims, labels = torch.tensor([[0.9, 0.5, -1.0]]), torch.tensor([[1, 0, 0]])
    valid = torch.tensor([[True, True, False]])  # faiss IVF marks a missing neighbour with id -1
    assert vs.eval.knn_scores(sims, labels, 2, vote="majority", valid=valid).tolist() == [[1.0, 1.0]]


def test_torch_and_numpy_inputs_agree():
    x, y, xq, yq = clustered(200, 30)
    assert vs.eval.knn(x, y, xq, yq, k=5) == vs.eval.knn(
        torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xq).double(), torch.from_numpy(yq), k=5
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(test_x=np.zeros((5, 3), "float32")), "feature dimensions differ"),
        (dict(train_y=np.zeros(7, int)), r"train_y must hold one label per feature row: expected shape \(10,\)"),
        (dict(test_y=np.zeros(4, int)), "test_y must hold one label"),
        (dict(k=0), "k must be a positive int"),
        (dict(k=(5, -1)), "k must be a positive int"),
        (dict(k=11), r"k must be between 1 and the bank size \(10 training features\), got 11"),
        (
            dict(train_x=np.full((10, 4), np.nan, "float32")),
            r"train_x has 10 rows with NaN or infinite values \(first: row 0\)",
        ),
        (dict(test_y=np.zeros(5)), "integer class indices"),
        (dict(train_y=-np.ones(10, int)), "negative label"),
        (dict(vote="soft"), "unknown vote 'soft'; valid: weighted, majority"),
        (dict(index="hnsw"), "unknown index 'hnsw'; valid: flat, ivf, sharded"),
        (dict(index="ivf", nlist=2, nprobe=3), r"nprobe must be between 1 and nlist \(2\)"),
        (dict(temperature=0.0), "temperature must be > 0"),
        (dict(train_x=np.zeros(10, "float32")), r"train_x must be a non-empty \(N, D\) feature matrix"),
    ],
)
def test_bad_input_is_a_clear_value_error(change, message):
    g = np.random.default_rng(0)
    args = dict(
        train_x=g.standard_normal((10, 4)).astype("float32"),
        train_y=np.arange(10) % 2,
        test_x=g.standard_normal((5, 4)).astype("float32"),
        test_y=np.arange(5) % 2,
        k=3,
    )
    args.update(change)
    with pytest.raises(ValueError, match=message):
        vs.eval.knn(**args)


def test_nan_in_a_large_bank_names_the_row():
    x, y, xq, yq = clustered(100, 5)
    x[73, 2] = np.inf
    with pytest.raises(ValueError, match=r"first: row 73"):
        vs.eval.knn(x, y, xq, yq, k=5, index="sharded", shard_size=32)
