"""Structured channel pruning of convolutional graph networks.

Channels are followed through the graph as *channel groups*: a Conv with ``groups == 1``
makes a new group of its output channels; ReLU, spatial Pad, per-channel Scale and
depthwise Conv (pooling) pass a group on; a residual Sum ties the groups of its inputs
into one (their channels are pruned together, so the addition still adds channel ``c``
to channel ``c``).  A group is consumed by Convs (their input channels are removed) or by
a flattening Reshape into Gemms (the columns of the removed channels are removed).  A
group that reaches the network input or output, or any other operator, is kept whole.

Removing channel ``c`` of a group makes the pruned network compute exactly what the
original computes when every consumer ignores channel ``c`` (its input weights zeroed),
:func:`masked_original` builds that network for tests and reports.

Channel importance per group: ``l1`` / ``l2`` norm of the producing filters (summed over
the producers of a tied group), or ``activation``: mean absolute value of the group's
tensors on calibration inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from verify.errors import OptionError
from verify.graph import Conv, Gemm, GraphNetwork, Node, Pad, Relu, Reshape, Scale, Sum

METHODS = ("l1", "l2", "activation")


@dataclass(frozen=True)
class ChannelGroup:
    """Tensors (node indices) that share one channel numbering."""

    members: tuple[int, ...]
    producers: tuple[int, ...]  # Convs (groups == 1) that make its channels
    channels: int
    prunable: bool
    why_kept: str = ""


@dataclass(frozen=True)
class ChannelPruning:
    """The result: the pruned graph and, per group, the original channels it keeps."""

    network: GraphNetwork
    groups: tuple[ChannelGroup, ...]
    kept: dict  # group index -> tuple of kept original channel indices

    def to_dict(self) -> dict:
        return {"groups": [{"members": list(g.members), "producers": list(g.producers),
                            "channels": g.channels, "prunable": g.prunable,
                            "why_kept": g.why_kept,
                            "kept": list(self.kept.get(k, range(g.channels)))}
                           for k, g in enumerate(self.groups)]}


class _Groups:
    """Union-find over nodes with a channel axis (per-sample shape (1, C, H, W))."""

    def __init__(self, n: int):
        self.parent = list(range(n))
        self.frozen: dict[int, str] = {}

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[b] = a
            why = self.frozen.pop(b, None)
            if why and a not in self.frozen:
                self.frozen[a] = why

    def freeze(self, i: int, why: str) -> None:
        self.frozen.setdefault(self.find(i), why)


def _is_channel_tensor(shape) -> bool:
    return len(shape) == 4 and shape[0] == 1


def _depthwise(op: Conv, channels: int) -> bool:
    return op.groups == channels == op.out_channels and op.weight.shape[1] == 1


def _per_channel_scale(op: Scale, shape) -> bool:
    """Scale constants are scalars or vary along the channel axis only (or per element)."""
    for a in (op.scale, op.shift):
        s = (1,) * (4 - a.ndim) + a.shape
        if any(d not in (1, shape[k]) for k, d in enumerate(s)):
            return False
    return True


def _flatten_gemms(graph: GraphNetwork, i: int, consumers) -> bool:
    """Node ``i`` is a Reshape to (1, C*H*W) read only by Gemms."""
    n = graph.nodes[i]
    return (isinstance(n.op, Reshape) and n.shape == (1, graph.nodes[n.inputs[0]].size)
            and bool(consumers[i])
            and all(isinstance(graph.nodes[j].op, Gemm) for j in consumers[i]))


def channel_groups(graph: GraphNetwork) -> list[ChannelGroup]:
    """The channel groups of ``graph`` (see the module docstring)."""
    nodes, consumers = graph.nodes, graph.consumers()
    uf = _Groups(len(nodes))
    producers: dict[int, list[int]] = {}
    channel_nodes = [i for i, n in enumerate(nodes) if _is_channel_tensor(n.shape)]
    for i in channel_nodes:
        n = nodes[i]
        if n.op is None:
            uf.freeze(i, "the network input")
            continue
        src = [j for j in n.inputs]
        op = n.op
        if isinstance(op, Conv) and op.groups == 1:
            producers.setdefault(i, []).append(i)
        elif isinstance(op, Conv) and _depthwise(op, nodes[src[0]].shape[1]):
            uf.union(src[0], i)
        elif isinstance(op, (Relu, Pad)) and _is_channel_tensor(nodes[src[0]].shape) \
                and nodes[src[0]].shape[1] == n.shape[1]:
            uf.union(src[0], i)
        elif isinstance(op, Scale) and _per_channel_scale(op, n.shape):
            uf.union(src[0], i)
        elif isinstance(op, Sum) and all(_is_channel_tensor(nodes[j].shape) for j in src):
            for j in src:
                uf.union(src[0], j)
            uf.union(src[0], i)
        else:
            uf.freeze(i, f"made by {op.describe()}")
            for j in src:
                if _is_channel_tensor(nodes[j].shape):
                    uf.freeze(j, f"read by {op.describe()}")
    for i in channel_nodes:  # readers that cannot follow a channel removal
        for c in consumers[i]:
            op = nodes[c].op
            if isinstance(op, Conv) and (op.groups == 1 or _depthwise(op, nodes[i].shape[1])):
                continue
            if isinstance(op, (Relu, Pad, Scale, Sum)) and _is_channel_tensor(nodes[c].shape):
                continue
            if _flatten_gemms(graph, c, consumers):
                continue
            uf.freeze(i, f"read by {op.describe()}")
        if i == graph.output:
            uf.freeze(i, "the network output")
    roots: dict[int, list[int]] = {}
    for i in channel_nodes:
        roots.setdefault(uf.find(i), []).append(i)
    out = []
    for root, members in roots.items():
        prods = sorted(p for m in members for p in producers.get(m, []))
        why = uf.frozen.get(root, "")
        if not prods and not why:
            why = "no Conv makes its channels"
        out.append(ChannelGroup(tuple(sorted(members)), tuple(prods), nodes[members[0]].shape[1],
                                not why, why))
    return sorted(out, key=lambda g: g.members[0])


def _importance(graph: GraphNetwork, group: ChannelGroup, method: str, calibration):
    if method in ("l1", "l2"):
        score = np.zeros(group.channels)
        for p in group.producers:
            w = graph.nodes[p].op.weight.reshape(group.channels, -1)
            score += np.abs(w).sum(axis=1) if method == "l1" else np.sqrt((w ** 2).sum(axis=1))
        return score
    import torch
    x = np.asarray(calibration, dtype=np.float64).reshape(-1, graph.n_inputs)
    with torch.no_grad():
        values = graph.evaluate(torch.from_numpy(np.ascontiguousarray(x)), keep=True)
    score = np.zeros(group.channels)
    for m in group.members:
        score += values[m].abs().mean(dim=(0, 1, 3, 4)).numpy()
    return score


def prune_channels(graph: GraphNetwork, ratio: float, *, method: str = "l1",
                   calibration=None, name: str | None = None) -> ChannelPruning:
    """Remove ``ratio`` of the channels of every prunable group (at least one channel is
    kept), lowest importance first."""
    if not 0.0 <= ratio < 1.0:
        raise OptionError(f"channel pruning ratio {ratio} must be in [0, 1)")
    if method not in METHODS:
        raise OptionError(f"unknown channel importance {method!r} (expected one of {METHODS})")
    if method == "activation" and calibration is None:
        raise OptionError("channel pruning by activation needs calibration inputs")
    groups = channel_groups(graph)
    kept: dict[int, tuple[int, ...]] = {}
    for k, g in enumerate(groups):
        if not g.prunable:
            continue
        n_remove = min(int(np.floor(ratio * g.channels)), g.channels - 1)
        if n_remove == 0:
            continue
        score = _importance(graph, g, method, calibration)
        order = np.argsort(score, kind="stable")
        kept[k] = tuple(sorted(int(c) for c in order[n_remove:]))
    return ChannelPruning(_rebuild(graph, groups, kept, name), tuple(groups), kept)


def _rebuild(graph: GraphNetwork, groups, kept: dict, name: str | None) -> GraphNetwork:
    keep_of: dict[int, np.ndarray] = {}  # node -> kept channels of its output
    for k, idx in kept.items():
        for m in groups[k].members:
            keep_of[m] = np.asarray(idx)
    return slice_channels(graph, keep_of, name)


def slice_channels(graph: GraphNetwork, keep_of: dict, name: str | None) -> GraphNetwork:
    """``graph`` with only the channels ``keep_of[i]`` (in that order) of every node ``i``
    it names; the consumers' input channels / flattened columns are sliced to match."""
    new_nodes = [graph.nodes[0]]
    for i, n in enumerate(graph.nodes[1:], 1):
        op = n.op
        out_keep = keep_of.get(i)
        in_keep = keep_of.get(n.inputs[0])
        if isinstance(op, Conv):
            op = _slice_conv(op, out_keep, in_keep, depthwise=_depthwise(
                op, graph.nodes[n.inputs[0]].shape[1]) and op.groups > 1)
        elif isinstance(op, Scale):
            op = Scale(_slice_axis1(op.scale, out_keep), _slice_axis1(op.shift, out_keep))
        elif isinstance(op, Reshape) and in_keep is not None:
            src = graph.nodes[n.inputs[0]].shape
            op = Reshape((1, len(in_keep) * src[2] * src[3]))
        elif isinstance(op, Gemm):
            src_node = graph.nodes[n.inputs[0]]
            flat_keep = keep_of.get(src_node.inputs[0]) if isinstance(src_node.op, Reshape) \
                and src_node.inputs else None
            if flat_keep is not None:
                c, h, w = graph.nodes[src_node.inputs[0]].shape[1:]
                cols = (flat_keep[:, None] * (h * w) + np.arange(h * w)[None, :]).reshape(-1)
                op = Gemm(op.weight[:, cols], op.bias,
                          None if op.weight_int is None else op.weight_int[:, cols],
                          op.weight_scale)
        shape = op.out_shape(*(new_nodes[j].shape for j in n.inputs))
        new_nodes.append(Node(op, n.inputs, tuple(shape), n.name))
    return GraphNetwork(tuple(new_nodes), name or f"{graph.name}~channels")


