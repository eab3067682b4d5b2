"""Read an ONNX model as a :class:`GraphNetwork` (CNNs, residual networks).

The graph is walked in topological order.  A tensor is either a *constant* (initializers,
``Constant`` nodes and every node whose inputs are all constants, evaluated at load time:
``Shape`` of a computed tensor is constant too, since shapes are static) or *computed*
(a node of the graph being built).  Operators on computed tensors map to the model's few
operators:

* Gemm, MatMul with a constant matrix -> :class:`Gemm` (transposes around it where the
  constant is on the left); Conv (strides, pads incl. static ``auto_pad``, dilations,
  groups) -> :class:`Conv`;
* BatchNormalization, and Add / Sub / Mul / Div / Neg by a constant -> folded into the
  preceding Conv / Gemm / Scale when that node has no other consumer and the constant is
  one value per output channel (BatchNormalization with float64 rounding, as the issue asks;
  the others only where the float64 result is exact: a bias ``b + c`` without rounding,
  products of float32 values or by powers of two), else a :class:`Scale`;
* Add / Sub of two computed tensors -> :class:`Sum` (residual connections);
* Flatten, Reshape, Squeeze, Unsqueeze -> :class:`Reshape`; Transpose; Pad (constant mode);
  Identity, Dropout, Cast to a float type -> nothing;
* AveragePool, GlobalAveragePool, MaxPool -> Conv / Scale / Sum / Relu
  (:mod:`verify.graph.pooling`; MaxPool is rewritten exactly into ReLUs);
* weights given as ``DequantizeLinear`` of int8 constants are read exactly
  (``scale * (q - zero_point)`` in float64) and keep their integer form on the Gemm / Conv.

The batch axis of the input may be dynamic (taken as 1); every other axis must be static.
Input numbering is the input's shape flattened in C order, as VNN-LIB numbers it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, UnsupportedNetworkError
from ..onnx_io import _attrs, _constant_value, _node_label, _topological, _Unsupported, _Walker
from . import pooling
from .model import GraphNetwork, Node
from .ops import Conv, Gemm, Op, Pad, Relu, Reshape, Scale, Sum, Transpose

SUPPORTED_OPS = ("Add", "AveragePool", "BatchNormalization", "Cast", "Constant", "Conv",
                 "DequantizeLinear", "Div", "Dropout", "Flatten", "Gemm",
                 "GlobalAveragePool", "Identity", "MatMul", "MaxPool", "Mul", "Neg", "Pad",
                 "Relu", "Reshape", "Shape", "Squeeze", "Sub", "Sum", "Transpose", "Unsqueeze")
EXPECTED = ("a network of " + ", ".join(SUPPORTED_OPS)
            + " on one input (nodes on constants only are folded)")
_FLOAT_TYPES = (1, 11)  # TensorProto.FLOAT, DOUBLE


@dataclass
class _Pending:
    op: Op
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    name: str


@dataclass(frozen=True)
class _Quantized:
    """A constant read from DequantizeLinear: ``value == integer * scale`` along ``axis``."""

    integer: np.ndarray  # int64, q - zero_point
    scale: np.ndarray  # 1-d (per axis) or one value
    axis: int


def load_graph_onnx(path) -> GraphNetwork:
    """Read ``path`` (``.onnx`` or ``.onnx.gz``) as a graph network."""
    from ..loading import network_name, read_onnx_model
    path = Path(path)
    return graph_from_model(read_onnx_model(path), str(path), network_name(path))


def graph_from_model(model, path: str, name: str, fold_batchnorm: bool = True) -> GraphNetwork:
    """The graph network of an ONNX ``ModelProto`` (``path`` names it in messages).
    ``fold_batchnorm=False`` keeps every BatchNormalization as its own :class:`Scale` node
    (named as the ONNX node), for ``compress``'s recorded ``bn-fold`` step."""
    return _Builder(model, path, fold_batchnorm).build(name)


