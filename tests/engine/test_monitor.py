"""Collapse statistics against hand-computed values."""

import math

import pytest
import torch

from visionssl.engine.monitor import effective_rank, embedding_std


def test_embedding_std_matches_formula():
    z = torch.randn(10, 6, dtype=torch.float64)
    unit = z / z.pow(2).sum(1, keepdim=True).sqrt()
    std = ((unit - unit.mean(0)) ** 2).sum(0).div(10 - 1).sqrt()
    torch.testing.assert_close(embedding_std(z).double(), std.mean(), rtol=1e-5, atol=1e-7)


def test_embedding_std_healthy_collapsed_and_scale_invariant():
    d = 128
    z = torch.randn(2048, d)
    assert float(embedding_std(z)) == pytest.approx(1 / math.sqrt(d), rel=0.03)
    assert float(embedding_std(torch.randn(1, d).repeat(16, 1))) == pytest.approx(0.0, abs=1e-6)
    scales = torch.rand(2048, 1) * 10 + 0.1
    torch.testing.assert_close(embedding_std(z * scales), embedding_std(z), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("singular_values", [[3.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0], [5.0, 0.5, 0.1, 0.01, 0.0]])
def test_effective_rank_matches_formula(singular_values):
    s = torch.tensor(singular_values, dtype=torch.float64)
    n, d = len(s) + 3, len(s) + 1
    u, _ = torch.linalg.qr(torch.randn(n, len(s), dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, len(s), dtype=torch.float64))
    z = u @ torch.diag(s) @ v.T
    p = s[s > 0] / s.sum()
    expected = math.exp(-float((p * p.log()).sum()))
    assert float(effective_rank(z)) == pytest.approx(expected, rel=1e-5)


def test_effective_rank_bounds():
    assert float(effective_rank(torch.eye(12))) == pytest.approx(12.0, rel=1e-5)
    assert float(effective_rank(torch.randn(16, 1) @ torch.randn(1, 32))) == pytest.approx(1.0, rel=1e-4)
    assert float(effective_rank(torch.zeros(4, 8))) == pytest.approx(1.0)
    z = torch.randn(64, 16)
    assert 1.0 <= float(effective_rank(z)) <= 16.0
    torch.testing.assert_close(effective_rank(7 * z), effective_rank(z), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fn", [embedding_std, effective_rank])
@pytest.mark.parametrize("shape", [(8,), (1, 8), (2, 3, 4)])
def test_monitor_rejects_bad_shapes(fn, shape):
    with pytest.raises(ValueError, match=r"\(N, D\) batch of embeddings with N >= 2"):
        fn(torch.randn(shape))
