"""The reuse attempt on one variant: each region's proof re-checked with the
variant's bounds, the original's bounds moved by a bound of the change, the
original's cores and, for what stays open, branch and bound on those branches
(the steps and their soundness: :mod:`verify.reuse.reverify`)."""
from __future__ import annotations

import time

import numpy as np
import torch

from ..attack import Attacker, confirm_batch
from ..bounds import count_unstable
from ..graphbounds import make_propagator
from ..network import Network
from ..options import VerifyOptions
from ..properties import Region
from ..constraint_names import split_arrays
from ..search import Node, RegionSearch
from ..result import Counterexample, Statistics
from .bound_core import bound_with, box_tensors, core_neurons
from .changes import REMOVED, REVALUED, UNCHANGED, ChangeMap
from .difference import (ChangeCaps, OriginalBounds, deviation, margin_loss, original_bounds,
                         region_caps, variant_bounds, with_spec_shift)
from .options import ReuseOptions
from .proof import ProofBranch, ProofRecord
from .core_check import CoreChecks
from .results import ReuseStats
from .derive import GraphChangeMap
from .tree import (LeafSearch, TreeCheck, TreeOpen, TreeWalk, has_leaf_bounds, moved_bounds,
                   search_open, warm_alphas, warm_root_slopes)


def _relu_tree(region: Region, branches) -> bool:
    """A proof tree of ReLU splits only (every leaf the region's box)."""
    return any(b.splits for b in branches) and all(
        np.array_equal(b.lower, region.lower) and np.array_equal(b.upper, region.upper)
        for b in branches)


class NoFit(Exception):
    """The proof does not carry over; verify from scratch."""


