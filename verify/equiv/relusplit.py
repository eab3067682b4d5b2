"""Branch and bound over ReLU phase splits of an aligned pair, to tighten the
certified ``delta`` where input bisection does not help (many inputs).

A *branch* is the input box cut by phase constraints on hidden neurons of
either network: the original's ``z_kj >= 0`` / ``<= 0`` or the variant's
``z_kj + dz_kj >= 0`` / ``<= 0``.  Each split cuts a branch into two that
cover it, so the branches (leaves) of the tree always cover the box, and the
certified delta is the per-output maximum over the leaves (an empty leaf,
whose bounds cross, bounds nothing and is dropped).

On a branch the constraints are enforced by clamping the split neuron's
pre-activation bounds (as beta-CROWN's interval clamping): every bound
computed from them -- the two networks' own CROWN bounds of the layers
above, the bounds of the change ``dz``, the relaxation of ``dh = relu(z + dz)
- relu(z)`` and the output difference (:mod:`verify.diffbounds`) -- then
holds on the set of inputs of the box where the constraints hold.  A fixed
phase makes the neuron's relaxation exact in that network, and ``dh`` exact
(linear) once both networks' phases are fixed.  The two networks' bounds also
tighten each other (``z' = z + dz``).  A child branch starts from its
parent's bounds (it is a subset) and recomputes only the layers above its
new split, only for neurons that are not exact.

Each split also keeps a linear cut on the input that holds on the branch,
which every bound of the branch respects (Lagrangian duality,
:func:`verify.diffbounds.cut_min`): in the first hidden layer, linear in the
input, the phase itself (``w x + b >= 0``); above it, the neuron's linear
bound on the parent (``z <= U(x)`` and ``z >= 0`` give ``U(x) >= 0``).
Without cuts a relaxation made exact on the branch is still minimised over
the whole box, where it can be far looser than the one it replaced.  Where the
two networks are stable in opposite phases ``dh`` is relaxed by the chords in
``dz`` for the same reason.  Which neuron: in the lowest layer with a
neuron whose relaxation is not exact (its splits give exact cuts in the first
layer and tighten every layer above), the one whose relaxation gaps (of
``dh`` and of the original's ``h``), weighted by the worst output row's
coefficients on them, cost the most; split in the original if it is unstable
there, else in the variant.  (Scoring all layers together, the second
layer's cheaper but weaker splits won and the bounds were no tighter.)

``slope_steps`` > 0: each branch's output rows are also bounded with the
relaxation's slopes and the split multipliers optimised
(:func:`verify.diffbounds.optimise_difference`), the better bound kept.  On
mnist-net_256x2 it did not pay at equal time (fewer branches), so it is off
by default.
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from ..diffbounds import (backsub_difference, crown_relax, cut_min, diff_relaxation,
                          optimise_difference, relaxation_gaps, widen_lower, widen_upper)
from .bounds import DiffPropagator



@dataclass(frozen=True)
class Branch:
    """Bounds on one branch.  Per hidden layer k, (n_k,) arrays: ``f[k]`` the
    original's pre-activation bounds (l, u), ``g[k]`` the variant's, ``d[k]``
    the change's; ``splits[k]`` (2, n_k) int8: the phases fixed in the
    original (row 0) and the variant (row 1): +1 active, -1 inactive, 0 free."""

    f: tuple
    g: tuple
    d: tuple
    splits: tuple
    delta: np.ndarray  # (n_out,) upper bound of |g - f| on the branch
    agree_low: np.ndarray  # (2 (n_out - 1),) lower bounds of both networks' top-class rows
    choice: tuple[int, int, int] | None  # (network 0/1, layer, neuron) to split next
    depth: int = 0
    # one input cut per split, (v, d): v @ x + d >= 0 on the branch (see ReluSplitter.cut)
    cuts: tuple = ()

    @property
    def worst(self) -> float:
        return float(self.delta.max())

    @property
    def agrees(self) -> bool:
        """Both networks' top class is provably the same class on the branch."""
        return bool(np.all(self.agree_low > 0))


