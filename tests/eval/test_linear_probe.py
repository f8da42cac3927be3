import importlib
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score, train_test_split
from sklearn.preprocessing import StandardScaler

import visionssl as vs

probe_module = importlib.import_module("visionssl.eval.linear_probe")  # vs.eval.linear_probe is the function
fit_heads, stratified_kfold = probe_module.fit_heads, probe_module.stratified_kfold
sgd_module = importlib.import_module("visionssl.eval.probe_sgd")


def sklearn_tuned(xtr, ytr, xte, yte, cs=(0.01, 0.1, 1.0, 10.0)):
    """LogisticRegression on standardised features, C chosen by 3-fold cross-validation on the training split."""
    scaler = StandardScaler().fit(xtr)
    a, b = scaler.transform(xtr), scaler.transform(xte)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best_c = max(cs, key=lambda c: cross_val_score(LogisticRegression(C=c, max_iter=1000), a, ytr, cv=3).mean())
        return 100 * LogisticRegression(C=best_c, max_iter=1000).fit(a, ytr).score(b, yte)


def digits():
    d = load_digits()
    return train_test_split(d.data.astype("float32"), d.target, test_size=0.25, random_state=0, stratify=d.target)


def gaussian_mixture(n=2000, dim=32, classes=10, seed=0):
    g = np.random.default_rng(seed)
    centers = g.standard_normal((classes, dim)) * 0.6  # overlapping: about 94% is the best a linear model does
    y = g.integers(0, classes, n)
    x = (centers[y] + g.standard_normal((n, dim))).astype("float32")
    return train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)


@pytest.mark.parametrize("make", [digits, gaussian_mixture])
def test_accuracy_within_one_point_of_tuned_sklearn_logistic_regression(make):
    xtr, xte, ytr, yte = make()
    ours = vs.eval.linear_probe(xtr, ytr, xte, yte)
    assert abs(ours["top1"] - sklearn_tuned(xtr, ytr, xte, yte)) <= 1.0
    assert ours["solver"] == "lbfgs" and ours["selection"] == "5-fold" and ours["top5"] >= ours["top1"]
    assert len(ours["sweep"]) == 7 and ours["C"] in {s["C"] for s in ours["sweep"]}
    assert ours["val_top1"] == max(s["val_top1"] for s in ours["sweep"])
    sgd = vs.eval.linear_probe(xtr, ytr, xte, yte, solver="sgd")
    assert sgd["solver"] == "sgd" and len(sgd["sweep"]) == 30
    assert (sgd["lr"], sgd["weight_decay"]) in {(s["lr"], s["weight_decay"]) for s in sgd["sweep"]}


def small_problem(n=240, dim=12, classes=4, seed=0):
    g = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = g.standard_normal((n, dim)) + 1.2 * np.eye(classes, dim)[y] + 0.5  # overlapping classes, off-centre
    return x, y


@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_lbfgs_heads_reach_sklearns_optimum_for_a_fixed_C(C):
    x, y = small_problem()
    ref = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(x, y)
    l2 = torch.tensor([1 / (C * len(x)), 1.0], dtype=torch.float64)  # a second head alongside changes nothing
    weight, bias, _ = fit_heads(torch.from_numpy(x), torch.from_numpy(y), 4, l2, max_iter=2000, tol=1e-9)
    np.testing.assert_allclose(weight[0].numpy(), ref.coef_.T, atol=1e-5)
    logits = x @ weight[0].numpy() + bias[0].numpy()  # biases are free up to a shared shift: compare probabilities
    probs = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs / probs.sum(1, keepdims=True), ref.predict_proba(x), atol=1e-5)


