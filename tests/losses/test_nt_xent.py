import math

import pytest
import torch

import visionssl as vs


def reference_nt_xent(z1, z2, t):
    """SimCLR eq. (1), written out one anchor at a time."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        sims = [math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i]
        total += -math.log(math.exp(float(z[i] @ z[pos]) / t) / sum(sims))
    return total / n2


@pytest.mark.parametrize("n,d", [(2, 3), (5, 16), (16, 128)])
@pytest.mark.parametrize("t", [0.07, 0.5, 1.0])
def test_nt_xent_matches_reference(n, d, t):
    z1, z2 = torch.randn(n, d), torch.randn(n, d)
    assert vs.losses.nt_xent(z1, z2, temperature=t).item() == pytest.approx(reference_nt_xent(z1, z2, t), rel=1e-5)


def test_nt_xent_hand_worked_example():
    # two orthogonal pairs of identical views: each anchor sees its positive at cos 1 and two negatives at cos 0
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = vs.losses.nt_xent(z1, z1.clone(), temperature=1.0)
    expected = -math.log(math.e / (math.e + 2.0))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_gradients_and_errors():
    z1 = torch.randn(4, 8, requires_grad=True)
    z2 = torch.randn(4, 8, requires_grad=True)
    vs.losses.nt_xent(z1, z2).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="temperature"):
        vs.losses.nt_xent(z1, z2, temperature=0)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        vs.losses.nt_xent(z1, z2[:3])
