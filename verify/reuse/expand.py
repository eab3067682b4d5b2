"""A channel-pruned graph variant expanded back to its original's architecture.

Channel pruning removes channels whose every consumer then ignores them, so the variant
``V`` computes exactly what the *expanded* network ``E`` computes: the original's
architecture, the variant's weights on the kept channels (in the variant's order), the
original's weights on the removed ones, and every consumer's input weights of a removed
channel zero (for a pure pruning, ``E`` is :func:`compress.graph_prune.masked_original`).
``E`` has the original's ReLU layers, so the original's ReLU-split proof tree is walked on
it neuron by neuron; splits on removed neurons only partition the domain (their neurons
feed nothing).

Which channels were kept comes from the variant's change record (its ``channels`` steps,
composed) or, without a record, is matched by the producing filters' weights
(:func:`derive_channel_keep`).  Neither is trusted: :func:`expand_variant` accepts ``E``
only after checking (a) that every consumer of a removed channel is a channel-wise
operator carrying the same removed channels or has exactly zero weights on it, and (b)
that slicing the removed channels out of ``E`` gives the variant's digest.  (a) makes
``E`` compute what ``E`` sliced computes, (b) makes that the variant (digests of the
float weights: a quantized layer's integer form is its weight exactly), for every input --
whatever keep map was used (a wrong map can only make the proof tree fit worse).
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeMismatchError
from ..graph import Conv, Gemm, GraphNetwork, Node, Pad, Relu, Reshape, Scale, Sum
from .derive import MATCH_TOLERANCE, GraphChangeMap, _match_rows


def _channelwise(op, in_channels: int) -> bool:
    if isinstance(op, (Relu, Pad, Scale, Sum)):
        return True
    return isinstance(op, Conv) and op.groups == in_channels == op.out_channels > 1 \
        and op.weight.shape[1] == 1


def _flatten_gemms(graph: GraphNetwork, c: int, consumers) -> bool:
    n = graph.nodes[c]
    return isinstance(n.op, Reshape) and n.shape == (1, graph.nodes[n.inputs[0]].size) \
        and bool(consumers[c]) and all(isinstance(graph.nodes[g].op, Gemm) for g in consumers[c])


def _flat_cols(channels, hw: int) -> np.ndarray:
    return (np.asarray(channels)[:, None] * hw + np.arange(hw)[None, :]).reshape(-1)


def keep_from_record(original: GraphNetwork, record: dict) -> dict[int, np.ndarray]:
    """Per node of the original, the original channels the variant keeps (in its order),
    composed over the record's ``channels`` steps."""
    keep: dict[int, np.ndarray] = {}
    for step in record.get("steps", []):
        for g in step.get("groups", []):
            kept = np.asarray(g.get("kept", []), dtype=np.int64)
            if len(kept) == g.get("channels"):
                continue
            for m in g.get("members", []):
                m = int(m)
                if not 0 < m < len(original.nodes):
                    raise ShapeMismatchError(f"the change record names node {m}, which the "
                                             "original does not have")
                prev = keep.get(m, np.arange(original.nodes[m].shape[1]))
                keep[m] = prev[kept]
    return keep


def derive_channel_keep(original: GraphNetwork, variant: GraphNetwork,
                        tolerance: float = MATCH_TOLERANCE) -> dict[int, np.ndarray]:
    """Without a record: the kept channels of each Conv matched to the original's filters
    by their weights (restricted to the input channels kept before), passed on through
    channel-wise operators."""
    if len(original.nodes) != len(variant.nodes):
        raise ShapeMismatchError(f"the variant has {len(variant.nodes)} graph nodes, the "
                                 f"original {len(original.nodes)}: cannot match channels")
    keep: dict[int, np.ndarray] = {}
    for i, (no, nv) in enumerate(zip(original.nodes[1:], variant.nodes[1:]), 1):
        if no.inputs != nv.inputs or type(no.op) is not type(nv.op):
            raise ShapeMismatchError(f"graph node {i} differs in kind or inputs from the "
                                     "original's: cannot match channels")
        if len(no.shape) != 4 or no.shape[1] == nv.shape[1] and not any(
                j in keep for j in no.inputs):
            continue
        src = no.inputs[0]
        if isinstance(no.op, Conv) and not _channelwise(no.op, original.nodes[src].shape[1]):
            if no.shape[1] == nv.shape[1]:
                continue
            cols = keep.get(src, np.arange(original.nodes[src].shape[1]))
            wo = no.op.weight[:, cols].reshape(no.shape[1], -1)
            m = _match_rows(wo, no.op.bias, nv.op.weight.reshape(nv.shape[1], -1), nv.op.bias,
                            tolerance, i)
            order = np.full(nv.shape[1], -1)
            order[m[m >= 0]] = np.flatnonzero(m >= 0)
            keep[i] = order
        elif src in keep:
            keep[i] = keep[src]
    return keep


