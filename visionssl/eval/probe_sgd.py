"""The SGD / AdamW sweep behind ``linear_probe(solver="sgd")``: many heads trained side by side as one model.

One linear head per (learning rate, weight decay) pair: the heads are one weight tensor (D, C, H) and a single
matrix multiply gives the logits of all of them. The loss is the sum over heads of each head's mean cross
entropy, so every head gets exactly its own gradient; SGD or AdamW then applies each head's own learning rate
and weight decay (a batched update written here, as ``torch.optim`` would need one parameter group, and one
small kernel launch, per head). Minibatches: this is the solver for features too many for a full-batch pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__: list[str] = []


class _Heads:
    """H linear heads over normalised features. The weights are one (D, C, H) tensor (heads last, so that a
    per-head learning rate broadcasts), the biases (C, H)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, normalizer: Normalizer):
        self.weight, self.bias, self.normalizer = weight, bias, normalizer

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, H, C) of every head, from one matrix multiply."""
        dim, c, _ = self.weight.shape
        logits = torch.addmm(self.bias.reshape(1, -1), self.normalizer(x), self.weight.reshape(dim, -1))
        return logits.view(len(x), c, -1).transpose(1, 2)


class Normalizer:
    """Feature normalisation of the probe, fitted on the training features: standardize, batchnorm or none."""

    def __init__(self, kind: str, x: torch.Tensor):
        self.kind = kind
        self.mean = x.mean(0)
        self.std = x.std(0).clamp_min(1e-6)
        self.running_var = x.var(0)

    def __call__(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        if self.kind == "standardize":
            return (x - self.mean) / self.std
        if self.kind == "batchnorm":
            return F.batch_norm(x, self.mean, self.running_var, training=train and len(x) > 1, momentum=0.1)
        return x


class _Sweep:
    """What training the heads leaves: per-head best validation accuracy, its epoch and weights."""

    def __init__(self, weight, bias, normalizer, best_val, best_loss, best_epoch, epochs_run):
        self.weight, self.bias, self.normalizer = weight, bias, normalizer
        self.best_val, self.best_loss, self.best_epoch, self.epochs_run = best_val, best_loss, best_epoch, epochs_run

    def best_setting(self) -> int:
        """The head with the best validation accuracy; the lowest validation loss among equals."""
        top = torch.nonzero(self.best_val == self.best_val.max()).flatten()
        return int(top[torch.argmin(self.best_loss[top])])

    def best_heads(self, head: int) -> _Heads:
        return _Heads(self.weight[..., head : head + 1], self.bias[..., head : head + 1], self.normalizer)


@torch.no_grad()
def train_heads(
    x: torch.Tensor,
    y: torch.Tensor,
    settings: list[tuple[float, float]],
    epochs: int,
    val: tuple[torch.Tensor, torch.Tensor] | None,
    patience: int,
    progress: bool,
    writer,
    *,
    num_classes: int,
    batch_size: int | None,
    optimizer: str,
    normalize: str,
    seed: int,
    stop_after: int | None = None,
) -> _Sweep:
    """Trains one head per setting. The gradient of the mean softmax cross entropy is written out,
    ``x^T (softmax(logits) - onehot(y)) / B``: no autograd graph, a handful of batched ops per step."""
    from tqdm.auto import tqdm

    n, dim, h, c = len(x), x.shape[1], len(settings), num_classes
    normalizer = Normalizer(normalize, x)
    per_batch_norm = normalize == "batchnorm"
    x_norm = x if per_batch_norm else normalizer(x)  # normalised once, not every step
    onehot = F.one_hot(y, c).to(x.dtype).unsqueeze(2)  # (N, C, 1)
    weight = torch.zeros(dim, c, h, device=x.device)
    bias = torch.zeros(c, h, device=x.device)
    heads = _Heads(weight, bias, normalizer)
    lr_all = torch.tensor([s[0] for s in settings], device=x.device)
    wd_all = torch.tensor([s[1] for s in settings], device=x.device)
    opt = _BatchedAdamW([weight, bias]) if optimizer == "adamw" else _BatchedSGD([weight, bias])
    batch = min(batch_size or n, n)
    total_steps, step = epochs * math.ceil(n / batch), 0
    g = torch.Generator().manual_seed(seed)
    best_val = torch.full((h,), -1.0, device=x.device)
    best_loss = torch.full((h,), math.inf, device=x.device)
    best_epoch = torch.zeros(h, dtype=torch.long, device=x.device)
    active = torch.ones(h, dtype=torch.bool, device=x.device)
    best_w, best_b = weight.clone(), bias.clone()
    epoch = 0
    with tqdm(
        range(1, (stop_after or epochs) + 1), desc=f"linear probe ({h} heads)", disable=not progress, leave=False
    ) as bar:
        for epoch in bar:
            order = torch.randperm(n, generator=g).to(x.device) if batch < n else torch.arange(n, device=x.device)
            live = torch.nonzero(active).flatten()  # stopped heads cost nothing: work on the live ones only
            whole = len(live) == h
            params = [weight, bias] if whole else [weight[..., live], bias[..., live]]
            state = opt.state if whole else [t[..., live] for t in opt.state]
            lr, wd = lr_all[live], wd_all[live]
            train_loss = torch.zeros(len(live), device=x.device)
            for start in range(0, n, batch):
                idx = order[start : start + batch]
                xb = normalizer(x[idx], train=True) if per_batch_norm else x_norm.index_select(0, idx)
                w, b = params
                # logits laid out (B, C, H): a softmax over dim 1 is several times faster than over a short last dim
                probs = torch.addmm(b.reshape(1, -1), xb, w.reshape(dim, -1)).view(len(idx), c, -1).softmax(1)
                if writer is not None:
                    picked = probs.gather(1, y[idx].view(-1, 1, 1).expand(-1, 1, len(live))).squeeze(1)
                    train_loss -= picked.clamp_min(1e-12).log().sum(0) / n
                probs -= onehot.index_select(0, idx)  # now B x dLoss/dlogits
                grad_w = torch.mm(xb.T, probs.view(len(idx), -1)).view_as(w).div_(len(idx))
                grad_b = probs.sum(0).div_(len(idx))
                opt.step(params, [grad_w, grad_b], state, lr * (0.5 * (1 + math.cos(math.pi * step / total_steps))), wd)
                step += 1
            if not whole:
                weight[..., live], bias[..., live] = params
                for full, part in zip(opt.state, state):
                    full[..., live] = part
            if val is None:
                continue
            val_logits = heads(val[0])
            val_acc = 100.0 * (val_logits.argmax(-1) == val[1].view(-1, 1)).float().mean(0)
            val_loss = F.cross_entropy(val_logits.transpose(1, 2), val[1].view(-1, 1).expand(-1, h), reduction="none")
            val_loss = val_loss.mean(0)
            # accuracy moves in steps of 1 / len(val): among equal accuracies the lower loss is better
            improved = active & ((val_acc > best_val) | ((val_acc == best_val) & (val_loss < best_loss)))
            best_val = torch.where(improved, val_acc, best_val)
            best_loss = torch.where(improved, val_loss, best_loss)
            best_epoch = torch.where(improved, epoch, best_epoch)
            best_w[..., improved], best_b[..., improved] = weight[..., improved], bias[..., improved]
            bar.set_postfix(best_val=f"{float(best_val.max()):.2f}", heads=len(live))
            if writer is not None:
                for j, i in enumerate(live.tolist()):
                    tag = f"lr={settings[i][0]:g},wd={settings[i][1]:g}"
                    writer.add_scalar(f"linear_probe/val_top1/{tag}", float(val_acc[i]), epoch)
                    writer.add_scalar(f"linear_probe/train_loss/{tag}", float(train_loss[j]), epoch)
            active &= (epoch - best_epoch) < patience  # a stopped head keeps its weights: as if trained alone
            if not active.any():
                break
    if val is None:
        best_w, best_b = weight, bias
        best_epoch = torch.full((h,), epoch, dtype=torch.long)
    return _Sweep(best_w, best_b, normalizer, best_val.cpu(), best_loss.cpu(), best_epoch.cpu(), epoch)


class _BatchedSGD:
    """SGD with momentum (as ``torch.optim.SGD``) on tensors whose LAST dimension indexes the heads, with one
    learning rate and weight decay per head; the first tensor (the weights) is decayed, the rest not."""

    def __init__(self, params: list[torch.Tensor], momentum: float = 0.9):
        self.momentum = momentum
        self.state = [torch.zeros_like(p) for p in params]  # momentum buffers

    @torch.no_grad()
    def step(self, params, grads, state, lr: torch.Tensor, wd: torch.Tensor) -> None:
        for i, (p, g, buf) in enumerate(zip(params, grads, state)):
            buf.mul_(self.momentum).add_(g)
            if i == 0:
                buf.addcmul_(p, wd)  # L2 weight decay, added to the gradient
            p.addcmul_(buf, lr, value=-1)


class _BatchedAdamW:
    """AdamW (as ``torch.optim.AdamW``) on tensors whose LAST dimension indexes the heads, with one learning
    rate and (decoupled) weight decay per head; the first tensor (the weights) is decayed, the rest not."""

    def __init__(self, params: list[torch.Tensor], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.betas, self.eps, self.t = betas, eps, 0
        self.state = [torch.zeros_like(p) for p in params] + [torch.zeros_like(p) for p in params]  # m..., v...

    @torch.no_grad()
    def step(self, params, grads, state, lr: torch.Tensor, wd: torch.Tensor) -> None:
        self.t += 1
        b1, b2 = self.betas
        moments = zip(state[: len(params)], state[len(params) :])
        for i, (p, g, (m, v)) in enumerate(zip(params, grads, moments)):
            if i == 0:
                p.mul_(1 - lr * wd)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / (1 - b2**self.t)).sqrt_().add_(self.eps)
            p.sub_(lr / (1 - b1**self.t) * m / denom)