def _slice_axis1(a: np.ndarray, keep) -> np.ndarray:
    if keep is None:
        return a
    full = a.reshape((1,) * (4 - a.ndim) + a.shape)
    return full if full.shape[1] == 1 else full[:, keep]


def _slice_conv(op: Conv, out_keep, in_keep, depthwise: bool) -> Conv:
    w, b = op.weight, op.bias
    wi, sc = op.weight_int, op.weight_scale
    groups = op.groups
    if depthwise:  # one filter per channel: input and output channels go together
        keep = out_keep if out_keep is not None else in_keep
        if keep is not None:
            w, b, groups = w[keep], b[keep], len(keep)
            wi, sc = (None, None) if wi is None else (wi[keep], sc[keep])
    else:
        if out_keep is not None:
            w, b = w[out_keep], b[out_keep]
            wi, sc = (None, None) if wi is None else (wi[out_keep], sc[out_keep])
        if in_keep is not None:
            w = w[:, in_keep]
            wi = None if wi is None else wi[:, in_keep]
    return Conv(w, b, op.strides, op.pads, op.dilations, groups, wi, sc)


def masked_original(graph: GraphNetwork, pruning: ChannelPruning) -> GraphNetwork:
    """The original with every consumer's input weights of the removed channels set to
    zero: the function the pruned network must compute exactly."""
    removed: dict[int, np.ndarray] = {}
    for k, idx in pruning.kept.items():
        g = pruning.groups[k]
        gone = np.setdiff1d(np.arange(g.channels), np.asarray(idx))
        for m in g.members:
            removed[m] = gone
    consumers = graph.consumers()
    nodes = list(graph.nodes)
    for i, n in enumerate(graph.nodes):
        if i not in removed:
            continue
        for c in consumers[i]:
            op = nodes[c].op
            if isinstance(op, Conv) and op.groups == 1:
                w = np.array(op.weight)
                w[:, removed[i]] = 0.0
                nodes[c] = Node(Conv(w, op.bias, op.strides, op.pads, op.dilations, 1),
                                nodes[c].inputs, nodes[c].shape, nodes[c].name)
            elif isinstance(op, Reshape):
                c_, h, w_ = n.shape[1:]
                cols = (removed[i][:, None] * (h * w_) + np.arange(h * w_)[None, :]).reshape(-1)
                for g in consumers[c]:
                    gop = nodes[g].op
                    w = np.array(gop.weight)
                    w[:, cols] = 0.0
                    nodes[g] = Node(Gemm(w, gop.bias), nodes[g].inputs, nodes[g].shape,
                                    nodes[g].name)
    return GraphNetwork(tuple(nodes), f"{graph.name}~masked")
