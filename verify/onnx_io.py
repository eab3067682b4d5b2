"""Read and write ONNX networks.

:func:`load_onnx` walks the graph in topological order.  The single variable
tensor is tracked as an affine map of the current layer's input: a Jacobian of
shape ``(n_in, *shape)`` and a constant of shape ``shape`` (``None`` stands for
the identity / zero, which keeps exact copies exact).  Linear operators compose
into that map; ``Relu`` closes it into an :class:`Affine` layer.  Constants
(initializers and ``Constant`` nodes) are folded.  The batch dimension is
taken to be 1, so the whole tensor is the flat input vector.

:func:`save_onnx` writes ``Gemm(transB=1)`` / ``Relu`` with float64
(``DOUBLE``) tensors and a float64 input, so ``load_onnx(save_onnx(net))``
gives bit-identical weights.  Quantization scales and the original input shape
travel in ``metadata_props``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError, UnsupportedNetworkError
from .network import Affine, Network

if TYPE_CHECKING:
    from .graph import GraphNetwork

SUPPORTED_OPS = ("Add", "Constant", "Div", "Dropout", "Flatten", "Gemm", "Identity", "MatMul",
                 "Mul", "Neg", "Relu", "Reshape", "Squeeze", "Sub", "Transpose", "Unsqueeze")
_EXPECTED = "a feed-forward network of " + ", ".join(SUPPORTED_OPS)
_META_SHAPE = "coreproof.input_shape"
_META_SCALE = "coreproof.layer{}.weight_scale"
OPSET = 13
#: the chain loader tracks dense (inputs x values) Jacobians: larger inputs go to
#: the graph loader (an identity Jacobian of 8192 inputs is 512 MB)
MAX_DENSE_INPUTS = 8192


# ---------------------------------------------------------------- the tracked tensor
@dataclass(frozen=True)
class _Var:
    """The variable tensor: ``value = jac^T . layer_input + const`` (flat, C order)."""

    shape: tuple[int, ...]
    n_in: int
    jac: np.ndarray | None = None  # (n_in, *shape); None = identity
    const: np.ndarray | None = None  # shape; None = zeros

    def jacobian(self) -> np.ndarray:
        if self.jac is not None:
            return self.jac
        return np.eye(self.n_in).reshape((self.n_in,) + self.shape)

    def constant(self) -> np.ndarray:
        return np.zeros(self.shape) if self.const is None else self.const

    def reshaped(self, shape: tuple[int, ...]) -> "_Var":
        shape = tuple(int(s) for s in shape)
        jac = None if self.jac is None else self.jac.reshape((self.n_in,) + shape)
        const = None if self.const is None else self.const.reshape(shape)
        return _Var(shape, self.n_in, jac, const)

    def to_affine(self) -> Affine:
        weight = self.jacobian().reshape(self.n_in, -1).T
        return Affine(weight, self.constant().reshape(-1))


def _fresh(shape: tuple[int, ...]) -> _Var:
    return _Var(tuple(shape), int(np.prod(shape, dtype=np.int64)))


class _Unsupported(Exception):
    """Raised inside an operator handler; turned into UnsupportedNetworkError."""


# ---------------------------------------------------------------- linear operators
def _lift(jac: np.ndarray, shape: tuple[int, ...], ndim: int) -> np.ndarray:
    """Insert size-1 axes after the Jacobian's leading axis up to ``ndim`` tensor axes."""
    return jac.reshape((jac.shape[0],) + (1,) * max(0, ndim - len(shape)) + shape)


def _matmul_right(v: _Var, w: np.ndarray) -> _Var:
    """``v @ w`` with a constant ``w``."""
    out_shape = np.matmul(np.zeros(v.shape), w).shape
    const = None if v.const is None else np.matmul(v.const, w)
    if v.jac is None and w.ndim == 2 and int(np.prod(v.shape[:-1])) == 1:
        jac = w.reshape((v.n_in,) + out_shape)  # d(x @ w)_j / dx_i = w[i, j], exactly
    else:
        s = (1,) + v.shape if len(v.shape) == 1 else v.shape
        jac = np.matmul(_lift(v.jacobian(), s, w.ndim), w).reshape((v.n_in,) + out_shape)
    return _Var(out_shape, v.n_in, jac, const)


