"""Compression of graph networks (CNNs, residual networks) into deployable variants.

Recipes are comma-separated steps applied in order:

* ``channels:R[:l1|l2|activation]`` -- structured pruning of Conv output channels
  (:mod:`compress.graph_prune`; residual groups pruned together);
* ``magnitude:R`` -- unstructured: the fraction ``R`` of smallest weights of every learned
  Conv and Gemm set to zero (pooling rewritten as Convs is left alone: :func:`structural`);
* ``bn-fold`` -- every BatchNormalization kept as its own Scale node (a network loaded
  with ``load_onnx(path, fold_batchnorm=False)``) folded into the Conv / Gemm before it;
  the record lists which (:func:`fold_batchnorm_graph`);
* ``svd:R`` / ``energy:E`` -- low-rank factorization of every learned Conv (by its matrix
  form) and Gemm into two thin linear nodes (:mod:`compress.graph_factorize`);
* ``int8`` / ``int4`` / ``intB`` -- symmetric per-output-channel weight quantization of
  every Conv and Gemm (the scales are float32 numbers, rounded up, as the file keeps them).

A :class:`GraphVariant` keeps its network and a JSON change record (the recipe, the digests
of parent and variant, and the kept channels of every pruned group), and saves itself as
an ONNX file with the original's input/output signature, float32, quantized weights as
int8 QDQ (:func:`verify.graph.onnx_write.save_graph_onnx`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from verify.errors import InputError, OptionError
from verify.graph import Conv, Gemm, GraphNetwork, Node, Scale

from .factorize import parse_factorize
from .graph_factorize import factorize_graph
from .graph_prune import METHODS, prune_channels
from .quantize import check_bits, quantize_array, scales_for

GRAPH_RECORD_SCHEMA = "coreproof.graph-changes/1"


@dataclass(frozen=True, eq=False)
class GraphVariant:
    network: GraphNetwork
    record: dict = field(default_factory=dict)

    def save(self, out_dir, stem: str, *, like=None) -> tuple[Path, Path]:
        return save_graph_variant(self, out_dir, stem, like=like)


def structural(op) -> bool:
    """A Conv / Gemm that is part of an operator rewrite rather than a learned layer: no
    bias and at most one distinct non-zero weight (AveragePool as a depthwise Conv, the
    window selections of a rewritten MaxPool).  Compression leaves these alone."""
    nz = op.weight[op.weight != 0]
    return not np.any(op.bias) and (nz.size == 0 or np.all(nz == nz[0]))


def _map_weights(graph: GraphNetwork, fn, name: str) -> GraphNetwork:
    """Apply ``fn(weight) -> (weight, weight_int, weight_scale)`` to every learned Conv /
    Gemm (not the :func:`structural` ones)."""
    nodes = [graph.nodes[0]]
    for n in graph.nodes[1:]:
        op = n.op
        if isinstance(op, (Conv, Gemm)) and not structural(op):
            w, wi, sc = fn(op.weight)
            if isinstance(op, Conv):
                op = Conv(w, op.bias, op.strides, op.pads, op.dilations, op.groups, wi, sc)
            else:
                op = Gemm(w, op.bias, wi, sc)
        nodes.append(Node(op, n.inputs, n.shape, n.name))
    return GraphNetwork(tuple(nodes), name)


def magnitude_prune_graph(graph: GraphNetwork, ratio: float) -> GraphNetwork:
    if not 0.0 <= ratio < 1.0:
        raise OptionError(f"magnitude pruning ratio {ratio} must be in [0, 1)")

    def prune(w):
        k = int(np.floor(ratio * w.size))
        if k == 0:
            return w, None, None
        flat = np.array(w).reshape(-1)
        flat[np.argsort(np.abs(flat), kind="stable")[:k]] = 0.0  # exactly k (ties too)
        return flat.reshape(w.shape), None, None
    return _map_weights(graph, prune, f"{graph.name}~magnitude-{ratio:g}")


def quantize_graph(graph: GraphNetwork, bits: int) -> GraphNetwork:
    bits = check_bits(bits)

    def quant(w):
        rows = w.reshape(w.shape[0], -1)
        scale = scales_for(np.abs(rows).max(axis=1), bits, "uniform")
        wi = quantize_array(rows, scale[:, None], bits)
        shape = (-1,) + (1,) * (w.ndim - 1)
        wi = wi.reshape(w.shape)
        return wi * scale.reshape(shape), wi, scale
    return _map_weights(graph, quant, f"{graph.name}~int{bits}")


def fold_batchnorm_graph(graph: GraphNetwork) -> tuple[GraphNetwork, list[dict]]:
    """Every per-channel :class:`Scale` (a BatchNormalization loaded with
    ``fold_batchnorm=False``) that is the only reader of a learned Conv / Gemm, folded into
    it (``w * s``, ``b * s + h`` in float64, rounded to float32 numbers so that the written
    variant stays a float32 model: equal up to float32 rounding).  Returns the network and
    per fold ``{"scale", "into"}`` (the nodes' names) and their node indices."""
    from verify.graph.onnx_graph import _fold_affine  # noqa: PLC2701 - the loader's folding
    nodes, consumers = list(graph.nodes), graph.consumers()
    gone, folded = set(), []
    for j, n in enumerate(graph.nodes):
        if not isinstance(n.op, Scale) or j == 0:
            continue
        i = n.inputs[0]
        src = nodes[i]
        if not isinstance(src.op, (Conv, Gemm)) or structural(src.op) or consumers[i] != [j]:
            continue
        op = _fold_affine(src.op, src.shape, n.op.scale, n.op.shift, exact=False)
        if op is None:
            continue
        w, b = (a.astype(np.float32).astype(np.float64) for a in (op.weight, op.bias))
        op = Gemm(w, b) if isinstance(op, Gemm) else \
            Conv(w, b, op.strides, op.pads, op.dilations, op.groups)
        nodes[i] = Node(op, src.inputs, src.shape, src.name)
        gone.add(j)
        folded.append({"scale": n.name, "into": src.name, "scale_node": j, "into_node": i})
    if not gone:
        return graph, []
    index, kept = {}, []
    for j, n in enumerate(nodes):
        if j in gone:
            index[j] = index[n.inputs[0]]
            continue
        index[j] = len(kept)
        kept.append(Node(n.op, tuple(index[k] for k in n.inputs), n.shape, n.name))
    return GraphNetwork(tuple(kept), f"{graph.name}~bn-fold"), folded


def _parse(step: str):
    parts = step.strip().split(":")
    head = parts[0].lower()
    if head == "bn-fold" and len(parts) == 1:
        return ("bn-fold",)
    try:
        if head == "channels" and len(parts) in (2, 3):
            method = parts[2].lower() if len(parts) == 3 else "l1"
            if method not in METHODS:
                raise OptionError(f"channel importance {method!r}: expected one of {METHODS}")
            return ("channels", float(parts[1]), method)
        if head == "magnitude" and len(parts) == 2:
            return ("magnitude", float(parts[1]))
        if head.startswith("int") and head[3:].isdigit() and len(parts) <= 2 and \
                (len(parts) == 1 or parts[1].lower() == "channel"):
            return ("int", int(head[3:]))
        if head in ("svd", "energy"):
            f = parse_factorize(head, parts[1:], step.strip())
            return ("factorize", f.rank, f.energy)
    except ValueError:
        pass
    raise OptionError(f"unknown graph compression step {step!r} (expected "
                      "channels:R[:l1|l2|activation], magnitude:R, intB[:channel], bn-fold, "
                      "svd:RANK or energy:SHARE)")


def compress_graph(graph: GraphNetwork, recipe: str, *, calibration=None) -> GraphVariant:
    """Apply the recipe's steps in order; returns the variant and its change record."""
    steps = [s for s in str(recipe).split(",") if s.strip()]
    if not steps:
        raise OptionError("empty recipe")
    current, log = graph, []
    for text in steps:
        step = _parse(text)
        if step[0] == "channels":
            res = prune_channels(current, step[1], method=step[2], calibration=calibration)
            current = res.network
            log.append({"step": text.strip(), **res.to_dict()})
        elif step[0] == "bn-fold":
            current, folded = fold_batchnorm_graph(current)
            log.append({"step": text.strip(), "folded": folded})
        elif step[0] == "factorize":
            current, ranks = factorize_graph(current, step[1], step[2])
            log.append({"step": text.strip(), "ranks": ranks})
        elif step[0] == "magnitude":
            current = magnitude_prune_graph(current, step[1])
            log.append({"step": text.strip()})
        else:
            current = quantize_graph(current, step[1])
            log.append({"step": text.strip()})
    name = f"{graph.name}~{recipe}"
    current = GraphNetwork(current.nodes, name)
    record = {"schema": GRAPH_RECORD_SCHEMA, "recipe": str(recipe), "parent_name": graph.name,
              "parent_digest": graph.digest(), "variant_name": name,
              "variant_digest": current.digest(), "steps": log}
    return GraphVariant(current, record)


def save_graph_variant(variant: GraphVariant, out_dir, stem: str, *, like=None
                       ) -> tuple[Path, Path]:
    """``OUT_DIR/STEM.onnx`` (float32, the original's signature when ``like`` names it;
    float64 when some parameter is not a float32 number) and ``STEM.changes.json``,
    each written to a temporary file and renamed."""
    from verify.graph.onnx_graph import graph_from_model
    from verify.graph.onnx_write import graph_to_onnx
    from verify.atomic import atomic_write

    from .io import variant_paths
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path, record_path = variant_paths(out, stem)
    net = variant.network
    for dtype in (np.float32, np.float64):
        model = graph_to_onnx(net, like=like, dtype=dtype)
        back = graph_from_model(model, str(onnx_path), net.name)
        if GraphNetwork(back.nodes, net.name).digest() == net.digest() or dtype is np.float64:
            break
    atomic_write(onnx_path, model.SerializeToString())
    record = dict(variant.record, dtype=np.dtype(dtype).name)
    atomic_write(record_path, json.dumps(record, indent=1) + "\n")
    return onnx_path, record_path


def load_graph_variant(path) -> GraphVariant:
    """A saved graph variant (``STEM.onnx`` with ``STEM.changes.json``), digest-checked."""
    from verify.onnx_io import load_onnx
    from .io import _stem_of, variant_paths
    folder, stem = _stem_of(Path(path))
    onnx_path, record_path = variant_paths(folder, stem)
    try:
        record = json.loads(record_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"cannot read the change record: {exc}", path=str(record_path)) from None
    if not isinstance(record, dict) or record.get("schema") != GRAPH_RECORD_SCHEMA:
        raise InputError("not a graph change record", path=str(record_path),
                         expected=f"schema {GRAPH_RECORD_SCHEMA}")
    net = load_onnx(onnx_path)
    net = GraphNetwork(net.nodes, record.get("variant_name", net.name)) \
        if isinstance(net, GraphNetwork) else net
    if net.digest() != record.get("variant_digest"):
        raise InputError("the network does not match its change record (digest differs)",
                         path=str(onnx_path))
    return GraphVariant(net, record)


__all__ = ["GraphVariant", "compress_graph", "magnitude_prune_graph", "quantize_graph",
           "save_graph_variant", "load_graph_variant", "GRAPH_RECORD_SCHEMA"]
