"""Re-checking the original's proof tree on a variant at the throughput of
the search: every leaf bounded in batches, from the original's own bounds.

A proof tree built in this process keeps, per leaf, the original's layer
bounds on the leaf's domain ``S`` (its box, restricted by the ORIGINAL's
ReLU phase splits; the leaves' domains tile the region) and its spec rows'
lower bounds.  The leaves are re-checked on the variant in tiers, each on
the leaves the one before left open:

0. the original's spec lower bounds plus an interval bound of the spec's
   change (:func:`verify.reuse.difference.leaf_deviation`, a few matrix products for
   all leaves, each layer's change within the region's symbolic one, its
   :class:`~verify.reuse.difference.ChangeCaps`, on a ReLU-split chain tree; for a
   graph variant :mod:`verify.reuse.graph_difference`, a few interval passes);
1. the variant's spec rows back-substituted over the original's layer
   bounds moved by the change (no intermediate neuron back-substituted),
   alpha-CROWN warm-started from the original's slopes;
1b. (ReLU-split trees) on the leaves whose interval change bound came close to their margin, a
   symbolic bound of the change (:func:`verify.reuse.difference.symbolic_deviation`:
   both networks back-substituted together); its tighter per-layer changes
   also move the bounds tiers 1c and 2 start from;
1c. (ReLU-split trees) tier 1 again over those tighter bounds;
2. the variant's own bound of the leaf box, intersected with the moved
   bounds (input splits: only neurons they leave unstable are back-substituted;
   ReLU splits: none -- ``bound`` takes the moved bounds for a parent's on the same
   domain, with no new split -- and the spec rows get the alpha steps; forcing the
   back-substitution closed the same leaves, no faster, on mnist-net_256x4 images 7
   and 14 at eps 0.011).  Not on the leaves of a ReLU-split chain tree, which are
   split further on the original instead (:mod:`verify.reuse.deepen`; see
   ``TreeCheck._tier2_open``);
3. the variant's branch and bound from each leaf still open (its domain
   ``S``, represented by the bounds of tier 2, or the moved bounds, as the node's
   parent bounds).

Between tiers 1 and 2, an input-split tree's open leaves are attacked: PGD from
each leaf's centre, kept in the leaf's box (``Reuser.attack_leaves``; the tree is
finest where the original came closest to the unsafe set, where a variant breaks).

Soundness: every bound used holds on ``S`` for the variant -- the
original's bounds there were derived by this process's search, the change
is bounded by interval arithmetic over them (:mod:`verify.reuse.difference`)
-- so a leaf closed by any tier has no counterexample in ``S``; an empty
``S`` (a leaf infeasible on the original) needs nothing.  The variant's
own ReLU splits are never mixed in: a leaf is the ORIGINAL's domain
throughout, and the search of tier 3 splits it further (children tile it).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..bounds import TOLERANCE
from ..search import Node, RegionSearch, inherit_refuted
from ..constraint_names import fact_dict, fact_names, split_arrays
from ..result import Status
from ..spec_rows import rows_refute_all
from .bisection import BisectionLevel
from .bisection_walk import walk_bisection
from .changes import ChangeMap
from .derive import GraphChangeMap
from .leaf_arrays import LeafArrays
from .moved_rows import MovedRows
from .difference import (ChangeCaps, hopeful, interval_symbolic_deviation, leaf_deviation,
                         symbolic_deviation)


class LeafSearch(RegionSearch):
    """The variant's search from the leaves of a proof tree: a branch with
    parent bounds back-substitutes only the neurons those leave unstable
    (with ReLU splits; the search's own bounds back-substitute every neuron,
    which costs most of a bound on wide layers and matters little under the
    tight bounds a leaf inherits)."""

    def bound_branches(self, lo, hi, splits, fixed, alpha=None, mode=None, inherited=None,
                       refine=None, alpha_init=None, rows=None, beta_init=None, tier_init=None):
        if refine is None and fixed is not None and not self.input_split:
            refine = [torch.ones(n, dtype=torch.bool) for n in self.net.hidden_sizes]
        return super().bound_branches(lo, hi, splits, fixed, alpha, mode, inherited, refine,
                                      alpha_init, rows, beta_init, tier_init)


def change_bounds(cmap, lowers, uppers, box_lo, box_hi, spec_c, caps: ChangeCaps | None = None):
    """:func:`leaf_deviation` for a chain (within ``caps``), :meth:`verify.reuse.
    graph_difference.GraphDiff.deviation` for a graph variant with its original's
    architecture."""
    if isinstance(cmap, GraphChangeMap):
        return cmap.diff().deviation(lowers, uppers, box_lo, box_hi, spec_c)
    return leaf_deviation(cmap, lowers, uppers, box_lo, box_hi, spec_c, caps)


def moved_bounds(cmap: ChangeMap, lowers, uppers, changes) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The variant's pre-activation bounds (its numbering, (B, n'_k) tensors):
    the original's moved by the change, widened outward."""
    out = []
    for k, (dl, du) in enumerate(changes):
        rows = cmap.kept_rows[k]
        l, u = lowers[k] + dl, uppers[k] + du
        if len(rows) < l.shape[1]:
            l, u = l[:, rows], u[:, rows]
        out.append((torch.from_numpy(l - TOLERANCE * (1.0 + np.abs(l))),
                    torch.from_numpy(u + TOLERANCE * (1.0 + np.abs(u)))))
    return out