def _matmul_left(w: np.ndarray, v: _Var) -> _Var:
    """``w @ v`` with a constant ``w``."""
    out_shape = np.matmul(w, np.zeros(v.shape)).shape
    const = None if v.const is None else np.matmul(w, v.const)
    if v.jac is None and w.ndim == 2 and (len(v.shape) == 1 or v.shape[-1] == 1) \
            and int(np.prod(v.shape)) == w.shape[1]:
        jac = w.T.reshape((v.n_in,) + out_shape)  # d(w @ x)_j / dx_i = w[j, i], exactly
    else:
        w2 = w[None, :] if w.ndim == 1 else w
        s = v.shape + (1,) if len(v.shape) == 1 else v.shape
        jac = np.matmul(w2, _lift(v.jacobian(), s, w2.ndim)).reshape((v.n_in,) + out_shape)
    return _Var(out_shape, v.n_in, jac, const)


def _elementwise(op: str, v: _Var, c: np.ndarray, var_first: bool) -> _Var:
    """``v op c`` (or ``c op v``) for Add/Sub/Mul/Div with a constant ``c``."""
    out = tuple(np.broadcast_shapes(v.shape, c.shape))
    if op == "Div" and not var_first:
        raise _Unsupported("division by a computed tensor is not affine")
    if out == v.shape and op in ("Add", "Sub") and var_first:
        jac = v.jac
    else:
        jac = np.broadcast_to(_lift(v.jacobian(), v.shape, len(out)), (v.n_in,) + out)
    base = None if v.const is None else np.broadcast_to(v.const, out)
    if op == "Add":
        const = np.broadcast_to(c, out).copy() if base is None else base + c
    elif op == "Sub" and var_first:
        const = -np.broadcast_to(c, out) if base is None else base - c
    elif op == "Sub":
        jac = -jac
        const = np.broadcast_to(c, out).copy() if base is None else c - base
    elif op == "Mul":
        jac = jac * c
        const = None if base is None else base * c
    else:  # Div
        jac = jac / c
        const = None if base is None else base / c
    if jac is not None and not jac.flags.writeable:
        jac = jac.copy()
    return _Var(out, v.n_in, jac, const)


def _transpose(v: _Var, perm: list[int] | None) -> _Var:
    perm = list(reversed(range(len(v.shape)))) if perm is None else [int(p) for p in perm]
    shape = tuple(v.shape[p] for p in perm)
    jac = np.transpose(v.jacobian(), [0] + [p + 1 for p in perm])
    const = None if v.const is None else np.transpose(v.const, perm)
    return _Var(shape, v.n_in, np.ascontiguousarray(jac), const)


# ---------------------------------------------------------------- shape helpers
def _flatten_shape(shape: tuple[int, ...], axis: int) -> tuple[int, int]:
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis <= len(shape):
        raise _Unsupported(f"Flatten axis {axis} does not fit shape {shape}")
    return int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))


def _reshape_shape(shape: tuple[int, ...], target, allowzero: bool) -> tuple[int, ...]:
    dims = [int(d) for d in np.asarray(target).reshape(-1)]
    if not allowzero:
        dims = [shape[i] if d == 0 and i < len(shape) else d for i, d in enumerate(dims)]
    total = int(np.prod(shape))
    if dims.count(-1) == 1:
        known = int(np.prod([d for d in dims if d != -1]))
        dims[dims.index(-1)] = total // known if known else 0
    if int(np.prod(dims)) != total or any(d < 0 for d in dims):
        raise _Unsupported(f"cannot reshape {shape} to {tuple(int(d) for d in target)}")
    return tuple(dims)


