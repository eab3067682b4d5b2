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

This module walks the graph and assembles the network; the operator handlers are in
:mod:`verify.graph.onnx_handlers`, the exact folding in :mod:`verify.graph.exact_fold`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, UnsupportedNetworkError
from ..onnx_nodes import _attrs, _constant_value, _node_label, _topological, _Unsupported
from .exact_fold import _fold_affine
from .model import GraphNetwork, Node
from .onnx_handlers import _HANDLERS
from .ops import Op, Reshape, Scale, Sum, Transpose

SUPPORTED_OPS = ("Add", "AveragePool", "BatchNormalization", "Cast", "Constant", "Conv",
                 "DequantizeLinear", "Div", "Dropout", "Flatten", "Gemm",
                 "GlobalAveragePool", "Identity", "MatMul", "MaxPool", "Mul", "Neg", "Pad",
                 "Relu", "Reshape", "Shape", "Squeeze", "Sub", "Sum", "Transpose", "Unsqueeze")
EXPECTED = ("a network of " + ", ".join(SUPPORTED_OPS)
            + " on one input (nodes on constants only are folded)")


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
