"""Read and write ONNX networks.

:func:`load_onnx` reads a graph that is a chain of affine maps and ReLUs as a
fully-connected :class:`Network` (the chain loader, :mod:`verify.onnx_chain`) and
any other graph as a :class:`~verify.graph.GraphNetwork` (the graph loader,
:mod:`verify.graph.onnx_graph`); both use the node helpers of :mod:`verify.onnx_nodes`.

:func:`save_onnx` writes ``Gemm(transB=1)`` / ``Relu`` with float64
(``DOUBLE``) tensors and a float64 input, so ``load_onnx(save_onnx(net))``
gives bit-identical weights.  Quantization scales and the original input shape
travel in ``metadata_props`` (:mod:`verify.onnx_metadata`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError, UnsupportedNetworkError
from .network import Network
from .onnx_chain import MAX_DENSE_INPUTS, SUPPORTED_OPS, _load_chain
from .onnx_metadata import _META_SHAPE, _restore_metadata, quantization_metadata

__all__ = ["MAX_DENSE_INPUTS", "OPSET", "SUPPORTED_OPS", "load_onnx", "load_onnx_model",
           "quantization_metadata", "save_onnx"]

if TYPE_CHECKING:
    from .graph import GraphNetwork

OPSET = 13


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
    meta = {_META_SHAPE: json.dumps(list(network.input_shape)), **quantization_metadata(network)}
    helper.set_model_props(model, meta)
    try:
        from .atomic import atomic_path
        with atomic_path(path) as tmp:  # never a partial .onnx
            onnx.save(model, str(tmp))
    except OSError as exc:
        raise InputError(f"cannot write: {exc.strerror or exc}", path=str(path)) from None