def split_constraints(cmap: ChangeMap, facts, changes) -> dict:
    """The original's ReLU split facts of ``B`` leaves as split constraints on the
    variant's neurons (its numbering): where the original's ``z >= 0`` (``<= 0``) and
    the change is in ``[dl, du]``, the variant's ``z' - dl >= 0`` (``du - z' >= 0``)
    on the leaf's domain.  Keyword arguments of ``spec_bound`` (its beta-CROWN
    multipliers then use them; measured on the 213 leaves of mnist-net_256x4 image 7
    at eps 0.011, the original's own bounds there close 75 leaves without them and
    200 with them, 20 steps each).  ``changes``: (dl, du) (B, n_k) per hidden layer,
    the original's numbering.  A neuron the variant drops loses its fact (weaker, so
    sound)."""
    hidden = cmap.original.hidden_sizes
    arrays = [split_arrays(f, hidden) for f in facts]
    splits, offsets = [], []
    for k, (dl, du) in enumerate(changes):
        sign = np.stack([a[k] for a in arrays])
        rows = cmap.kept_rows[k]
        # widened outward: a weaker constraint than the one that holds
        off = np.where(sign > 0, -dl + TOLERANCE * (1.0 + np.abs(dl)),
                       np.where(sign < 0, du + TOLERANCE * (1.0 + np.abs(du)), 0.0))
        if len(rows) < sign.shape[1]:
            sign, off = sign[:, rows], off[:, rows]
        splits.append(torch.from_numpy(np.ascontiguousarray(sign)))
        offsets.append(torch.from_numpy(np.ascontiguousarray(off)))
    return {"splits": splits, "split_offsets": offsets}


def warm_alphas(cmap: ChangeMap, branches, idx, partial: bool = False
                ) -> list[torch.Tensor] | None:
    """The original's slopes of branches ``idx`` in the variant's numbering,
    (B, n'_k) per hidden layer; None unless every one of them has slopes, or with
    ``partial``, unless one has (the others' rows NaN: the bound's default start)."""
    have = [branches[i].alphas is not None for i in idx]
    if not idx or not (any(have) if partial else all(have)):
        return None
    out = []
    sizes = cmap.original.hidden_sizes
    for k, rows in enumerate(cmap.kept_rows[:-1]):
        a = np.stack([np.full(sizes[k], np.nan) if branches[i].alphas is None
                      else np.asarray(branches[i].alphas[k], dtype=np.float64) for i in idx])
        out.append(torch.from_numpy(a[:, rows] if len(rows) < a.shape[1] else a))
    return out


def warm_root_slopes(cmap: ChangeMap, slopes: dict) -> dict:
    """The original's root slopes (:func:`verify.layer_alpha.optimise_layer_bounds`'s
    ``slopes_out``) in the variant's numbering: a neuron the variant drops loses its
    queries and its columns; a layer whose shapes are not the original's is left out."""
    out, sizes = {}, cmap.original.hidden_sizes
    for k, (neurons, rows) in slopes.items():
        if not 0 <= k < len(sizes) or len(rows) != k or any(
                r.shape[1] != sizes[j] for j, r in enumerate(rows)):
            continue  # not this original's layers (a record read from a file is untrusted)
        kept = cmap.kept_rows[k]
        where = {int(o): v for v, o in enumerate(kept)}
        pick = np.array([p for p, n in enumerate(neurons) if int(n) in where], dtype=np.int64)
        if not len(pick):
            continue
        m = len(neurons)
        both = np.concatenate([pick, m + pick])
        out[k] = (np.array([where[int(neurons[p])] for p in pick], dtype=np.int64),
                  [r[both][:, cmap.kept_rows[j]] if len(cmap.kept_rows[j]) < r.shape[1]
                   else r[both] for j, r in enumerate(rows)])
    return out


def warm_betas(cmap: ChangeMap, branches, idx, m: int) -> list[torch.Tensor] | None:
    """The original's beta-CROWN multipliers of branches ``idx``'s split facts as
    (B, m, n'_k) tensors per hidden layer (the variant's numbering; a neuron the
    variant drops loses its multiplier); None when none of them has any."""
    if not any(branches[i].betas is not None for i in idx):
        return None
    out = [np.zeros((len(idx), m, n)) for n in cmap.original.hidden_sizes]  # its numbering
    for j, i in enumerate(idx):
        b = branches[i].betas
        if b is None or b.shape != (m, len(branches[i].splits)):
            continue
        for col, ((k, neuron), _) in enumerate(fact_dict(branches[i].splits).items()):
            out[k][j, :, neuron] = b[:, col]
    return [torch.from_numpy(np.ascontiguousarray(o[:, :, rows] if len(rows) < o.shape[2] else o))
            for o, rows in zip(out, cmap.kept_rows)]


def search_open(search: RegionSearch, nodes, r: int, stats, what: str, error,
                until: float | None = None):
    """The variant's own branch and bound on the proof's ``nodes`` still open (until
    ``until``, when later than the search's deadline): a confirmed counterexample, or
    None when every one closed; raises ``error`` otherwise."""
    if until is not None and until > search.deadline:
        search.deadline = until
    out = search.run(nodes)
    stats.z3_queries += search.stats.z3_queries
    if out.status is Status.VIOLATED:
        return out.counterexample
    if out.status is not Status.HOLDS:
        raise error(f"region {r}: {len(nodes)} {what} did not close on the variant "
                    f"({out.reason})")
    return None


class TreeOpen(Exception):
    """Some leaf did not close on the variant (the message says why)."""


class _Found(Exception):
    """A confirmed counterexample found while walking a proof tree."""

    def __init__(self, counterexample):
        super().__init__("counterexample")
        self.counterexample = counterexample


def has_leaf_bounds(branches) -> bool:
    """Whether every branch carries the original's bounds from this process."""
    return bool(branches) and all(b.layer_bounds is not None for b in branches)


