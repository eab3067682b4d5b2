"""Low-rank factorization of the Conv and Gemm layers of a graph network (CNN, ResNet).

The graph form of :mod:`compress.factorize` (the recipe steps ``svd:R`` and ``energy:E``):

* a **Gemm** ``W`` (out x in) becomes two Gemm nodes, ``V`` (r x in, no bias) then ``U``
  (out x r, the layer's bias), with ``U = U_r diag(s_r)`` and ``V = V_r^T`` of the
  truncated SVD;
* a **Conv** uses its matrix form: the weight ``(O, C, kh, kw)`` read as an ``O x (C kh
  kw)`` matrix is factorised the same way, and the layer becomes a Conv with ``r`` output
  channels (``V`` reshaped to ``(r, C, kh, kw)``, the layer's strides, pads and
  dilations, no bias) followed by a 1x1 Conv ``U`` (``(O, r, 1, 1)``, the layer's bias).
  Every output pixel of the original is ``W @ patch + b``; of the variant ``U (V @ patch)
  + b``: the same map with ``U V`` in place of ``W``.  Grouped convolutions
  (``groups > 1``) are left alone (their matrix is block diagonal; factorising it would
  mix the groups).

Both factors are rounded to float32 numbers, and the graph holds the two nodes as they are
(nothing is composed): the network coreproof verifies is exactly what the written ONNX
file holds, and the verifier bounds the two consecutive linear nodes like any other.
Layers that are part of an operator rewrite (:func:`compress.graph_compress.structural`)
and quantized layers are not factorised.  ``svd:R`` factorises every learned layer at
rank ``min(R, rows, columns)`` (at full rank the variant computes the original's
function up to float32 rounding of the factors); ``energy:E`` takes per layer the
smallest rank keeping the share ``E`` of the squared singular values and factorises only
the layers where that saves weights.
"""
from __future__ import annotations

import numpy as np

from verify.errors import OptionError
from verify.graph import Conv, Gemm, GraphNetwork, Node

from .factorize import choose_rank, svd_factors


def _factor_nodes(node: Node, index: int, rank, energy):
    """The two nodes replacing the Conv / Gemm ``node`` (its inputs already renumbered;
    ``index`` is the number the first of them gets) and the rank, or None to keep it."""
    op = node.op
    if isinstance(op, Conv) and op.groups != 1:
        return None
    matrix = op.weight.reshape(op.weight.shape[0], -1)  # a Conv's matrix form
    if op.weight_int is not None:
        raise OptionError(f"node {node.name} is quantized: factorise before quantizing "
                          "(or not at all)")
    s = np.linalg.svd(matrix, compute_uv=False)
    r = choose_rank(s, rank, energy)
    if energy is not None and r * sum(matrix.shape) >= matrix.size:
        return None  # no saving at this rank: the layer stays dense
    U, V = svd_factors(matrix, r)
    out_ch = matrix.shape[0]
    if isinstance(op, Gemm):
        first = Node(Gemm(V, np.zeros(r)), node.inputs, node.shape[:-1] + (r,),
                     f"{node.name}.v")
        second = Node(Gemm(U, op.bias), (index,), node.shape, f"{node.name}.u")
    else:
        first = Node(Conv(V.reshape((r,) + op.weight.shape[1:]), np.zeros(r), op.strides,
                          op.pads, op.dilations), node.inputs,
                     (node.shape[0], r) + tuple(node.shape[2:]), f"{node.name}.v")
        second = Node(Conv(U.reshape(out_ch, r, 1, 1), op.bias), (index,), node.shape,
                      f"{node.name}.u")
    return (first, second), r


def factorize_graph(graph: GraphNetwork, rank: int | None = None,
                    energy: float | None = None) -> tuple[GraphNetwork, dict[str, int]]:
    """The factorised graph (see the module doc) and the rank given to each factorised
    node, by node name."""
    from .graph_compress import structural
    if (rank is None) == (energy is None):
        raise OptionError("factorization needs exactly one of a rank or an energy share")
    nodes, index, ranks = [graph.nodes[0]], {0: 0}, {}
    for j, n in enumerate(graph.nodes[1:], 1):
        n = Node(n.op, tuple(index[k] for k in n.inputs), n.shape, n.name)
        got = _factor_nodes(n, len(nodes), rank, energy) \
            if isinstance(n.op, (Conv, Gemm)) and not structural(n.op) else None
        if got is None:
            nodes.append(n)
        else:
            nodes.extend(got[0])
            ranks[n.name] = got[1]
        index[j] = len(nodes) - 1
    return GraphNetwork(tuple(nodes), graph.name), ranks


__all__ = ["factorize_graph"]
