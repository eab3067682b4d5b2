"""Bounding one box of a pair of networks, and input-splitting branch and bound.

:class:`PairBounder` bounds ``|g - f|`` per output on a box (the best of the
differential, product-network and naive bounds of :mod:`.bounds`; for graph
networks of one architecture the differential bound is :mod:`.graph_diff_bound`'s
node-by-node one) and tries
to prove that both networks' top class is the same constant class there.
:func:`branch_and_bound` bisects the input box (the dimension whose width
times the bound's input coefficients is largest) while a leaf misses the
target ``delta`` or its top-1 agreement is not proven, until the deadline.
The certified ``delta`` of the region is the per-output maximum over the
leaves, which tile it.
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

import numpy as np

from ..bounds import TOLERANCE
from ..graphbounds import make_propagator
from ..network import Network
from .align import align
from .bounds import (DiffPropagator, naive_bound, product_bound, product_graph,
                     product_network)
from .graph_diff_bound import graph_diff, graph_diff_lower


@dataclass(frozen=True)
class BoxBound:
    """What is certified on one box."""

    lo: np.ndarray
    hi: np.ndarray
    delta: np.ndarray  # (n_out,) upper bound of |g - f|, the best of the three below
    # None: the networks could not be aligned (chains: neuron by neuron; graphs:
    # node by node, verify.equiv.graph_diff_bound)
    differential: np.ndarray | None
    product: np.ndarray | None  # None: not computed
    naive: np.ndarray
    top_class: int  # the original's class at the box centre
    original_constant: bool  # the original's top class is provably top_class on the box
    agree: bool  # ... and the variant's too
    split_score: np.ndarray  # (n_inputs,) which dimension to bisect
    # (2 n_out, n_inputs): the corners minimising the differential bound's rows
    # [I; -I] (good starts for a search of the largest deviation), or None
    corners: np.ndarray | None = None

    @property
    def worst(self) -> float:
        return float(self.delta.max())


def _abs_bound(low: np.ndarray, n: int) -> np.ndarray:
    """Upper bounds of |row i| from the lower bounds of rows [I; -I] (B, m)."""
    return np.maximum(np.maximum(-low[:, :n], -low[:, n:2 * n]), 0.0)


class PairBounder:
    """Bounds boxes of one (original, variant) pair.  ``sign`` -1: classes are
    the argmin of the outputs (ACAS Xu's advisories)."""

    def __init__(self, f, g, *, sign: float = 1.0, product: bool = True):
        """``f``, ``g``: fully-connected chains (:class:`Network`) or graph networks;
        graphs always get the product-network bound, and graphs of one architecture
        also the node-by-node differential bound (``gdiff``)."""
        self.f, self.g, self.sign = f, g, float(sign)
        chains = isinstance(f, Network) and isinstance(g, Network)
        pair = align(f, g) if chains else None
        self.diff = None if pair is None else DiffPropagator(*pair)
        self.gdiff = None if chains else graph_diff(f, g)
        self.prod = None
        if product or pair is None:
            self.prod = make_propagator(product_network(f, g) if chains else product_graph(f, g))
        self.prop_f, self.prop_g = make_propagator(f), make_propagator(g)
        self.n_out = f.n_outputs

    @property
    def aligned(self) -> bool:
        """Is there a differential bound (chains neuron by neuron, graphs node by node)?"""
        return self.diff is not None or self.gdiff is not None

    def top_rows(self, c: int) -> np.ndarray:
        """Rows ``sign * (e_c - e_j)``, j != c: all positive means class c wins strictly."""
        n = self.n_out
        R = -np.eye(n)
        R[:, c] += 1.0
        return self.sign * np.delete(R, c, axis=0)

    def spec_rows(self, lo: np.ndarray, hi: np.ndarray, rows: np.ndarray,
                  deadline: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Over each box ``[lo[b], hi[b]]`` (B, n): lower bounds (B, m) of ``rows @ f``
        (the original's own CROWN bound) and of ``rows @ (g - f)`` (the best of the
        differential and product-network bounds), for equivalence transfer."""
        rows = np.asarray(rows, dtype=np.float64)
        if self.diff is not None:
            db, bf, _ = self.diff.bound(lo, hi, rows, extra=rows)
            change = db.lower
        else:
            bf = DiffPropagator.separate(self.prop_f, lo, hi, rows, deadline)
            change = np.full((len(lo), len(rows)), -np.inf)
            if self.gdiff is not None:
                change = graph_diff_lower(self.gdiff, bf, lo, hi, rows)
        if self.prod is not None:
            change = np.maximum(change, product_bound(self.prod, lo, hi, rows, deadline))
        return bf.extra, change

    def bound(self, lo: np.ndarray, hi: np.ndarray, with_product: bool = True,
              deadline: float | None = None) -> BoxBound:
        """The bound of one box (see :meth:`bound_many`)."""
        return self.bound_many(lo[None], hi[None], with_product, deadline)[0]

    def bound_many(self, los: np.ndarray, his: np.ndarray, with_product: bool = True,
                   deadline: float | None = None) -> list[BoxBound]:
        """Bound the boxes ``[los[b], his[b]]`` (one batch per top class of the
        original at the box centres).  ``with_product`` False: skip the
        product-network bound (when the differential one is known to be the
        better one here).  Past ``deadline`` the graph propagators keep interval bounds
        for the neurons left (sound, looser), so a large CNN's bound ends in time."""
        classes = np.argmax(self.sign * self.f.forward((los + his) / 2).reshape(len(los), -1), 1)
        out: list[BoxBound | None] = [None] * len(los)
        for c in np.unique(classes):
            idx = np.flatnonzero(classes == c)
            for i, b in zip(idx, self._bound_class(los[idx], his[idx], int(c), with_product,
                                                   deadline)):
                out[i] = b
        return out

    def _bound_class(self, lo, hi, c: int, with_product: bool, deadline=None
                     ) -> list[BoxBound]:
        n = self.n_out
        R = self.top_rows(c)
        lam = np.vstack([np.eye(n), -np.eye(n), R])
        differential = product = corners = None
        if self.diff is not None:
            db, bf, bg = self.diff.bound(lo, hi, lam, extra=R)
            low = db.lower
            differential = _abs_bound(low, n)
            score = (hi - lo) * np.abs(db.coeffs[:, :2 * n]).sum(1)
            corners = np.where(db.coeffs[:, :2 * n] > 0, lo[:, None, :], hi[:, None, :])
        else:
            bf = DiffPropagator.separate(self.prop_f, lo, hi, R, deadline)
            bg = DiffPropagator.separate(self.prop_g, lo, hi, R, deadline)
            low = np.full((len(lo), len(lam)), -np.inf)
            score = hi - lo
            if self.gdiff is not None:
                low = graph_diff_lower(self.gdiff, bf, lo, hi, lam)
                differential = _abs_bound(low, n)
        if self.prod is not None and (with_product or not self.aligned):
            plow = product_bound(self.prod, lo, hi, lam, deadline)
            product = _abs_bound(plow, n)
            low = np.maximum(low, plow)
        naive = naive_bound(bf, bg)
        delta = np.minimum(np.maximum(_abs_bound(low, n), 0.0), naive)
        f_const = np.all(bf.extra > 0, axis=1)
        via_f = bf.extra + low[:, 2 * n:]  # the variant's class rows: the original's + the change
        via_f = via_f - TOLERANCE * (1.0 + np.abs(via_f))
        agree = f_const & np.all(np.maximum(bg.extra, via_f) > 0, axis=1)
        pick = lambda a, b: None if a is None else a[b]  # noqa: E731
        return [BoxBound(lo[b], hi[b], delta[b], pick(differential, b), pick(product, b),
                         naive[b], c, bool(f_const[b]), bool(agree[b]), score[b],
                         pick(corners, b)) for b in range(len(lo))]


@dataclass
class SearchOutcome:
    leaves: list[BoxBound]
    complete: bool  # every leaf met the goals (target delta, agreement when asked)
    bounded: int  # boxes bounded


def _open(leaf: BoxBound, target: float | None, agreement: bool) -> bool:
    return (target is not None and leaf.worst > target) or (agreement and not leaf.agree)


def branch_and_bound(bounder: PairBounder, root: BoxBound, *, target: float | None,
                     agreement: bool, deadline: float, max_leaves: int = 20000,
                     on_leaf=None, batch: int = 32) -> SearchOutcome:
    """Bisect open leaves (worst bound first) until none is open, the deadline
    passes or ``max_leaves`` is reached.  ``on_leaf(leaf)``: called on every
    new leaf that stays open (e.g. to look for a counterexample there); it
    may return True to stop the search.  ``batch``: leaves split per round
    (their children are bounded together)."""
    # children skip the product bound when it did not beat the differential one at the root
    product = root.product is not None and (root.differential is None
                                            or root.product.max() < root.differential.max())
    heap = [(-root.worst, 0, root)]
    done: list[BoxBound] = []
    count, bounded = 1, 1
    while heap:
        if not _open(heap[0][2], target, agreement):  # worst-first: pop closed ones too
            done.append(heapq.heappop(heap)[2])
            continue
        if time.monotonic() > deadline or len(heap) + len(done) >= max_leaves:
            break
        # the worst open leaves (up to a batch), bisected, their children bounded at once
        parents, los, his = [], [], []
        while heap and len(parents) < batch and _open(heap[0][2], target, agreement):
            _, _, leaf = heapq.heappop(heap)
            d = int(np.argmax(leaf.split_score if np.any(leaf.split_score > 0)
                              else leaf.hi - leaf.lo))
            mid = (leaf.lo[d] + leaf.hi[d]) / 2
            if not leaf.lo[d] < mid < leaf.hi[d]:  # cannot be split further
                done.append(leaf)
                continue
            at_d = np.arange(len(leaf.lo)) == d
            parents += [leaf, leaf]
            los += [leaf.lo, np.where(at_d, mid, leaf.lo)]
            his += [np.where(at_d, mid, leaf.hi), leaf.hi]
        if not parents:
            continue
        children = bounder.bound_many(np.array(los), np.array(his), product, deadline)
        bounded += len(children)
        stop = False
        for child, parent in zip(children, parents):
            # a child is inside its parent: the parent's bound holds there too
            child = _tighter(child, parent)
            heapq.heappush(heap, (-child.worst, count, child))
            count += 1
            if (not stop and on_leaf is not None and _open(child, target, agreement)
                    and on_leaf(child)):
                stop = True
        if stop:
            return SearchOutcome(done + [h[2] for h in heap], False, bounded)
    leaves = done + [h[2] for h in heap]
    return SearchOutcome(leaves, not any(_open(l, target, agreement) for l in leaves), bounded)


def _tighter(child: BoxBound, parent: BoxBound) -> BoxBound:
    from dataclasses import replace
    return replace(child, delta=np.minimum(child.delta, parent.delta))
