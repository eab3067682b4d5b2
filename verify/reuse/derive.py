"""Change maps for variants that come without a change record (pruned by another tool).

A variant with the original's layer sizes is compared position by position.  Otherwise
its neurons are matched to the original's by their weights, layer by layer: the variant's
row ``j`` is compared with every original row restricted to the input columns that
survived (in the variant's order), by relative L2 distance of weights and bias, and rows
are paired greedily, closest pair first.  A pair must be close (the distance a pruning
of the row's inputs or a quantization leaves, well under the row's own size) or the
networks are declared unrelated -- reverify then verifies from scratch, and says so.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeMismatchError
from ..network import Network

MATCH_TOLERANCE = 0.25  # relative L2 distance of a matched row (pruned + int4 stay below)


def derive_neuron_maps(original: Network, variant: Network,
                       tolerance: float = MATCH_TOLERANCE) -> tuple[list[np.ndarray], str]:
    """Per layer of the original, the variant's index of each neuron (-1: removed), and
    how they were related (``"position"`` or ``"matched by weights"``)."""
    if original.n_inputs != variant.n_inputs or original.n_outputs != variant.n_outputs:
        raise ShapeMismatchError(f"the variant takes {variant.n_inputs} inputs and gives "
                                 f"{variant.n_outputs} outputs, the original "
                                 f"{original.n_inputs} and {original.n_outputs}")
    if original.layer_sizes() == variant.layer_sizes():
        return [np.arange(a.out_size) for a in original.affines], "position"
    if original.n_layers != variant.n_layers:
        raise ShapeMismatchError(f"no change record, and the variant has {variant.n_layers} "
                                 f"layers where the original has {original.n_layers}: "
                                 "cannot match their neurons")
    maps, cols = [], np.arange(original.n_inputs)  # variant column c <- original column cols[c]
    for k, (oa, va) in enumerate(zip(original.affines, variant.affines)):
        last = k == original.n_layers - 1
        if last:
            m = np.arange(oa.out_size)
        else:
            m = _match_rows(oa.weight[:, cols], oa.bias, va.weight, va.bias, tolerance, k)
        maps.append(m)
        order = np.full(va.out_size, -1)
        order[m[m >= 0]] = np.flatnonzero(m >= 0)
        cols = order
    return maps, "matched by weights"


def _match_rows(wo, bo, wv, bv, tolerance: float, k: int) -> np.ndarray:
    ao = np.hstack([wo, bo[:, None]])
    av = np.hstack([wv, bv[:, None]])
    no = np.einsum("ij,ij->i", ao, ao)
    nv = np.einsum("ij,ij->i", av, av)
    d2 = np.maximum(nv[:, None] + no[None, :] - 2.0 * av @ ao.T, 0.0)  # (n_v, n_o)
    rel = np.sqrt(d2) / np.maximum(np.sqrt(no)[None, :], 1e-12)
    out = np.full(wo.shape[0], -1)
    taken_v = np.zeros(wv.shape[0], dtype=bool)
    for flat in np.argsort(rel, axis=None, kind="stable"):
        j, i = divmod(int(flat), rel.shape[1])
        if taken_v[j] or out[i] >= 0:
            continue
        if rel[j, i] > tolerance:
            break
        out[i], taken_v[j] = j, True
        if taken_v.all():
            break
    if not taken_v.all():
        j = int(np.flatnonzero(~taken_v)[0])
        raise ShapeMismatchError(f"no change record, and neuron {j} of the variant's layer {k} "
                                 "matches no neuron of the original by its weights")
    return out


class GraphChangeMap:
    """The change map of a graph (CNN) variant with its original's ReLU layers, neuron by
    neuron (quantized, magnitude-pruned, fine-tuned: the same architecture).  It carries
    what re-checking a ReLU-split proof tree needs -- split facts map to themselves -- and
    nothing of the chain-only differential tiers.  A channel-pruned variant has other
    layer sizes: it is mapped through its expansion (:mod:`verify.reuse.expand`)."""

    how = "position (graph)"

    def __init__(self, original, variant, how: str | None = None):
        if original.n_inputs != variant.n_inputs or original.n_outputs != variant.n_outputs \
                or tuple(original.hidden_sizes) != tuple(variant.hidden_sizes):
            raise ShapeMismatchError(
                f"the graph variant's ReLU layers {tuple(variant.hidden_sizes)} differ from "
                f"the original's {tuple(original.hidden_sizes)} (channel pruning): no neuron "
                "map for graph networks yet")
        self.original, self.variant = original, variant
        if how is not None:
            self.how = how
        self.kept_rows = [np.arange(n) for n in original.hidden_sizes] + \
            [np.arange(original.n_outputs)]  # per layer, as ChangeMap's (output last)

    def diff(self):
        """The node-by-node change of the variant (:mod:`verify.reuse.graph_difference`),
        built once; raises ShapeMismatchError for graphs that differ otherwise."""
        if not hasattr(self, "_diff"):
            from .graph_difference import GraphDiff
            self._diff = GraphDiff(self.original, self.variant)
        return self._diff

    def diffable(self) -> bool:
        """Whether :meth:`diff` applies (the same nodes; only parameters changed)."""
        try:
            self.diff()
        except ShapeMismatchError:
            return False
        return True

    def map_name(self, name: str) -> str:
        return name

    def map_splits(self, facts) -> tuple[str, ...]:
        return tuple(facts)

    def counts(self, names) -> dict[str, int]:
        n = len(names.layer) if hasattr(names, "layer") else len(list(names))
        return {"unchanged": 0, "revalued": n, "removed": 0}  # not compared per neuron
