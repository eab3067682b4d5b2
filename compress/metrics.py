"""Size and fidelity measures for compressed variants.

Size convention (:func:`storage_bytes`): the bytes needed to store the
parameters at their bit width, counting only *non-zero* weights (a sparse layer
is charged for its non-zeros; the index overhead of a sparse format is not
counted).  Per layer:

* weights: ``ceil(nnz * bits / 8)`` where ``bits`` is the quantization bit width
  (from the change record, else inferred from the integer weights), or 32 for
  float weights (the float32 precision of the usual source models);
* scales: 4 bytes (float32) each -- one per layer for a per-tensor scale, one
  per row for per-channel scales;
* biases: all of them (dense), 4 bytes each, or ``ceil(n * bias_bits / 8)`` plus
  a 4-byte scale when biases are quantized;
* a factorised layer (the record's ``factor_rank`` r): its two dense float32 factors,
  ``4 * r * (out + in)`` bytes, and its biases.

Parameter counts (:func:`parameter_counts`) likewise count a factorised layer's
factors, ``r * (out + in)`` weights, not its composed weight.

A graph network (CNN) is charged the same way node by node
(:func:`graph_storage_bytes`): every learned Conv / Gemm (a factorised one is two nodes
already), quantized weights at their inferred bit width plus one float32 scale per
output channel, and per-channel Scale nodes (unfolded BatchNorms) in float32.  Operator
rewrites (pooling written as Convs) hold no learned parameters and are not charged.
"""
from __future__ import annotations

import math

import numpy as np

from verify.network import Network

from .record import ChangeRecord

FLOAT_BITS = 32


def _rank(record: ChangeRecord | None, k: int) -> int | None:
    if record is None or k >= len(record.layers):
        return None
    return record.layers[k].factor_rank


def parameter_counts(network: Network, record: ChangeRecord | None = None
                     ) -> tuple[int, int]:
    """(all parameters, non-zero parameters): weights and biases (a factorised
    layer's factors, counted dense, when the record says so)."""
    total = nonzero = 0
    for k, a in enumerate(network.affines):
        r = _rank(record, k)
        if r is not None:
            total += r * (a.in_size + a.out_size)
            nonzero += r * (a.in_size + a.out_size)
        else:
            total += a.weight.size
            nonzero += int(np.count_nonzero(a.weight))
        total += a.bias.size
        nonzero += int(np.count_nonzero(a.bias))
    return int(total), int(nonzero)


def _inferred_bits(a) -> int:
    m = int(np.abs(a.weight_int).max(initial=0))
    return max(2, m.bit_length() + 1)


def graph_storage_bytes(graph) -> int:
    """Bytes to store a graph network's learned parameters (see the module doc)."""
    from verify.graph import Conv, Gemm, Scale

    from .graph_compress import structural
    total = 0
    for node in graph.nodes[1:]:
        op = node.op
        if isinstance(op, Scale):
            total += 4 * (op.scale.size + op.shift.size)
        elif isinstance(op, (Conv, Gemm)) and not structural(op):
            nnz = int(np.count_nonzero(op.weight))
            total += (math.ceil(nnz * _inferred_bits(op) / 8) + 4 * op.weight.shape[0]
                      if op.weight_int is not None else math.ceil(nnz * FLOAT_BITS / 8))
            total += 4 * op.bias.size
    return int(total)


def storage_bytes(network: Network, record: ChangeRecord | None = None) -> int:
    """Bytes to store the network's parameters at their bit width (see the module doc;
    a graph network: :func:`graph_storage_bytes`)."""
    if not isinstance(network, Network):
        return graph_storage_bytes(network)
    total = 0
    for k, a in enumerate(network.affines):
        lc = record.layers[k] if record is not None and k < len(record.layers) else None
        nnz = int(np.count_nonzero(a.weight))
        r = _rank(record, k)
        if r is not None:
            total += 4 * r * (a.in_size + a.out_size)
        elif a.is_quantized:
            bits = lc.bits if lc is not None and lc.bits else _inferred_bits(a)
            n_scales = 1 if np.all(a.weight_scale == a.weight_scale[0]) else a.out_size
            total += math.ceil(nnz * bits / 8) + 4 * n_scales
        else:
            total += math.ceil(nnz * FLOAT_BITS / 8)
        if lc is not None and lc.bias_bits:
            total += math.ceil(a.bias.size * lc.bias_bits / 8) + 4
        else:
            total += 4 * a.bias.size
    return int(total)


def sample_box(lower, upper, n: int = 1000, seed: int = 0) -> np.ndarray:
    """``n`` points uniformly at random in the box (fixed seed)."""
    lo = np.asarray(lower, dtype=np.float64).reshape(-1)
    hi = np.asarray(upper, dtype=np.float64).reshape(-1)
    rng = np.random.default_rng(seed)
    return lo + (hi - lo) * rng.random((int(n), lo.size))


def output_deviation(parent: Network, variant: Network, points: np.ndarray
                     ) -> tuple[float, float]:
    """(max, mean) over the points of ``max_j |parent(x)_j - variant(x)_j|``."""
    d = np.abs(parent.forward(points) - variant.forward(points)).max(axis=1)
    return float(d.max(initial=0.0)), float(d.mean()) if d.size else 0.0


def predictions(network: Network, x: np.ndarray, *, argmin: bool = False) -> np.ndarray:
    y = network.forward(np.asarray(x, dtype=np.float64).reshape(len(x), -1))
    return y.argmin(axis=1) if argmin else y.argmax(axis=1)


def accuracy(network: Network, x: np.ndarray, labels: np.ndarray, *, argmin: bool = False
             ) -> float:
    """Fraction of inputs whose top-1 class (argmax, or argmin) equals the label."""
    labels = np.asarray(labels).reshape(-1)
    return float(np.mean(predictions(network, x, argmin=argmin) == labels))


def agreement(parent: Network, variant: Network, x: np.ndarray, *, argmin: bool = False
              ) -> float:
    """Fraction of inputs on which both networks pick the same top-1 output."""
    return float(np.mean(predictions(parent, x, argmin=argmin)
                         == predictions(variant, x, argmin=argmin)))