def _squeeze_shape(shape: tuple[int, ...], axes) -> tuple[int, ...]:
    if axes is None:
        return tuple(s for s in shape if s != 1)
    axes = {int(a) % len(shape) for a in np.asarray(axes).reshape(-1)}
    return tuple(s for i, s in enumerate(shape) if i not in axes)


def _unsqueeze_shape(shape: tuple[int, ...], axes) -> tuple[int, ...]:
    axes = [int(a) for a in np.asarray(axes).reshape(-1)]
    rank = len(shape) + len(axes)
    axes = sorted(a + rank if a < 0 else a for a in axes)
    out = list(shape)
    for a in axes:
        out.insert(a, 1)
    return tuple(out)


# ---------------------------------------------------------------- graph walk
def _attrs(node) -> dict:
    from .onnx_proto import attribute_value
    return {a.name: attribute_value(a) for a in node.attribute}


def _constant_value(node, attrs: dict) -> np.ndarray:
    if "value" in attrs:
        from .loading import tensor_array
        return tensor_array(attrs["value"])
    for key in ("value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs:
            return np.asarray(attrs[key])
    raise _Unsupported("Constant node without a numeric value")


def _node_label(node, index: int) -> str:
    name = node.name or f"#{index}"
    return f"{node.op_type} node '{name}'"


def _topological(graph, known: set[str], path: str) -> list:
    """Nodes in an order where every input is produced before use."""
    pending = list(enumerate(graph.node))
    ordered, avail = [], set(known)
    while pending:
        rest = [(i, n) for i, n in pending if not all(x == "" or x in avail for x in n.input)]
        ready = [(i, n) for i, n in pending if all(x == "" or x in avail for x in n.input)]
        if not ready:
            i, n = rest[0]
            missing = [x for x in n.input if x and x not in avail]
            raise InputError(f"{_node_label(n, i)} uses undefined tensor '{missing[0]}'",
                             path=path, expected="a well-formed ONNX graph")
        for i, n in ready:
            ordered.append((i, n))
            avail.update(n.output)
        pending = rest
    return ordered


class _Walker:
    """Walks one graph; holds the completed layers and the tracked tensor."""

    def __init__(self, path: str):
        self.path = path
        self.consts: dict[str, np.ndarray] = {}
        self.var_name: str | None = None
        self.var: _Var | None = None
        self.layers: list[Affine] = []

    def fail(self, node, index: int, why: str) -> UnsupportedNetworkError:
        return UnsupportedNetworkError(f"{_node_label(node, index)}: {why}", path=self.path,
                                       expected=_EXPECTED)

    def run(self, node, index: int) -> None:
        op = node.op_type
        if op not in SUPPORTED_OPS or (node.domain not in ("", "ai.onnx")):
            raise self.fail(node, index, f"unsupported operator {op}")
        attrs = _attrs(node)
        names = [x for x in node.input]
        var_pos = [k for k, x in enumerate(names) if x and x == self.var_name]
        unknown = [x for x in names if x and x != self.var_name and x not in self.consts]
        if unknown:
            raise self.fail(node, index, f"input '{unknown[0]}' is a computed tensor that "
                                         "is no longer current (branching graph)")
        try:
            if not var_pos:
                self.fold(node, op, attrs)
                return
            if len(var_pos) > 1:
                raise _Unsupported("it combines two computed tensors (not feed-forward)")
            self.var = self.apply(op, attrs, names, var_pos[0])
        except _Unsupported as exc:
            raise self.fail(node, index, str(exc)) from None
        except (ValueError, IndexError) as exc:
            raise self.fail(node, index, f"shapes do not fit ({exc})") from None
        self.var_name = node.output[0]

    # -- all-constant nodes are evaluated ------------------------------------
    def fold(self, node, op: str, attrs: dict) -> None:
        if op == "Constant":
            self.consts[node.output[0]] = _constant_value(node, attrs)
            from .loading import check_parameters
            check_parameters(f"tensor '{node.output[0]}' (Constant node '{node.name}')",
                             self.consts[node.output[0]], self.path)
            return
        args = [self.consts[x] if x else None for x in node.input]
        if op in ("Add", "Sub", "Mul", "Div"):
            a, b = args[0], args[1]
            value = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
                     "Div": np.divide}[op](a, b)
        elif op == "Neg":
            value = -args[0]
        elif op == "Relu":
            value = np.maximum(args[0], 0)
        elif op in ("Identity", "Dropout"):
            value = args[0]
        elif op == "MatMul":
            value = np.matmul(args[0], args[1])
        elif op == "Gemm":
            value = self.gemm_const(attrs, args)
        elif op == "Transpose":
            value = np.transpose(args[0], attrs.get("perm"))
        else:  # shape-only operators
            value = args[0].reshape(self.new_shape(op, attrs, args, args[0].shape))
        self.consts[node.output[0]] = np.asarray(value)

    @staticmethod
    def gemm_const(attrs: dict, args: list) -> np.ndarray:
        a = args[0].T if attrs.get("transA", 0) else args[0]
        b = args[1].T if attrs.get("transB", 0) else args[1]
        y = attrs.get("alpha", 1.0) * (a @ b)
        if len(args) > 2 and args[2] is not None:
            y = y + attrs.get("beta", 1.0) * args[2]
        return y

    @staticmethod
    def new_shape(op: str, attrs: dict, args: list, shape: tuple[int, ...]) -> tuple[int, ...]:
        if op == "Flatten":
            return _flatten_shape(shape, int(attrs.get("axis", 1)))
        if op == "Reshape":
            if len(args) < 2 or args[1] is None:
                raise _Unsupported("Reshape needs a constant shape input")
            return _reshape_shape(shape, args[1], bool(attrs.get("allowzero", 0)))
        axes = attrs.get("axes", args[1] if len(args) > 1 else None)
        if op == "Squeeze":
            return _squeeze_shape(shape, axes)
        if axes is None:
            raise _Unsupported("Unsqueeze needs axes")
        return _unsqueeze_shape(shape, axes)

    # -- nodes on the variable tensor ----------------------------------------
    def apply(self, op: str, attrs: dict, names: list[str], pos: int) -> _Var:
        v = self.var
        args = [None if (not x or k == pos) else self.consts[x] for k, x in enumerate(names)]
        if op in ("Identity", "Dropout"):
            return v
        if op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
            if pos != 0:
                raise _Unsupported("the shape argument must be a constant")
            return v.reshaped(self.new_shape(op, attrs, args, v.shape))
        if op == "Transpose":
            return _transpose(v, attrs.get("perm"))
        if op == "Relu":
            return self.relu(v)
        if op == "Neg":
            return _elementwise("Mul", v, np.asarray(-1.0), True)
        if op in ("Add", "Sub", "Mul", "Div"):
            return _elementwise(op, v, np.asarray(args[1 - pos], dtype=np.float64), pos == 0)
        if op == "MatMul":
            other = np.asarray(args[1 - pos], dtype=np.float64)
            return _matmul_right(v, other) if pos == 0 else _matmul_left(other, v)
        if op == "Gemm":
            return self.gemm(v, attrs, args, pos)
        raise _Unsupported(f"unsupported operator {op}")  # pragma: no cover

    @staticmethod
    def gemm(v: _Var, attrs: dict, args: list, pos: int) -> _Var:
        if pos == 2:
            raise _Unsupported("the Gemm bias must be a constant")
        if attrs.get("transA", 0):
            v = _transpose(v, None) if pos == 0 else v
        if pos == 0:
            b = np.asarray(args[1], dtype=np.float64)
            v = _matmul_right(v, b.T if attrs.get("transB", 0) else b)
        else:
            a = np.asarray(args[0], dtype=np.float64)
            a = a.T if attrs.get("transA", 0) else a
            if attrs.get("transB", 0):
                v = _transpose(v, None)
            v = _matmul_left(a, v)
        alpha = float(attrs.get("alpha", 1.0))
        if alpha != 1.0:
            v = _elementwise("Mul", v, np.asarray(alpha), True)
        if len(args) > 2 and args[2] is not None:
            beta = float(attrs.get("beta", 1.0))
            c = np.asarray(args[2], dtype=np.float64)
            v = _elementwise("Add", v, c if beta == 1.0 else beta * c, True)
        return v

    def relu(self, v: _Var) -> _Var:
        if self.layers and v.jac is None and v.const is None:
            return v  # the tensor is (a reshape of) a ReLU output: ReLU is a no-op
        self.layers.append(v.to_affine())
        return _fresh(v.shape)

    def finish(self) -> list[Affine]:
        v = self.var
        if self.layers and v.jac is None and v.const is None:
            n = v.n_in
            return self.layers + [Affine(np.eye(n), np.zeros(n))]  # network ends in ReLU
        return self.layers + [v.to_affine()]


