"""infonce_queue, negative_cosine and vicreg against direct implementations of their papers' formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

import visionssl as vs

SHAPES = [(2, 1), (3, 5), (8, 16), (32, 64)]  # (N, D)


# ---------- InfoNCE with a queue (MoCo) ----------


def reference_infonce_queue(q, k, queue, temperature):
    """Row by row: l_i = -log( exp(q_i.k_i / T) / (exp(q_i.k_i / T) + sum_j exp(q_i.n_j / T)) )."""
    q, k, queue = q.double(), k.double(), queue.double()
    losses = []
    for i in range(q.shape[0]):
        positive = torch.exp(q[i] @ k[i] / temperature)
        negatives = sum(torch.exp(q[i] @ n / temperature) for n in queue)
        losses.append(-torch.log(positive / (positive + negatives)))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("queue_size", [1, 7, 40])
@pytest.mark.parametrize("temperature", [0.07, 0.2, 1.0])
def test_infonce_queue_matches_formula(n, d, queue_size, temperature):
    q, k = F.normalize(torch.randn(n, d), dim=1), F.normalize(torch.randn(n, d), dim=1)
    queue = F.normalize(torch.randn(queue_size, d), dim=1)
    got = vs.losses.infonce_queue(q, k, queue, temperature)
    assert got.ndim == 0
    torch.testing.assert_close(got.double(), reference_infonce_queue(q, k, queue, temperature), rtol=1e-5, atol=1e-6)


def test_infonce_queue_normalises_q_and_k_but_not_the_queue():
    q, k, queue = torch.randn(6, 8), torch.randn(6, 8), F.normalize(torch.randn(20, 8), dim=1)
    expected = reference_infonce_queue(F.normalize(q, dim=1), F.normalize(k, dim=1), queue, 0.2)
    torch.testing.assert_close(vs.losses.infonce_queue(3 * q, 0.5 * k, queue).double(), expected, rtol=1e-5, atol=1e-6)
    scaled = vs.losses.infonce_queue(q, k, 2 * queue)  # the queue is used as given
    assert not torch.isclose(scaled.double(), expected, rtol=1e-3)


def test_infonce_queue_gradient_reaches_only_the_queries():
    q = torch.randn(5, 8, requires_grad=True)
    k = torch.randn(5, 8, requires_grad=True)
    queue = F.normalize(torch.randn(12, 8), dim=1).requires_grad_()
    vs.losses.infonce_queue(q, k, queue).backward()
    assert k.grad is None and queue.grad is None
    # q's gradient is that of the formula with k and the queue held constant
    q_ref = q.detach().double().requires_grad_()
    reference_infonce_queue(F.normalize(q_ref, dim=1), F.normalize(k.detach(), dim=1), queue.detach(), 0.2).backward()
    torch.testing.assert_close(q.grad.double(), q_ref.grad, rtol=1e-5, atol=1e-7)


def test_infonce_queue_prefers_the_positive():
    q = F.normalize(torch.randn(8, 16), dim=1)
    queue = F.normalize(torch.randn(64, 16), dim=1)
    assert vs.losses.infonce_queue(q, q, queue) < vs.losses.infonce_queue(q, -q, queue)


@pytest.mark.parametrize(
    "q,k,queue,temperature,match",
    [
        ((4, 8), (4, 7), (10, 8), 0.2, "q and k must both be"),
        ((4, 8), (4, 8), (10, 7), 0.2, r"queue must be \(K, D\) with D = 8"),
        ((4, 8), (4, 8), (10, 8), 0.0, "temperature must be > 0"),
    ],
)
def test_infonce_queue_rejects_bad_input(q, k, queue, temperature, match):
    with pytest.raises(ValueError, match=match):
        vs.losses.infonce_queue(torch.randn(q), torch.randn(k), torch.randn(queue), temperature)


# ---------- negative cosine (SimSiam, BYOL) ----------


def reference_negative_cosine(p, z):
    """D(p, z) = -(1/N) sum_i p_i . z_i / (||p_i|| ||z_i||)."""
    p, z = p.double(), z.double()
    return -sum(p[i] @ z[i] / (p[i].norm() * z[i].norm()) for i in range(p.shape[0])) / p.shape[0]


@pytest.mark.parametrize("n,d", SHAPES)
def test_negative_cosine_matches_formula(n, d):
    p, z = torch.randn(n, d), torch.randn(n, d)
    got = vs.losses.negative_cosine(p, z).double()
    torch.testing.assert_close(got, reference_negative_cosine(p, z), rtol=1e-5, atol=1e-6)


def test_negative_cosine_stops_the_gradient_on_z():
    p, z = torch.randn(6, 10, requires_grad=True), torch.randn(6, 10, requires_grad=True)
    vs.losses.negative_cosine(p, z).backward()
    assert z.grad is None
    p_ref = p.detach().double().requires_grad_()
    reference_negative_cosine(p_ref, z.detach()).backward()
    torch.testing.assert_close(p.grad.double(), p_ref.grad, rtol=1e-5, atol=1e-7)


def test_negative_cosine_bounds_and_byol_identity():
    p = torch.randn(5, 7)
    assert float(vs.losses.negative_cosine(p, 2 * p)) == pytest.approx(-1.0, abs=1e-6)
    assert float(vs.losses.negative_cosine(p, -p)) == pytest.approx(1.0, abs=1e-6)
    # BYOL's regression loss ||p/|p| - z/|z|||^2 = 2 + 2 D(p, z), batch-averaged
    z = torch.randn(5, 7)
    regression = (F.normalize(p, dim=1) - F.normalize(z, dim=1)).pow(2).sum(1).mean()
    torch.testing.assert_close(regression, 2 + 2 * vs.losses.negative_cosine(p, z), rtol=1e-5, atol=1e-6)


def test_negative_cosine_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="p and z must both be"):
        vs.losses.negative_cosine(torch.randn(4, 8), torch.randn(5, 8))


# ---------- VICReg ----------


def reference_vicreg_terms(z1, z2, eps=1e-4):
    """The paper's definitions, written out entry by entry in float64."""
    z1, z2 = z1.double(), z2.double()
    n, d = z1.shape
    invariance = sum((z1[i, j] - z2[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def variance(z):
        mean = z.sum(0) / n
        std = torch.sqrt(((z - mean) ** 2).sum(0) / (n - 1) + eps)
        return torch.clamp(1 - std, min=0).sum() / d

    def covariance(z):
        centred = z - z.sum(0) / n
        total = 0.0
        for a in range(d):
            for b in range(d):
                if a != b:
                    total = total + ((centred[:, a] * centred[:, b]).sum() / (n - 1)) ** 2
        return total / d

    return {
        "invariance": invariance,
        "variance": variance(z1) / 2 + variance(z2) / 2,
        "covariance": covariance(z1) + covariance(z2),
    }


@pytest.mark.parametrize("n,d", [(2, 1), (3, 5), (8, 16), (16, 12)])
@pytest.mark.parametrize("scale", [0.1, 1.0, 3.0])  # below and above the variance hinge
def test_vicreg_matches_formula(n, d, scale):
    z1, z2 = scale * torch.randn(n, d), scale * torch.randn(n, d)
    weights = {"sim_weight": 25.0, "var_weight": 15.0, "cov_weight": 2.0}
    total, terms = vs.losses.vicreg(z1, z2, **weights, return_terms=True)
    expected = reference_vicreg_terms(z1, z2)
    for name in expected:
        torch.testing.assert_close(terms[name].double(), torch.as_tensor(expected[name]).double(), rtol=1e-5, atol=1e-6)
    expected_total = 25.0 * expected["invariance"] + 15.0 * expected["variance"] + 2.0 * expected["covariance"]
    torch.testing.assert_close(total.double(), torch.as_tensor(expected_total).double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vs.losses.vicreg(z1, z2, **weights), total)


def test_vicreg_gradients_flow_into_both_branches_as_the_formula_says():
    z1, z2 = torch.randn(8, 6, requires_grad=True), torch.randn(8, 6, requires_grad=True)
    vs.losses.vicreg(z1, z2).backward()
    r1, r2 = z1.detach().double().requires_grad_(), z2.detach().double().requires_grad_()
    t = reference_vicreg_terms(r1, r2)
    (25 * t["invariance"] + 25 * t["variance"] + t["covariance"]).backward()
    torch.testing.assert_close(z1.grad.double(), r1.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z2.grad.double(), r2.grad, rtol=1e-5, atol=1e-6)


def test_vicreg_terms_behave():
    z = torch.randn(64, 4)
    _, same = vs.losses.vicreg(z, z, return_terms=True)
    assert float(same["invariance"]) == 0.0
    _, collapsed = vs.losses.vicreg(torch.zeros(8, 4), torch.zeros(8, 4), return_terms=True)
    assert float(collapsed["variance"]) == pytest.approx(1 - math.sqrt(1e-4))
    _, decorrelated = vs.losses.vicreg(torch.eye(4).repeat(2, 1) * 3, torch.eye(4).repeat(2, 1) * 3, return_terms=True)
    _, correlated = vs.losses.vicreg(torch.randn(8, 1).repeat(1, 4), torch.randn(8, 1).repeat(1, 4), return_terms=True)
    assert float(correlated["covariance"]) > float(decorrelated["covariance"])


def test_vicreg_runs_in_float32_under_autocast():
    z1, z2 = torch.randn(16, 32), torch.randn(16, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = vs.losses.vicreg(z1.bfloat16(), z2.bfloat16())
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, vs.losses.vicreg(z1.bfloat16().float(), z2.bfloat16().float()))


@pytest.mark.parametrize(
    "z1,z2,match",
    [((4, 8), (4, 7), "z1 and z2 must both be"), ((1, 8), (1, 8), "at least 2 samples"), ((8,), (8,), "must both be")],
)
def test_vicreg_rejects_bad_input(z1, z2, match):
    with pytest.raises(ValueError, match=match):
        vs.losses.vicreg(torch.randn(z1), torch.randn(z2))
