"""Behaviour changes made to follow the papers' official code (issue 19): one test per deviation fixed."""
import pytest
import torch

import visionssl as vs


@pytest.mark.parametrize("name, decays_1d", [("simclr", False), ("byol", False), ("vicreg", False), ("moco", True),
                                             ("simsiam", True), ("deepcluster", True), ("rotation", True)])
def test_weight_decay_on_1d_parameters_follows_each_paper(name, decays_1d):
    method = vs.create_method(name, backbone="resnet10t_cifar")
    groups = method.param_groups(5e-4)
    decayed = {id(p) for g in groups if g["weight_decay"] == 5e-4 for p in g["params"]}
    one_d = [p for p in method.parameters() if p.requires_grad and p.ndim <= 1]
    assert one_d and all((id(p) in decayed) == decays_1d for p in one_d)
    assert all(id(p) in decayed for p in method.parameters() if p.requires_grad and p.ndim > 1)
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in method.parameters() if p.requires_grad)


def test_nt_xent_runs_in_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(64, 128, generator=g), torch.randn(64, 128, generator=g)
    z2 = z1 + 0.5 * z2
    reference = vs.losses.nt_xent(z1, z2, temperature=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = vs.losses.nt_xent(z1, z2, temperature=0.1)
    assert under_autocast.dtype == torch.float32
    assert abs(float(under_autocast) - float(reference)) <= 1e-5 * abs(float(reference))
