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


# ---------- SwAV ----------


def sinkhorn_by_loops(scores, epsilon, iterations):
    b, k = len(scores), len(scores[0])
    q = [[math.exp(scores[i][j] / epsilon) for i in range(b)] for j in range(k)]  # K x B
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        q = [[v / sum(row) / k for v in row] for row in q]  # rows sum to 1/K
        cols = [sum(q[j][i] for j in range(k)) for i in range(b)]
        q = [[q[j][i] / cols[i] / b for i in range(b)] for j in range(k)]  # columns sum to 1/B
    return [[q[j][i] * b for j in range(k)] for i in range(b)]


def test_sinkhorn_equals_the_algorithm_worked_with_loops():
    scores = torch.randn(5, 3, generator=torch.Generator().manual_seed(2)) * 0.3
    expected = torch.tensor(sinkhorn_by_loops(scores.tolist(), 0.5, 3))
    torch.testing.assert_close(vs.losses.sinkhorn(scores, epsilon=0.5, iterations=3), expected, rtol=1e-5, atol=1e-6)


def test_sinkhorn_of_a_uniform_matrix_is_uniform():
    torch.testing.assert_close(vs.losses.sinkhorn(torch.zeros(4, 2)), torch.full((4, 2), 0.5))


def test_swav_equals_swapped_prediction_worked_with_loops():
    g = torch.Generator().manual_seed(3)
    scores = [torch.randn(4, 3, generator=g) for _ in range(4)]  # 2 global + 2 local crops
    t = 0.1
    total = 0.0
    for i in range(2):
        q = sinkhorn_by_loops(scores[i].tolist(), 0.05, 3)
        sub = 0.0
        for v in range(4):
            if v == i:
                continue
            for b in range(4):
                row = [x / t for x in scores[v][b].tolist()]
                log_z = math.log(sum(math.exp(x) for x in row))
                sub += -sum(q[b][k] * (row[k] - log_z) for k in range(3)) / 4
        total += sub / 3
    assert float(vs.losses.swav(scores, temperature=t)) == pytest.approx(total / 2, rel=1e-5)


def test_swav_queue_scores_join_sinkhorn_only():
    g = torch.Generator().manual_seed(4)
    scores = [torch.randn(4, 3, generator=g) for _ in range(2)]
    queue = [torch.randn(6, 3, generator=g) for _ in range(2)]
    with_queue = vs.losses.swav(scores, queue_scores=queue)
    q0 = vs.losses.sinkhorn(torch.cat([scores[0], queue[0]]))[:4]
    q1 = vs.losses.sinkhorn(torch.cat([scores[1], queue[1]]))[:4]
    expected = (
        -(q0 * F.log_softmax(scores[1] / 0.1, 1)).sum(1).mean() - (q1 * F.log_softmax(scores[0] / 0.1, 1)).sum(1).mean()
    ) / 2
    torch.testing.assert_close(with_queue, expected)


