"""The chain loader of :func:`verify.onnx_io.load_onnx`: an ONNX graph that is a chain
of affine maps and ReLUs read as a fully-connected :class:`Network`.

The graph is walked in topological order.  The single variable tensor is tracked as an
affine map of the current layer's input: a Jacobian of shape ``(n_in, *shape)`` and a
constant of shape ``shape`` (``None`` stands for the identity / zero, which keeps exact
copies exact).  Linear operators compose into that map; ``Relu`` closes it into an
:class:`Affine` layer.  Constants (initializers and ``Constant`` nodes) are folded.  The
batch dimension is taken to be 1, so the whole tensor is the flat input vector."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UnsupportedNetworkError
from .network import Affine, Network
from .onnx_metadata import _restore_metadata
from .onnx_nodes import (_attrs, _constant_value, _node_label, _topological, _Unsupported,
                         layout_shape)

SUPPORTED_OPS = ("Add", "Constant", "Div", "Dropout", "Flatten", "Gemm", "Identity", "MatMul",
                 "Mul", "Neg", "Relu", "Reshape", "Squeeze", "Sub", "Transpose", "Unsqueeze")
_EXPECTED = "a feed-forward network of " + ", ".join(SUPPORTED_OPS)
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


# ---------------------------------------------------------------- the walk
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
            value = args[0].reshape(layout_shape(op, attrs, args, args[0].shape))
        self.consts[node.output[0]] = np.asarray(value)

    @staticmethod
    def gemm_const(attrs: dict, args: list) -> np.ndarray:
        a = args[0].T if attrs.get("transA", 0) else args[0]
        b = args[1].T if attrs.get("transB", 0) else args[1]
        y = attrs.get("alpha", 1.0) * (a @ b)
        if len(args) > 2 and args[2] is not None:
            y = y + attrs.get("beta", 1.0) * args[2]
        return y


    # -- nodes on the variable tensor ----------------------------------------
    def apply(self, op: str, attrs: dict, names: list[str], pos: int) -> _Var:
        v = self.var
        args = [None if (not x or k == pos) else self.consts[x] for k, x in enumerate(names)]
        if op in ("Identity", "Dropout"):
            return v
        if op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
            if pos != 0:
                raise _Unsupported("the shape argument must be a constant")
            return v.reshaped(layout_shape(op, attrs, args, v.shape))
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


# ---------------------------------------------------------------- the chain of one model
def _input_shape(value_info) -> tuple[int, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims)


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
