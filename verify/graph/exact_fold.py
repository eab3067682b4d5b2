"""Exact folding of an affine step ``x * scale + shift`` into the operator before it.

The ONNX graph loader (:mod:`verify.graph.onnx_graph`) folds BatchNormalization and
Add / Sub / Mul / Div by a constant into the preceding Conv / Gemm / Scale when the
constant is one value per output channel; outside BatchNormalization only where the
float64 result is exact (a bias ``b + c`` without rounding, products of float32 values or
by powers of two).
"""
from __future__ import annotations

import numpy as np

from .ops import Conv, Gemm, Scale


# ---------------------------------------------------------------- exact folding
def _is_f32(a: np.ndarray) -> bool:
    return bool(np.array_equal(a.astype(np.float32).astype(np.float64), a))


def _is_pow2(a: np.ndarray) -> bool:
    m, _ = np.frexp(a)
    return bool(np.all((m == 0) | (np.abs(m) == 0.5)))


def _exact_product(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a * b`` is exact in float64 (float32 factors, or a power-of-two one)."""
    return (_is_f32(a) and _is_f32(b)) or _is_pow2(a) or _is_pow2(b)


def _exact_sum(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a + b`` is exact in float64 (Knuth's TwoSum error term is zero)."""
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    return bool(np.all(err == 0) and np.all(np.isfinite(s)))


def _channel_vector(c: np.ndarray, shape, axis: int) -> np.ndarray | None:
    """``c`` broadcast to ``shape`` as one value per index of ``axis``, or None when it
    varies along another axis."""
    full = np.broadcast_to(c, shape)
    moved = np.moveaxis(full, axis, 0).reshape(shape[axis], -1)
    if not np.all(moved == moved[:, :1]):
        return None
    return np.ascontiguousarray(moved[:, 0])


def _fold_affine(op, shape, scale, shift, exact: bool):
    """``op`` followed by ``x * scale + shift`` as one operator, or None."""
    if isinstance(op, Scale):
        s, h = op.scale * scale, op.shift * scale
        if exact and not (_exact_product(op.scale, scale) and _exact_product(op.shift, scale)
                          and _exact_sum(h, shift)):
            return None
        return Scale(s, h + shift)
    if not isinstance(op, (Gemm, Conv)):
        return None
    axis = len(shape) - (1 if isinstance(op, Gemm) else 3)
    s, h = _channel_vector(scale, shape, axis), _channel_vector(shift, shape, axis)
    if s is None or h is None:
        return None
    w = op.weight * s.reshape((-1,) + (1,) * (op.weight.ndim - 1))
    b = op.bias * s
    if exact and not (_exact_product(op.weight, s) and _exact_product(op.bias, s)
                      and _exact_sum(b, h)):
        return None
    keep_int = np.all(s == 1.0) and op.weight_int is not None
    quant = dict(weight_int=op.weight_int, weight_scale=op.weight_scale) if keep_int else {}
    if isinstance(op, Gemm):
        return Gemm(w, b + h, **quant)
    return Conv(w, b + h, op.strides, op.pads, op.dilations, op.groups, **quant)