@dataclass
class ReluSplitOutcome:
    delta: np.ndarray  # per output: max over the leaves
    agree: bool  # the variant's top class is certified on every leaf
    leaves: int  # open and closed leaves (the empty ones dropped)
    bounded: int  # branches bounded
    max_depth: int
    branches: list  # the leaves (Branch), which cover the box


def clamp(l: np.ndarray, u: np.ndarray, phase: np.ndarray):
    """Pre-activation bounds under phase splits: +1 (active) ``l >= 0``, -1 ``u <= 0``."""
    return np.where(phase > 0, np.maximum(l, 0.0), l), np.where(phase < 0, np.minimum(u, 0.0), u)


def _stack(per_branch):
    """Per layer, the branches' (l, u) stacked: [(B, n_k), (B, n_k)] (copies)."""
    return [[np.stack([b[k][i] for b in per_branch]) for i in (0, 1)]
            for k in range(len(per_branch[0]))]


class ReluSplitter:
    """Bounds branches of one aligned pair (``diff``) on one box ``[lo, hi]``:
    ``|g - f|`` per output, and the class rows ``R`` (``R @ y > 0``: the class
    wins) of the original (its own bound) and of the variant (the original's
    plus the change's)."""

    def __init__(self, diff: DiffPropagator, lo: np.ndarray, hi: np.ndarray, R: np.ndarray,
                 slope_steps: int = 0):
        self.diff, self.layers = diff, diff.layers
        self.slope_steps = slope_steps
        self.lo, self.hi = np.asarray(lo, float), np.asarray(hi, float)
        self.n_out = diff.f.n_outputs
        self.H = diff.f.n_layers - 1
        n = self.n_out
        self.R = R
        self.lam = np.vstack([np.eye(n), -np.eye(n), R])

    def root(self) -> Branch:
        """The unsplit box as a branch (the differential bound of :class:`DiffPropagator`)."""
        db, bf, bg = self.diff.bound(self.lo[None], self.hi[None], self.lam[:1])
        f = [(l[0], u[0]) for l, u in bf.layers]
        g = [(l[0], u[0]) for l, u in bg.layers]
        d = [(l[0], u[0]) for l, u in db.changes]
        splits = [np.zeros((2, len(l)), np.int8) for l, _ in f]
        return self.bound([(f, g, d, splits, self.H, 0, ())])[0]

    def bound(self, items) -> list[Branch | None]:
        """Bound branches given as (f, g, d, splits, since, depth, cuts): bounds per
        layer that hold on the branch (its parent's), its phases, the lowest layer
        whose split is new (layers above it are recomputed), its depth and its
        cuts.  None: the branch is empty (its constraints contradict each other)."""
        B, H = len(items), self.H
        F, G, D = (_stack([it[i] for it in items]) for i in range(3))
        S = [np.stack([it[3][k] for it in items]) for k in range(H)]
        since = np.array([it[4] for it in items])
        lo, hi = np.tile(self.lo, (B, 1)), np.tile(self.hi, (B, 1))
        tlo, thi = torch.from_numpy(lo), torch.from_numpy(hi)
        empty = np.zeros(B, bool)
        q = max(len(it[6]) for it in items)
        V, dv = np.zeros((B, q, self.lo.size)), np.zeros((B, q))
        for b, it in enumerate(items):
            for i, (v, d0) in enumerate(it[6]):
                V[b, i], dv[b, i] = v, d0
        cuts = (V, dv) if q else None
        sub = lambda rows: None if cuts is None else (V[rows], dv[rows])  # noqa: E731
        relax, rf, rg = [], [], []
        for k in range(H):
            (lf, uf), (lg, ug), (dl, du) = F[k], G[k], D[k]
            # layers above a new split; and the first layer itself under a new cut
            redo = np.flatnonzero((since < k) | ((since == 0) & (k == 0)))
            if len(redo):
                lf[redo], uf[redo] = self._own(self.diff.prop_f, k, lf[redo], uf[redo], rf, redo,
                                               tlo, thi, sub(redo))
                lg[redo], ug[redo] = self._own(self.diff.prop_g, k, lg[redo], ug[redo], rg, redo,
                                               tlo, thi, sub(redo))
                dl[redo], du[redo] = self._change(k, lf[redo], uf[redo], lg[redo], ug[redo],
                                                  dl[redo], du[redo], [r.take(redo) for r in relax],
                                                  lo[redo], hi[redo], sub(redo))
            sf, sg = S[k][:, 0], S[k][:, 1]
            (lf, uf), (lg, ug) = clamp(lf, uf, sf), clamp(lg, ug, sg)
            # z' = z + dz: each network's bounds and the change's tighten the others
            lg, ug = np.maximum(lg, widen_lower(lf + dl)), np.minimum(ug, widen_upper(uf + du))
            lf, uf = np.maximum(lf, widen_lower(lg - du)), np.minimum(uf, widen_upper(ug - dl))
            dl, du = np.maximum(dl, widen_lower(lg - uf)), np.minimum(du, widen_upper(ug - lf))
            empty |= ((lf > uf) | (lg > ug) | (dl > du)).any(axis=1)
            F[k], G[k], D[k] = (lf, uf), (lg, ug), (dl, du)
            r = diff_relaxation(lf, uf, lg, ug, dl, du, mixed_by_change=True)
            relax.append(_Rows(r))
            rf.append(tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in (r.alpha, r.s, r.t)))
            rg.append(tuple(torch.from_numpy(v) for v in crown_relax(lg, ug)))
        n = self.n_out
        rec: dict = {}
        low, _ = backsub_difference(self.layers, H, self.lam, [r.r for r in relax], lo, hi,
                                    record=rec, cuts=cuts)
        keep = np.flatnonzero(~empty)
        if self.slope_steps and len(keep):  # both bounds hold on the branch: the better
            low[keep] = np.maximum(low[keep], optimise_difference(
                self.layers, H, self.lam,
                [tuple(a[keep] for a in (*F[k], *G[k], *D[k])) for k in range(H)],
                lo[keep], hi[keep], sub(keep), steps=self.slope_steps,
                phases=[(S[k][keep, 0], S[k][keep, 1]) for k in range(H)]))
        delta = np.maximum(np.maximum(-low[:, :n], -low[:, n:2 * n]), 0.0)
        # the variant's class rows: the original's own bound plus the change's
        own = _own_min(self.diff.prop_f, H, self.R, rf, tlo, thi, cuts)
        # agreement: the original's class rows and the variant's all > 0
        agree_low = np.hstack([own, widen_lower(own + low[:, 2 * n:])])
        worst_row = np.argmax(np.concatenate([-low[:, :n], -low[:, n:2 * n]], 1), axis=1)
        choices = self._choose(rec, relax, F, G, D, worst_row)
        out: list[Branch | None] = []
        for b, it in enumerate(items):
            if empty[b]:
                out.append(None)
                continue
            pick = lambda X: tuple((X[k][0][b], X[k][1][b]) for k in range(H))  # noqa: E731
            out.append(Branch(pick(F), pick(G), pick(D), tuple(S[k][b] for k in range(H)),
                              delta[b], agree_low[b], choices[b], it[5], it[6]))
        return out

    def cut(self, parent: Branch, net: int, k: int, j: int, phase: int):
        """The input cut ``v @ x + d >= 0`` implied on ``parent`` by the phase
        ``phase`` of neuron ``j`` of layer ``k`` of network ``net`` (0 original,
        1 variant): in the first layer the phase itself; above it, from the
        neuron's linear bound on the parent (``z <= U(x)`` and ``z >= 0`` give
        ``U(x) >= 0``; ``z >= L(x)`` and ``z <= 0`` give ``-L(x) >= 0``)."""
        L = self.layers
        if k == 0:
            W, b = L.Wf[0] + (L.dW[0] if net else 0.0), L.bf[0] + (L.db[0] if net else 0.0)
            return phase * W[j], phase * b[j]
        prop = self.diff.prop_g if net else self.diff.prop_f
        bounds = parent.g if net else parent.f
        relax = [tuple(torch.from_numpy(np.ascontiguousarray(v[None])) for v in crown_relax(l, u))
                 for l, u in bounds[:k]]
        row = np.zeros((1, len(bounds[k][0])))
        row[0, j] = -phase  # the lower bound of -phase z: -phase z >= A x + c on the parent
        t = lambda a: torch.from_numpy(a[None])  # noqa: E731
        A, c = _own_linear(prop, k, row, relax, t(self.lo), t(self.hi))
        return -A[0, 0], -c[0, 0]

    def _own(self, prop, k, l, u, relax, rows, tlo, thi, cuts):
        """A network's own bounds of layer ``k`` on branches ``rows``: those given,
        intersected with the back-substitution of the neurons they leave unstable."""
        idx = np.flatnonzero(((l < 0) & (u > 0)).any(axis=0))
        if not len(idx):
            return l, u
        t_rows = torch.from_numpy(rows)
        sel = [tuple(v[t_rows] for v in r) for r in relax]
        eye = np.eye(l.shape[1])[idx]
        low = _own_min(prop, k, np.vstack([eye, -eye]), sel, tlo[t_rows], thi[t_rows], cuts)
        m = len(idx)
        l, u = l.copy(), u.copy()
        l[:, idx] = np.maximum(l[:, idx], low[:, :m])
        u[:, idx] = np.minimum(u[:, idx], -low[:, m:])
        return l, u

    def _change(self, k, lf, uf, lg, ug, dl, du, relax, lo, hi, cuts):
        """Bounds of ``dz_k`` on branches: those given, intersected with the
        back-substitution of the neurons whose ``dh`` relaxation is not exact."""
        exact = ((lf >= 0) & (lg >= 0)) | ((uf <= 0) & (ug <= 0))
        idx = np.flatnonzero((~exact).any(axis=0))
        if not len(idx):
            return dl, du
        eye = np.eye(lf.shape[1])[idx]
        low, _ = backsub_difference(self.layers, k, np.vstack([eye, -eye]), relax, lo, hi,
                                    cuts=cuts)
        m = len(idx)
        dl, du = dl.copy(), du.copy()
        dl[:, idx] = np.maximum(dl[:, idx], low[:, :m])
        du[:, idx] = np.minimum(du[:, idx], -low[:, m:])
        return dl, du

    def _choose(self, rec, relax, F, G, D, worst_row):
        """Per branch, the (network, layer, neuron) to split: in the lowest layer
        with a neuron whose relaxation is not exact, the one whose relaxation
        gaps cost the worst output row most -- the original's neuron if it is
        unstable there, else the variant's.  None: every relaxation is exact."""
        B = len(worst_row)
        at = np.arange(B)
        choice: list = [None] * B
        for k in range(self.H):
            P, Q = (np.broadcast_to(v, (B,) + v.shape[-2:])[at, worst_row] for v in rec[k])
            (lf, uf), (lg, ug), (dl, du) = F[k], G[k], D[k]
            gap_dh, gap_h = relaxation_gaps(relax[k].r, lf, uf, dl, du)
            f_open, g_open = (lf < 0) & (uf > 0), (lg < 0) & (ug > 0)
            score = np.where(f_open | g_open, np.abs(P) * gap_dh + np.abs(Q) * gap_h, 0.0)
            j = np.argmax(score, axis=1)
            for b in np.flatnonzero((score[at, j] > 0) & np.array([c is None for c in choice])):
                choice[b] = (0 if f_open[b, j[b]] else 1, k, int(j[b]))
        return choice


