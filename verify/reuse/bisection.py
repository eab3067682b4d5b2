"""The levels of an input-bisection proof tree, rebuilt from its leaves.

A proof of an input-split search is a tree of bisections at the exact midpoint whose
leaves are the proof's branches; only the leaves are stored.  :func:`bisection_levels`
replays the tree a level at a time: each open node takes the first dimension whose
midpoint separates its branches into two non-empty sides that together hold all of
them; a node whose box is one of its branches' is a leaf (as
:func:`verify.reuse.proof.proof_tree` reads it).  The tiling check and the bisection
walk (:mod:`verify.reuse.bisection_walk`) both read these levels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..properties import Region


@dataclass(frozen=True)
class BisectionLevel:
    """One level of the tree: its nodes' boxes (n_nodes, n_inputs) and, for each
    branch below one of them (``branch_ids``, indices into the proof's branches),
    its node (``node_of``).  A node whose box is a branch's is that leaf."""
    lower: np.ndarray
    upper: np.ndarray
    branch_ids: np.ndarray
    node_of: np.ndarray


def is_bisection_tree(branches) -> bool:
    """Whether ``branches`` could be the leaves of a tree of input bisections alone:
    there are some, and none carries a ReLU split."""
    return bool(branches) and not any(b.splits for b in branches)


def bisection_levels(region: Region, branches) -> list[BisectionLevel] | None:
    """The levels of the bisection tree whose leaves are ``branches``, root first; None
    when they do not tile ``region``'s box that way (or carry ReLU splits).
    (A node at a time, the recursion of ``proof_tree`` took 0.45 s on ACAS Xu 4_2
    property 2's 7,756 leaves, about 30 us per node; these levels take about 5 ms.)"""
    if not is_bisection_tree(branches):
        return None
    LO = np.stack([np.asarray(b.lower, dtype=np.float64) for b in branches])
    HI = np.stack([np.asarray(b.upper, dtype=np.float64) for b in branches])
    node_lo = np.asarray(region.lower, dtype=np.float64)[None, :].copy()
    node_hi = np.asarray(region.upper, dtype=np.float64)[None, :].copy()
    ids = np.arange(len(branches))
    group = np.zeros(len(branches), dtype=np.int64)  # each branch's open node
    levels = []
    while True:
        levels.append(BisectionLevel(node_lo, node_hi, ids, group))
        n_nodes, dims = node_lo.shape
        # nodes that are a leaf: some branch's box is the node's
        equal = (LO == node_lo[group]).all(axis=1) & (HI == node_hi[group]).all(axis=1)
        leaf = np.zeros(n_nodes, dtype=bool)
        leaf[group[equal]] = True
        keep = ~leaf[group]
        if not keep.any():
            return levels
        # the nodes still open, renumbered, with their branches
        open_nodes = np.flatnonzero(np.bincount(group[keep], minlength=n_nodes) > 0)
        renumber = np.full(n_nodes, -1, dtype=np.int64)
        renumber[open_nodes] = np.arange(len(open_nodes))
        LO, HI, ids, group = LO[keep], HI[keep], ids[keep], renumber[group[keep]]
        node_lo, node_hi = node_lo[open_nodes], node_hi[open_nodes]
        mid = (node_lo + node_hi) / 2
        left, right = HI <= mid[group], LO >= mid[group]
        size = np.bincount(group, minlength=len(open_nodes))
        n_left = np.stack([np.bincount(group, left[:, d], len(open_nodes))
                           for d in range(dims)], axis=1)
        n_right = np.stack([np.bincount(group, right[:, d], len(open_nodes))
                            for d in range(dims)], axis=1)
        # both sides hold branches, and every branch is on one (a flat box at the
        # midpoint counts on both, like the recursion's); each side then gets a branch
        # below, since a lower half of them all would leave no room for a right one
        ok = (n_left > 0) & (n_right > 0) & (n_left + n_right == size[:, None])
        if not ok.any(axis=1).all():
            return None  # a node no bisection separates (and no ReLU split to try)
        dim = np.argmax(ok, axis=1)  # the first such dimension
        rows = np.arange(len(open_nodes))
        lower_half_hi = node_hi.copy()
        lower_half_hi[rows, dim] = mid[rows, dim]
        upper_half_lo = node_lo.copy()
        upper_half_lo[rows, dim] = mid[rows, dim]
        # node g's children: 2g (lower half: its branches left of the midpoint) and
        # 2g + 1 (the others: size - n_left = n_right > 0 of them, so neither child
        # is ever empty, and an empty child would count as covered)
        side = ~left[np.arange(len(group)), dim[group]]
        node_lo = np.stack([node_lo, upper_half_lo], axis=1).reshape(-1, dims)
        node_hi = np.stack([lower_half_hi, node_hi], axis=1).reshape(-1, dims)
        group = 2 * group + side


def bisection_tree_covers(region: Region, branches) -> bool:
    """Whether ``branches`` are the leaves of a bisection tree of ``region``'s box
    (``proof_tree(region, branches) is not None`` for branches without ReLU splits)."""
    return bisection_levels(region, branches) is not None
