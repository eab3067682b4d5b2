"""The moved bounds of a proof tree's leaves (:mod:`verify.reuse.tree`), kept as rows of
their batch's tensors."""
from __future__ import annotations

import torch


class MovedRows:
    """Leaf -> its moved bounds (``[(lower, upper)]`` per hidden layer) kept as rows of
    the tiers' stacked (B, n_k) tensors: a leaf's own tensors are made only when asked
    (a dict of per-leaf row views took 0.5 s of an ACAS Xu 4_2 prop 2 pair's 7.8 s,
    7,711 leaves)."""

    def __init__(self):
        self._at: dict = {}  # leaf -> (the stacked bounds, its row)

    def add(self, ids, bounds, rows=None) -> None:
        """Leaves ``ids`` at rows ``rows`` (default 0, 1, ...) of ``bounds``."""
        for j, i in enumerate(ids):
            self._at[i] = (bounds, j if rows is None else int(rows[j]))

    def update(self, other: "MovedRows") -> None:
        self._at.update(other._at)

    def __getitem__(self, i):
        bounds, j = self._at[i]
        return [(l[j], u[j]) for l, u in bounds]

    def __delitem__(self, i) -> None:
        del self._at[i]

    def __iter__(self):
        return iter(self._at)

    def __len__(self) -> int:
        return len(self._at)

    def layer(self, ids, k: int):
        """(lower, upper) (len(ids), n_k) of layer ``k`` for leaves ``ids``, in order."""
        groups: dict = {}
        for pos, i in enumerate(ids):
            bounds, j = self._at[i]
            groups.setdefault(id(bounds), (bounds, [], []))
            groups[id(bounds)][1].append(pos)
            groups[id(bounds)][2].append(j)
        if len(groups) == 1:
            (bounds, _, rows), = groups.values()
            sel = torch.as_tensor(rows, dtype=torch.long)
            return bounds[k][0][sel], bounds[k][1][sel]
        first = next(iter(groups.values()))[0][k][0]
        lower = first.new_empty((len(ids), first.shape[1]))
        upper = first.new_empty((len(ids), first.shape[1]))
        for bounds, pos, rows in groups.values():
            sel, at = torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(pos, dtype=torch.long)
            lower[at], upper[at] = bounds[k][0][sel], bounds[k][1][sel]
        return lower, upper