def _own_linear(prop, K: int, lam: np.ndarray, relax, tlo, thi):
    """The linear lower bounds ``lam @ z_K >= A x + c`` of one network on branches
    (its CROWN back-substitution with the branches' relaxations ``relax``):
    (A (B, m, n), c (B, m))."""
    B = tlo.shape[0]
    bnd, A, _ = prop._backsub(K, torch.from_numpy(lam).expand(B, *lam.shape), None, None,
                              tlo, thi, relax=relax)
    A, lo, hi = A.numpy(), tlo.numpy(), thi.numpy()
    return A, bnd.numpy() - (np.clip(A, 0, None) * lo[:, None]).sum(-1) - (np.clip(A, None, 0) * hi[:, None]).sum(-1)


def _own_min(prop, K: int, lam: np.ndarray, relax, tlo, thi, cuts) -> np.ndarray:
    """Lower bounds (B, m) of the rows ``lam @ z_K`` of one network on branches,
    over the inputs of the box that meet the branches' cuts."""
    A, const = _own_linear(prop, K, lam, relax, tlo, thi)
    return cut_min(A, const, tlo.numpy(), thi.numpy(), cuts)


class _Rows:
    """A :class:`DiffRelaxation` of a batch, with a row selection."""

    def __init__(self, r):
        self.r = r

    def take(self, rows):
        return replace(self.r, **{f.name: getattr(self.r, f.name)[rows] for f in fields(self.r)})


