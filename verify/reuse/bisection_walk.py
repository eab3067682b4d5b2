"""Coarser nodes of an input-bisection proof tree bounded on the variant before its
leaves (the bisection walk).

Only the leaves of an input-split proof are stored; the tiers re-check each leaf on
the variant.  A variant that is easier than its original in places (ACAS Xu 4_2
property 2, neurons 5 %: scratch 6.3 s where its original took 35 s) closes whole
subtrees higher up, at the cost of one bound each.  The walk looks at every ``step``-th
level of the tree (:mod:`verify.reuse.bisection`) from level ``first``, at the nodes
above at least two leaves still open after the differential tiers:

- a probe of each such level (an even spread of ``probe_share`` of its nodes, at least
  ``PROBE_MIN``) is bounded on the variant, all levels in one batch (a bound call costs
  about 4 ms before its first box on ACAS Xu: a batch per level cost more than the walk
  saved on trees of 400-900 leaves);
- top down, the other nodes of each level whose probe closed at least ``min_payoff``
  open leaves per node bounded.

A node the variant's own bound closes takes its leaves with it: its box is the union
of theirs, so the region stays covered.  The bound minimisers of the nodes left open
are tried as counterexamples on the variant.  A variant as hard as its original pays
the probes (about ``probe_share`` of a level's nodes at each level looked at).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..attack import confirm_batch
from ..properties import Region
from ..result import Counterexample
from .bisection import BisectionLevel


@dataclass
class WalkOutcome:
    open_ids: list[int]  # the leaves still open, in their given order
    closed: int = 0  # open leaves below a node the variant's bound closed
    nodes: int = 0  # nodes bounded
    counterexample: Counterexample | None = None


PROBE_MIN = 8  # nodes of a level probed (all of them, when it has no more)


def walk_bisection(search, region: Region, r: int, levels: list[BisectionLevel], open_ids,
                   step: int, first: int, probe_share: float, min_payoff: float) -> WalkOutcome:
    """Bound the coarser nodes of ``levels`` above the leaves ``open_ids`` on the
    variant of ``search`` (a :class:`verify.search.RegionSearch`): a probe of the levels
    ``first``, ``first + step``, ... in one batch, then the rest of each level whose
    probe paid (see the module docstring)."""
    open_ids = list(open_ids)
    out = WalkOutcome(open_ids)
    if step < 1 or not open_ids:
        return out
    live = np.zeros(len(levels[0].branch_ids), dtype=bool)  # level 0 holds every branch
    live[open_ids] = True
    # per level: its nodes above at least two open leaves, and an even spread of them
    probes = []
    for d in range(first, len(levels), step):
        nodes = _nodes_above(levels[d], live)
        if len(nodes) == 0:
            break  # deeper levels hold fewer leaves per node
        m = len(nodes) if len(nodes) <= PROBE_MIN else \
            max(PROBE_MIN, round(probe_share * len(nodes)))
        spread = np.unique(np.linspace(0, len(nodes) - 1, m).round().astype(np.int64))
        probes.append((d, nodes[spread]))
    if not probes:
        return out
    closed, cex = _bound_nodes(search, region, r,
                               np.concatenate([levels[d].lower[p] for d, p in probes]),
                               np.concatenate([levels[d].upper[p] for d, p in probes]))
    out.nodes += sum(len(p) for _, p in probes)
    if cex is not None:
        out.counterexample = cex
        return out
    # each level's payoff: open leaves below its closed probes, per probe (counted
    # before any leave: the levels' leaves overlap)
    gone, start = [], 0
    for d, probe in probes:
        gone.append(_leaves_below(levels[d], live, probe[closed[start:start + len(probe)]]))
        start += len(probe)
    rates = [len(g) / len(probe) for g, (_, probe) in zip(gone, probes)]
    for g in gone:
        out.closed += int(np.count_nonzero(live[g]))
        live[g] = False
    # then, top down, the rest of every level whose probe paid
    picks = [(d, probe) for (d, probe), rate in zip(probes, rates) if rate >= min_payoff]
    for d, probe in picks:
        if search.time_left() <= 0:
            break
        rest = np.setdiff1d(_nodes_above(levels[d], live), probe)
        if len(rest):
            closed_rest, cex = _bound_nodes(search, region, r, levels[d].lower[rest],
                                            levels[d].upper[rest])
            out.nodes += len(rest)
            if cex is not None:
                out.counterexample = cex
                return out
            shut = _leaves_below(levels[d], live, rest[closed_rest])
            live[shut] = False
            out.closed += len(shut)
    out.open_ids = [i for i in open_ids if live[i]]
    return out


def _nodes_above(level: BisectionLevel, live: np.ndarray) -> np.ndarray:
    """The level's nodes above at least two live leaves (a leaf is a node above one)."""
    here = live[level.branch_ids]
    return np.flatnonzero(np.bincount(level.node_of[here], minlength=len(level.lower)) >= 2)


def _leaves_below(level: BisectionLevel, live: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """The live leaves below the level's ``nodes``."""
    mark = np.zeros(len(level.lower), dtype=bool)
    mark[nodes] = True
    return level.branch_ids[live[level.branch_ids] & mark[level.node_of]]


def _bound_nodes(search, region: Region, r: int, lower: np.ndarray, upper: np.ndarray):
    """The variant's own bound of the boxes (in the search's batches): (closed (B,),
    a confirmed counterexample among the open boxes' bound minimisers or None)."""
    closed = np.zeros(len(lower), dtype=bool)
    step = search._batch_size()
    for s in range(0, len(lower), step):
        lo = torch.from_numpy(np.ascontiguousarray(lower[s:s + step]))
        hi = torch.from_numpy(np.ascontiguousarray(upper[s:s + step]))
        res, _, shut = search.bound_branches(lo, hi, None, None)
        closed[s:s + step] = shut
        still = np.flatnonzero(~shut)
        if len(still):
            cex = confirm_batch(search.net, region, r, res.candidates(lo, hi, still))
            if cex is not None:
                return closed, cex
    return closed, None
