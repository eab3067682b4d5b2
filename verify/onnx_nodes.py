"""ONNX node helpers shared by both ONNX loaders (the chain loader
:mod:`verify.onnx_chain` and the graph loader :mod:`verify.graph.onnx_graph`): node
attributes, ``Constant`` values, node labels for messages, the topological order of a
graph, and the output shapes of the layout operators."""
from __future__ import annotations

import numpy as np

from .errors import InputError


class _Unsupported(Exception):
    """Raised inside an operator handler; turned into UnsupportedNetworkError."""


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


def layout_shape(op: str, attrs: dict, args: list, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The output shape of a Flatten / Reshape / Squeeze / Unsqueeze node whose data input
    has ``shape`` (``args``: its inputs, constants where known)."""
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
