"""Differential bounds for a graph (CNN) variant with its original's architecture.

The graph analogue of :func:`verify.reuse.tree.leaf_deviation`: given the original
``f``'s pre-activation bounds of every ReLU on a batch of leaf domains (what its proof
search derived there), bound the change ``g - f`` of every node of the variant ``g``
(the same nodes, operators and shapes; only Conv / Gemm / Scale parameters may differ:
quantized, magnitude-pruned, or a channel-pruned variant's expansion) by interval
arithmetic in centre/radius form, node by node:

* an unchanged affine operator ``L + c``: ``dz = L(dh)``;
* a changed one (``L_g = L_f + dL``, constants ``c_g = c_f + dc``):
  ``dz = L_g(dh) + dL(h) + dc``, with ``h`` the original's node bounded by interval
  arithmetic from the stored ReLU bounds;
* a ReLU: ``dh = relu(z + dz) - relu(z)`` lies between 0 and ``dz``, above
  ``-relu(z)``, below ``relu(z + dz)``, and equals ``dz`` where both networks are
  active;
* the spec rows ``C`` are folded into an output Gemm (``C dW h`` bounded as one row).

It costs about three interval passes of the network (no back-substitution), so the
original's spec margin on a leaf plus this lower bound of ``C (g - f)`` certifies the
variant there without bounding it (tier 0 of :class:`verify.reuse.tree.TreeCheck`), and
the original's ReLU bounds moved by the per-layer changes are sound bounds of the
variant's (tier 1 back-substitutes the variant's spec rows over them).

Soundness: every step is interval arithmetic over sound bounds of ``f`` on the leaf's
domain (derived by this process's search) and is widened outward by
:data:`verify.bounds.TOLERANCE` for float64 rounding, so ``f + lower <= g <= f + upper``
holds elementwise on the domain.  Graphs that differ otherwise (another operator, other
hyperparameters or shapes) are refused with :class:`verify.errors.ShapeMismatchError`.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..bounds import TOLERANCE
from ..errors import ShapeMismatchError
from ..graph.ops import Conv, Gemm, Relu, Scale
from ..graphbounds.rules import rule_for

_PARAMS = {Gemm: ("weight", "bias"), Conv: ("weight", "bias"), Scale: ("scale", "shift")}


def _same_op(a, b) -> bool:
    if type(a) is not type(b):
        return False
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if x is None or y is None or not np.array_equal(x, y):
                return False
        elif x != y:
            return False
    return True


def _split_change(a, b):
    """For a Conv / Gemm / Scale whose parameters alone differ: (``L_g`` without its
    constant, the change ``dL + dc`` as an operator of the same kind); else None."""
    names = _PARAMS.get(type(a))
    if names is None or type(b) is not type(a):
        return None
    w, c = names
    if any(getattr(a, f.name) != getattr(b, f.name) for f in dataclasses.fields(a)
           if f.name not in (w, c, "weight_int", "weight_scale")):
        return None
    wa, wb = getattr(a, w), getattr(b, w)
    ca, cb = getattr(a, c), getattr(b, c)
    if wa.shape != wb.shape or ca.shape != cb.shape:
        return None
    strip = {"weight_int": None, "weight_scale": None} if type(a) is not Scale else {}
    linear = dataclasses.replace(b, **{c: np.zeros_like(cb)}, **strip)
    delta = dataclasses.replace(b, **{w: wb - wa, c: cb - ca}, **strip)
    return linear, delta


def _widen(mid: torch.Tensor, rad: torch.Tensor) -> torch.Tensor:
    return rad + TOLERANCE * (1.0 + mid.abs() + rad)


class GraphDiff:
    """The node-by-node change of ``g`` against ``f`` (see the module docstring)."""

    def __init__(self, f, g):
        if len(f.nodes) != len(g.nodes) or f.input_shape != g.input_shape:
            raise ShapeMismatchError(f"the variant has {len(g.nodes)} graph nodes, the "
                                     f"original {len(f.nodes)}: no differential bound")
        self.f, self.g = f, g
        self.plan: list = [None]  # per node: "same", "relu" or (linear_g, delta)
        for i, (a, b) in enumerate(zip(f.nodes[1:], g.nodes[1:]), 1):
            if a.inputs != b.inputs or tuple(a.shape) != tuple(b.shape):
                raise ShapeMismatchError(f"graph node {i} differs in its inputs or shape")
            if isinstance(a.op, Relu) and isinstance(b.op, Relu):
                self.plan.append("relu")
            elif _same_op(a.op, b.op):
                self.plan.append("same")
            else:
                split = _split_change(a.op, b.op)
                if split is None:
                    raise ShapeMismatchError(f"graph node {i} ({a.name}) changes its operator "
                                             f"({a.op.describe()} -> {b.op.describe()})")
                self.plan.append(split)
        self.in_shapes = [tuple(f.nodes[j].shape for j in n.inputs) for n in f.nodes]
        self.relu_of = {i: k for k, i in enumerate(f.relu_nodes)}
        self._last_use = [max(c, default=len(f.nodes)) for c in f.consumers()]

    @staticmethod
    def _linear(op, x, in_shapes):
        """``L(x)`` of an affine operator (its constant taken out)."""
        c = op.constant(*in_shapes)
        y = op.forward(*x)
        return y if c is None else y - c

    def deviation(self, lowers, uppers, box_lo, box_hi, spec_c):
        """Over ``B`` leaves: ``lowers[k]``/``uppers[k]`` (B, n_k) the original's bounds
        of ReLU ``k``'s input on each leaf's domain, boxes (B, n0), spec rows (m, n_out).
        Returns per ReLU ``(dl, du)`` (B, n_k) numpy bounds of the change of its input
        and the (B, m) lower bound of ``spec_c @ (g - f)``."""
        f, plan = self.f, self.plan
        B = box_lo.shape[0]
        t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))
        shape0 = f.nodes[0].shape
        lo, hi = t(box_lo).reshape(B, *shape0), t(box_hi).reshape(B, *shape0)
        # the original's nodes as (mid, rad), made when a changed operator reads them:
        # the box, a ReLU's output from the stored bounds of its input, else intervals
        hv = {0: ((lo + hi) / 2, (hi - lo) / 2)}

        def h(i):
            if i not in hv:
                node = f.nodes[i]
                if plan[i] == "relu":
                    k = self.relu_of[i]
                    a_lo, a_hi = t(lowers[k]).clamp(min=0), t(uppers[k]).clamp(min=0)
                    hv[i] = (((a_lo + a_hi) / 2).reshape(B, *node.shape),
                             ((a_hi - a_lo) / 2).reshape(B, *node.shape))
                else:
                    hv[i] = self._interval(node.op, [h(j) for j in node.inputs])
            return hv[i]
        dv: list = [None] * len(f.nodes)  # the change of each node as (mid, rad); None: zero
        changes = [None] * len(self.relu_of)
        out = f.output
        C = t(spec_c)
        for i, node in enumerate(f.nodes[1:], 1):
            ins = node.inputs
            if i == out and isinstance(node.op, Gemm) and node.shape[-1] == C.shape[1] \
                    and int(np.prod(node.shape)) == C.shape[1]:
                return changes, self._spec(plan[i], node.op, lambda: h(ins[0]), dv[ins[0]], C, B)
            if plan[i] == "relu":
                k = self.relu_of[i]
                dv[i], changes[k] = self._relu(dv[ins[0]], t(lowers[k]), t(uppers[k]),
                                               node.shape, B)
            else:
                dv[i] = self._change(plan[i], node.op, ins, h, [dv[j] for j in ins],
                                     self.in_shapes[i], B)
            for j in ins:  # free what no later node reads
                if self._last_use[j] == i:
                    dv[j] = None
        mid, rad = dv[out] if dv[out] is not None else \
            (torch.zeros((B, f.n_outputs), dtype=torch.float64),) * 2
        mid, rad = mid.reshape(B, -1), rad.reshape(B, -1)
        spec = mid @ C.T - rad @ C.abs().T
        return changes, (spec - TOLERANCE * (1.0 + spec.abs())).numpy()

    @staticmethod
    def _interval(op, ins):
        l, u = rule_for(op).interval(op, *((m - r, m + r) for m, r in ins))
        mid, rad = (l + u) / 2, (u - l) / 2
        return mid, _widen(mid, rad)

    def _change(self, step, op, ins, h, ds, in_shapes, B):
        """The change of an affine node from its inputs' changes ``ds`` (and, for a
        changed operator, the original's input ``h(ins[0])``)."""
        if step == "same":
            if all(d is None for d in ds):
                return None
            zero = lambda s: torch.zeros((B, *s), dtype=torch.float64)
            ds = [d if d is not None else (zero(s), zero(s)) for d, s in zip(ds, in_shapes)]
            mid = self._linear(op, [d[0] for d in ds], in_shapes)
            rad = op.abs_forward(*(d[1] for d in ds))
            return mid, _widen(mid, rad)
        linear, delta = step
        (hm, hr), d = h(ins[0]), ds[0]
        mid, rad = delta.forward(hm), delta.abs_forward(hr)
        if d is not None:
            mid = mid + linear.forward(d[0])
            rad = rad + linear.abs_forward(d[1])
        return mid, _widen(mid, rad)

    @staticmethod
    def _relu(d, l, u, shape, B):
        """The change of a ReLU's output from the original's bounds ``l``/``u`` (B, n) of
        its input and the input's change ``d``; also the latter as (dl, du) numpy.  An
        unchanged input (``d`` None) leaves the output unchanged (None): exactly zero, with
        no rounding allowance carried on."""
        if d is None:
            zero = np.zeros(tuple(l.shape))
            return None, (zero, zero)
        dl, du = ((d[0] - d[1]).reshape(B, -1), (d[0] + d[1]).reshape(B, -1))
        lo_h = torch.maximum(dl.clamp(max=0), -u.clamp(min=0))
        hi_h = torch.minimum(du.clamp(min=0), (u + du).clamp(min=0))
        both = (l >= 0) & (l + dl >= 0)
        lo_h, hi_h = torch.where(both, dl, lo_h), torch.where(both, du, hi_h)
        full = (B, *shape)
        dv = (((lo_h + hi_h) / 2).reshape(full), ((hi_h - lo_h) / 2).reshape(full))
        return dv, (dl.numpy(), du.numpy())

    @staticmethod
    def _spec(step, op, h, d, C, B):
        """The lower bound of ``C (g - f)`` with ``C`` folded into the output Gemm
        (``h()``: the original's input of it, asked for when the Gemm changed)."""
        if step == "same":
            mid = rad = torch.zeros((B, C.shape[0]), dtype=torch.float64)
            CW = C @ op._w
        else:
            linear, delta = step
            CW, CdW, Cdb = C @ linear._w, C @ delta._w, C @ delta._b
            hm, hr = (x.reshape(B, -1) for x in h())
            mid = hm @ CdW.T + Cdb
            rad = hr @ CdW.abs().T
        if d is not None:
            mid = mid + d[0].reshape(B, -1) @ CW.T
            rad = rad + d[1].reshape(B, -1) @ CW.abs().T
        rad = _widen(mid, rad)
        return (mid - rad).numpy()