class TreeCheck:
    """Tiers 0-3 over one region's leaves (see the module docstring)."""

    def __init__(self, reuser, search: RegionSearch, branches, caps: ChangeCaps | None = None,
                 deepened: dict | None = None, levels: list[BisectionLevel] | None = None,
                 arrays: LeafArrays | None = None):
        self.reuser, self.search, self.branches = reuser, search, branches
        # the leaves as stacked arrays (a proof record's, shared by its variants; else
        # made on first use)
        self._arrays = arrays
        self.levels = levels  # of an input-bisection tree: walked before tier 2, or None
        self.deepened = deepened  # leaves' children on the original, kept for other variants
        self.cmap: ChangeMap = reuser.cmap
        self.stats = reuser.stats
        self.caps = caps  # the change's bounds over the whole region, or None
        # leaves closed per way, counted into the statistics once the region is closed
        self.closed = {"closed_by_bounds": 0, "closed_by_difference": 0, "closed_by_symbolic": 0,
                       "closed_by_difference_backsub": 0, "closed_by_split": 0,
                       "closed_by_ancestor": 0}
        self.n_hidden = len(search.net.hidden_sizes)
        self.graph = isinstance(self.cmap, GraphChangeMap)  # no symbolic tier (chains only)

    def run(self, region, r: int, root_check=None, max_open: float = 1.0,
            backsub: bool = True):
        """A confirmed counterexample, None when every leaf closed, or raises
        :class:`TreeOpen` when some leaf stays open.  ``root_check``: called
        when tiers 0-1 leave leaves open, before the costlier tiers; returns
        True (the region is closed on the variant some other way), a
        counterexample, or None.  ``max_open``: raise :class:`TreeOpen` when
        tiers 0-1 leave more than this share of the leaves open (the leaves'
        closures are then discarded).  ``backsub`` False skips tiers 1 and 1b
        (a graph region one bound settled: tier 1 costs about a full bound there)."""
        branches, search = self.branches, self.search
        todo = [i for i, b in enumerate(branches) if b.method != "infeasible"]
        self.closed["closed_by_bounds"] += len(branches) - len(todo)  # empty on the original
        step = max(1, min(search._batch_size() * 8, 2048))
        open_after_1, moved_of = [], MovedRows()
        for s in range(0, len(todo), step):
            idx = todo[s:s + step]
            still, moved = self._tiers01(idx, max_open * len(branches), backsub)
            open_after_1 += still
            moved_of.update(moved)
        if not open_after_1:
            return self._commit()
        if len(open_after_1) > max_open * len(branches):
            raise TreeOpen(f"region {r}: {len(open_after_1)} of {len(branches)} leaves open "
                           "after the differential tiers")
        if root_check is not None:
            got = root_check()
            if got is True:
                return None  # the region's own bound closed it (counted by the caller)
            if got is not None:
                return got
        # a variant that fails usually fails where the original's bounds were tight
        attack = self.reuser.ropt.attack
        cex = self.reuser.attack(region, r, quick=True) if attack else None
        if cex is None and attack and search.input_split and not self.reuser.near_copy:
            # ... and PGD within each open leaf's box: an input-split tree is finest
            # where its original came closest to the unsafe set.  Not on a near copy
            # (like the up-front attack: 10 % of an int16 pair of 0.1 s, for leaves about
            # as open as its original's).  Alternated off / on over the hard family's 11
            # ACAS Xu originals x 5 variants: 96.9 -> 87.1 s; 4_2 prop 2 int8 (violated)
            # 4.25 -> 0.47 s, 5_8 prop 1 magnitude 30 % 2.9 -> 0.05 s; the pairs that
            # hold within 0-4 %
            cex = self.reuser.attack_leaves(region, r, [branches[i] for i in open_after_1])
        if cex is not None:
            return cex
        if self.levels is not None:
            open_after_1, cex = self._walk(region, r, open_after_1)
            if cex is not None:
                return cex
        cex, items = self._tier2_open(region, r, open_after_1, moved_of)
        if cex is not None:
            return cex
        if items and self._deepens():
            cex, items = self._deepen(region, r, items)
            if cex is not None:
                return cex
        splits = None if search.input_split else [np.zeros(n, dtype=np.int8)
                                                  for n in search.net.hidden_sizes]
        # (an item may carry its margin on the variant: input splitting searches the
        # leaves lowest margin first, where a counterexample is likeliest)
        to_split = []
        for b, parent, *rest in items:
            if len(rest) > 1 and rest[1] is not None:  # already bisected (_split_open)
                to_split += rest[1]
                continue
            to_split.append(Node(b.lower.copy(), b.upper.copy(), None if splits is None
                                 else [s.copy() for s in splits],
                                 parent if self.n_hidden else None, b.depth,
                                 score=rest[0] if rest else 0.0))
        if not to_split:
            return self._commit()
        if self.reuser.left() <= 0:
            raise TreeOpen("time budget used up re-checking the proof tree")
        until = self.reuser.open_search_until
        if not search.input_split and self.reuser.ropt.tree_walk:
            # the original's phase domain is known here only through the moved bounds,
            # so the search re-splits it from nothing: for a few leaves and within a
            # share of the original's time, then the tree is walked instead (see
            # ReuseOptions.leaf_search_share)
            if len(items) > self.reuser.ropt.leaf_search_max_open:
                raise TreeOpen(f"region {r}: {len(items)} leaves open after the variant's "
                               "own bounds")
            search.deadline = min(search.deadline, time.monotonic() + self.reuser.ropt.
                                  leaf_search_share * self.stats.original_time_s)
            until = None
        cex = search_open(search, to_split, r, self.stats, "leaves", TreeOpen, until)
        if cex is not None:
            return cex
        self.closed["closed_by_split"] += len(items)
        return self._commit()

    def _walk(self, region, r: int, ids):
        """The bisection walk (:mod:`verify.reuse.bisection_walk`) above the open leaves
        ``ids``: (the leaves still open, a confirmed counterexample or None)."""
        ropt = self.reuser.ropt
        if self.reuser.near_copy:
            return ids, None  # its nodes are about as open as its original's
        out = walk_bisection(self.search, region, r, self.levels, ids, ropt.bisection_walk_step,
                             ropt.bisection_walk_first, ropt.bisection_walk_probe,
                             ropt.bisection_walk_min_payoff)
        self.closed["closed_by_bounds"] += out.closed
        self.closed["closed_by_ancestor"] += out.closed
        return out.open_ids, out.counterexample

    def _commit(self) -> None:
        for name, n in self.closed.items():
            setattr(self.stats, name, getattr(self.stats, name) + n)

    def _tier2_open(self, region, r: int, ids, moved_of):
        """Tier 2 on leaves ``ids`` (in batches): (a confirmed counterexample among
        the open leaves' bound minimisers, or None; the leaves still open as
        (branch, its tier-2 layer bounds, its margin, its two halves or None: see
        :meth:`_split_open`)).  Where open leaves are split further on the original
        (:meth:`_deepens`), no tier 2: the leaves go on as (branch, moved bounds).
        (Tier 2 on a ReLU-split leaf is the variant's own bound of the leaf box over the
        moved bounds, without the leaf's split constraints: after tier 1c it closed 1 of
        14 leaves on mnist-net_256x4 image 7 at eps 0.011 -- int16: 9, 3, 1, 1 leaves in
        the tree and three levels of deepening; neurons 5 %: 0 of 4 -- and 1 of 4 on
        image 14, int16, at about 0.05 s a call.)"""
        from ..attack import confirm_batch
        branches, search = self.branches, self.search
        if self._deepens():
            return None, [(branches[i], [(l.numpy(), u.numpy()) for l, u in moved_of[i]])
                          for i in ids]
        step = search._batch_size()
        out = []
        for s in range(0, len(ids), step):
            idx = ids[s:s + step]
            still, res, rows, refuted = self._tier2(idx, moved_of)
            if not still:
                continue
            lo, hi = self._boxes(idx)
            open_rows = [rows[i] for i in still]
            cex = confirm_batch(search.net, region, r, res.candidates(lo, hi, open_rows))
            if cex is not None:
                return cex, []
            spec_lower = res.spec_lower.numpy()
            margins = [search._margin(spec_lower[row], refuted[row]) for row in open_rows]
            halves = self._split_open(idx, res, spec_lower, refuted, open_rows, margins)
            for i, row, margin, pair in zip(still, open_rows, margins, halves):
                out.append((branches[i], [(res.lower[k][row].numpy(), res.upper[k][row].numpy())
                                          for k in range(self.n_hidden)], margin, pair))
        return None, out

    def _split_open(self, idx, res, spec_lower, refuted, open_rows, margins) -> list:
        """Input splitting: the open leaves (rows ``open_rows`` of the tier-2 batch of
        leaves ``idx``, their ``margins``) bisected as the variant's search would bisect
        them after bounding them, from this bound, each half with the leaf's bounds to
        intersect and its margin as score: per open row, its two halves, or None (ReLU splitting, or a leaf without
        a dimension left to split: the search takes the leaf itself).  The search bounded
        each leaf again first: this against that, alternated in one process, the ten ACAS
        Xu originals of the hard family with their five variants each, twice: 105.2 ->
        96.3 s (4_2 prop 2 53.3 -> 48.3 s: magnitude 10 % 11.3 -> 9.8 s, 1,078 open
        leaves; every original faster)."""
        search = self.search
        if not search.input_split or not len(open_rows):
            return [None] * len(open_rows)
        batch = [Node(self.branches[i].lower.copy(), self.branches[i].upper.copy(), None,
                      None, self.branches[i].depth) for i in idx]
        pairs = search._split_inputs(batch, res, spec_lower, refuted, list(open_rows))
        if len(pairs) != len(open_rows) or any(p is None for p in pairs):
            return [None] * len(open_rows)
        for row, margin, pair in zip(open_rows, margins, pairs):
            for child in pair:
                child.score = margin
                child.refuted, child.parent_lower = refuted[row], spec_lower[row]
            search.stats.branches += len(pair)
        return pairs

    def _deepens(self) -> bool:
        """Whether open leaves are split further on the original (see
        :mod:`verify.reuse.deepen`): ReLU-split chain trees with their leaves' bounds,
        however few are open.  (Until the eleventh session only when more than
        ``leaf_search_max_open`` were: one open leaf of mnist-net_256x4 image 2 at eps
        0.01, int16, closed in one split of the variant's own search, 0.27 s, and in
        three levels of deepening, 0.43 s.  With tier 1's split constraints that case
        no longer arises, and on image 7 at eps 0.011, neurons 5 %, the 2-3 leaves left
        took 1.5-1.6 s to search and 0.55-0.6 s to deepen; the other 19 pairs of
        mnist-net_256x4 images 2, 7 at eps 0.01 and 7, 14 at eps 0.011 within 5 %, run
        alternately twice.)"""
        return (self.reuser.ropt.deepen_levels > 0 and not self.search.input_split
                and not self.graph and self.n_hidden > 0)

    def _deepen(self, region, r: int, items):
        """Open leaves split on the original and their children re-checked by the tiers,
        level by level (``deepen_levels``, within ``deepen_share`` of the original's
        time): (a counterexample or None, the leaves of the last level still open)."""
        from .deepen import Deepening
        ropt = self.reuser.ropt
        until = min(self.search.deadline,
                    time.monotonic() + ropt.deepen_share * self.stats.original_time_s)
        deep = Deepening(self.cmap.original, region, r, self.search.opt, until, self.deepened)
        for _ in range(ropt.deepen_levels):
            if deep.time_left() <= 0 or len(items) > ropt.deepen_max_open:
                break
            kids = deep.children([b for b, *_ in items])
            if len(kids) < 2 * len(items):  # a leaf without an unstable ReLU on the original
                break
            sub = TreeCheck(self.reuser, self.search, kids, self.caps, self.deepened)
            todo = [i for i, b in enumerate(kids) if b.method != "infeasible"]
            sub.closed["closed_by_bounds"] += len(kids) - len(todo)
            still, moved_of = sub._tiers01(todo, float("inf"))
            cex, next_items = sub._tier2_open(region, r, still, moved_of)
            self.stats.deepened += len(items)
            for name, n in sub.closed.items():
                self.closed[name] += n
            if cex is not None:
                return cex, []
            if len(next_items) == len(kids):  # no child closed: the change bound is too loose
                return None, items
            items = next_items
            if not items:
                break
        return None, items

    # ---- tiers ----------------------------------------------------------------------
    def _tiers01(self, idx, max_open_leaves: float, backsub: bool = True):
        """Tiers 0, 1 and 1b on leaves ``idx``: (still open, their moved bounds, a
        :class:`MovedRows`).
        ``max_open_leaves``: more leaves open than this give the tree up (tier 1b is
        skipped when it could not bring them under it)."""
        branches, search = self.branches, self.search
        leaves, pos = self._leaf_arrays(), np.asarray(idx, dtype=np.int64)
        lowers, uppers = [a[pos] for a in leaves.lowers], [a[pos] for a in leaves.uppers]
        box_lo, box_hi = leaves.box_lo[pos], leaves.box_hi[pos]
        changes, spec_dl = change_bounds(self.cmap, lowers, uppers, box_lo, box_hi,
                                         search.C.numpy(), self.caps)
        # tier 0: the original's spec lower bound plus the change's
        known = leaves.known[pos]
        spec0 = np.full(spec_dl.shape, -np.inf)
        if known.any():
            spec0[known] = leaves.spec_lower[pos[known]] + spec_dl[known]
        done0 = self._refuted(spec0)
        self._count(done0)
        if not self.graph and self.n_hidden:
            # tier 0b: the spec's change back-substituted through both networks over
            # the interval changes (a few products; tier 1b tightens the changes too)
            rows = np.flatnonzero(~done0 & known)
            # only where the interval bound came close (see ReuseOptions.
            # interval_symbolic_max_loss; on leaves far off it closed none and cost
            # 0.2 s of a mnist-net_256x4 pair)
            rows = rows[hopeful(spec_dl[rows], spec0[rows] - spec_dl[rows], search.owner,
                                search.n_conj, self.reuser.ropt.interval_symbolic_max_loss)]
            if len(rows):
                sdl = interval_symbolic_deviation(
                    self.cmap, [l[rows] for l in lowers], [u[rows] for u in uppers],
                    [(dl[rows], du[rows]) for dl, du in changes], box_lo[rows], box_hi[rows],
                    search.C.numpy())
                better = np.maximum(sdl, spec_dl[rows])
                spec0[rows] += better - spec_dl[rows]
                spec_dl[rows] = better
                done = self._refuted(spec0[rows])
                self._count(done, "closed_by_symbolic")
                done0[rows[done]] = True
        sel = np.flatnonzero(~done0)
        if len(sel) == 0:
            return [], MovedRows()
        moved = moved_bounds(self.cmap, [l[sel] for l in lowers], [u[sel] for u in uppers],
                             [(dl[sel], du[sel]) for dl, du in changes])
        ids = [idx[j] for j in sel]
        # tier 1 takes the same moved bounds as tier 0: where the change bound closed none
        # of many leaves they are too loose for it too (mnist-net_256x4 image 7 at eps
        # 0.011: tier 1 closed 0 of 212-213 leaves on int8 and magnitude 10 % and 30 %,
        # 0.4-0.5 s each; it closed 40 of 76 and 5 of 7 where tier 0 had closed 137 and
        # 206 on int16 and neurons 5 %)
        # (with the region's caps tier 0 may close one leaf of 213 there: fewer than 5 %
        # count as none)
        hopeless = len(idx) >= 8 and 20 * done0.sum() < len(idx)
        if not backsub or hopeless:
            out = MovedRows()
            out.add(ids, moved)
            return ids, out
        # tier 1: the variant's spec rows over the moved bounds, warm-started
        closed = self._tier1(ids, box_lo[sel], box_hi[sel], moved,
                             [(dl[sel], du[sel]) for dl, du in changes],
                             self.reuser.ropt.warm_alpha_iterations)
        if search.input_split and not closed.all():
            # the leaves the original closed with alpha steps (input splitting: its alpha
            # tier), again from their slopes
            warm = np.flatnonzero(~closed & np.array([branches[i].alphas is not None
                                                      for i in ids]))
            if len(warm):
                w = torch.from_numpy(warm)
                closed[warm] = self._tier1([ids[j] for j in warm], box_lo[sel[warm]],
                                           box_hi[sel[warm]], [(l[w], u[w]) for l, u in moved],
                                           None, self.reuser.ropt.warm_alpha_iterations)
        self._count(closed, "closed_by_difference_backsub")
        open_j = np.flatnonzero(~closed)
        moved_of = MovedRows()
        moved_of.add([ids[j] for j in open_j], moved, open_j)
        gate = self.reuser.ropt.symbolic_max_loss
        # with input splits (few inputs, narrow layers) tier 2 is cheaper than this
        # (ACAS Xu 1_3: 0.09 s against 0.48 s for an int16 variant)
        if gate > 0 and len(open_j) and not search.input_split and not self.graph:
            # tier 1b: the symbolic change bound, on the open leaves whose interval
            # change bound came close to their margin
            rows = sel[open_j]
            rows = rows[known[rows] & hopeful(spec_dl[rows], spec0[rows] - spec_dl[rows],
                                              search.owner, search.n_conj, gate)]
            # not when the tree would be given up even if it closed all of them
            if len(rows) and len(open_j) - len(rows) <= max_open_leaves:
                tight, sdl = symbolic_deviation(self.cmap, [l[rows] for l in lowers],
                                                [u[rows] for u in uppers],
                                                [(dl[rows], du[rows]) for dl, du in changes],
                                                box_lo[rows], box_hi[rows], search.C.numpy())
                done = self._refuted(spec0[rows] - spec_dl[rows] + np.maximum(sdl, spec_dl[rows]))
                self._count(done, "closed_by_symbolic")
                for row in rows[done]:
                    del moved_of[idx[row]]
                # tier 1c and tier 2 start from the tighter moved bounds of the others
                left = np.flatnonzero(~done)  # positions in rows, as tight's and tighter's
                tighter = moved_bounds(self.cmap, [l[rows] for l in lowers],
                                       [u[rows] for u in uppers], tight)
                moved_of.add([idx[rows[j]] for j in left], tighter, left)
                ropt = self.reuser.ropt
                # tier 1c: tier 1 again over the tighter bounds, then with more alpha steps
                # on the leaves left (see ReuseOptions.tight_alpha_iterations)
                passes = (ropt.warm_alpha_iterations, ropt.tight_alpha_iterations) \
                    if ropt.tight_alpha_iterations else ()
                for steps in passes:
                    if not len(left):
                        break
                    again = [idx[row] for row in rows[left]]
                    shut = self._tier1(again, box_lo[rows[left]], box_hi[rows[left]],
                                       [(l[left], u[left]) for l, u in tighter],
                                       [(dl[left], du[left]) for dl, du in tight], steps)
                    self._count(shut, "closed_by_difference_backsub")
                    for j in np.flatnonzero(shut):
                        del moved_of[again[j]]
                    left = left[~shut]
        return list(moved_of), moved_of

    def _leaf_arrays(self) -> LeafArrays:
        """The leaves as stacked arrays (made on first use when not given)."""
        if self._arrays is None:
            self._arrays = LeafArrays.of(self.branches)
        return self._arrays

    def _boxes(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        """The boxes of leaves ``idx`` as (B, n0) tensors."""
        leaves, pos = self._leaf_arrays(), np.asarray(idx, dtype=np.int64)
        return torch.from_numpy(leaves.box_lo[pos]), torch.from_numpy(leaves.box_hi[pos])

    def _count(self, closed: np.ndarray, *ways: str) -> None:
        """Leaves ``closed`` ((B,) flags) by the differential tiers, counted as closed by
        bounds, by the difference, and by each of ``ways``."""
        for name in ("closed_by_bounds", "closed_by_difference") + ways:
            self.closed[name] += int(closed.sum())

    def _tier1(self, ids, box_lo: np.ndarray, box_hi: np.ndarray, moved, changes,
               warm_iterations: int) -> np.ndarray:
        """The variant's spec rows of leaves ``ids`` back-substituted over their moved
        bounds ``moved`` (no intermediate neuron), with the original's split facts
        moved by ``changes`` as beta-CROWN constraints, alpha-CROWN warm-started from
        the original's slopes and multipliers: (B,) which leaves closed (an empty domain
        closes too)."""
        branches, search = self.branches, self.search
        lo, hi = torch.from_numpy(box_lo), torch.from_numpy(box_hi)
        alpha_init = warm_alphas(self.cmap, branches, ids)
        # (a graph without warm-start slopes: plain back-substitution; alpha steps from
        # scratch cost seconds on the verivital maxpool net, where a full bound takes 0.05 s)
        iters = (warm_iterations if alpha_init is not None
                 else 0 if self.graph else search.alpha_iterations)
        split_kw = {}
        if not self.graph and self.n_hidden and not search.input_split:
            split_kw = split_constraints(self.cmap, [branches[i].splits for i in ids], changes)
            split_kw["beta_init"] = warm_betas(self.cmap, branches, ids, len(search.C))
        res = search.prop.spec_bound(lo, hi, search.C, search.d, [m[0] for m in moved],
                                     [m[1] for m in moved], iters if self.n_hidden else 0,
                                     deadline=search.deadline, alpha_init=alpha_init,
                                     conjunctions=search.settle, **split_kw)
        search.stats.bound_evaluations += len(ids)
        _, closed = search.refutation(res, box_lo, box_hi)
        for l, u in moved:  # an empty domain: the moved bounds cross
            closed |= (l > u).any(-1).numpy()
        return closed

    def _refuted(self, spec_lower: np.ndarray) -> np.ndarray:
        """(B,) whether lower bounds (B, m) of the spec rows refute every conjunction."""
        return rows_refute_all(spec_lower, self.search.owner, self.search.n_conj)

    def _tier2(self, idx, moved_of):
        """The variant's own bound of leaves ``idx`` intersected with their moved
        bounds (see the module docstring, tier 2): (still open, the bounds, {leaf: row}, refuted
        conjunctions (B, n_conj))."""
        branches, search = self.branches, self.search
        lo, hi = self._boxes(idx)
        fixed = [moved_of.layer(idx, k) for k in range(self.n_hidden)]
        relu = not search.input_split
        splits = [torch.zeros((len(idx), n), dtype=torch.int8)
                  for n in search.net.hidden_sizes] if relu else None
        refine = [torch.ones(n, dtype=torch.bool) for n in search.net.hidden_sizes] if relu else None
        # a near copy's alpha tier starts from its original's slopes, where the leaf kept
        # some: its best slopes are nearly the original's (ACAS Xu 4_2 prop 2, int16,
        # alternated: 4.05 -> 3.6 s; every variant warm-started lost, 64.0 -> 64.9 s
        # over the hard family's ACAS Xu pairs, see the README)
        alpha_init = warm_alphas(self.cmap, branches, idx)
        tier_init = None
        if not relu and self.reuser.near_copy:  # (every leaf with slopes: the same tensors)
            tier_init = alpha_init if alpha_init is not None else \
                warm_alphas(self.cmap, branches, idx, partial=True)
        res, refuted, closed = search.bound_branches(lo, hi, splits, fixed if self.n_hidden else None,
                                               mode="backward" if relu else None, refine=refine,
                                               alpha_init=alpha_init, tier_init=tier_init)
        self.closed["closed_by_bounds"] += int(closed.sum())
        rows = {i: j for j, i in enumerate(idx)}
        return [idx[j] for j in np.flatnonzero(~closed)], res, rows, refuted


class TreeWalk:
    """A ReLU-split proof tree (every leaf the region's box) walked top-down on
    the variant: each node is the variant's domain of the original's split
    facts mapped onto it (the variant's phases throughout, so the nodes of a
    level tile their parent), bounded with its parent's bounds intersected (a
    node closed prunes its subtree: an easier variant closes high up); an open
    interior node is split as the original split it, an open leaf is searched
    further by the variant's own branch and bound."""

    def __init__(self, reuser, search: RegionSearch, branches):
        self.reuser, self.search, self.branches = reuser, search, branches
        self.cmap: ChangeMap = reuser.cmap
        self.stats = reuser.stats
        self.facts = [fact_dict(b.splits) for b in branches]

    def _is_leaf(self, facts: dict, idx) -> bool:
        return len(idx) == 1 and self.facts[idx[0]] == facts

    def _bound_nodes(self, lo, hi, splits, fixed, leaves, alpha: bool, rows=None):
        """Bounds of a batch of interior nodes (``leaves`` None; ``alpha``:
        with the search's alpha steps) or of the leaves ``leaves``.  An interior node
        was open on the original: deep down the tree its bound mostly serves its
        children's intermediate bounds, so it gets no alpha steps (see
        ``ReuseOptions.walk_alpha_depth``).  A leaf starts from the original's slopes
        and multipliers for ``warm_alpha_iterations`` steps; the ones left open get the
        search's own steps later, in batches of their own (:meth:`_second_pass`).
        ``rows``: the spec rows to bound (as ``RegionSearch.bound_branches``).  Returns
        (bounds, refuted conjunctions, closed, the leaves' warm-start slopes or None)."""
        search, ropt = self.search, self.reuser.ropt
        if leaves is None:
            return search.bound_branches(lo, hi, splits, fixed, None if alpha else 0,
                                         mode="backward", rows=rows) + (None,)
        warm = warm_alphas(self.cmap, self.branches, leaves)
        betas = warm_betas(self.cmap, self.branches, leaves, len(search.C))
        res, refuted, closed = search.bound_branches(
            lo, hi, splits, fixed, ropt.warm_alpha_iterations if warm is not None else None,
            mode="backward", alpha_init=warm, rows=rows, beta_init=betas)
        return res, refuted, closed, warm

    def _second_pass(self, pending):
        """The search's own alpha steps, from the original's slopes and the first pass's
        multipliers, on the leaves the first pass left open, all of ``pending`` in one
        batch (they came from several batches of the walk: bounding them batch by
        batch took 10 calls for 38 leaves on mnist-net_256x4 image 7 at eps 0.011, int8,
        0.74 s).  ``pending``: per first-pass batch, (its open rows' bounds, refuted,
        and the rest of :meth:`run`'s batch state).  Each group's bounds are merged in
        place; returns the groups with their closed flags."""
        search = self.search
        cat = lambda ts: torch.cat(ts, 0)  # noqa: E731
        lo = cat([g["lo"] for g in pending])
        hi = cat([g["hi"] for g in pending])
        splits = [cat([g["splits"][k] for g in pending]) for k in range(len(pending[0]["splits"]))]
        fixed = None if any(g["fixed"] is None for g in pending) else [
            (cat([g["fixed"][k][0] for g in pending]), cat([g["fixed"][k][1] for g in pending]))
            for k in range(len(pending[0]["fixed"]))]
        warm = [cat([g["warm"][k] for g in pending]) for k in range(len(pending[0]["warm"]))]
        betas = None
        if all(g["res"].betas is not None for g in pending):
            per_layer = list(zip(*[g["res"].betas for g in pending]))
            betas = [None if any(b is None for b in bs) else cat(list(bs)) for bs in per_layer]
        parent_refuted = [p for g in pending for p in g["parent_refuted"]]
        known = [k for g in pending for k in g["known"]]
        rows = search.rows_to_bound(parent_refuted, known)
        again, refuted_again, _ = search.bound_branches(lo, hi, splits, fixed, None,
                                                        mode="backward", alpha_init=warm,
                                                        rows=rows, beta_init=betas)
        out, at = [], 0
        for g in pending:
            n = len(g["lo"])
            sel = torch.arange(n)
            g["res"].merge_rows(sel, again.select(torch.arange(at, at + n)))
            g["refuted"] |= refuted_again[at:at + n]
            closed = g["refuted"].all(axis=1) | g["res"].infeasible.numpy()
            out.append((g, closed))
            at += n
        return out

    def _flush(self, pending, region, r: int, frontier, to_split) -> int:
        """The second pass over ``pending`` (see :meth:`_second_pass`), then each
        group's leaves still open expanded: the number of leaves it closed."""
        n_closed = 0
        for g, closed in self._second_pass(pending):
            n_closed += int(closed.sum())
            open_rows = np.flatnonzero(~closed)
            if len(open_rows):
                self._expand(g["res"], g["refuted"], g["lo"], g["hi"], open_rows, g["batch"],
                             g["arrays"], g["leaf_of"], region, r, frontier, to_split, None)
        return n_closed

    def _expand(self, res, refuted, lo, hi, open_rows, batch, arrays, leaf_of, region, r: int,
                frontier, to_split, node) -> None:
        """Nodes ``open_rows`` of a bounded batch stay open: their bound minimisers are
        tried on the variant (a counterexample is raised as :class:`_Found`); a leaf
        goes to the variant's search, an interior node is split as the original split
        it (its two children onto ``frontier``, made by ``node``)."""
        from ..attack import confirm_batch
        n_hidden = len(self.search.net.hidden_sizes)
        cex = confirm_batch(self.search.net, region, r, res.candidates(lo, hi, open_rows))
        if cex is not None:
            raise _Found(cex)
        spec_lower = res.spec_lower.numpy()
        for i in open_rows:
            facts, idx, _, depth = batch[i][:4]
            bounds = [(res.lower[k][i].numpy(), res.upper[k][i].numpy()) for k in range(n_hidden)]
            if leaf_of[i] is not None:
                to_split.append(Node(region.lower.copy(), region.upper.copy(), arrays[i],
                                     bounds, depth, refuted=refuted[i],
                                     parent_lower=spec_lower[i]))
                continue
            self._push_children(facts, idx, bounds, depth, refuted[i], spec_lower[i],
                                frontier, node)

    def _push_children(self, facts, idx, bounds, depth, refuted, known, frontier, node):
        """The children of an open interior node onto ``frontier`` (made by ``node``),
        each with the node's bounds as its parent's; an interior child deeper than
        ``ReuseOptions.walk_interior_depth`` is not bounded: its own children are
        pushed in its place, with the same bounds, down to the leaves."""
        common = set.intersection(*(set(self.facts[j]) - set(facts) for j in idx))
        if not common:
            raise TreeOpen("the proof's leaves do not form a split tree")
        neuron = min(common)  # as covers() reads the tree
        for phase in (1, -1):
            sub = np.array([j for j in idx if self.facts[j][neuron] == phase], dtype=np.int64)
            child = node({**facts, neuron: phase}, sub, bounds, depth + 1, refuted, known)
            limit = self.reuser.ropt.walk_interior_depth
            if child[0] != "leaf" and 0 <= limit < depth + 1:
                self._push_children(child[1], sub, bounds, depth + 1, refuted, known,
                                    frontier, node)
            else:
                frontier.append(child)

    def _node_splits(self, facts: dict) -> list[np.ndarray]:
        return split_arrays(self.cmap.map_splits(fact_names(facts)), self.search.net.hidden_sizes)

    def run(self, region, r: int):
        """A confirmed counterexample, None when every node closed, or raises
        :class:`TreeOpen`."""
        try:
            to_split = self._walk(region, r)
        except _Found as found:
            return found.counterexample
        if not to_split:
            return None
        cex = self.reuser.attack(region, r, quick=True)
        if cex is not None:
            return cex
        cex = search_open(self.search, to_split, r, self.stats, "leaves", TreeOpen,
                          self.reuser.open_search_until)
        if cex is None:
            self.stats.closed_by_split += len(to_split)
        return cex

    def _root_bounds(self):
        """The variant's tightened root bounds (see :meth:`RegionSearch.tighten_root`),
        as scratch starts its tree: the walk's root intersects them. [] when the search
        does not tighten its root; None when they close the region."""
        if not self.search.layer_alpha_applies():
            return []
        return self.search.tightened_root_bounds()

    def _walk(self, region, r: int) -> list[Node]:
        """The tree walked top-down: the leaves still open (raises :class:`_Found`
        with a counterexample among the open nodes' bound minimisers)."""
        search, n_hidden = self.search, len(self.search.net.hidden_sizes)
        top = self.reuser.ropt.walk_alpha_depth

        def node(facts, idx, parent, depth, refuted=None, known=None):
            """A frontier entry, with its kind (bounded differently): a leaf; an
            interior node high up the tree, or deeper down.  ``refuted``/``known``: the
            conjunctions the parent's bound on the variant refuted, its rows' bounds."""
            kind = "leaf" if self._is_leaf(facts, idx) else "top" if depth <= top else "deep"
            return kind, facts, idx, parent, depth, refuted, known
        root = self._root_bounds()
        if root is None:
            return []  # the variant's tightened root closes the region
        frontier = [node({}, np.arange(len(self.branches)), root or None, 0)]
        to_split, closed_nodes = [], 0
        pending = []  # per leaf batch, its leaves left open by their first pass
        while frontier:
            if self.reuser.left() <= 0:
                raise TreeOpen("time budget used up walking the proof tree")
            # a batch of one kind, in frontier order; interior nodes first, so that the
            # leaves (each with its own alpha steps) are bounded in full batches
            size = search._batch_size()
            kinds = [item[0] for item in frontier]
            n_leaves = kinds.count("leaf")
            kind = "leaf" if n_leaves >= size or n_leaves == len(kinds) else \
                next(k for k in kinds if k != "leaf")
            picked = [i for i, k in enumerate(kinds) if k == kind][:size]
            batch = [frontier[i][1:] for i in picked]
            taken = set(picked)
            frontier = [item for i, item in enumerate(frontier) if i not in taken]
            n = len(batch)
            lo = torch.from_numpy(np.repeat(region.lower[None, :], n, axis=0))
            hi = torch.from_numpy(np.repeat(region.upper[None, :], n, axis=0))
            arrays = [self._node_splits(b[0]) for b in batch]
            splits = [torch.from_numpy(np.stack([a[k] for a in arrays])) for k in range(n_hidden)]
            fixed = None
            if all(b[2] is not None for b in batch):
                fixed = [(torch.from_numpy(np.stack([b[2][k][0] for b in batch])),
                          torch.from_numpy(np.stack([b[2][k][1] for b in batch])))
                         for k in range(n_hidden)]
            leaf_of = [int(b[1][0]) if kind == "leaf" else None for b in batch]
            parent_refuted = [b[4] for b in batch]
            rows = search.rows_to_bound(parent_refuted, [b[5] for b in batch])
            res, refuted, closed, warm = self._bound_nodes(
                lo, hi, splits, fixed, leaf_of if kind == "leaf" else None, kind == "top", rows)
            inherit_refuted(refuted, closed, parent_refuted)
            closed_nodes += int(closed.sum())
            open_rows = np.flatnonzero(~closed)
            if len(open_rows) == 0:
                continue
            if warm is not None:  # leaves: a second pass, batched with other batches' leaves
                sel = torch.from_numpy(open_rows)
                pending.append({
                    "res": res.select(sel), "refuted": refuted[open_rows], "lo": lo[sel],
                    "hi": hi[sel], "splits": [t[sel] for t in splits],
                    "fixed": None if fixed is None else [(l[sel], u[sel]) for l, u in fixed],
                    "warm": [a[sel] for a in warm],
                    "parent_refuted": [parent_refuted[i] for i in open_rows],
                    "known": [batch[i][5] for i in open_rows],
                    "batch": [batch[i] for i in open_rows],
                    "arrays": [arrays[i] for i in open_rows],
                    "leaf_of": [leaf_of[i] for i in open_rows]})
                if sum(len(g["lo"]) for g in pending) < size and frontier:
                    continue
                closed_nodes += self._flush(pending, region, r, frontier, to_split)
                pending = []
                continue
            self._expand(res, refuted, lo, hi, open_rows, batch, arrays, leaf_of, region, r,
                         frontier, to_split, node)
        if pending:
            closed_nodes += self._flush(pending, region, r, frontier, to_split)
        self.stats.closed_by_bounds += closed_nodes
        return to_split