class _Builder:
    def __init__(self, model, path: str, fold_batchnorm: bool = True):
        self.model = model
        self.path = path
        self.fold_batchnorm = fold_batchnorm
        self.opsets = {o.domain or "": o.version for o in model.opset_import}
        self.consts: dict[str, np.ndarray] = {}
        self.quantized: dict[str, _Quantized] = {}
        self.finite: set[str] = set()
        self.nodes: list[_Pending] = []
        self.tensors: dict[str, int] = {}  # computed tensor name -> node index
        self.owner: dict[int, str] = {}  # node index -> the tensor name that may fold into it
        self.uses: dict[str, int] = {}
        self.label = ""  # the current ONNX node, for messages
        self.node_name = ""  # and for the names of the nodes made from it
        self.names: list[str] = []  # the current ONNX node's input names

    # ---- errors ------------------------------------------------------------------
    def unsupported(self, why: str) -> UnsupportedNetworkError:
        where = f"{self.label}: " if self.label else ""
        return UnsupportedNetworkError(where + why, path=self.path, expected=EXPECTED)

    # ---- the walk ----------------------------------------------------------------
    def build(self, name: str) -> GraphNetwork:
        from ..loading import tensor_array
        graph = self.model.graph
        for init in graph.initializer:
            self.consts[init.name] = tensor_array(init, self.path)
        inputs = [i for i in graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise UnsupportedNetworkError(
                f"the graph has {len(inputs)} variable inputs "
                f"({', '.join(repr(i.name) for i in inputs)})", path=self.path,
                expected="exactly one input")
        if len(graph.output) != 1:
            raise UnsupportedNetworkError(
                f"the graph has {len(graph.output)} outputs", path=self.path,
                expected="exactly one output")
        shape = self.input_shape(inputs[0])
        self.nodes.append(_Pending(None, (), shape, inputs[0].name))
        self.tensors[inputs[0].name] = 0
        out_name = graph.output[0].name
        needed = _needed_nodes(graph, out_name)
        self.uses[out_name] = 1
        for index, node in enumerate(graph.node):
            if index in needed:
                for x in node.input:
                    self.uses[x] = self.uses.get(x, 0) + 1
        known = set(self.consts) | {inputs[0].name}
        for index, node in _topological(graph, known, self.path):
            if index in needed:
                self.label = _node_label(node, index)
                self.node_name = node.name or node.output[0]
                self.run(node)
        self.label = ""
        if out_name not in self.tensors:
            raise self.unsupported(f"the output '{out_name}' does not depend on the input")
        return self.finish(self.tensors[out_name], name)

    def input_shape(self, value_info) -> tuple[int, ...]:
        t = value_info.type.tensor_type
        if not t.HasField("shape"):
            raise UnsupportedNetworkError(f"input '{value_info.name}' has no shape",
                                          path=self.path, expected="a static input shape")
        shape = []
        for k, d in enumerate(t.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(int(d.dim_value))
            elif k == 0:
                shape.append(1)  # a dynamic batch axis
            else:
                raise UnsupportedNetworkError(
                    f"input '{value_info.name}' has dynamic axis {k} "
                    f"('{d.dim_param or '?'}')", path=self.path,
                    expected="a static input shape (only the batch axis may be dynamic)")
        return tuple(shape)

    def run(self, node) -> None:
        if node.domain not in ("", "ai.onnx"):
            raise self.unsupported(f"operator {node.op_type} of domain '{node.domain}'")
        names = list(node.input)
        if not any(x in self.tensors for x in names if x):
            self.fold(node)
            return
        handler = _HANDLERS.get(node.op_type)
        if handler is None:
            raise self.unsupported(f"unsupported operator {node.op_type}")
        for extra in node.output[1:]:
            if extra and self.uses.get(extra):
                raise self.unsupported(f"its output '{extra}' is used (only the first is "
                                       "supported)")
        ins = [None if not x else self.tensors[x] if x in self.tensors else self.const(x)
               for x in names]
        self.names = names
        count = len(self.nodes)
        try:
            out = handler(self, _attrs(node), ins)
        except _Unsupported as exc:
            raise self.unsupported(str(exc)) from None
        except (ValueError, IndexError) as exc:  # IndexError: too few inputs (fuzzed)
            raise self.unsupported(f"shapes, inputs or attributes do not fit ({exc})") from None
        result = node.output[0]
        if isinstance(out, np.ndarray):
            self.consts[result] = out
            return
        self.tensors[result] = out
        if out >= count:
            self.owner[out] = result
        elif self.owner.get(out) in names and self.uses.get(self.owner[out]) == 1:
            self.owner[out] = result  # an alias or an in-place fold: the new name owns it

    # ---- constants ---------------------------------------------------------------
    def const(self, name: str) -> np.ndarray:
        value = self.consts[name]
        if name not in self.finite:
            if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
                raise InputError(f"tensor '{name}' holds NaN or Inf", path=self.path,
                                 expected="finite parameters")
            self.finite.add(name)
        return value

    def fold(self, node) -> None:
        """Evaluate a node on constants only."""
        attrs = _attrs(node)
        try:
            if node.op_type == "Constant":
                values = [_constant_value(node, attrs)]
            elif node.op_type == "DequantizeLinear":
                values = [self.dequantize(node, attrs)]
            else:
                values = self.evaluate(node)
        except _Unsupported as exc:
            raise self.unsupported(str(exc)) from None
        for name, value in zip(node.output, values):
            if name:
                self.consts[name] = np.asarray(value)

    def evaluate(self, node) -> list:
        from onnx.reference import ReferenceEvaluator
        feeds = {x: self.consts[x] for x in node.input if x}
        try:
            return ReferenceEvaluator(node, opsets=self.opsets).run(None, feeds)
        except Exception as exc:  # the reference evaluator raises assorted errors
            raise _Unsupported(f"cannot evaluate it on its constant inputs "
                               f"({type(exc).__name__}: {exc})") from None

    def dequantize(self, node, attrs) -> np.ndarray:
        """``scale * (q - zero_point)`` exactly, remembering the integer form."""
        q = self.consts[node.input[0]]
        scale = np.asarray(self.consts[node.input[1]], dtype=np.float64)
        zero = node.input[2] if len(node.input) > 2 and node.input[2] else None
        zp = np.zeros(1, np.int64) if zero is None else self.consts[zero].astype(np.int64)
        if q.dtype.kind not in "iu":
            raise _Unsupported(f"DequantizeLinear of {q.dtype} values")
        axis = int(attrs.get("axis", 1))
        axis = axis + q.ndim if axis < 0 else axis
        if scale.size > 1:
            if scale.ndim != 1 or q.ndim <= axis or q.shape[axis] != scale.size:
                raise _Unsupported(f"DequantizeLinear scale {scale.shape} does not fit "
                                   f"{q.shape} on axis {axis}")
            shape = [1] * q.ndim
            shape[axis] = scale.size
            scale_b, zp_b = scale.reshape(shape), zp.reshape(shape if zp.size > 1 else ())
        else:
            scale_b, zp_b = scale.reshape(()), zp.reshape(())
        integer = q.astype(np.int64) - zp_b
        self.quantized[node.output[0]] = _Quantized(integer, scale.reshape(-1), axis)
        return integer * scale_b

    # ---- building ------------------------------------------------------------------
    def shape(self, t: int) -> tuple[int, ...]:
        return self.nodes[t].shape

    def add(self, op: Op, inputs, label: str | None = None) -> int:
        inputs = tuple(int(i) for i in inputs)
        shape = tuple(op.out_shape(*(self.nodes[i].shape for i in inputs)))
        self.nodes.append(_Pending(op, inputs, shape, label or self.node_name))
        return len(self.nodes) - 1

    def foldable(self, t: int) -> bool:
        """Whether node ``t`` is read by the current node only (so it may change)."""
        name = self.owner.get(t)
        return t > 0 and name in self.names and self.uses.get(name) == 1

    def reshape(self, t: int, shape) -> int:
        shape = tuple(int(s) for s in shape)
        if shape == self.shape(t):
            return t
        if isinstance(self.nodes[t].op, Reshape):
            t = self.nodes[t].inputs[0]
            if shape == self.shape(t):
                return t
        return self.add(Reshape(shape), (t,))

    def transpose(self, t: int, perm) -> int:
        perm = tuple(int(p) for p in perm)
        if perm == tuple(range(len(perm))):
            return t
        return self.add(Transpose(perm), (t,))

    def affine(self, t: int, scale=None, shift=None, exact: bool = True) -> int:
        """``x * scale + shift`` of node ``t`` (constants broadcastable to its shape)."""
        scale = np.ones(1) if scale is None else np.asarray(scale, dtype=np.float64)
        shift = np.zeros(1) if shift is None else np.asarray(shift, dtype=np.float64)
        shape = self.shape(t)
        try:
            wide = tuple(np.broadcast_shapes(shape, scale.shape, shift.shape))
        except ValueError:
            raise _Unsupported(f"constants of shapes {scale.shape}, {shift.shape} do not "
                               f"broadcast to the computed tensor's shape {shape}") from None
        if wide != shape:
            if int(np.prod(wide)) != int(np.prod(shape)):
                raise _Unsupported(f"it broadcasts the computed tensor {shape} to {wide}")
            t = self.reshape(t, wide)
        if np.all(scale == 1.0) and np.all(shift == 0.0):
            return t
        if self.foldable(t):
            op = _fold_affine(self.nodes[t].op, self.shape(t), scale, shift, exact)
            if op is not None:
                self.nodes[t].op = op
                return t
        return self.add(Scale(scale, shift), (t,))

    def sum(self, a: int, b: int, weights: tuple[float, float]) -> int:
        if a == b:
            return self.affine(a, np.asarray(weights[0] + weights[1]))
        if self.shape(a) != self.shape(b):
            raise _Unsupported(f"it combines computed tensors of shapes {self.shape(a)} and "
                               f"{self.shape(b)} (broadcasting between them is not supported)")
        return self.add(Sum(weights), (a, b))

    def finish(self, out: int, name: str) -> GraphNetwork:
        if out == 0:
            raise self.unsupported("the output is the input itself")
        keep = {out}
        for i in range(out, 0, -1):
            if i in keep:
                keep.update(self.nodes[i].inputs)
        order = sorted(keep)
        index = {old: new for new, old in enumerate(order)}
        nodes = tuple(Node(p.op, tuple(index[j] for j in p.inputs), p.shape, p.name)
                      for p in (self.nodes[i] for i in order))
        try:
            return GraphNetwork(nodes, name)
        except ValueError as exc:  # pragma: no cover - the builder checks shapes as it goes
            raise InputError(f"inconsistent graph ({exc})", path=self.path) from None


def _needed_nodes(graph, out_name: str) -> set[int]:
    """Indices of the nodes the output depends on."""
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    needed, todo = set(), [out_name]
    while todo:
        i = producer.get(todo.pop())
        if i is not None and i not in needed:
            needed.add(i)
            todo.extend(x for x in nodes[i].input if x)
    return needed


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


# ---------------------------------------------------------------- operator handlers
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
        return b.reshape(t, _Walker.new_shape(op_type, attrs, args, b.shape(t)))
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
