"""What compression changed, in terms of the constraint names of a proof.

:class:`ChangeMap` relates a variant to the original network -- through its
:class:`~compress.record.ChangeRecord` (index maps of kept neurons) or, with
no record, position by position for two networks of the same shape -- and
classifies every neuron of the original as ``unchanged``, ``revalued`` (its
incoming weights or bias differ: quantization, weight pruning, a removed
input neuron) or ``removed``.  The variant is also a ``networkx`` graph
(nodes ``(layer, index)`` in the original's numbering, inputs are layer -1;
edges are nonzero weights); the *affected region* is every changed neuron
and all its descendants -- exactly the neurons whose values can differ.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import networkx as nx
import numpy as np

from ..diffbounds import AlignedLayers
from ..errors import ShapeMismatchError
from ..network import Network
from ..constraint_names import neuron_name, parse_neuron, parse_output

UNCHANGED, REVALUED, REMOVED = "unchanged", "revalued", "removed"
_KINDS = (UNCHANGED, REVALUED, REMOVED)  # the status codes of ChangeMap._comparison
_UNCHANGED_C, _REVALUED_C, _REMOVED_C = range(3)  # their indices


_NOT_A_NEURON, _OUTPUT_LAYER = -1, -2  # ParsedNames.layer of in./spec. and out. names
_OTHER_KIND, _RELU_KIND, _BOUNDS_KIND = range(3)


@dataclass(frozen=True)
class ParsedNames:
    """Constraint names as arrays: layer (or ``_NOT_A_NEURON`` / ``_OUTPUT_LAYER``),
    neuron index and kind (a ReLU relation, bound facts, anything else)."""

    layer: np.ndarray
    index: np.ndarray
    kind: np.ndarray


def parse_names(names) -> ParsedNames:
    layer, index, kind = [], [], []
    for name in names:
        neuron = parse_neuron(name)
        if neuron is not None:
            layer.append(neuron[0])
            index.append(neuron[1])
            kind.append(_RELU_KIND if neuron[2] == "relu" else
                        _BOUNDS_KIND if neuron[2] == "bounds" else _OTHER_KIND)
            continue
        out = parse_output(name)
        layer.append(_NOT_A_NEURON if out is None else _OUTPUT_LAYER)
        index.append(0 if out is None else out)
        kind.append(_OTHER_KIND)
    return ParsedNames(np.array(layer, dtype=np.int64), np.array(index, dtype=np.int64),
                       np.array(kind, dtype=np.int8))


class ChangeMap:
    def __init__(self, original: Network, variant: Network, record=None):
        self.original, self.variant = original, variant
        if record is not None:
            if record.parent_digest != original.digest() or record.variant_digest != variant.digest():
                raise ShapeMismatchError("the change record does not relate these two networks "
                                         "(parent or variant digest differs)")
            self.maps = [np.array([-1 if v is None else v for v in lc.index_map], dtype=np.int64)
                         for lc in record.layers]
            self.how = "change record"
        else:  # same sizes: position by position; else neurons matched by their weights
            from .derive import derive_neuron_maps
            self.maps, self.how = derive_neuron_maps(original, variant)
        self.n_layers = original.n_layers

    @cached_property
    def kept_rows(self) -> list[np.ndarray]:
        """Per layer: the original index of each of the variant's neurons."""
        return [np.flatnonzero(m >= 0) for m in self.maps]

    @cached_property
    def embedded(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per layer, the variant's weights and bias in the original's numbering
        and shape: a removed neuron's row, bias and outgoing column are zero (it
        computes relu(0) = 0 and feeds nothing), so this is the variant's function."""
        out, kept_cols = [], np.ones(self.original.n_inputs, dtype=bool)
        for k, (oa, va) in enumerate(zip(self.original.affines, self.variant.affines)):
            rows = self.kept_rows[k]
            if len(rows) == len(self.maps[k]) and kept_cols.all():  # same shape
                out.append((va.weight, va.bias))
            else:
                W = np.zeros_like(oa.weight)
                W[np.ix_(rows, np.flatnonzero(kept_cols))] = va.weight
                b = np.zeros_like(oa.bias)
                b[rows] = va.bias
                out.append((W, b))
            kept_cols = self.maps[k] >= 0
        return out

    @cached_property
    def deltas(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per layer, the change of weights and bias: :attr:`embedded` minus the original's."""
        return [(W - oa.weight, b - oa.bias)
                for oa, (W, b) in zip(self.original.affines, self.embedded)]

    @cached_property
    def relative_change(self) -> float:
        """How far the variant's parameters moved: the largest, over layers, of
        ``||[W' - W, b' - b]|| / ||[W, b]||`` (Frobenius norms, the original's
        numbering; a removed neuron's weights and bias count as moved to 0).  int16
        quantization: 1e-4 - 2e-4 on ACAS Xu 4_7 and mnist-net_256x6; int8 and 10 %
        magnitude pruning 6e-3 - 4e-2; removing 5 % of the neurons 0.16 - 0.24."""
        out = 0.0
        for oa, (dW, db) in zip(self.original.affines, self.deltas):
            norm = float(np.sqrt(np.sum(oa.weight ** 2) + np.sum(oa.bias ** 2)))
            moved = float(np.sqrt(np.sum(dW ** 2) + np.sum(db ** 2)))
            out = max(out, moved / norm if norm > 0 else float("inf") if moved > 0 else 0.0)
        return out

    @cached_property
    def aligned(self) -> AlignedLayers:
        """The pair as aligned layers in the original's numbering, for symbolic
        bounds of the change (:mod:`verify.diffbounds`)."""
        return AlignedLayers(tuple(W for W, _ in self.embedded), tuple(d for d, _ in self.deltas),
                             tuple(b for _, b in self.deltas),
                             tuple(a.weight for a in self.original.affines),
                             tuple(a.bias for a in self.original.affines))

    # compared on first use: a proof closed by the variant's own bounds needs
    # neither the per-neuron status nor the graph
    @cached_property
    def _comparison(self):
        """Per layer: the status code of each original neuron (index into
        ``_KINDS``) and the edges (variant column -> original column, kept rows,
        variant weight)."""
        codes, edges = [], []
        back = np.arange(self.original.n_inputs)  # variant column c <- original column back[c]
        for k, (va, (dW, db)) in enumerate(zip(self.variant.affines, self.deltas)):
            rows = self.kept_rows[k]
            changed = (db != 0) | (dW != 0).any(axis=1)
            if len(rows) < len(changed):
                changed = changed[rows]
            code = np.full(len(self.maps[k]), _REMOVED_C, dtype=np.int8)
            code[rows] = np.where(changed, _REVALUED_C, _UNCHANGED_C)
            codes.append(code)
            edges.append((back, rows, va.weight))
            back = rows
        return codes, edges

    @cached_property
    def status(self) -> dict[tuple[int, int], str]:
        """Per neuron ``(layer, index)`` of the original: unchanged, revalued or removed."""
        return {(k, i): _KINDS[c] for k, code in enumerate(self._comparison[0])
                for i, c in enumerate(code.tolist())}

    # the graph is built on first use only (on mnist-net_256x2 it takes about
    # 0.25 s, more than most proofs the variant's own bounds settle)
    @cached_property
    def graph(self) -> nx.DiGraph:
        graph = nx.DiGraph()
        graph.add_nodes_from((-1, j) for j in range(self.original.n_inputs))
        for k, (back, kept_rows, weight) in enumerate(self._comparison[1]):
            graph.add_nodes_from((k, int(i)) for i in kept_rows)
            rows, cols = np.nonzero(weight)
            graph.add_edges_from(zip(zip([k - 1] * len(cols), back[cols].tolist()),
                                     zip([k] * len(rows), kept_rows[rows].tolist())))
        return graph

    @cached_property
    def _affected_masks(self) -> list[np.ndarray]:
        """Per layer, over the original's neurons: in the affected region
        (propagated layer by layer over the variant's nonzero weights)."""
        masks = []
        prev = np.zeros(self.original.n_inputs, dtype=bool)  # inputs never change
        for code, (back, kept_rows, weight) in zip(*self._comparison):
            cols = prev[back]  # the variant's columns that are affected
            reach = (weight[:, cols] != 0).any(axis=1) if cols.any() else np.zeros(len(kept_rows), bool)
            prev = np.zeros(len(code), dtype=bool)
            prev[kept_rows[reach | (code[kept_rows] == _REVALUED_C)]] = True
            masks.append(prev)
        return masks

    @cached_property
    def affected(self) -> set[tuple[int, int]]:
        """Every changed neuron and all its descendants in the variant's graph
        (the same set as ``networkx.descendants`` on :attr:`graph`, without building it)."""
        return {(k, int(i)) for k, m in enumerate(self._affected_masks) for i in np.flatnonzero(m)}

    # ---- neurons ---------------------------------------------------------------
    def classify(self, name: str) -> str:
        """``unchanged`` / ``revalued`` / ``removed`` for a constraint name of the original."""
        return _KINDS[int(self._codes(parse_names([name]))[0])]

    def _codes(self, p: "ParsedNames") -> np.ndarray:
        """The status code of each parsed name: its neuron's (removed, revalued or
        unchanged); a ReLU relation of a kept neuron is unchanged; a kept neuron's
        bound facts are revalued exactly when it is in the affected region."""
        codes = np.full(len(p.layer), _UNCHANGED_C, dtype=np.int8)
        layer = np.where(p.layer == _OUTPUT_LAYER, self.n_layers - 1, p.layer)
        layers = np.unique(layer[layer >= 0]).tolist()
        status = self._comparison[0] if layers else None
        for k in layers:
            sel = np.flatnonzero(layer == k)
            idx = p.index[sel]
            valid = (idx < len(status[k])) if k < len(status) else np.zeros(len(idx), bool)
            code = np.full(len(idx), _REMOVED_C, dtype=np.int8)
            code[valid] = status[k][idx[valid]]
            kept = code != _REMOVED_C
            code[kept & (p.kind[sel] == _RELU_KIND)] = _UNCHANGED_C
            bounds = np.flatnonzero(kept & (p.kind[sel] == _BOUNDS_KIND))
            if len(bounds):
                code[bounds] = np.where(self._affected_masks[k][idx[bounds]], _REVALUED_C,
                                        _UNCHANGED_C)
            codes[sel] = code
        return codes

    def map_name(self, name: str) -> str | None:
        """The variant's name of the same constraint (``None``: the neuron was removed)."""
        neuron = parse_neuron(name)
        if neuron is None:
            return name
        k, i, kind = neuron
        new = int(self.maps[k][i]) if k < len(self.maps) and i < len(self.maps[k]) else -1
        return None if new < 0 else neuron_name(k, new, kind)

    def map_splits(self, facts) -> tuple[str, ...]:
        """Split facts for the variant; splits on removed neurons are dropped
        (both sides of such a split become the unsplit branch: still a cover)."""
        return tuple(n for n in (self.map_name(f) for f in facts) if n is not None)

    def counts(self, names) -> dict[str, int]:
        """How many of ``names`` (constraint names, or :func:`parse_names` of them)
        are unchanged, revalued and removed."""
        p = names if isinstance(names, ParsedNames) else parse_names(names)
        return dict(zip(_KINDS, np.bincount(self._codes(p), minlength=3).tolist()))

    def affected_names(self, constraint_names) -> list[str]:
        """The variant's constraints (by name) of neurons in the affected region."""
        inv = {}
        for k, m in enumerate(self.maps):
            for i, new in enumerate(m):
                if new >= 0:
                    inv[(k, int(new))] = (k, i)
        out = []
        for n in constraint_names:
            neuron, j = parse_neuron(n), parse_output(n)
            if neuron is not None:
                if inv.get(neuron[:2]) in self.affected:
                    out.append(n)
            elif j is not None and (self.n_layers - 1, j) in self.affected:
                out.append(n)
        return out
