"""How branch and bound splits an open branch: bisection of the input box (with a
look-ahead over the most promising dimensions); ReLU phase splits are chosen in
:mod:`verify.relu_branching`.

:class:`Splitting` is a mixin of :class:`verify.search.RegionSearch`: its methods read
the search's network (``net``), options (``opt``), propagator (``prop``), spec rows
(``C``, ``d``, ``owner``, ``n_conj``), region, statistics and deadline (``time_left``)."""
from __future__ import annotations

import numpy as np
import torch

from .relu_branching import ReluSplitting
from .search_types import Node


class Splitting(ReluSplitting):
    """The branch-splitting half of :class:`verify.search.RegionSearch`."""

    def _split_inputs(self, batch, res, spec_lower, refuted, idx) -> list:
        """Bisect each box in ``idx``.  With few inputs, look ahead: bound both
        halves for the best few dimensions by coefficients (all boxes in one
        batch) and keep the dimension whose halves are best; else the largest
        |coefficient| * width."""
        out, cands = [], []
        for i in idx:
            node = batch[i]
            width = node.hi - node.lo
            dims = np.flatnonzero(width > 1e-12 * np.maximum(1.0, np.abs(node.hi)))
            if len(dims) == 0:
                return [None]
            cands.append((node, dims))
        if not cands:
            return out
        if self.net.n_inputs <= self.opt.lookahead_max_inputs:
            if self.opt.lookahead_dims:  # the best few by coefficients, and the relatively
                # widest (coefficients can hide how much it loosens the bounds)
                cands = [(node, self._lookahead_dims(node, dims, res, i, spec_lower[i], refuted[i]))
                         for (node, dims), i in zip(cands, idx)]
            los, his, rows = [], [], []
            for (node, dims), i in zip(cands, idx):
                rows += [i] * (2 * len(dims))
                for dim in dims:
                    mid = (node.lo[dim] + node.hi[dim]) / 2
                    a_hi = node.hi.copy(); a_hi[dim] = mid
                    b_lo = node.lo.copy(); b_lo[dim] = mid
                    los += [node.lo, b_lo]
                    his += [a_hi, node.hi]
            los, his = np.stack(los), np.stack(his)
            child = np.full(len(los), np.nan)
            forward_lookahead = self.opt.intermediate_bounds != "backward"
            for s in range(0, len(los), self.LOOKAHEAD_CHUNK):  # deadline checked per chunk
                if self.time_left() <= 0:
                    break
                e = min(len(los), s + self.LOOKAHEAD_CHUNK)
                sel = torch.tensor(rows[s:e])
                # the parent's bounds hold on its halves, but with forward-mode bounds
                # they would mask how much each split tightens the deep layers
                fixed = [(l[sel], u[sel]) for l, u in zip(res.lower, res.upper)] \
                    if self.opt.inherit_bounds and not forward_lookahead else None
                r = self.prop.bound(torch.from_numpy(los[s:e]), torch.from_numpy(his[s:e]), self.C,
                                    self.d, None, fixed, forward=forward_lookahead)
                self.stats.bound_evaluations += e - s
                spec = r.spec_lower.numpy()
                per_conj = np.stack([spec[:, self.owner == j].max(axis=1) for j in range(self.n_conj)], 1)
                child[s:e] = np.where(r.infeasible.numpy(), np.inf, per_conj.min(axis=1))
            pos = 0
            for (node, dims), i in zip(cands, idx):
                scores = child[pos:pos + 2 * len(dims)]
                pos += 2 * len(dims)
                if np.isnan(scores).any():  # out of time: the cheap heuristic instead
                    out += self._split_by_coefficients([((node, dims), i)], res, spec_lower, refuted)
                    continue
                scores = np.minimum(scores, 1e30).reshape(len(dims), 2).sum(axis=1)
                out.append(self._bisect(node, int(dims[np.argmax(scores)]), *self._inherited(res, i)))
            return out
        return self._split_by_coefficients(list(zip(cands, idx)), res, spec_lower, refuted)

    def _split_by_coefficients(self, items, res, spec_lower, refuted) -> list:
        """Bisect the dimension with the largest sum over open rows of
        |input coefficient| * width."""
        return [self._bisect(node, int(self._coefficient_ranking(node, dims, res, i, spec_lower[i],
                                                                  refuted[i])[0]),
                             *self._inherited(res, i))
                for (node, dims), i in items]

    def _inherited(self, res, i: int):
        """Row ``i``'s layer bounds and linear spec bound, for its children to
        intersect with (a half box lies inside its parent, so the parent's
        bounds hold on it)."""
        if not self.opt.inherit_bounds:
            return None, None
        layers = [(l[i].numpy(), u[i].numpy()) for l, u in zip(res.lower, res.upper)] \
            if self.prop.n_hidden else None
        return layers, (res.spec_coeffs[i].numpy(), res.spec_const[i].numpy())

    def _span(self, dims) -> np.ndarray:
        span = (self.region.upper - self.region.lower)[dims]
        return np.where(span > 0, span, 1.0)

    def _lookahead_dims(self, node: Node, dims, res, i: int, spec_lower_row, refuted_row):
        """The look-ahead's dimensions: the best few by coefficients, and the
        relatively widest."""
        ranked = self._coefficient_ranking(node, dims, res, i, spec_lower_row, refuted_row)
        best = list(ranked[:self.opt.lookahead_dims])
        widest = int(dims[np.argmax((node.hi - node.lo)[dims] / self._span(dims))])
        return np.array(best if widest in best else best + [widest])

    def _coefficient_ranking(self, node: Node, dims, res, i: int, spec_lower_row,
                             refuted_row) -> np.ndarray:
        """``dims`` best first by the sum over open rows of |input coefficient| * width
        (dimensions already split to a millionth of the region come last)."""
        open_rows = ~refuted_row[self.owner] & (spec_lower_row <= 0)
        width = (node.hi - node.lo)[dims]
        coeff = np.abs(res.guide_coeffs[i].numpy()[open_rows][:, dims]).sum(0) * width
        rel = width / self._span(dims)
        coeff = np.where(rel > 1e-6, coeff, 0.0)  # never starve the other dimensions
        return dims[np.lexsort((-rel, -coeff))]

    @staticmethod
    def _bisect(node: Node, dim: int, parent=None, parent_spec=None) -> list[Node]:
        mid = (node.lo[dim] + node.hi[dim]) / 2
        left_hi = node.hi.copy(); left_hi[dim] = mid
        right_lo = node.lo.copy(); right_lo[dim] = mid
        return [Node(node.lo, left_hi, None, parent, node.depth + 1, parent_spec=parent_spec),
                Node(right_lo, node.hi, None, parent, node.depth + 1, parent_spec=parent_spec)]
