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

import re
from functools import cached_property

import networkx as nx
import numpy as np

from ..errors import ShapeMismatchError
from ..network import Network

UNCHANGED, REVALUED, REMOVED = "unchanged", "revalued", "removed"
_KINDS = (UNCHANGED, REVALUED, REMOVED)  # the status codes of ChangeMap._comparison
_UNCHANGED_C, _REVALUED_C, _REMOVED_C = range(3)  # their indices
_NEURON = re.compile(r"^L(\d+)\.N(\d+)\.(affine|relu|bounds|active|inactive)$")
_OUTPUT = re.compile(r"^out\.(\d+)\.affine$")


class ChangeMap:
    def __init__(self, original: Network, variant: Network, record=None):
        self.original, self.variant = original, variant
        if record is not None:
            if record.parent_digest != original.digest() or record.variant_digest != variant.digest():
                raise ShapeMismatchError("the change record does not relate these two networks "
                                         "(parent or variant digest differs)")
            self.maps = [np.array([-1 if v is None else v for v in lc.index_map], dtype=np.int64)
                         for lc in record.layers]
        else:
            if original.layer_sizes() != variant.layer_sizes():
                raise ShapeMismatchError(
                    f"without a change record the networks must have the same shape: "
                    f"{original.layer_sizes()} vs {variant.layer_sizes()}")
            self.maps = [np.arange(a.out_size) for a in original.affines]
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

    # compared on first use: a proof closed by the variant's own bounds needs
    # neither the per-neuron status nor the graph
    @cached_property
    def _comparison(self):
        """Per layer: the status code of each original neuron (index into
        ``_KINDS``) and the edges (variant column -> original column, kept rows,
        variant weight)."""
        codes, edges = [], []
        back = np.arange(self.original.n_inputs)  # variant column c <- original column back[c]
        for k, (oa, va, (W, b)) in enumerate(zip(self.original.affines, self.variant.affines,
                                                 self.embedded)):
            rows = self.kept_rows[k]
            if len(rows) == len(self.maps[k]):
                changed = (oa.bias != b) | (oa.weight != W).any(axis=1)
            else:
                changed = (oa.bias[rows] != b[rows]) | (oa.weight[rows] != W[rows]).any(axis=1)
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
    def neuron_of(self, name: str) -> tuple[int, int] | None:
        m = _NEURON.match(name)
        if m:
            return int(m.group(1)), int(m.group(2))
        m = _OUTPUT.match(name)
        if m:
            return self.n_layers - 1, int(m.group(1))
        return None  # in.{i}.box, spec.{r}

    def classify(self, name: str) -> str:
        """``unchanged`` / ``revalued`` / ``removed`` for a constraint name of the original."""
        return _KINDS[self._code(name)]

    def _code(self, name: str) -> int:
        neuron = self.neuron_of(name)
        if neuron is None:
            return _UNCHANGED_C  # in.{i}.box, spec.{r}
        k, i = neuron
        codes = self._comparison[0]
        code = int(codes[k][i]) if k < len(codes) and i < len(codes[k]) else _REMOVED_C
        if code == _REMOVED_C or name.endswith(".relu"):
            return code if code == _REMOVED_C else _UNCHANGED_C
        if name.endswith(".bounds"):  # the values of an affected neuron move
            return _REVALUED_C if self._affected_masks[k][i] else _UNCHANGED_C
        return code

    def map_name(self, name: str) -> str | None:
        """The variant's name of the same constraint (``None``: the neuron was removed)."""
        m = _NEURON.match(name)
        if not m:
            return name
        k, i = int(m.group(1)), int(m.group(2))
        new = int(self.maps[k][i]) if k < len(self.maps) and i < len(self.maps[k]) else -1
        return None if new < 0 else f"L{k}.N{new}.{m.group(3)}"

    def map_splits(self, facts) -> tuple[str, ...]:
        """Split facts for the variant; splits on removed neurons are dropped
        (both sides of such a split become the unsplit branch: still a cover)."""
        return tuple(n for n in (self.map_name(f) for f in facts) if n is not None)

    def counts(self, names) -> dict[str, int]:
        out = [0, 0, 0]
        for n in names:
            out[self._code(n)] += 1
        return dict(zip(_KINDS, out))

    def affected_names(self, constraint_names) -> list[str]:
        """The variant's constraints (by name) of neurons in the affected region."""
        inv = {}
        for k, m in enumerate(self.maps):
            for i, new in enumerate(m):
                if new >= 0:
                    inv[(k, int(new))] = (k, i)
        out = []
        for n in constraint_names:
            m = _NEURON.match(n)
            if m:
                orig = inv.get((int(m.group(1)), int(m.group(2))))
                if orig in self.affected:
                    out.append(n)
            elif _OUTPUT.match(n) and (self.n_layers - 1, int(_OUTPUT.match(n).group(1))) in self.affected:
                out.append(n)
        return out