class Reuser(CoreChecks):
    def __init__(self, variant: Network, cmap: ChangeMap, options: VerifyOptions,
                 ropt: ReuseOptions, stats: ReuseStats, deadline: float):
        self.net, self.cmap, self.opt, self.ropt = variant, cmap, options, ropt
        self.stats, self.deadline = stats, deadline
        self.open_search_until: float | None = None  # see ReuseOptions.continue_open_search
        self.propagator = make_propagator(variant, options.graph_bounds)
        self.rng = np.random.default_rng(options.seed)
        self.attacker: Attacker | None = None
        self.root_tried: set = set()  # regions whose root bound reverify took already
        # regions reverify attacked up front (scratch's own round): a quick attack of
        # the variant's region later would be the same search with other random draws
        self.attacked: set = set()
        self._region_caps: dict[int, ChangeCaps] = {}  # see _caps
        # a CNN variant with its original's architecture (or expanded to it): the
        # graph differential tiers of verify.reuse.tree.TreeCheck
        self.graph_tiers = ropt.graph_difference and isinstance(cmap, GraphChangeMap) \
            and cmap.diffable()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def near_copy(self) -> bool:
        """Whether the variant is a near copy of its original: a chain whose parameters
        moved less than ``ReuseOptions.attack_skip_below`` (:attr:`ChangeMap.
        relative_change`, computed once per map).  It gets no up-front attack, and its
        input-bisection tree no walk and no leaf attack: its nodes are about as open as its
        original's."""
        return (not isinstance(self.cmap, GraphChangeMap)
                and self.cmap.relative_change < self.ropt.attack_skip_below)

    # ---- one region --------------------------------------------------------------
    def region(self, region: Region, r: int, proof: ProofRecord):
        """Returns a confirmed counterexample, or None when every branch of the
        proof's region ``r`` is closed on the variant."""
        # the variant's own search on this region: its batched bounding (hybrid
        # intermediate bounds with few inputs) and, for branches that stay open,
        # its branch and bound
        search = RegionSearch(self.net, region, r, self.opt, self.deadline, Statistics(),
                              self.propagator)
        branches = proof.regions.get(r) or []
        single = branches[0] if len(branches) == 1 and not branches[0].splits else None
        # the original's bound of the region, where it is used: counterexample
        # candidates for a split proof, moved bounds for a region one bound settled
        ob = self._original_bounds(search, proof) if self.ropt.difference and (
            len(branches) > 1 or single is not None and single.method == "bounds") else None
        if len(branches) > 1:
            cex = self._original_candidates(region, r, ob)
            if cex is not None:
                return cex
            rooted = r in self.root_tried  # a CNN tree: the variant's root bound first
            if self.graph_tiers and self.ropt.tree_walk and _relu_tree(region, branches) \
                    and not rooted:
                got, rooted = self._root_closes(search), True
                if got is not None:
                    return None if got is True else got
            if (self.ropt.difference or self.graph_tiers) and has_leaf_bounds(branches):
                # the original's tree re-checked leaf by leaf from its own bounds; with
                # ReLU splits only while the cheap tiers close every leaf (a leaf is
                # the original's phase domain, the path below splits the variant's)
                if not proof.covers(r, region):
                    raise NoFit(f"the proof's branches do not cover region {r}")
                relu_split = any(b.splits for b in branches)
                leaf_search = self._leaf_search(search, ob, proof)
                try:
                    levels = proof.bisection_levels(r, region) \
                        if self.ropt.bisection_walk_step else None
                    return TreeCheck(self, leaf_search, branches, self._caps(search, ob),
                                     proof.deepened, levels, proof.leaf_arrays(r)).run(
                        region, r, None if rooted else lambda: self._root_closes(search),
                        max_open=self.ropt.tree_max_open if relu_split else 1.0)
                except TreeOpen as exc:
                    if not relu_split:
                        raise NoFit(str(exc)) from None
            if self.ropt.tree_walk and _relu_tree(region, branches):
                if not proof.covers(r, region):
                    raise NoFit(f"the proof's branches do not cover region {r}")
                if ob is None:
                    # no original bound gave candidates: one plain bound of the whole
                    # region (an easier variant is done) with its minimisers, then a few
                    # milliseconds of attack (a broken variant is found) before the
                    # whole tree is bounded
                    got = None if rooted else self._root_closes(search)
                    if got is True:
                        return None
                    cex = got if got is not None else \
                        self.attack(region, r, quick=True) if self.ropt.attack else None
                    if cex is not None:
                        return cex
                leaf_search = self._leaf_search(search, ob, proof)
                try:
                    return TreeWalk(self, leaf_search, branches).run(region, r)
                except TreeOpen as exc:
                    raise NoFit(str(exc)) from None
            # a compressed variant can be easier than the original: one bound of the
            # whole region (milliseconds) before re-checking a proof tree of many
            # branches; its minimisers are counterexample candidates otherwise
            got = self._root_closes(search)
            if got is not None:
                return None if got is True else got
        if not proof.covers(r, region):
            raise NoFit(f"the proof's branches do not cover region {r}")
        if single is not None and self.graph_tiers and has_leaf_bounds(branches):
            # a CNN region one bound settled: its margin plus the graph change bound,
            # then the variant's spec rows over the moved bounds, before its own bound
            leaf_search = LeafSearch(self.net, region, r, self.opt, self.deadline,
                                     Statistics(), self.propagator)
            try:
                return TreeCheck(self, leaf_search, branches).run(
                    region, r, lambda: self._root_closes(search), backsub=False)
            except TreeOpen as exc:
                raise NoFit(str(exc)) from None
        if single is not None and single.method == "bounds" and ob is not None:
            closed, moved, loss = self._closed_by_difference(search, ob)
            if closed:
                return None
            cex = self._original_candidates(region, r, ob)
            if cex is not None:
                return cex
            # then back-substitution over the moved intermediate bounds, unless the
            # moved bound fell too far short (see ReuseOptions.difference_backsub_max_loss)
            if loss <= self.ropt.difference_backsub_max_loss \
                    and self._closed_by_moved_bounds(search, moved):
                return None
        if single is not None and single.bound_core is None and self.ropt.bound_core_on_demand:
            proof.bound_core_of(r, self.cmap.original, region, self.opt, self.ropt.minimise_budget)
        if single is not None and self._try_bound_core(single):
            closed, candidates = self._closed_by_bound_core(search, single)
            if closed:
                return None
            # the bound's minimisers: a broken variant's counterexample is often one
            cex = confirm_batch(self.net, region, r, candidates)
            if cex is not None:
                return cex
        if single is not None and ob is not None and ob.tightened and self.ropt.root_search_first \
                and proof.root_slopes.get(r):
            self._warm_root(search, ob, proof)
            node = Node(single.lower.copy(), single.upper.copy(), None, None, single.depth)
            cex = search_open(search, [node], r, self.stats, "branches", NoFit,
                              self.open_search_until)
            self.stats.closed_by_split += int(cex is None)
            return cex
        relu_split = any(b.splits for b in branches)
        splits = [split_arrays(self.cmap.map_splits(b.splits), self.net.hidden_sizes)
                  if relu_split else None for b in branches]
        attacked = len(branches) > 1 and self.ropt.attack
        if attacked:
            # a proof tree takes many bounds to re-check; when the variant is broken
            # a few milliseconds of attack usually find the counterexample first
            cex = self.attack(region, r, quick=True)
            if cex is not None:
                return cex
        step = max(1, self.opt.batch_size)
        alpha = search.alpha_iterations
        # plain CROWN on every branch, then (after a cheap look for a counterexample)
        # alpha-CROWN on the branches it left open
        open_items = []
        for s in range(0, len(branches), step):
            batch = self._bound(search, branches, splits, range(s, min(len(branches), s + step)), 0)
            if batch:
                open_items += batch
                cex = self._candidates(region, r, batch)
                if cex is not None:
                    return cex
        if not open_items:
            return None
        if self.ropt.attack and not attacked:
            cex = self.attack(region, r, quick=True)
            if cex is not None:
                return cex
        if self.ropt.bounds_first and alpha:
            plain, open_items = open_items, []
            for s in range(0, len(plain), step):
                open_items += self._bound(search, branches, splits,
                                          [it[0] for it in plain[s:s + step]], alpha)
        if not open_items:
            return None
        if self.ropt.attack:
            cex = self.attack(region, r, quick=False)
            if cex is not None:
                return cex
        to_split = []
        for i, lb, todo, unstable, infeasible, _ in open_items:
            b = branches[i]
            if infeasible:  # only reached with bounds_first off: empty on the variant
                self.stats.closed_by_bounds += 1
                continue
            closed = True
            for j in todo:
                verdict = self.z3_branch(region, r, b, lb, int(j), unstable)
                if isinstance(verdict, Counterexample):
                    return verdict
                if verdict != "unsat":
                    closed = False
                    break
            if not closed:
                to_split.append(Node(b.lower.copy(), b.upper.copy(), splits[i], None, b.depth))
        if to_split:
            if self.left() <= 0:
                raise NoFit("time budget used up re-checking the proof branches")
            if single is not None:
                # the region's root searched again (here when the root search above did
                # not apply: root_search_first off, or no original slopes): its layer
                # bounds start from the original's where it has them (mnist-net_256x6
                # image 3 at eps 0.011: the root steps from nothing took 0.95 s of 1.9 s)
                self._warm_root(search, ob, proof)
            cex = search_open(search, to_split, r, self.stats, "branches", NoFit,
                              self.open_search_until)
            if cex is not None:
                return cex
            self.stats.closed_by_split += len(to_split)
        return None

    def _root_closes(self, search: RegionSearch):
        """One bound of the variant's whole region: True when it closes it, else a
        confirmed counterexample among its minimisers, or None."""
        got = search.root_check()
        if got is True:
            self.stats.closed_at_root += 1
        return got

    def _try_bound_core(self, b: ProofBranch) -> bool:
        """Whether the branch's bound core promises to be cheaper than a full bound
        of it, counting the checks that fail (see ``ReuseOptions.bound_core_min_gain``)."""
        if b.bound_core is None or b.splits:
            return False
        if b.bound_core_gain is None:  # not measured: try it
            return True
        need = (self.ropt.empty_bound_core_min_gain if not b.bound_core.names
                else self.ropt.bound_core_min_gain)
        return b.bound_core_gain >= need

    def _original_bounds(self, search: RegionSearch, proof: ProofRecord) -> OriginalBounds:
        """The original's bound of the region, kept with the proof record (derived
        here, once, for a record from the store)."""
        r = search.index
        if r not in proof.root_bounds:
            proof.root_bounds[r] = original_bounds(RegionSearch(
                self.cmap.original, search.region, r, self.opt, self.deadline, Statistics(),
                full_margin=True))
        return proof.root_bounds[r]

    def _caps(self, search: RegionSearch, ob: OriginalBounds | None) -> ChangeCaps | None:
        """The change's bounds over the region, tightened symbolically once for all the
        leaves of its tree (ReLU-split chain trees; see ``ReuseOptions.region_caps``).
        Computed once per region."""
        if ob is None or not self.ropt.region_caps or isinstance(self.cmap, GraphChangeMap) \
                or search.input_split:
            return None
        if search.index not in self._region_caps:
            region = search.region
            self._region_caps[search.index] = region_caps(self.cmap, ob, region.lower,
                                                          region.upper, search.C.numpy())
        return self._region_caps[search.index]

    def _leaf_search(self, search: RegionSearch, ob: OriginalBounds | None,
                     proof: ProofRecord) -> LeafSearch:
        """The variant's search from the leaves of region ``search``'s proof tree.  Its
        root, if it needs one (:meth:`RegionSearch.tightened_root_bounds`), starts from
        the original's tightened root moved by the region's change caps (see
        ``ReuseOptions.moved_root_max_gain``: a sound bound of the variant's
        pre-activations there, the original's derived in this process plus the change),
        and its alpha-CROWN steps from the original's slopes (any slopes are sound)."""
        leaf_search = LeafSearch(self.net, search.region, search.index, self.opt,
                                 self.deadline, Statistics(), self.propagator)
        self._warm_root(leaf_search, ob, proof)
        return leaf_search

    def _warm_root(self, search: RegionSearch, ob: OriginalBounds | None,
                   proof: ProofRecord) -> None:
        """Start ``search``'s root (:meth:`RegionSearch.start_root_from`) from the
        original's tightened root moved by the region's change caps and its alpha-CROWN
        steps from the original's kept slopes (see :meth:`_leaf_search`)."""
        if isinstance(self.cmap, GraphChangeMap) or not search.layer_alpha_applies():
            return
        slopes = proof.root_slopes.get(search.index)
        slopes = warm_root_slopes(self.cmap, slopes) if slopes else None
        moved, tight = None, False
        caps = self._caps(search, ob) if ob is not None and ob.tightened \
            and self.ropt.moved_root_max_gain >= 0 else None
        if caps is not None:
            moved = moved_bounds(self.cmap, [l[None] for l in ob.lower],
                                 [u[None] for u in ob.upper],
                                 [(dl[None], du[None]) for dl, du in caps.layers])
            tight = count_unstable(moved) <= (1.0 + self.ropt.moved_root_max_gain) * \
                count_unstable(zip(ob.lower, ob.upper))
        if moved is not None or slopes:
            search.start_root_from(moved, tight, slopes)

    def _original_candidates(self, region: Region, r: int, ob: OriginalBounds | None):
        """A confirmed counterexample among the minimisers of the original's bound
        of the region and its centre: where a broken variant usually fails (the
        variant's own bound has nearly the same minimisers, at the cost of a bound)."""
        if ob is None:
            return None
        return confirm_batch(self.net, region, r, ob.candidates(region.lower, region.upper))

    def _closed_by_difference(self, search: RegionSearch, ob: OriginalBounds):
        """A region the original settled with one bound: the variant's bounds are
        the original's moved by the change (:mod:`verify.reuse.difference`).
        Returns (closed, the moved bounds, their :func:`margin_loss`)."""
        lower, upper = search.region.lower, search.region.upper
        dev = deviation(self.cmap, ob, lower, upper, search.C.numpy())
        moved = variant_bounds(self.cmap, ob, dev, lower, upper)
        refuted, closed = search.refutation(moved, lower[None, :], upper[None, :])
        through = None if closed.all() else dev.through_active()
        if through is not None:  # the tighter bound of the spec's change, when needed
            moved = with_spec_shift(moved, ob, np.maximum(dev.spec, through), lower, upper)
            refuted, closed = search.refutation(moved, lower[None, :], upper[None, :])
        if not closed.all():
            return False, moved, margin_loss(ob, moved, search.owner, refuted[0])
        self.stats.closed_by_bounds += 1
        self.stats.closed_by_difference += 1
        return True, moved, 0.0

    def _closed_by_moved_bounds(self, search: RegionSearch, moved) -> bool:
        """After :meth:`_closed_by_difference` said no: the variant's spec rows
        back-substituted over the moved intermediate bounds (no intermediate
        neuron back-substituted: the costly part of a bound on wide layers)."""
        lo, hi = search.root_box()
        res = search.prop.spec_bound(lo, hi, search.C, search.d, moved.lower, moved.upper, 0)
        if not search.refutation(res, lo.numpy(), hi.numpy())[1].all():
            return False
        self.stats.closed_by_bounds += 1
        self.stats.closed_by_difference += 1
        self.stats.closed_by_difference_backsub += 1
        return True

    def _closed_by_bound_core(self, search: RegionSearch, b: ProofBranch):
        """Bound the variant on the branch back-substituting only the neurons of
        the original's bound core that the variant keeps (intervals for the
        rest): (True, None) when that closes it, else (False, the bound's
        minimisers and the box centre as counterexample candidates) and the
        full path follows."""
        names = [self.cmap.map_name(n) for n in b.bound_core.names]
        res, closed = bound_with(search, b.lower, b.upper,
                                 core_neurons(n for n in names if n is not None))
        if not closed:
            return False, res.candidates(*box_tensors(b.lower, b.upper))
        self.stats.closed_by_bounds += 1
        self.stats.closed_by_bound_core += 1
        return True, None

    def _bound(self, search: RegionSearch, branches, splits, idx, alpha) -> list[tuple]:
        """Bound branches ``idx`` on the variant, counting those closed; returns the
        open ones as items (index, layer bounds, open conjunctions, unstable count,
        infeasible, corner candidates)."""
        relu_split = splits[0] is not None
        n_hidden = len(self.net.hidden_sizes)
        lo = np.stack([branches[i].lower for i in idx])
        hi = np.stack([branches[i].upper for i in idx])
        sp = None if not relu_split else [
            torch.from_numpy(np.stack([splits[i][k] for i in idx])) for k in range(n_hidden)]
        tlo, thi = torch.from_numpy(lo), torch.from_numpy(hi)
        # a whole region (a proof settled at its root) is large: forward-mode bounds
        # would only be computed in vain (as in RegionSearch.closed_at_root)
        # alpha-CROWN starts from the original's slopes of the branch, when kept
        res, refuted, _ = search.bound_branches(
            tlo, thi, sp, None, alpha, "backward" if len(branches) == 1 else None,
            alpha_init=warm_alphas(self.cmap, branches, list(idx)) if alpha else None)
        infeasible, unstable = res.infeasible.numpy(), res.unstable()
        out = []
        for b, i in enumerate(idx):
            if self.ropt.bounds_first and (infeasible[b] or refuted[b].all()):
                self.stats.closed_by_bounds += 1
                continue
            lb = [(res.lower[k][b].numpy(), res.upper[k][b].numpy()) for k in range(n_hidden)]
            todo = np.flatnonzero(~refuted[b]) if self.ropt.bounds_first \
                else np.arange(search.n_conj)
            out.append((i, lb, todo, int(unstable[b]), bool(infeasible[b]),
                        res.candidates(tlo, thi, b)))
        return out

    def _candidates(self, region: Region, r: int, batch):
        """Confirm the bound minimisers and midpoints of a batch's open branches."""
        return confirm_batch(self.net, region, r, np.vstack([it[5] for it in batch]))

    def attack(self, region: Region, r: int, quick: bool, starts=None, budget=None):
        """Sampling + PGD on the variant (``starts``: extra PGD starting points;
        ``budget``: seconds, by default 0.2 quick and 1.0 otherwise).  None at once for
        a quick attack without starts on a region attacked up front (measured on ACAS
        Xu 2_9 prop 1, int16: 0.03 s of a 0.17 s reuse)."""
        if quick and starts is None and r in self.attacked:
            return None
        return self._attack(region, r, budget if budget is not None else 0.2 if quick else 1.0,
                            restarts=2 if quick else self.opt.attack_restarts,
                            steps=10 if quick else self.opt.attack_steps,
                            samples=200 if quick else self.opt.random_samples, starts=starts)

    def _attacker(self) -> Attacker:
        """The variant's attacker, made on first use (its torch model is kept)."""
        if self.attacker is None:
            self.attacker = Attacker(self.net)
        return self.attacker

    def attack_leaves(self, region: Region, r: int, branches) -> Counterexample | None:
        """PGD confined to each leaf box of an input-split proof (``branches``, the leaves
        its tiers left open), ``ReuseOptions.leaf_attack_steps`` steps from their centres,
        within the reuse deadline: a confirmed counterexample, or None."""
        if not branches or not self.ropt.leaf_attack_steps:
            return None
        return self._attacker().attack_boxes(region, r, np.stack([b.lower for b in branches]),
                                             np.stack([b.upper for b in branches]),
                                             self.ropt.leaf_attack_steps, self.deadline)

    def sample(self, region: Region, r: int, budget: float):
        """Random points of the region tried on the variant (as many as scratch's
        up-front round, within ``budget`` seconds): a confirmed counterexample or None."""
        return self._attack(region, r, budget, restarts=0, steps=0,
                            samples=self.opt.random_samples)

    def _attack(self, region: Region, r: int, budget: float, **how):
        """The variant's attacker on region ``r`` for ``budget`` seconds at most (within
        the reuse deadline); ``how``: restarts, steps, samples, starts."""
        budget = min(budget, max(self.left(), 0.0))
        cex, _ = self._attacker().attack(region, r, self.rng, time.monotonic() + budget, **how)
        return cex


def proof_stats(stats: ReuseStats, proof: ProofRecord, cmap: ChangeMap) -> None:
    stats.branches = proof.n_branches
    for core in proof.cores():
        stats.cores += 1
        stats.cores_minimal += int(core.minimal)
        stats.core_size += len(core.names)
        stats.constraints_total += core.total
    counts = cmap.counts(proof.core_names())
    stats.reused, stats.revalued, stats.dropped = (counts[UNCHANGED], counts[REVALUED],
                                                   counts[REMOVED])
