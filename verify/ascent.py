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

    def select(self, keep: torch.Tensor):
        """The rows ``keep`` ((B,) bool over every parameter's first dimension) as new
        leaf parameters, and an optimiser over them that carries on with their moments:
        (parameters, optimiser)."""
        params = [p.detach()[keep].clone().requires_grad_(True) for p in self.params]
        opt = Adam(params, self.lr, (self.b1, self.b2), self.eps)
        opt.m = [m[keep] for m in self.m]
        opt.v = [v[keep] for v in self.v]
        opt.t = self.t
        return params, opt


class Settled:
    """When a branch's alpha/beta steps on spec rows may stop: every unsafe
    conjunction among the rows bounded has a row whose bound (of ``C y``, less its
    ``d``) is above ``margin``, so the branch is refuted already (the search's own
    refutation decides in the end; a branch stopped early keeps a bound at least
    this good).  ``owner``: (m,) the conjunction of each row; ``spec_d``: (m,)."""

    def __init__(self, owner, spec_d: torch.Tensor, margin: float = 1e-4):
        owner = torch.as_tensor(owner, dtype=torch.long)
        _, self.owner = torch.unique(owner, return_inverse=True)  # 0..n-1, present only
        self.n_conj = int(self.owner.max()) + 1 if len(self.owner) else 0
        self.spec_d, self.margin = spec_d, margin

    def __call__(self, cur: torch.Tensor) -> torch.Tensor:
        """(B,) bool from the bounds ``cur`` (B, m) of ``C y``."""
        pos = (cur - self.spec_d.to(cur.dtype) > self.margin).to(cur.dtype)
        hit = torch.zeros(cur.shape[0], self.n_conj, dtype=cur.dtype)
        hit.scatter_reduce_(1, self.owner.expand(cur.shape[0], -1), pos, "amax")
        return (hit > 0).all(1)

    @staticmethod
    def worth_dropping(done: torch.Tensor) -> bool:
        """Whether to take the settled rows out of the batch now (at least a quarter
        of it: each drop copies the batch's tensors)."""
        return 4 * int(done.sum()) >= len(done) > 0