# ---------------------------------------------------------------- public API
def _input_shape(value_info) -> tuple[int, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims)


def _restore_metadata(model, affines: list[Affine], shape: tuple[int, ...]):
    meta = {p.key: p.value for p in model.metadata_props}
    if _META_SHAPE in meta:
        try:
            saved = tuple(int(s) for s in json.loads(meta[_META_SHAPE]))
            if int(np.prod(saved)) == int(np.prod(shape)):
                shape = saved
        except (ValueError, TypeError):
            pass
    out = []
    for k, a in enumerate(affines):
        text = meta.get(_META_SCALE.format(k))
        out.append(_requantize(a, text) if text else a)
    return out, shape


def _requantize(a: Affine, text: str) -> Affine:
    """Restore integer weights from a saved scale vector if they reproduce ``a`` exactly."""
    try:
        scale = np.asarray(json.loads(text), dtype=np.float64).reshape(-1)
        if scale.shape != (a.out_size,) or not np.all(np.isfinite(scale)) or np.any(scale == 0):
            return a
        wi = np.round(a.weight / scale[:, None])
        if np.array_equal(wi * scale[:, None], a.weight) and np.all(np.abs(wi) < 2 ** 53):
            return Affine(a.weight, a.bias, wi.astype(np.int64), scale)
    except (ValueError, TypeError):
        pass
    return a


