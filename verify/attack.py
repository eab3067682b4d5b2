"""Falsification: random sampling and a projected-gradient attack.

Candidates are only ever reported after :func:`confirm` re-ran them through
the concrete float64 network (``Network.forward``, or a graph network's float64
forward) and saw them violate.  The attack's gradients go through the chain's
torch layers or the graph's own torch forward (``GraphNetwork.evaluate``).
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch

from .network import Network
from .properties import Region
from .result import Counterexample

# confirm_batch screens batches of more than this many points in float32 ...
SCREEN_MIN_BATCH = 16
# ... keeping every point whose float32 margin is below this share of its output scale
# (float32 rounding through a few wide layers moves outputs by about 1e-6 of it)
SCREEN_SLACK = 1e-3


def confirm(network: Network, region: Region, region_index: int,
            x: np.ndarray) -> Counterexample | None:
    """Re-run ``x`` (clipped into the region's box) on the network; return a
    counterexample if its output lies in the unsafe set, else None."""
    x = np.clip(np.asarray(x, dtype=np.float64).reshape(-1), region.lower, region.upper)
    if not region.contains_input(x):
        return None
    y = network.forward(x)
    for j, conj in enumerate(region.unsafe):
        m = conj.margins(y)
        if m.size == 0 or np.all(m <= 0.0):
            worst = float(m.max()) if m.size else 0.0
            return Counterexample(tuple(float(v) for v in x), tuple(float(v) for v in y),
                                  region_index, j, worst)
    return None


def confirm_batch(network: Network, region: Region, region_index: int,
                  xs: np.ndarray) -> Counterexample | None:
    """Confirm the first violating row of ``xs`` (batch, n).  A batch of more than a
    few points is screened in float32 (chains: :meth:`Network.screen`), with a
    slack that float32 rounding cannot cross; every point the screen keeps is
    decided by :func:`confirm` in float64."""
    xs = np.clip(np.atleast_2d(np.asarray(xs, dtype=np.float64)), region.lower, region.upper)
    screen = getattr(network, "screen", None) if len(xs) > SCREEN_MIN_BATCH else None
    ys = network.forward(xs) if screen is None else screen(xs)
    slack = 0.0 if screen is None else \
        SCREEN_SLACK * (1.0 + np.abs(ys).max(axis=1, keepdims=True))
    hit = np.zeros(len(xs), dtype=bool)
    for conj in region.unsafe:
        m = ys @ conj.coeffs.T - conj.rhs
        hit |= np.all(m <= slack, axis=1) if m.shape[1] else True
    for i in np.flatnonzero(hit):
        cex = confirm(network, region, region_index, xs[i])
        if cex is not None:
            return cex
    return None


class Attacker:
    """Gradient attack on one network: minimises the unsafe-set margin
    ``min_conj max_row (c @ y - d)`` over an input box."""

    def __init__(self, network: Network):
        self.network = network
        self.best_margin = float("inf")  # the lowest unsafe-set margin PGD reached
        self._float32 = None  # a chain's model in float32 (see _model32)
        if not isinstance(network, Network):  # a graph network: its own torch forward
            self.model = network.evaluate
            return
        from .torch_io import to_torch
        self.model = to_torch(network).requires_grad_(False)  # gradients of inputs only

    @staticmethod
    def _losses(y: torch.Tensor, region: Region) -> torch.Tensor:
        """(B, n_conj): per unsafe conjunction the margin ``max_row (c @ y - d)``
        (<= 0: ``y`` meets the conjunction; an empty conjunction is always met)."""
        per_conj = []
        for conj in region.unsafe:
            if conj.coeffs.shape[0] == 0:
                per_conj.append(torch.full((y.shape[0],), -1.0, dtype=y.dtype))
                continue
            c = torch.from_numpy(np.array(conj.coeffs)).to(y.dtype)
            d = torch.from_numpy(np.array(conj.rhs)).to(y.dtype)
            per_conj.append((y @ c.T - d).max(dim=1).values)
        return torch.stack(per_conj, 1)

    @classmethod
    def _loss(cls, y: torch.Tensor, region: Region) -> torch.Tensor:
        """The unsafe-set margin ``min_conj max_row (c @ y - d)`` per row of ``y``."""
        return cls._losses(y, region).min(dim=1).values

    def _model32(self):
        """A float32 copy of a chain's torch model (made on first use)."""
        if self._float32 is None:
            self._float32 = copy.deepcopy(self.model).float()
        return self._float32

    SAMPLE_SLICE = 512
    MOMENTUM = 0.75

    def attack(self, region: Region, region_index: int, rng: np.random.Generator,
               deadline: float, restarts: int = 8, steps: int = 40, samples: int = 1000,
               starts: np.ndarray | None = None) -> tuple[Counterexample | None, int]:
        """Random sampling then PGD from ``restarts`` starts (plus ``starts``).

        Sampling takes about a quarter of the time to ``deadline`` when PGD follows (on
        a CIFAR ResNet 2000 points take a second).  With several unsafe
        conjunctions, the PGD starts take turns: the whole unsafe set's margin,
        then each conjunction's own (a descent on the minimum follows whichever
        conjunction is nearest, which may be a dead end).  Steps are signed
        gradients with momentum, from a quarter of the box width down to 1 %.

        Returns (confirmed counterexample or None, number of restarts run)."""
        lo, hi = region.lower, region.upper
        pgd = restarts > 0 or starts is not None
        if samples:
            now = time.monotonic()
            until = now + (deadline - now) / 4 if pgd else deadline
            # drawn slice by slice (2000 CIFAR images are 50 MB: seconds on a busy
            # machine), growing from a small first one, the deadline checked between
            done, size, first = 0, 64, (lo + hi)[None, :] / 2
            while done < samples:
                k = min(size, samples - done)
                xs = np.vstack([first, rng.uniform(lo, hi, size=(k, lo.size))])
                cex = confirm_batch(self.network, region, region_index, xs)
                if cex is not None:
                    return cex, 0
                done, size, first = done + k, min(2 * size, self.SAMPLE_SLICE), xs[:0]
                if time.monotonic() > until:
                    break
        if not pgd or time.monotonic() > deadline:
            return None, 0
        x0 = rng.uniform(lo, hi, size=(restarts, lo.size))
        if starts is not None:
            x0 = np.vstack([np.atleast_2d(starts), x0])
        n_conj = len(region.unsafe)
        # target -1: the whole unsafe set; j >= 0: conjunction j alone
        target = torch.from_numpy(np.arange(len(x0)) % (n_conj + 1) - 1 if n_conj > 1
                                  else np.full(len(x0), -1))
        chunk = self._chunk()
        for s in range(0, len(x0), chunk):
            cex = self._pgd(region, region_index, x0[s:s + chunk], target[s:s + chunk], steps,
                            deadline)
            if cex is not None or time.monotonic() > deadline:
                return cex, min(len(x0), s + chunk)
        return None, len(x0)

    #: float64 activations one PGD batch may keep for its gradient
    PGD_MEMORY = 256 << 20

    def _chunk(self) -> int:
        """PGD starts run at once: within :attr:`PGD_MEMORY` (a ResNet's activations)."""
        net = self.network
        sizes = ([n.size for n in net.nodes] if not isinstance(net, Network)
                 else list(net.layer_sizes()))
        return max(4, int(self.PGD_MEMORY // (8 * 3 * sum(sizes))))

    def attack_boxes(self, region: Region, region_index: int, lower: np.ndarray,
                     upper: np.ndarray, steps: int, deadline: float) -> Counterexample | None:
        """PGD from the centre of every box of (B, n) ``lower``, ``upper`` (sub-boxes of
        the region's box, e.g. the leaves of an input-split proof), each start kept in
        its own box, on the whole unsafe set's margin: a confirmed counterexample, or
        None.  The boxes localise the search where a tree of boxes was refined, i.e. where
        its network came closest to the unsafe set."""
        # (float32 gradients on a chain: they only steer; every candidate is decided
        # in float64 by confirm_batch.  Half the time of float64 on 7,756 ACAS Xu leaves)
        dtype = np.float32 if isinstance(self.network, Network) else np.float64
        lower = np.atleast_2d(np.asarray(lower, dtype=dtype))
        upper = np.atleast_2d(np.asarray(upper, dtype=dtype))
        x0 = (lower + upper) / 2
        target = torch.full((len(x0),), -1, dtype=torch.long)
        chunk = self._chunk()
        for s in range(0, len(x0), chunk):
            cex = self._pgd(region, region_index, x0[s:s + chunk], target[s:s + chunk], steps,
                            deadline, lower[s:s + chunk], upper[s:s + chunk])
            if cex is not None or time.monotonic() > deadline:
                return cex
        return None

    def _pgd(self, region: Region, region_index: int, x0: np.ndarray, target: torch.Tensor,
             steps: int, deadline: float, lower: np.ndarray | None = None,
             upper: np.ndarray | None = None) -> Counterexample | None:
        """PGD from the rows of ``x0``, kept in the region's box, or in each row's own
        box ``lower``, ``upper`` (B, n) when given."""
        lo = region.lower if lower is None else lower
        hi = region.upper if upper is None else upper
        tlo, thi = torch.tensor(lo), torch.tensor(hi)
        model = self.model if x0.dtype == np.float64 else self._model32()
        width = thi - tlo
        x = torch.from_numpy(x0).clone().requires_grad_(True)
        velocity = torch.zeros_like(x)
        for step in range(steps):
            losses = self._losses(model(x), region)
            whole = losses.min(dim=1).values
            own = losses.gather(1, target.clamp(min=0)[:, None])[:, 0]
            loss = torch.where(target < 0, whole, own)
            self.best_margin = min(self.best_margin, float(whole.detach().min()))
            if step % 5 == 0 or step == steps - 1:
                cand = x.detach().numpy()[(whole <= 0).numpy()]
                if len(cand):
                    cex = confirm_batch(self.network, region, region_index, cand)
                    if cex is not None:
                        return cex
                if time.monotonic() > deadline:
                    break
            (grad,) = torch.autograd.grad(loss.sum(), x)
            size = 0.25 * (1.0 - step / steps) + 0.01
            with torch.no_grad():
                norm = grad.abs().sum(1, keepdim=True).clamp(min=1e-300)
                velocity.mul_(self.MOMENTUM).add_(grad / norm)
                x -= size * width * velocity.sign()
                x.copy_(torch.max(torch.min(x, thi), tlo))
        return confirm_batch(self.network, region, region_index, x.detach().numpy())


def falsify(attacker: Attacker, region: Region, r: int, rng, options, stats, starts,
            until: float):
    """Rounds of sampling + PGD with more restarts each round, until ``until``
    (counterexamples of hard instances sit in small pockets of the box); the first
    round's PGD also starts from ``starts`` (None or (k, n) points).  ``options``: a
    :class:`verify.options.VerifyOptions` (restarts, samples, steps); ``stats``: counts
    the restarts (``attack_restarts``).  The first confirmed counterexample, or None."""
    restarts, samples = options.attack_restarts, options.random_samples
    while True:
        cex, n = attacker.attack(region, r, rng, until, restarts=restarts,
                                 steps=options.attack_steps, samples=samples, starts=starts)
        starts = None
        stats.attack_restarts += n
        if cex is not None or time.monotonic() >= until or restarts == 0:
            return cex
        restarts, samples = min(4 * restarts, 4096), min(4 * samples, 65536)
