"""Full-batch L-BFGS over many L2-regularised multinomial logistic-regression heads at once.

Head ``h`` minimises ``sum_n w[n, h] * CE_n + 0.5 * l2[h] * ||W_h||^2`` with per-head sample weights ``w``
that sum to 1 (the mean cross entropy over that head's samples; a weight of 0 leaves a sample out, which is
how the folds of a cross-validation share one model) and an unpenalised bias. With ``l2 = 1 / (C * n_h)`` this
is scikit-learn's ``LogisticRegression(C=C)`` objective ``C * sum CE + 0.5 * ||W||^2`` divided by ``C * n_h``:
the same optimum, and the same scale scikit-learn's lbfgs applies ``tol`` to (its loss is a mean too).

All heads are one (H, D + 1, C) tensor: one matrix multiply gives every head's logits. Each head has its own
L-BFGS memory, step and backtracking (Armijo) line search; a head whose largest gradient entry falls to
``tol`` stops and costs nothing afterwards.

Example:
    >>> import torch
    >>> x, y = torch.randn(60, 3, dtype=torch.float64), torch.arange(60) % 3
    >>> w, b, iters = fit_heads(x, y, 3, torch.tensor([0.1, 1.0], dtype=torch.float64))
    >>> w.shape, b.shape, bool(w[0].norm() > w[1].norm())
    (torch.Size([2, 3, 3]), torch.Size([2, 3]), True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["fit_heads", "stratified_kfold"]


def stratified_kfold(labels: torch.Tensor, folds: int, seed: int = 0) -> torch.Tensor:
    """The fold (0 .. folds - 1) of every sample: each class's samples are shuffled (seeded) and dealt out in
    turn, so every fold holds ``n_c // folds`` or one more of class ``c``, and fold sizes differ by at most one.

    Example:
        >>> fold = stratified_kfold(torch.tensor([0] * 6 + [1] * 4), 2)
        >>> [fold[:6].bincount().tolist(), fold[6:].bincount().tolist()]
        [[3, 3], [2, 2]]
    """
    g = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(labels), dtype=torch.long)
    dealt = 0
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        fold[idx] = (torch.arange(len(idx)) + dealt) % folds  # go on dealing where the last class stopped
        dealt += len(idx)
    return fold


@torch.no_grad()
def fit_heads(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    l2: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
    history: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fits ``len(l2)`` heads by L-BFGS; returns weights (H, D, C), biases (H, C) and iterations (H,).

    Args:
        x: features (N, D) (standardise them first: L-BFGS and the penalty both assume comparable scales).
        y: labels (N,). num_classes: C.
        l2: per-head penalty strength (H,), ``1 / (C_sklearn * n_h)``.
        weights: per-sample, per-head weights (N, H), normalised here to sum to 1 per head; default uniform.
        init: starting weights and biases (default zero).
        max_iter: L-BFGS iterations per head at most. tol: stop a head when ``max |gradient| <= tol``.
        history: L-BFGS memory (pairs).

    Example:
        >>> x, y = torch.tensor([[-1.0], [1.0]]), torch.tensor([0, 1])
        >>> w, b, _ = fit_heads(x, y, 2, torch.tensor([1.0]))
        >>> round(float(w[0, 0, 1] - w[0, 0, 0]), 3)  # optimum: w1 = -w0 = a with a = 1 - sigmoid(2a)
        0.675
    """
    n, d = x.shape
    h, c = len(l2), num_classes
    dt = x.dtype
    l2 = l2.to(x.device, dt)
    w = torch.full((n, h), 1.0 / n, dtype=dt, device=x.device) if weights is None else weights.to(x.device, dt)
    w = w / w.sum(0)
    onehot = F.one_hot(y, c).to(dt)
    p = torch.zeros(h, d + 1, c, dtype=dt, device=x.device)
    if init is not None:
        p[:, :d], p[:, d] = init[0], init[1]

    def value_grad(params: torch.Tensor, heads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = len(heads)
        weight = params[:, :d].permute(1, 0, 2).reshape(d, m * c)
        logits = torch.addmm(params[:, d].reshape(1, -1), x, weight).view(n, m, c)
        lse = logits.logsumexp(2, keepdim=True)
        picked = logits.gather(2, y.view(n, 1, 1).expand(n, m, 1))
        wh = w[:, heads]
        value = (wh * (lse - picked).squeeze(2)).sum(0) + 0.5 * l2[heads] * params[:, :d].square().sum((1, 2))
        resid = logits.sub_(lse).exp_().sub_(onehot.unsqueeze(1)).mul_(wh.unsqueeze(2))  # dLoss/dlogits
        grad = torch.empty_like(params)
        grad[:, :d] = (x.T @ resid.view(n, m * c)).view(d, m, c).permute(1, 0, 2)
        grad[:, :d] += l2[heads].view(m, 1, 1) * params[:, :d]
        grad[:, d] = resid.sum(0)
        return value, grad

    iters = torch.zeros(h, dtype=torch.long)
    heads = torch.arange(h, device=x.device)
    value, grad = value_grad(p, heads)
    mem_s = torch.zeros(history, h, d + 1, c, dtype=dt, device=x.device)
    mem_y, rho = torch.zeros_like(mem_s), torch.zeros(history, h, dtype=dt, device=x.device)
    gamma = torch.ones(h, dtype=dt, device=x.device)
    live = grad.abs().amax((1, 2)) > tol
    for it in range(max_iter):
        heads = torch.nonzero(live).flatten()
        if len(heads) == 0:
            break
        g = grad[heads]
        # two-loop recursion, newest pair first; a skipped pair has rho = 0 and changes nothing
        slots = [(it - 1 - j) % history for j in range(min(it, history))]
        q, alphas = -g, []
        for s in slots:
            a = rho[s, heads] * _dot(mem_s[s, heads], q)
            q -= a.view(-1, 1, 1) * mem_y[s, heads]
            alphas.append(a)
        q *= gamma[heads].view(-1, 1, 1)
        for s, a in zip(reversed(slots), reversed(alphas)):
            b = rho[s, heads] * _dot(mem_y[s, heads], q)
            q += (a - b).view(-1, 1, 1) * mem_s[s, heads]
        if it == 0:  # no curvature yet: a first step of length at most 1
            q /= q.abs().sum((1, 2)).clamp_min(1.0).view(-1, 1, 1)
        slope = _dot(g, q)
        q = torch.where((slope < 0).view(-1, 1, 1), q, -g)  # not a descent direction (rounding): steepest descent
        slope = _dot(g, q)
        step = torch.ones(len(heads), dtype=dt, device=x.device)
        f0, p0 = value[heads], p[heads]
        new_f, new_g = value_grad(p0 + q, heads)
        for _ in range(30):  # backtracking: halve the step of every head whose Armijo condition fails
            bad = ~(new_f <= f0 + 1e-4 * step * slope)
            if not bad.any():
                break
            step = torch.where(bad, step / 2, step)
            sub = torch.nonzero(bad).flatten()
            f_b, g_b = value_grad(p0[sub] + step[sub].view(-1, 1, 1) * q[sub], heads[sub])
            new_f[sub], new_g[sub] = f_b, g_b
        s_new = step.view(-1, 1, 1) * q
        y_new = new_g - g
        sy = _dot(s_new, y_new)
        ok = sy > 1e-10 * _dot(y_new, y_new).clamp_min(1e-30)
        slot = it % history
        mem_s[slot, heads] = torch.where(ok.view(-1, 1, 1), s_new, 0)
        mem_y[slot, heads] = torch.where(ok.view(-1, 1, 1), y_new, 0)
        rho[slot, heads] = torch.where(ok, 1 / sy.where(ok, 1.0), 0)
        gamma[heads] = torch.where(ok, sy / _dot(y_new, y_new).clamp_min(1e-30), gamma[heads])
        p[heads], value[heads], grad[heads] = p0 + s_new, new_f, new_g
        iters[heads.cpu()] += 1
        stalled = (f0 - new_f).abs() <= 1e-12 * f0.abs().clamp_min(1.0)  # no progress left at this precision
        live[heads] = (new_g.abs().amax((1, 2)) > tol) & ~stalled
    return p[:, :d], p[:, d], iters


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum((1, 2))
