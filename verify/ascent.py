"""Adam steps for the bound optimisers (alpha/beta-CROWN slopes and multipliers).

The same update as ``torch.optim.Adam`` with its defaults (betas 0.9/0.999, eps
1e-8, no weight decay), written out because constructing the first
``torch.optim`` optimizer of a process imports ``torch._dynamo``: 1.5-3.3 s
measured on this machine, paid by every short verification that optimises a
bound.  Any parameter values are sound for the callers (they clip or project
after each step); only the speed of the ascent depends on this.
"""
from __future__ import annotations

import torch


class Adam:
    """Minimises through ``loss.backward()`` gradients of ``params`` (leaf tensors
    with ``requires_grad``): call :meth:`zero_grad`, backward, then :meth:`step`."""

    def __init__(self, params, lr: float = 0.1, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = [p for p in params]
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        # the denominator's buffer, reused every step (a fresh tensor per step and
        # parameter meant page faults: the multipliers are (branches, rows, neurons))
        self.denom = [torch.empty_like(p) for p in self.params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        c1, c2 = 1.0 - self.b1 ** self.t, 1.0 - self.b2 ** self.t
        for p, m, v, denom in zip(self.params, self.m, self.v, self.denom):
            if p.grad is None:
                continue
            g = p.grad
            m.mul_(self.b1).add_(g, alpha=1.0 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1.0 - self.b2)
            torch.sqrt(v, out=denom).div_(c2 ** 0.5).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / c1)
