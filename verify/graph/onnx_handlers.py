"""The per-operator handlers of the ONNX graph loader (:mod:`verify.graph.onnx_graph`).

Each handler takes the builder, the node's attributes and its inputs (a node index for a
computed tensor, an array for a constant, None for an omitted input) and returns the index
of the node it built (or reused) or, for ``Shape``, a constant array.  A handler raises
``_Unsupported`` for what the model cannot express; the builder names the ONNX node.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..onnx_nodes import _Unsupported, layout_shape
from . import pooling
from .ops import Conv, Gemm, Pad, Relu, Scale, Sum

if TYPE_CHECKING:
    from .onnx_graph import _Builder

_FLOAT_TYPES = (1, 11)  # TensorProto.FLOAT, DOUBLE


def _var(x, what: str) -> int:
    if not isinstance(x, int):
        raise _Unsupported(f"{what} must be the computed tensor")
    return x


def _constant(x, what: str) -> np.ndarray:
    if x is None or isinstance(x, int):
        raise _Unsupported(f"{what} must be a constant")
    return np.asarray(x)


def _identity(b: _Builder, attrs, ins):
    return _var(ins[0], "the input")


def _dropout(b: _Builder, attrs, ins):
    if len(ins) > 2 and ins[2] is not None and bool(np.asarray(_constant(ins[2], "training_mode"))):
        raise _Unsupported("Dropout in training mode")
    return _var(ins[0], "the input")


def _cast(b: _Builder, attrs, ins):
    if int(attrs.get("to", 0)) not in _FLOAT_TYPES:
        raise _Unsupported("a Cast of the computed tensor to a non-float type")
    return _var(ins[0], "the input")


def _layout(op_type):
    def handler(b: _Builder, attrs, ins):
        t = _var(ins[0], "the data input")
        if any(isinstance(x, int) for x in ins[1:]):
            raise _Unsupported(f"the {op_type} shape / axes input must be a constant")
        args = [None] + [None if x is None else np.asarray(x) for x in ins[1:]]
        return b.reshape(t, layout_shape(op_type, attrs, args, b.shape(t)))
    return handler


def _transpose(b: _Builder, attrs, ins):
    t = _var(ins[0], "the input")
    perm = attrs.get("perm")
    if perm is None:
        perm = list(reversed(range(len(b.shape(t)))))
    return b.transpose(t, perm)


def _relu(b: _Builder, attrs, ins):
    t = _var(ins[0], "the input")
    if isinstance(b.nodes[t].op, Relu):
        return t
    return b.add(Relu(), (t,))


def _shape(b: _Builder, attrs, ins):
    shape = np.asarray(b.shape(_var(ins[0], "the input")), dtype=np.int64)
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    return shape[start:None if end is None else int(end)]


def _quant_weight(b: _Builder, name: str, weight_rows_axis: int):
    """The integer form of a DequantizeLinear weight, as (rows, cols) int and per-row scale
    for a weight whose output rows are ``weight_rows_axis`` of the stored constant."""
    q = b.quantized.get(name)
    if q is None:
        return {}
    integer = q.integer if weight_rows_axis == 0 else np.moveaxis(q.integer, weight_rows_axis, 0)
    rows = integer.shape[0]
    if q.scale.size == 1:
        scale = np.full(rows, float(q.scale[0]))
    elif q.axis == weight_rows_axis:
        scale = q.scale
    else:
        return {}
    return dict(weight_int=integer, weight_scale=scale)


def _layer_inputs(ins, kind: str):
    """(computed input, constant weight, constant bias or None) of a Gemm or Conv."""
    x = _var(ins[0], f"the first {kind} input")
    weight = _constant(ins[1], f"the {kind} weight").astype(np.float64)
    bias = ins[2] if len(ins) > 2 else None
    if isinstance(bias, int):
        raise _Unsupported(f"the {kind} bias must be a constant")
    return x, weight, bias


def _gemm(b: _Builder, attrs, ins):
    a, B, C = _layer_inputs(ins, "Gemm")
    if len(b.shape(a)) != 2 or B.ndim != 2:
        raise _Unsupported(f"Gemm of shapes {b.shape(a)} and {B.shape}")
    if attrs.get("transA", 0):
        a = b.transpose(a, (1, 0))
    trans_b = bool(attrs.get("transB", 0))
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    weight = alpha * (B if trans_b else B.T)
    quant = _quant_weight(b, b.names[1], 0 if trans_b else 1) if alpha == 1.0 else {}
    n = weight.shape[0]
    bias, rest = np.zeros(n), None
    if C is not None:
        C = beta * np.asarray(C, dtype=np.float64)
        m = b.shape(a)[0]
        full = np.broadcast_to(C, (m, n))
        if np.all(full == full[:1]):
            bias = full[0].copy()
        else:
            rest = C
    t = b.add(Gemm(weight, bias, **quant), (a,))
    return t if rest is None else b.affine(t, None, rest)


def _matmul(b: _Builder, attrs, ins):
    x, w = ins[0], ins[1]
    if isinstance(x, int) and isinstance(w, int):
        raise _Unsupported("a product of two computed tensors is not affine")
    if isinstance(x, int):
        W = np.asarray(w, dtype=np.float64)
        if W.ndim == 1:
            t = b.add(Gemm(W[None, :], np.zeros(1)), (x,))
            return b.reshape(t, b.shape(t)[:-1])
        if W.ndim != 2:
            raise _Unsupported(f"MatMul with a {W.ndim}-d constant")
        return b.add(Gemm(W.T, np.zeros(W.shape[1]), **_quant_weight(b, b.names[1], 1)), (x,))
    W = np.asarray(x, dtype=np.float64)
    if W.ndim != 2:
        raise _Unsupported(f"MatMul with a {W.ndim}-d constant")
    quant = _quant_weight(b, b.names[0], 0)
    s = b.shape(w)
    if len(s) == 1:
        return b.add(Gemm(W, np.zeros(W.shape[0]), **quant), (w,))
    swap = tuple(range(len(s) - 2)) + (len(s) - 1, len(s) - 2)
    t = b.add(Gemm(W, np.zeros(W.shape[0]), **quant), (b.transpose(w, swap),))
    return b.transpose(t, swap)


def _spatial(b: _Builder, attrs, t: int, kernel) -> dict:
    """strides, pads (top, left, bottom, right) and dilations of a 2-d window operator."""
    shape = b.shape(t)
    if len(shape) != 4 or len(kernel) != 2:
        raise _Unsupported(f"only 2-d windows on (N, C, H, W) tensors (shape {shape}, "
                           f"kernel {tuple(kernel)})")
    strides = tuple(int(s) for s in attrs.get("strides", (1, 1)))
    dilations = tuple(int(d) for d in attrs.get("dilations", (1, 1)))
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("NOTSET", ""):
        pads = tuple(int(p) for p in attrs.get("pads", (0, 0, 0, 0)))
    elif auto == "VALID":
        pads = (0, 0, 0, 0)
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(shape[2:], kernel, strides, dilations):
            total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else large)
            end.append(large if auto == "SAME_UPPER" else small)
        pads = tuple(begin + end)
    else:
        raise _Unsupported(f"auto_pad {auto}")
    if len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
        raise _Unsupported("strides, dilations or pads of the wrong length")
    return dict(strides=strides, pads=pads, dilations=dilations)


def _conv(b: _Builder, attrs, ins):
    x, W, B = _layer_inputs(ins, "Conv")
    if W.ndim != 4:
        raise _Unsupported(f"only 2-d convolutions (weight of shape {W.shape})")
    kernel = tuple(int(k) for k in attrs.get("kernel_shape", W.shape[2:]))
    if kernel != W.shape[2:]:
        raise _Unsupported(f"kernel_shape {kernel} differs from the weight's {W.shape[2:]}")
    geometry = _spatial(b, attrs, x, kernel)
    bias = np.zeros(W.shape[0]) if B is None else np.asarray(B, dtype=np.float64)
    quant = _quant_weight(b, b.names[1], 0)
    return b.add(Conv(W, bias, groups=int(attrs.get("group", 1)), **geometry, **quant), (x,))


def _pool_geometry(b: _Builder, attrs, t: int, kernel) -> dict:
    geometry = _spatial(b, attrs, t, kernel)
    if attrs.get("ceil_mode", 0):
        h, w = b.shape(t)[2:]
        top, left, bottom, right = geometry["pads"]
        for size, k, s, d, extra in zip((h, w), kernel, geometry["strides"],
                                        geometry["dilations"], (top + bottom, left + right)):
            span = size + extra - d * (k - 1) - 1
            if span % s:
                raise _Unsupported("ceil_mode=1 where it changes the output size")
    return geometry


def _average_pool(b: _Builder, attrs, ins):
    t = _var(ins[0], "the input")
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    g = _pool_geometry(b, attrs, t, kernel)
    shape = b.shape(t)
    return pooling.average_pool(b.add, t, shape[1], shape[2:], kernel, g["strides"], g["pads"],
                                g["dilations"], bool(attrs.get("count_include_pad", 0)),
                                b.node_name)


def _global_average_pool(b: _Builder, attrs, ins):
    t = _var(ins[0], "the input")
    shape = b.shape(t)
    if len(shape) != 4:
        raise _Unsupported(f"only (N, C, H, W) tensors (shape {shape})")
    return pooling.average_pool(b.add, t, shape[1], shape[2:], shape[2:], (1, 1),
                                (0, 0, 0, 0), (1, 1), True, b.node_name)


def _max_pool(b: _Builder, attrs, ins):
    t = _var(ins[0], "the input")
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    g = _pool_geometry(b, attrs, t, kernel)
    shape = b.shape(t)
    try:
        return pooling.max_pool(b.add, t, shape[1], shape[2:], kernel, g["strides"], g["pads"],
                                g["dilations"], b.node_name)
    except ValueError as exc:
        raise _Unsupported(f"MaxPool: {exc}") from None


def _batch_norm(b: _Builder, attrs, ins):
    t = _var(ins[0], "the input")
    if attrs.get("training_mode", 0):
        raise _Unsupported("BatchNormalization in training mode")
    gamma, beta, mean, var = (_constant(x, "the statistics").astype(np.float64)
                              for x in ins[1:5])
    shape = b.shape(t)
    if len(shape) < 2:
        raise _Unsupported(f"BatchNormalization of a tensor of shape {shape}")
    s = gamma / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    h = beta - mean * s
    channel = (shape[1],) + (1,) * (len(shape) - 2)
    if not b.fold_batchnorm:
        return b.add(Scale(s.reshape(channel), h.reshape(channel)), (t,))
    return b.affine(t, s.reshape(channel), h.reshape(channel), exact=False)


def _arithmetic(op_type):
    def handler(b: _Builder, attrs, ins):
        x, y = ins[0], ins[1]
        if isinstance(x, int) and isinstance(y, int):
            if op_type in ("Add", "Sub"):
                return b.sum(x, y, (1.0, 1.0 if op_type == "Add" else -1.0))
            raise _Unsupported(f"{op_type} of two computed tensors is not affine")
        if isinstance(x, int):
            c = np.asarray(y, dtype=np.float64)
            if op_type == "Add":
                return b.affine(x, None, c)
            if op_type == "Sub":
                return b.affine(x, None, -c)
            if op_type == "Mul":
                return b.affine(x, c, None)
            if np.any(c == 0):
                raise _Unsupported("division by zero")
            return b.affine(x, 1.0 / c, None)
        c = np.asarray(x, dtype=np.float64)
        if op_type == "Add":
            return b.affine(y, None, c)
        if op_type == "Sub":
            return b.affine(y, np.asarray(-1.0), c)
        if op_type == "Mul":
            return b.affine(y, c, None)
        raise _Unsupported("division by a computed tensor is not affine")
    return handler


def _activation_quantization(b: _Builder, attrs, ins):
    raise _Unsupported("quantization of a computed tensor (activation QuantizeLinear / "
                       "DequantizeLinear) is not supported; weights given as DequantizeLinear "
                       "of constants are")


def _sum(b: _Builder, attrs, ins):
    """ONNX Sum: computed tensors of one shape, plus constants."""
    xs = [x for x in ins if isinstance(x, int)]
    consts = [np.asarray(x, dtype=np.float64) for x in ins if x is not None and
              not isinstance(x, int)]
    t = xs[0]
    if len(xs) > 1:
        if len(set(xs)) < len(xs) or any(b.shape(x) != b.shape(t) for x in xs):
            raise _Unsupported("Sum of repeated computed tensors or of different shapes")
        t = b.add(Sum((1.0,) * len(xs)), xs)
    return b.affine(t, None, sum(consts)) if consts else t


def _neg(b: _Builder, attrs, ins):
    return b.affine(_var(ins[0], "the input"), np.asarray(-1.0), None)


def _pad(b: _Builder, attrs, ins):
    t = _var(ins[0], "the data input")
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode != "constant":
        raise _Unsupported(f"Pad mode '{mode}' (only 'constant')")
    if any(isinstance(x, int) for x in ins[1:]):
        raise _Unsupported("the Pad pads and value must be constants")
    rank = len(b.shape(t))
    if len(ins) > 1 and ins[1] is not None:
        pads = [int(p) for p in np.asarray(ins[1]).reshape(-1)]
        value = float(np.asarray(ins[2]).reshape(-1)[0]) if len(ins) > 2 and ins[2] is not None \
            else 0.0
    else:
        pads = [int(p) for p in attrs.get("pads", ())]
        value = float(attrs.get("value", 0.0))
    if len(ins) > 3 and ins[3] is not None:
        axes = [int(a) % rank for a in np.asarray(ins[3]).reshape(-1)]
        full = [0] * (2 * rank)
        for k, a in enumerate(axes):
            full[a], full[a + rank] = pads[k], pads[k + len(axes)]
        pads = full
    if len(pads) != 2 * rank:
        raise _Unsupported(f"{len(pads)} pads for a tensor of rank {rank}")
    if min(pads) < 0:
        raise _Unsupported("negative pads (cropping)")
    if not any(pads):
        return t
    return b.add(Pad(tuple(pads), value), (t,))


_HANDLERS = {
    "Add": _arithmetic("Add"), "Sub": _arithmetic("Sub"), "Mul": _arithmetic("Mul"),
    "Div": _arithmetic("Div"), "Neg": _neg,
    "AveragePool": _average_pool, "GlobalAveragePool": _global_average_pool,
    "MaxPool": _max_pool, "BatchNormalization": _batch_norm,
    "Cast": _cast, "Conv": _conv, "Dropout": _dropout, "Identity": _identity,
    "Flatten": _layout("Flatten"), "Reshape": _layout("Reshape"),
    "Squeeze": _layout("Squeeze"), "Unsqueeze": _layout("Unsqueeze"),
    "Gemm": _gemm, "MatMul": _matmul, "Pad": _pad, "Relu": _relu, "Shape": _shape,
    "Sum": _sum,
    "Transpose": _transpose,
    "QuantizeLinear": _activation_quantization, "DequantizeLinear": _activation_quantization,
}