def children(parent: Branch, splitter: "ReluSplitter"):
    """The two branches that split ``parent``'s chosen neuron (both cover it),
    each with the split's input cut."""
    net, k, j = parent.choice
    out = []
    for phase in (1, -1):
        splits = [s.copy() for s in parent.splits]
        splits[k][net, j] = phase
        cut = splitter.cut(parent, net, k, j, phase)
        out.append((parent.f, parent.g, parent.d, splits, k, parent.depth + 1, parent.cuts + (cut,)))
    return out


def _open(leaf: Branch, target: float | None, agreement: bool) -> bool:
    """The leaf misses a goal and has a neuron left to split."""
    return leaf.choice is not None and (
        (target is not None and leaf.worst > target) or (agreement and not leaf.agrees))


def relu_branch_and_bound(splitter: ReluSplitter, root: Branch, *, target: float | None,
                          agreement: bool, deadline: float, max_leaves: int = 20000,
                          batch: int = 4, cap: np.ndarray | None = None) -> ReluSplitOutcome:
    """Split the worst open leaves (delta above ``target``, or top-1 agreement not
    proven when ``agreement``; with a neuron left to split), up to ``batch`` at
    a time, until none is open, the deadline passes or ``max_leaves``.  (Small
    rounds go deeper on the worst leaves, which decide the delta: on
    mnist-net_256x2 in 5 s, 4 a round gave 2-10 % tighter deltas than 16.)
    ``cap``: a sound bound of the whole box (per output) that every leaf's
    delta is clipped to."""
    clip = (lambda d: d) if cap is None else (lambda d: np.minimum(d, cap))  # noqa: E731
    root = replace(root, delta=clip(root.delta))
    heap = [(-root.worst, 0, root)]
    done: list[Branch] = []
    count, bounded, depth = 1, 1, 0
    per_child = 0.0  # seconds per child bounded, measured: rounds end near the deadline
    while heap:
        if not _open(heap[0][2], target, agreement):  # worst first: pop closed ones too
            done.append(heapq.heappop(heap)[2])
            continue
        if time.monotonic() > deadline or len(heap) + len(done) >= max_leaves:
            break
        parents = []
        room = 2 if per_child <= 0 else min((deadline - time.monotonic()) / (2 * per_child), batch)
        while heap and len(parents) < max(room, 1) and _open(heap[0][2], target,
                                                                       agreement):
            parents.append(heapq.heappop(heap)[2])
        items = [c for p in parents for c in children(p, splitter)]
        t0 = time.monotonic()
        kids = splitter.bound(items)
        per_child = (time.monotonic() - t0) / len(items)
        bounded += len(kids)
        for i, kid in enumerate(kids):
            if kid is None:  # empty: its constraints contradict each other
                continue
            parent = parents[i // 2]
            # a child is inside its parent: the parent's bounds hold there too
            kid = replace(kid, delta=clip(np.minimum(kid.delta, parent.delta)),
                          agree_low=np.maximum(kid.agree_low, parent.agree_low))
            depth = max(depth, kid.depth)
            heapq.heappush(heap, (-kid.worst, count, kid))
            count += 1
    leaves = done + [h[2] for h in heap]
    if not leaves:  # every branch empty: the box holds no input (cannot happen on a box)
        return ReluSplitOutcome(np.zeros_like(root.delta), True, 0, bounded, depth, [])
    delta = np.max([leaf.delta for leaf in leaves], axis=0)
    agree = all(leaf.agrees for leaf in leaves)
    return ReluSplitOutcome(delta, agree, len(leaves), bounded, depth, leaves)