def expand(original: GraphNetwork, variant: GraphNetwork, keep: dict) -> GraphNetwork:
    """The expanded network ``E`` (see the module docstring); checked by :func:`check`."""
    if len(original.nodes) != len(variant.nodes):
        raise ShapeMismatchError("the variant's graph has other nodes than the original's")
    nodes = [original.nodes[0]]
    for i, (no, nv) in enumerate(zip(original.nodes[1:], variant.nodes[1:]), 1):
        op, vop = no.op, nv.op
        out_k, in_k = keep.get(i), keep.get(no.inputs[0]) if no.inputs else None
        if isinstance(op, Conv) and isinstance(vop, Conv):
            w, b = np.array(op.weight), np.array(op.bias)
            rows = np.arange(w.shape[0]) if out_k is None else out_k
            if _channelwise(op, original.nodes[no.inputs[0]].shape[1]):
                rows = rows if out_k is not None else (np.arange(w.shape[0]) if in_k is None
                                                       else in_k)
                w[rows], b[rows] = vop.weight, vop.bias
            else:
                cols = np.arange(w.shape[1]) if in_k is None else in_k
                if in_k is not None:
                    w[:, np.setdiff1d(np.arange(w.shape[1]), in_k)] = 0.0
                w[np.ix_(rows, cols)] = vop.weight
                b[rows] = vop.bias
            new = Conv(w, b, op.strides, op.pads, op.dilations, op.groups)
        elif isinstance(op, Scale) and isinstance(vop, Scale) and out_k is not None:
            new = Scale(*(_put_axis1(a, va, out_k) for a, va in
                          ((op.scale, vop.scale), (op.shift, vop.shift))))
        elif isinstance(op, Gemm) and isinstance(vop, Gemm) and op.weight.shape != vop.weight.shape:
            flat = original.nodes[no.inputs[0]]
            src = flat.inputs[0] if isinstance(flat.op, Reshape) else None
            if src is None or src not in keep or op.weight.shape[0] != vop.weight.shape[0]:
                raise ShapeMismatchError(f"graph node {i}: a Gemm of another shape that does "
                                         "not read a pruned flattened tensor")
            hw = int(np.prod(original.nodes[src].shape[2:]))
            w = np.array(op.weight)
            w[:, _flat_cols(np.setdiff1d(np.arange(original.nodes[src].shape[1]), keep[src]),
                            hw)] = 0.0
            w[:, _flat_cols(keep[src], hw)] = vop.weight
            new = Gemm(w, vop.bias)
        elif isinstance(op, Reshape):
            new = op
        else:
            new = vop
        nodes.append(Node(new, no.inputs, no.shape, no.name))
    try:
        return GraphNetwork(tuple(nodes), f"{variant.name}~expanded")
    except ValueError as exc:
        raise ShapeMismatchError(f"the expanded variant is not a valid graph ({exc})") from None


def _put_axis1(a: np.ndarray, va: np.ndarray, keep) -> np.ndarray:
    full = np.array(a.reshape((1,) * (4 - a.ndim) + a.shape))
    if full.shape[1] == 1:
        return va
    full[:, keep] = va.reshape((1,) * (4 - va.ndim) + va.shape)
    return full