def test_swav_equals_lightly():
    loss = _lightly().SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)
    scores = [torch.randn(16, 10) for _ in range(5)]
    queue = [torch.randn(32, 10) for _ in range(2)]
    torch.testing.assert_close(vs.losses.swav(scores), loss(scores[:2], scores[2:]).squeeze(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        vs.losses.swav(scores, queue_scores=queue), loss(scores[:2], scores[2:], queue).squeeze(0), rtol=1e-5, atol=1e-5
    )


# ---------- DINO ----------


def test_dino_equals_the_papers_formula_worked_with_loops():
    g = torch.Generator().manual_seed(5)
    teacher = [torch.randn(3, 4, generator=g) for _ in range(2)]
    student = [torch.randn(3, 4, generator=g) for _ in range(3)]
    center = torch.randn(4, generator=g) * 0.1
    st, tt = 0.1, 0.04

    def softmax(row):
        m = max(row)
        e = [math.exp(x - m) for x in row]
        return [x / sum(e) for x in e]

    total, terms = 0.0, 0
    for i in range(2):
        for v in range(3):
            if v == i:
                continue
            for b in range(3):
                p = softmax([(teacher[i][b][k] - center[k]).item() / tt for k in range(4)])
                q = softmax([student[v][b][k].item() / st for k in range(4)])
                total += -sum(p[k] * math.log(q[k]) for k in range(4)) / 3
            terms += 1
    assert float(vs.losses.dino(student, teacher, center, st, tt)) == pytest.approx(total / terms, rel=1e-5)


def test_dino_center_hand_values():
    teacher = [torch.tensor([[1.0, 3.0], [3.0, 5.0]]), torch.tensor([[0.0, 0.0], [4.0, 4.0]])]
    new = vs.losses.dino_center(torch.tensor([[10.0, 20.0]]), teacher, momentum=0.9)
    torch.testing.assert_close(new, torch.tensor([[0.9 * 10 + 0.1 * 2.0, 0.9 * 20 + 0.1 * 3.0]]))


def test_dino_equals_lightly():
    lightly = _lightly().DINOLoss(
        output_dim=10, warmup_teacher_temp=0.04, teacher_temp=0.04, student_temp=0.1, center_momentum=0.9
    )
    teacher = [torch.randn(8, 10) for _ in range(2)]
    student = [torch.randn(8, 10) for _ in range(6)]
    center = torch.zeros(1, 10)
    for _ in range(2):  # the second call uses the updated center
        expected = lightly(teacher, student, teacher_temp=0.04)
        torch.testing.assert_close(vs.losses.dino(student, teacher, center, 0.1, 0.04), expected, rtol=1e-5, atol=1e-5)
        center = vs.losses.dino_center(center, teacher, 0.9)
        torch.testing.assert_close(center, lightly.center.reshape(1, 10), rtol=1e-5, atol=1e-6)


# ---------- MAE ----------


def test_patchify_hand_values():
    x = torch.arange(2 * 4 * 4.0).view(1, 2, 4, 4)  # 2 channels
    patches = vs.losses.patchify(x, 2)
    assert patches.shape == (1, 4, 8)
    # patch 0 (top-left): pixels (0,0),(0,1),(1,0),(1,1), channels last
    assert patches[0, 0].tolist() == [0.0, 16.0, 1.0, 17.0, 4.0, 20.0, 5.0, 21.0]
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        vs.losses.patchify(torch.randn(1, 3, 5, 5), 2)


def test_mae_equals_the_papers_formula_worked_with_loops():
    g = torch.Generator().manual_seed(6)
    pred, target = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    total = 0.0
    for b in range(2):
        for i in range(3):
            if mask[b, i]:
                t = target[b, i].tolist()
                mean = sum(t) / 4
                var = sum((v - mean) ** 2 for v in t) / 3
                t = [(v - mean) / math.sqrt(var + 1e-6) for v in t]
                total += sum((p - v) ** 2 for p, v in zip(pred[b, i].tolist(), t)) / 4
    assert float(vs.losses.mae(pred, target, mask)) == pytest.approx(total / 3, rel=1e-5)


def test_mae_equals_lightlys_mse_on_the_masked_patches():
    utils = pytest.importorskip("lightly.models.utils", reason="LightlySSL is not installed (the [bench] extra)")
    images = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(vs.losses.patchify(images, 4), utils.patchify(images, 4))
    pred, target = torch.randn(4, 16, 48), vs.losses.patchify(images, 4)
    idx_mask = torch.stack([torch.randperm(16)[:12] for _ in range(4)])  # 12 masked patches per image
    mask = torch.zeros(4, 16).scatter_(1, idx_mask, 1.0)

    def pick(x):
        return utils.get_at_index(x, idx_mask)

    expected = torch.nn.MSELoss()(pick(pred), pick(target))
    torch.testing.assert_close(vs.losses.mae(pred, target, mask, norm_pix=False), expected, rtol=1e-5, atol=1e-6)