def load_onnx(path, fold_batchnorm: bool = True) -> "Network | GraphNetwork":
    """Load an ONNX file (``.onnx`` or ``.onnx.gz``): a fully-connected :class:`Network`
    (float64, canonical form) when the graph is a chain of affine maps and ReLUs, else a
    :class:`~verify.graph.GraphNetwork` (:mod:`verify.graph.onnx_graph`; with
    ``fold_batchnorm=False`` BatchNormalizations stay separate Scale nodes)."""
    from .loading import network_name, read_onnx_model
    path = Path(path)
    return load_onnx_model(read_onnx_model(path), network_name(path), str(path),
                           fold_batchnorm)


def load_onnx_model(model, name: str, path: str | None = None,
                    fold_batchnorm: bool = True) -> "Network | GraphNetwork":
    """:func:`load_onnx` of a ``ModelProto`` (``path`` names it in messages)."""
    from .graph.model import as_chain
    from .graph.onnx_graph import graph_from_model
    path = path or name
    if {n.op_type for n in model.graph.node} <= set(SUPPORTED_OPS):
        try:
            return _load_chain(model, Path(path), name)
        except UnsupportedNetworkError:
            pass  # a branching graph, say: the graph loader names what it cannot read
    graph = graph_from_model(model, path, name, fold_batchnorm)
    if not fold_batchnorm:
        return graph
    chain = as_chain(graph)  # e.g. a chain whose weights are int8 QDQ (a written variant)
    if chain is None:
        return graph
    affines, _ = _restore_metadata(model, list(chain.affines), chain.input_shape)
    return chain.with_affines(affines)


def quantization_metadata(network: Network) -> dict[str, str]:
    """Model properties that keep the integer form of quantized layers in a file whose
    weights are plain floats (read back by :func:`load_onnx`)."""
    return {_META_SCALE.format(k): json.dumps([float(s) for s in a.weight_scale])
            for k, a in enumerate(network.affines) if a.weight_scale is not None}


