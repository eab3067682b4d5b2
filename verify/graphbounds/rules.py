"""Bound transfer rules, one per operator kind of the graph model.

Each rule has two halves:

* ``interval(op, *bounds)`` -- sound elementwise bounds of the operator's output from
  bounds ``(lower, upper)`` of its inputs (each ``(B, *shape)``), before outward rounding;
* ``backward(op, A, in_shapes)`` -- back-substitution (CROWN / DeepPoly): given
  coefficients ``A`` ``(B, m, *out_shape)`` of a linear function of the operator's output,
  the coefficients on each input and the constant ``(B, m)`` that make it a function of
  the inputs.  An affine operator's rule is exact; :func:`relu_backward` relaxes.

The affine rules use the operators' own linear algebra (:mod:`verify.graph.ops`): the
forward map and ``|L|`` in centre/radius form, and ``L^T`` with torch's convolution
operators for a Conv (never a dense matrix).  :data:`RULES` maps an operator class to its
rule; :func:`rule_for` finds it (a new operator without a rule is an error, not a guess).
"""
from __future__ import annotations

import torch

from ..graph.ops import Conv, Gemm, Pad, Relu, Reshape, Scale, Sum, Transpose


def _flat_sum(x: torch.Tensor, B: int, m: int) -> torch.Tensor:
    return x.reshape(B, m, -1).sum(-1)


class AffineRule:
    """``y = L(x_1..x_n) + c``: interval in centre/radius form, exact back-substitution."""

    @staticmethod
    def interval(op, *bounds):
        mids = [(l + u) / 2 for l, u in bounds]
        rads = [(u - l) / 2 for l, u in bounds]
        mid, rad = op.forward(*mids), op.abs_forward(*rads)
        return mid - rad, mid + rad

    @staticmethod
    def backward(op, A, in_shapes):
        B, m = A.shape[:2]
        c = op.constant(*in_shapes)
        const = None if c is None else _flat_sum(A * c.to(A.dtype), B, m)
        return op.transpose(A, *in_shapes), const


class ConvRule(AffineRule):
    """Conv: the bias enters the constant once per output position (summed over H, W
    before multiplying, a (B, m, C) product instead of a full-size one).  A depthwise
    Conv (one input channel per group: AveragePool, the MaxPool rewrite) is transposed
    by :func:`depthwise_transpose` (torch's ``conv2d_input`` takes 10x longer there)."""

    @staticmethod
    def backward(op, A, in_shapes):
        const = (A.sum((-1, -2)) * op._b.to(A.dtype)).reshape(A.shape[0], A.shape[1], -1).sum(-1)
        return linear_transpose(op, A, in_shapes), const


def linear_transpose(op, A, in_shapes) -> list:
    """``L^T A`` for each input of an affine operator: its own ``transpose``, except a
    depthwise Conv, by :func:`depthwise_transpose`."""
    if isinstance(op, Conv) and op.weight.shape[1] == 1 and op.groups > 1:
        return [depthwise_transpose(op, A, in_shapes[0])]
    return op.transpose(A, *in_shapes)


def depthwise_transpose(op, A, in_shape):
    """``L^T A`` of a depthwise Conv (weight (C*k, 1, kh, kw), ``groups`` C: output channel
    ``o`` reads input channel ``o // k``) as one strided add per kernel element."""
    lead, (O, Ho, Wo) = A.shape[:-3], A.shape[-3:]
    C, H, W = in_shape[-3:]
    t, l, b, r = op.pads
    (sh, sw), (dh, dw) = op.strides, op.dilations
    kh, kw = op.weight.shape[2:]
    w = op._w[:, 0].to(A.dtype)
    out = A.new_zeros(*lead, O, H + t + b, W + l + r)
    for i in range(kh):
        for j in range(kw):
            out[..., i * dh:i * dh + sh * (Ho - 1) + 1:sh, j * dw:j * dw + sw * (Wo - 1) + 1:sw] += \
                A * w[:, i, j][:, None, None]
    out = out[..., t:t + H, l:l + W]
    if O != C:
        out = out.reshape(*lead, C, O // C, H, W).sum(-3)
    return out


class ReluRule:
    @staticmethod
    def interval(op, bounds):
        l, u = bounds
        return l.clamp(min=0), u.clamp(min=0)


def relu_backward(A, alpha, s, t, beta=None, sign=None):
    """Back-substitute ``A @ relu(z)`` to ``A' @ z + const`` with the relaxation
    ``alpha*z <= relu(z) <= s*z + t`` (``alpha``, ``s``, ``t`` shaped ``(B, *shape)`` like
    ``z``): positive coefficients take the lower line, negative ones the upper;
    ``alpha`` may also be one per row of ``A``, ``(B, m, *shape)``.  With
    ``beta`` ``(B, m, *shape)`` >= 0 and ``sign`` ``(B, *shape)`` (split constraints
    ``sign*z >= 0``), ``beta*sign*z`` is subtracted (beta-CROWN: a lower bound on the
    branch).  Returns (coefficients on ``z``, constant (B, m))."""
    B, m = A.shape[:2]
    a_neg = A.clamp(max=0)
    const = _flat_sum(a_neg * t[:, None], B, m)
    al = alpha if alpha.dim() == A.dim() else alpha[:, None]
    # a_pos * alpha + a_neg * s, as A * alpha + a_neg * (s - alpha): two passes fewer
    out = torch.addcmul(A * al, a_neg, s[:, None] - al)
    if beta is not None:
        out = out - beta * sign[:, None]
    return out, const


RULES = {Gemm: AffineRule, Conv: ConvRule, Scale: AffineRule, Sum: AffineRule,
         Reshape: AffineRule, Transpose: AffineRule, Pad: AffineRule, Relu: ReluRule}


def rule_for(op):
    try:
        return RULES[type(op)]
    except KeyError:
        raise TypeError(f"no bound rule for operator {op.describe()}") from None
