"""The optimizer, learning-rate schedule and weight average the training loop uses.

Lion is here because the reference trains the noise network with it and torch has none; AdamW is
torch's own. The EMA's weights, not the last step's, are what a stage saves by default.
"""
from __future__ import annotations

import math

import torch


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), as the reference uses.

    Per parameter, with momentum m (zero at the start) and gradient g::

        p ← p · (1 − lr · weight_decay)                    (decoupled weight decay)
        p ← p − lr · sign(β1 · m + (1 − β1) · g)
        m ← β2 · m + (1 − β2) · g
    """

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                if wd:
                    p.mul_(1 - lr * wd)
                update = (m * beta1).add_(p.grad, alpha=1 - beta1).sign_()
                p.add_(update, alpha=-lr)
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return loss


def make_optimizer(name, params, lr, weight_decay):
    """``lion`` or ``adamw``, both with the reference's betas (0.9, 0.99)."""
    if name == "lion":
        return Lion(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; expected lion or adamw")


def cosine_lr(step, iters, lr, min_lr, warmup=0):
    """Linear warm-up over ``warmup`` steps, then cosine annealing from lr to min_lr at ``iters``."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, iters - warmup))
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a network's floating-point tensors, updated every ``every`` steps.

    The reference uses decay 0.995 every 10 steps. With ``warmup`` the decay of the n-th update is
    min(decay, (1 + n) / (10 + n)), so that a short run is not dominated by its random initial weights.
    """

    def __init__(self, net, decay=0.995, every=10, warmup=True):
        self.decay, self.every, self.warmup = decay, every, warmup
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in net.state_dict().items()}

    @torch.no_grad()
    def update(self, net, step):
        if self.every <= 0 or (step + 1) % self.every:
            return
        d = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)
        self.updates += 1

    def state_dict(self):
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state):
        self.shadow = {k: v.to(self.shadow[k].device, copy=True) for k, v in state["shadow"].items()}
        self.updates = int(state["updates"])
