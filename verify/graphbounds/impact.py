"""DeepSplit-style ReLU branching scores on graph networks (CNNs, ResNets).

The chain version (:func:`verify.relu_branching.deepsplit_scores`) passes each unstable
neuron's impact back to the neurons of the previous layer through the weight matrix: a
neuron ``j`` whose upper relaxation has intercept ``t_j`` makes the share
``|min(W[s,j], 0)| t_j / |l_s|`` of a later neuron ``s``'s lower bound and
``max(W[s,j], 0) t_j / u_s`` of its upper bound.  On a graph the later neuron reads ``j``
through a few affine operators (a Conv, a residual Sum, a Reshape), never a matrix: here
the shares are summed by transposing each operator's positive part and the magnitude of
its negative part (a Conv with its weights clamped, by torch's convolution operators),
from each ReLU's input back to the ReLU outputs it reads, stopping there.  Through
several weighted operators the signs compose as products do (positive x negative is
negative), which is exact for one weighted operator per path and an estimate beyond.

Unlike the chain version the per-pair shares are not clipped to 1 (a sum of transposed
products cannot clip its terms); a neuron's impact divided by its own bound stays
bounded for the direct part (``|lam| u/(u-l)``).  Any choice of neuron is sound: only the
search's order depends on these scores.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..graph.model import GraphNetwork
from ..graph.ops import Conv, Gemm, Relu, Scale, Sum
from ..relu_branching import INDIRECT_SHARE, relu_gap
from .rules import linear_transpose


def _sign_parts(op):
    """(positive part, magnitude of the negative part or None) of an affine operator,
    as operators of the same kind without constants; layout operators are their own
    positive part."""
    if isinstance(op, (Gemm, Conv)):
        w, zero = op.weight, np.zeros_like(op.bias)
        pos = replace(op, weight=np.maximum(w, 0), bias=zero, weight_int=None, weight_scale=None)
        neg = replace(op, weight=np.maximum(-w, 0), bias=zero, weight_int=None, weight_scale=None)
        return pos, (neg if (w < 0).any() else None)
    if isinstance(op, Scale):
        s = np.asarray(op.scale)
        zero = np.zeros_like(op.shift)
        return (replace(op, scale=np.maximum(s, 0), shift=zero),
                replace(op, scale=np.maximum(-s, 0), shift=zero) if (s < 0).any() else None)
    if isinstance(op, Sum):
        w = op.weights
        return (replace(op, weights=tuple(max(x, 0.0) for x in w)),
                replace(op, weights=tuple(max(-x, 0.0) for x in w)) if min(w) < 0 else None)
    return op, None  # Reshape, Transpose, Pad: a permutation or selection of entries


class GraphImpact:
    """The DeepSplit-style scores of one graph network's unstable ReLUs."""

    def __init__(self, network: GraphNetwork):
        self.nodes = network.nodes
        self.relus = network.relu_nodes
        self._relu_of = {i: k for k, i in enumerate(self.relus)}
        self._in_shapes = [tuple(self.nodes[j].shape for j in n.inputs) for n in self.nodes]
        self._parts = {i: _sign_parts(n.op) for i, n in enumerate(self.nodes)
                       if i and not isinstance(n.op, Relu)}

    def scores(self, lower, upper, lams) -> list[torch.Tensor]:
        """Per ReLU layer (B, n_k): each unstable neuron's estimated impact on the worst
        row's lower bound (``lams[k]`` (B, n_k): that row's coefficients on the layer's
        outputs; ``lower``/``upper`` its pre-activation bounds), direct
        (``|min(lam, 0)| * t``) and :data:`INDIRECT_SHARE` of the later neurons' impacts
        passed back, from the last ReLU layer to the first."""
        n = len(self.relus)
        t = [relu_gap(l, u) for l, u in zip(lower, upper)]
        passed = [torch.zeros_like(x) for x in t]
        impact = [None] * n
        for k in range(n - 1, -1, -1):
            l, u = lower[k], upper[k]
            unst = (l < 0) & (u > 0)
            score = lams[k].clamp(max=0).abs() * t[k] + INDIRECT_SHARE * t[k] * passed[k]
            impact[k] = torch.where(unst, score + 1e-9 * t[k], torch.zeros_like(score))
            if k == 0:
                break
            v_pos = torch.where(unst, impact[k] / torch.where(unst, u, 1.0), 0.0)
            v_neg = torch.where(unst, impact[k] / torch.where(unst, -l, 1.0), 0.0)
            self._pass_back(self.nodes[self.relus[k]].inputs[0], v_pos, v_neg, passed)
        return impact

    def _pass_back(self, start: int, v_pos, v_neg, passed) -> None:
        """Add to ``passed[j]`` (B, n_j), for every ReLU layer ``j`` that node ``start``
        reads through affine operators only, ``sum_s v_pos[s] P[s, i] + v_neg[s] N[s, i]``
        with ``P``/``N`` the positive part and negative part's magnitude of that map."""
        B = v_pos.shape[0]
        shape = self.nodes[start].shape
        acc = {start: torch.stack([v_pos, v_neg], 1).reshape(B, 2, *shape)}
        for i in range(start, 0, -1):
            A = acc.pop(i, None)
            if A is None:
                continue
            if isinstance(self.nodes[i].op, Relu):
                passed[self._relu_of[i]] += A[:, 0].reshape(B, -1)
                continue
            pos, neg = self._parts[i]
            through_pos = linear_transpose(pos, A, self._in_shapes[i])
            through_neg = [None] * len(through_pos) if neg is None else \
                linear_transpose(neg, A, self._in_shapes[i])
            for j, p, q in zip(self.nodes[i].inputs, through_pos, through_neg):
                # a positive weight keeps (upper, lower) shares in place, a negative one swaps
                out = p if q is None else p + q.flip(1)
                acc[j] = out if j not in acc else acc[j] + out
