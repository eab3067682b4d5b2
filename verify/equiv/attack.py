"""Lower bounds on how far two networks differ, by search (never a proof).

* :func:`max_deviation`: per output, the largest ``|g(x) - f(x)|`` found by
  dense sampling and projected gradient ascent (sign steps) from random
  starts, the box centre and given starts (e.g. the corners that minimise
  the certified bound's linear rows);
* :func:`find_disagreement`: an input whose predicted classes differ, by
  sampling and a gradient search on the two networks' class margins.

Every value reported is re-computed on the float64 networks
(``Network.forward``); the torch models only steer the search.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..network import Network


def torch_model(network):
    """A torch function of the network's flat float64 input batch (a graph network
    evaluates itself)."""
    if not isinstance(network, Network):
        return network.evaluate
    from ..torch_io import to_torch
    return to_torch(network).requires_grad_(False)  # gradients of inputs only


@dataclass(frozen=True)
class Deviation:
    """Per output, the largest ``|g - f|`` found and an input reaching it."""

    value: np.ndarray  # (n_out,)
    inputs: np.ndarray  # (n_out, n_inputs)


def _best(f: Network, g: Network, xs: np.ndarray, best: Deviation | None) -> Deviation:
    d = np.abs(g.forward(xs) - f.forward(xs))
    i = d.argmax(0)
    value, inputs = d[i, np.arange(d.shape[1])], xs[i]
    if best is None:
        return Deviation(value, inputs)
    pick = value > best.value
    return Deviation(np.where(pick, value, best.value), np.where(pick[:, None], inputs, best.inputs))


def max_deviation(f: Network, g: Network, lo, hi, *, rng: np.random.Generator,
                  samples: int = 2000, restarts: int = 4, steps: int = 60,
                  starts: np.ndarray | None = None, deadline: float | None = None) -> Deviation:
    """The largest ``|g_i(x) - f_i(x)|`` per output found on ``[lo, hi]``."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    xs = np.vstack([rng.uniform(lo, hi, size=(samples, lo.size)), (lo + hi)[None] / 2]
                   + ([] if starts is None else [np.clip(np.atleast_2d(starts), lo, hi)]))
    best = _best(f, g, xs, None)
    if not restarts or not steps:
        return best
    n_out = f.n_outputs
    mf, mg = torch_model(f), torch_model(g)
    # one row per (output, sign, start): starts = the best points so far plus random ones
    x0 = np.vstack([best.inputs, rng.uniform(lo, hi, size=(restarts, lo.size))])
    R = len(x0)
    x = torch.from_numpy(np.tile(x0, (2 * n_out, 1))).clone()
    out = torch.arange(2 * n_out).repeat_interleave(R) % n_out
    sign = torch.where(torch.arange(2 * n_out).repeat_interleave(R) < n_out, 1.0, -1.0).double()
    tlo, thi = torch.as_tensor(np.array(lo)), torch.as_tensor(np.array(hi))  # copies: lo, hi may be read-only
    width = thi - tlo
    for step in range(steps):
        if deadline is not None and time.monotonic() > deadline:
            break
        x.requires_grad_(True)
        diff = mg(x) - mf(x)
        obj = sign * diff.gather(1, out[:, None])[:, 0]
        (grad,) = torch.autograd.grad(obj.sum(), x)
        size = 0.2 * (1.0 - step / steps) + 0.005
        with torch.no_grad():
            x = torch.max(torch.min(x + size * width * grad.sign(), thi), tlo)
    return _best(f, g, np.vstack([x.detach().numpy(), xs[:1]]), best)


@dataclass(frozen=True)
class Disagreement:
    """An input on which the two networks predict different classes (replayed)."""

    input: np.ndarray
    original_output: np.ndarray
    variant_output: np.ndarray
    original_class: int
    variant_class: int

    def to_dict(self) -> dict:
        return {"input": [float(v) for v in self.input],
                "original_output": [float(v) for v in self.original_output],
                "variant_output": [float(v) for v in self.variant_output],
                "original_class": self.original_class, "variant_class": self.variant_class}


def replay(f: Network, g: Network, xs: np.ndarray, lo, hi, sign: float = 1.0
           ) -> Disagreement | None:
    """The first row of ``xs`` (clipped into the box) whose classes differ on
    the float64 networks (classes: argmax of ``sign * y``); ties (several
    maximal outputs) do not count."""
    xs = np.clip(np.atleast_2d(np.asarray(xs, float)), lo, hi)
    yf, yg = f.forward(xs), g.forward(xs)
    sf, sg = np.sort(sign * yf, 1), np.sort(sign * yg, 1)
    strict = (sf[:, -1] > sf[:, -2]) & (sg[:, -1] > sg[:, -2])
    cf, cg = (sign * yf).argmax(1), (sign * yg).argmax(1)
    hit = np.flatnonzero((cf != cg) & strict)
    if not len(hit):
        return None
    i = hit[0]
    return Disagreement(xs[i], yf[i], yg[i], int(cf[i]), int(cg[i]))


def find_disagreement(f: Network, g: Network, lo, hi, *, rng: np.random.Generator,
                      sign: float = 1.0, samples: int = 2000, restarts: int = 16,
                      steps: int = 60, starts: np.ndarray | None = None,
                      deadline: float | None = None) -> Disagreement | None:
    """An input of ``[lo, hi]`` on which the predicted classes differ, or None."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    xs = np.vstack([rng.uniform(lo, hi, size=(samples, lo.size)), (lo + hi)[None] / 2]
                   + ([] if starts is None else [np.atleast_2d(starts)]))
    hit = replay(f, g, xs, lo, hi, sign)
    if hit is not None or not restarts or not steps:
        return hit
    mf, mg = torch_model(f), torch_model(g)
    x0 = np.vstack([xs[-len(starts):] if starts is not None else xs[-1:],
                    rng.uniform(lo, hi, size=(restarts, lo.size))])
    tlo, thi = torch.as_tensor(np.array(lo)), torch.as_tensor(np.array(hi))  # copies: lo, hi may be read-only
    width = thi - tlo
    x = torch.from_numpy(np.clip(x0, lo, hi)).clone()
    big = torch.tensor(1e30, dtype=torch.float64)
    for step in range(steps):
        if deadline is not None and time.monotonic() > deadline:
            break
        x.requires_grad_(True)
        yf, yg = sign * mf(x), sign * mg(x)
        c = yf.argmax(1, keepdim=True).detach()  # the original's class stays, the variant's moves
        own = torch.zeros_like(yf, dtype=torch.bool).scatter(1, c, True)
        margin_f = yf.gather(1, c)[:, 0] - torch.where(own, -big, yf).max(1).values
        margin_g = torch.where(own, -big, yg).max(1).values - yg.gather(1, c)[:, 0]
        obj = torch.minimum(margin_g, margin_f)
        (grad,) = torch.autograd.grad(obj.sum(), x)
        size = 0.2 * (1.0 - step / steps) + 0.005
        with torch.no_grad():
            x = torch.max(torch.min(x + size * width * grad.sign(), thi), tlo)
        if step % 10 == 9:
            hit = replay(f, g, x.detach().numpy(), lo, hi, sign)
            if hit is not None:
                return hit
    return replay(f, g, x.detach().numpy(), lo, hi, sign)