@pytest.mark.parametrize("C", [0.003, 0.3])
def test_two_classes_have_sklearns_binary_penalty(C):
    # scikit-learn fits one vector w for two classes; the multinomial pair (W0, W1) is penalised as |w|^2 only
    # when l2 is doubled (the optimum has W1 = -W0 = w / 2), which the probe does for two classes
    x, y = small_problem(classes=2)
    ref = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(x, y)
    l2 = torch.tensor([2 / (C * len(x))], dtype=torch.float64)
    weight, _, _ = fit_heads(torch.from_numpy(x), torch.from_numpy(y), 2, l2, max_iter=2000, tol=1e-10)
    np.testing.assert_allclose((weight[0, :, 1] - weight[0, :, 0]).numpy(), ref.coef_[0], atol=1e-5)
    out = vs.eval.linear_probe(x[:200], y[:200], x[200:], y[200:], Cs=(C,), folds=2)
    assert out["weight_decay"] == pytest.approx(2 / (C * 200))
    assert out["sweep"][0]["weight_decay"] == pytest.approx(2 / (C * 200))


def test_lbfgs_sample_weights_of_zero_leave_samples_out():
    x, y = small_problem()
    keep = torch.arange(len(x)) % 3 != 0
    mask = torch.stack([keep, torch.ones_like(keep)], 1).double()
    l2 = torch.tensor([1 / (0.1 * int(keep.sum())), 1 / (0.1 * len(x))], dtype=torch.float64)
    weight, _, _ = fit_heads(torch.from_numpy(x), torch.from_numpy(y), 4, l2, mask, max_iter=2000, tol=1e-9)
    on_subset = LogisticRegression(C=0.1, tol=1e-10, max_iter=10_000).fit(x[keep.numpy()], y[keep.numpy()])
    on_all = LogisticRegression(C=0.1, tol=1e-10, max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(weight[0].numpy(), on_subset.coef_.T, atol=1e-5)
    np.testing.assert_allclose(weight[1].numpy(), on_all.coef_.T, atol=1e-5)


def test_kfold_is_stratified_seeded_and_covers_every_sample_once():
    labels = torch.tensor([0] * 50 + [1] * 23 + [2] * 7)
    fold = stratified_kfold(labels, 5, seed=3)
    counts = torch.stack([(fold[labels == c]).bincount(minlength=5) for c in range(3)])
    assert counts.tolist()[0] == [10] * 5  # 50 of class 0: ten in every fold
    assert (counts.max(1).values - counts.min(1).values).tolist() == [0, 1, 1]  # 23 and 7: as even as possible
    sizes = fold.bincount(minlength=5)
    assert int(sizes.max() - sizes.min()) <= 1 and int(sizes.sum()) == len(labels)
    assert torch.equal(fold, stratified_kfold(labels, 5, seed=3))
    assert not torch.equal(fold, stratified_kfold(labels, 5, seed=4))


def test_lbfgs_probe_selects_on_folds_and_refits_on_every_training_sample(monkeypatch):
    x, y = small_problem(n=300)
    calls = []

    def spy(x_, y_, c, l2, weights=None, **kw):
        calls.append((len(x_), weights, l2.clone(), kw.get("init")))
        return fit_heads(x_, y_, c, l2, weights, **kw)

    monkeypatch.setattr(probe_module, "fit_heads", spy)
    out = vs.eval.linear_probe(x[:240], y[:240], x[240:], y[240:], Cs=(0.01, 1.0), folds=4, max_iter=500, tol=1e-8)
    (n_sel, weights, l2_sel, _), (n_refit, refit_weights, l2_refit, init) = calls
    assert n_sel == 240 and weights.shape == (240, 8) and weights.sum(0).tolist() == [180.0] * 8  # 4 folds x 2 Cs
    assert torch.allclose(l2_sel, 1 / (torch.tensor([0.01, 1.0] * 4) * 180))
    assert n_refit == 240 and refit_weights is None and init is not None  # the refit sees every training sample
    assert float(l2_refit[0]) == pytest.approx(1 / (out["C"] * 240)) and out["weight_decay"] == pytest.approx(
        1 / (out["C"] * 240)
    )
    mean, std = x[:240].mean(0), x[:240].std(0, ddof=1)  # torch's std: the unbiased one
    ref = LogisticRegression(C=out["C"], tol=1e-10, max_iter=10_000).fit((x[:240] - mean) / std, y[:240])
    assert out["top1"] == pytest.approx(100 * ref.score((x[240:] - mean) / std, y[240:]))
    held_out = vs.eval.linear_probe(x[:240], y[:240], x[240:], y[240:], Cs=(0.01, 1.0), cv_max_samples=200)
    assert held_out["selection"] == "validation"


def test_heads_train_independently_each_as_if_alone():
    xtr, xte, ytr, yte = gaussian_mixture(n=600)
    options = dict(epochs=30, patience=5, refit=False, batch_size=128)
    sweep = vs.eval.linear_probe(xtr, ytr, xte, yte, lrs=(0.003, 0.3), weight_decays=(0.0, 0.1), **options)
    for row in sweep["sweep"]:
        alone = vs.eval.linear_probe(
            xtr, ytr, xte, yte, lrs=(row["lr"],), weight_decays=(row["weight_decay"],), **options
        )
        assert alone["val_top1"] == pytest.approx(row["val_top1"])
        assert alone["best_epoch"] == row["best_epoch"]
    epochs = {row["lr"]: row["best_epoch"] for row in sweep["sweep"]}
    assert epochs[0.3] < epochs[0.003]  # a larger learning rate peaks earlier: the heads really differ


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_batched_update_equals_torch_optim_per_head(kind):
    lrs, wds = torch.tensor([0.1, 0.01, 0.3]), torch.tensor([0.0, 0.05, 0.2])
    torch.manual_seed(0)
    weight, bias = torch.randn(4, 5, 3), torch.randn(5, 3)  # heads last: (D, C, H) and (C, H)
    grads = [(torch.randn(4, 5, 3), torch.randn(5, 3)) for _ in range(4)]
    scales = [1.0, 0.8, 0.5, 0.1]  # a schedule
    params = [weight.clone(), bias.clone()]
    batched = (sgd_module._BatchedSGD if kind == "sgd" else sgd_module._BatchedAdamW)(params)
    for (gw, gb), scale in zip(grads, scales):
        batched.step(params, [gw, gb], batched.state, lrs * scale, wds)
    for h in range(3):
        w, b = weight[..., h].clone().requires_grad_(), bias[..., h].clone().requires_grad_()
        groups = [{"params": [w], "weight_decay": float(wds[h])}, {"params": [b], "weight_decay": 0.0}]
        lr = float(lrs[h])
        opt = torch.optim.SGD(groups, lr=lr, momentum=0.9) if kind == "sgd" else torch.optim.AdamW(groups, lr=lr)
        for (gw, gb), scale in zip(grads, scales):
            for group in opt.param_groups:
                group["lr"] = lr * scale
            w.grad, b.grad = gw[..., h].clone(), gb[..., h].clone()
            opt.step()
        torch.testing.assert_close(params[0][..., h], w.detach())
        torch.testing.assert_close(params[1][..., h], b.detach())


def test_written_out_gradient_equals_autograd():
    """One SGD step without momentum history equals -lr * the autograd gradient of the mean cross entropy."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 6, generator=g), torch.arange(50) % 3
    out = vs.eval.linear_probe(
        x, y, x, y, lrs=(0.5,), weight_decays=(0.0,), epochs=1, batch_size=None, normalize=None, val_fraction=0.0
    )
    w = torch.zeros(6, 3, requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    torch.nn.functional.cross_entropy(x @ w + b, y).backward()
    expected = ((x @ (-0.5 * w.grad) - 0.5 * b.grad).argmax(1) == y).double().mean() * 100
    assert out["top1"] == pytest.approx(float(expected))


def test_stratified_split_is_seeded_disjoint_and_keeps_class_shares():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20 + [3])
    keep, held = vs.eval.holdout_split(labels, 0.2, seed=3)
    assert torch.equal(torch.cat([keep, held]).sort().values, torch.arange(len(labels)))
    assert labels[held].bincount(minlength=4).tolist() == [10, 6, 4, 0]  # a single-sample class stays in keep
    again, _ = vs.eval.holdout_split(labels, 0.2, seed=3)
    other, _ = vs.eval.holdout_split(labels, 0.2, seed=4)
    assert torch.equal(keep, again) and not torch.equal(keep, other)


@pytest.mark.parametrize(
    "options",
    [
        dict(normalize="batchnorm"),
        dict(normalize=None, optimizer="adamw", lrs=(0.01,)),
        dict(batch_size=None),
        dict(val_fraction=0.0, lrs=(0.1,), weight_decays=(0.0,)),
    ],
)
def test_variants_learn_an_easy_problem(options):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 4
    x = 5 + torch.randn(400, 8, generator=g) + 4 * torch.nn.functional.one_hot(y, 8)  # shifted: normalising matters
    out = vs.eval.linear_probe(x[:300], y[:300], x[300:], y[300:], epochs=20, **options)
    assert out["top1"] >= 95


def test_probe_writes_tensorboard_scalars(tmp_path):
    x, y = torch.randn(60, 4), torch.arange(60) % 3
    vs.eval.linear_probe(x, y, x, y, lrs=(0.1,), weight_decays=(0.0, 0.01), epochs=2, log_dir=tmp_path)
    assert list(tmp_path.glob("events.out.tfevents.*"))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(test_x=torch.zeros(5, 3)), "feature dimensions differ: train_x has 4, test_x has 3"),
        (
            dict(train_y=torch.zeros(7, dtype=torch.long)),
            r"train_y must hold one label per feature row: expected shape \(20,\)",
        ),
        (dict(train_x=torch.full((20, 4), float("nan"))), "train_x holds NaN or infinite values"),
        (dict(lrs=(0.1, -1.0)), "learning rates must be > 0"),
        (dict(weight_decays=(-0.1,)), "weight decays >= 0"),
        (dict(optimizer="lbfgs"), "unknown optimizer 'lbfgs'; valid: sgd, adamw"),
        (dict(solver="newton"), "unknown solver 'newton'; valid: auto, lbfgs, sgd"),
        (dict(Cs=(1.0, 0.0)), "Cs must hold at least one value, all > 0"),
        (dict(folds=1), r"folds must be in \[2, 20\]"),
        (dict(solver="lbfgs", normalize="batchnorm"), "normalize 'batchnorm' is not for the lbfgs solver"),
        (dict(normalize="whiten", solver="sgd"), "unknown normalize 'whiten'; valid: standardize, batchnorm, none"),
        (dict(val_fraction=0.0, solver="sgd"), "a sweep of 30 settings needs a validation split"),
        (dict(val_fraction=1.0, solver="sgd"), r"val_fraction must be in \[0, 1\)"),
        (dict(epochs=0), "epochs and patience must be >= 1"),
        (dict(batch_size=0, solver="sgd"), "batch_size must be >= 1 or None"),
    ],
)
def test_bad_input_is_a_clear_value_error(change, message):
    args = dict(
        train_x=torch.randn(20, 4), train_y=torch.arange(20) % 2, test_x=torch.randn(5, 4), test_y=torch.arange(5) % 2
    )
    args.update(change)
    with pytest.raises(ValueError, match=message):
        vs.eval.linear_probe(**args)


def test_classic_protocol_runs_the_frozen_backbone_every_epoch_and_learns():
    from visionssl.data import load_dataset

    train, test = load_dataset("synthetic:64", "train", 16), load_dataset("synthetic:32", "test", 16)
    backbone = vs.create_backbone("resnet10t_cifar").train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    calls = []
    backbone.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    out = vs.eval.linear_probe_classic(backbone, train, test, epochs=2, batch_size=32, progress=False)
    assert calls == [32] + [32, 32] * 2  # the test split once, then 2 steps per epoch on augmented views
    assert backbone.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())  # BN statistics included
    assert sorted(out) == ["epochs", "history", "lr", "top1", "top5"] and out["lr"] == pytest.approx(0.1 * 32 / 256)
    assert [h["epoch"] for h in out["history"]] == [1, 2] and out["history"][-1]["top1"] == out["top1"]
    # raw features of a random network are tiny (std ~0.01 per dimension): a BatchNorm in front makes them learnable
    learned = vs.eval.linear_probe_classic(
        backbone, train, test, epochs=6, batch_size=32, lr=0.1, augment=False, batchnorm=True, progress=False
    )
    assert learned["top1"] > 50  # 4 classes: chance is 25%
    with pytest.raises(ValueError, match="epochs and batch_size must be >= 1"):
        vs.eval.linear_probe_classic(backbone, train, test, epochs=0)