def _load_chain(model, path: Path, name: str) -> Network:
    graph = model.graph
    walker = _Walker(str(path))
    from .loading import check_parameters, tensor_array
    for init in graph.initializer:
        walker.consts[init.name] = tensor_array(init, path)
        check_parameters(f"tensor '{init.name}'", walker.consts[init.name], path)
    inputs = [i for i in graph.input if i.name not in walker.consts]
    if len(inputs) != 1:
        raise UnsupportedNetworkError(f"the graph has {len(inputs)} variable inputs",
                                      path=str(path), expected="exactly one input")
    if len(graph.output) != 1:
        raise UnsupportedNetworkError(f"the graph has {len(graph.output)} outputs",
                                      path=str(path), expected="exactly one output")
    shape = _input_shape(inputs[0])
    if int(np.prod(shape, dtype=np.float64)) > MAX_DENSE_INPUTS:  # dense Jacobians: n x n
        raise UnsupportedNetworkError(f"an input of shape {shape} is too large for a dense "
                                      "fully-connected network", path=str(path),
                                      expected=f"at most {MAX_DENSE_INPUTS} input values")
    walker.var_name, walker.var = inputs[0].name, _fresh(shape)
    uses: dict[str, int] = {graph.output[0].name: 1}
    for node in graph.node:
        for x in node.input:
            uses[x] = uses.get(x, 0) + 1
    for index, node in _topological(graph, set(walker.consts) | {inputs[0].name}, str(path)):
        if walker.var_name in node.input and uses.get(walker.var_name, 0) > 1:
            raise walker.fail(node, index, f"tensor '{walker.var_name}' feeds several "
                                           "consumers (not a plain feed-forward chain)")
        walker.run(node, index)
    if graph.output[0].name != walker.var_name:
        raise UnsupportedNetworkError(
            f"the output '{graph.output[0].name}' is not computed from the input by a chain",
            path=str(path), expected=_EXPECTED)
    affines, shape = _restore_metadata(model, walker.finish(), shape)
    return Network(tuple(affines), shape, name)


def save_onnx(network: Network, path) -> None:
    """Write ``network`` as Gemm/Relu with float64 tensors (exact; opset 13)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    nodes, inits, current = [], [], "input"
    for k, a in enumerate(network.affines):
        w, b = f"layer{k}.weight", f"layer{k}.bias"
        inits.append(numpy_helper.from_array(np.asarray(a.weight, dtype=np.float64), w))
        inits.append(numpy_helper.from_array(np.asarray(a.bias, dtype=np.float64), b))
        last = k == network.n_layers - 1
        out = "output" if last else f"layer{k}.pre"
        nodes.append(helper.make_node("Gemm", [current, w, b], [out], name=f"gemm{k}", transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"layer{k}.post"], name=f"relu{k}"))
            current = f"layer{k}.post"
    graph = helper.make_graph(
        nodes, network.name, [helper.make_tensor_value_info(
            "input", TensorProto.DOUBLE, [1, network.n_inputs])],
        [helper.make_tensor_value_info("output", TensorProto.DOUBLE, [1, network.n_outputs])],
        initializer=inits)
    model = helper.make_model(graph, producer_name="coreproof",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by older runtimes; opset 13 needs IR >= 7
    meta = {_META_SHAPE: json.dumps(list(network.input_shape))}
    for k, a in enumerate(network.affines):
        if a.weight_scale is not None:
            meta[_META_SCALE.format(k)] = json.dumps([float(s) for s in a.weight_scale])
    helper.set_model_props(model, meta)
    try:
        from .atomic import atomic_path
        with atomic_path(path) as tmp:  # never a partial .onnx
            onnx.save(model, str(tmp))
    except OSError as exc:
        raise InputError(f"cannot write: {exc.strerror or exc}", path=str(path)) from None