def _float_form(graph: GraphNetwork) -> GraphNetwork:
    """``graph`` without the integer forms of quantized weights (``weight`` is exactly
    ``weight_int * scale``: the same function, and the digest compares only that)."""
    nodes = [graph.nodes[0]]
    for n in graph.nodes[1:]:
        op = n.op
        if isinstance(op, Gemm) and op.weight_int is not None:
            op = Gemm(op.weight, op.bias)
        elif isinstance(op, Conv) and op.weight_int is not None:
            op = Conv(op.weight, op.bias, op.strides, op.pads, op.dilations, op.groups)
        nodes.append(Node(op, n.inputs, n.shape, n.name))
    return GraphNetwork(tuple(nodes), graph.name)


def check(expanded: GraphNetwork, variant: GraphNetwork, keep: dict) -> None:
    """Raise ShapeMismatchError unless ``expanded`` computes what ``variant`` computes
    (conditions (a) and (b) of the module docstring)."""
    from compress.graph_prune import slice_channels
    consumers = expanded.consumers()
    for i, kept in keep.items():
        n = expanded.nodes[i]
        if i == expanded.output or len(n.shape) != 4:
            raise ShapeMismatchError(f"graph node {i} cannot lose channels (the output, or "
                                     "not a channel tensor)")
        gone = np.setdiff1d(np.arange(n.shape[1]), kept)
        if len(np.unique(kept)) != len(kept) or len(gone) + len(kept) != n.shape[1]:
            raise ShapeMismatchError(f"graph node {i}: its kept channels are not distinct "
                                     "channels of the node")
        for c in consumers[i]:
            op = expanded.nodes[c].op
            cs = expanded.nodes[c].shape
            if _channelwise(op, n.shape[1]) and len(cs) == 4 and cs[1] == n.shape[1]:
                if c not in keep or not np.array_equal(keep[c], kept):
                    raise ShapeMismatchError(f"graph node {c} passes channels of node {i} "
                                             "on, but keeps other ones")
            elif isinstance(op, Conv) and op.groups == 1:
                if np.any(op.weight[:, gone]):
                    raise ShapeMismatchError(f"graph node {c} reads removed channels of node "
                                             f"{i} with non-zero weights")
            elif _flatten_gemms(expanded, c, consumers):
                cols = _flat_cols(gone, int(np.prod(n.shape[2:])))
                if any(np.any(expanded.nodes[g].op.weight[:, cols]) for g in consumers[c]):
                    raise ShapeMismatchError(f"a Gemm reads removed channels of node {i} "
                                             "with non-zero weights")
            else:
                raise ShapeMismatchError(f"graph node {c} ({op.describe()}) reads node {i}, "
                                         "whose channels were removed")
    sliced = slice_channels(expanded, keep, variant.name)
    if _float_form(sliced).digest() != _float_form(variant).digest():
        raise ShapeMismatchError("the expanded variant, its removed channels sliced out, is "
                                 "not the variant")


def expand_variant(original: GraphNetwork, variant: GraphNetwork, record: dict | None
                   ) -> tuple[GraphNetwork, str]:
    """``E`` and how its channel map was found (raises ShapeMismatchError when no checked
    expansion exists: the caller verifies from scratch)."""
    try:
        if record is not None and any(s.get("groups") for s in record.get("steps", [])):
            keep, how = keep_from_record(original, record), "channels expanded (change record)"
        else:
            keep = derive_channel_keep(original, variant)
            how = "channels expanded (matched by weights)"
        expanded = expand(original, variant, keep)
        check(expanded, variant, keep)
    except (ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
        # a malformed record or a graph the expansion does not fit
        raise ShapeMismatchError(f"cannot expand the channel-pruned variant ({exc})") from None
    return expanded, how


def graph_change_map(original, variant, record: dict | None):
    """(the change map of a graph variant, the network its proof is re-checked on): the
    variant itself when it has the original's ReLU layers, else its checked expansion."""
    if tuple(original.hidden_sizes) != tuple(variant.hidden_sizes) \
            and isinstance(original, GraphNetwork) and isinstance(variant, GraphNetwork):
        expanded, how = expand_variant(original, variant, record)
        return GraphChangeMap(original, expanded, how), expanded
    return GraphChangeMap(original, variant), variant
