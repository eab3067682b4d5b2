"""Branch and bound over one property region.

Each branch is bounded (``verify.bounds``); branches whose unsafe rows are
all refuted are closed; otherwise the bound minimisers are tried on the
concrete network, small leaves go to Z3 (``verify.encode``), and the rest is
split -- on the input box when the input is small (ACAS Xu), on unstable
ReLUs otherwise (MNIST-sized inputs), with bounds re-tightened per branch.

Graph networks (CNNs, residual networks: :class:`verify.graph.GraphNetwork`) are
searched the same way over their ReLU nodes, bounded by
:class:`verify.graphbounds.GraphBoundPropagator`; their leaves are never sent to Z3
(the encoder takes chains only): a branch with every ReLU fixed is a linear program
that beta-CROWN decides at convergence, and one it cannot refute stays ``unknown``.

This module holds the search loop (:class:`RegionSearch`, :func:`search_region`); the
branch, leaf and outcome types are in :mod:`verify.search_types`, the spec rows in
:mod:`verify.spec_rows`, and how a branch is split in :mod:`verify.branching`.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from .attack import confirm_batch
from .attack_schedule import InterleavedAttack
from .bounds import BoundPropagator, count_unstable
from .branching import Splitting
from .graphbounds import make_propagator
from .network import Network
from .options import VerifyOptions
from .properties import Region
from .result import Counterexample, Statistics, Status
from .constraint_names import split_arrays, split_facts
from .search_types import Leaf, Node, RegionOutcome, _Frontier
from .spec_rows import refuted_conjunctions, region_rows

__all__ = ["Leaf", "Node", "RegionOutcome", "RegionSearch", "inherit_refuted", "portfolio",
           "refuted_conjunctions", "region_rows", "search_region", "split_arrays", "split_facts"]


def fact_betas(betas, i: int, splits) -> np.ndarray | None:
    """Branch ``i``'s beta-CROWN multipliers ((B, m, n_k) per hidden layer, None where
    a layer had no split) of its split facts, (m, n_facts) in the order of
    :func:`split_facts` (layer, then neuron); None when the bound had no multipliers."""
    if betas is None or all(b is None for b in betas):
        return None
    m = next(b.shape[1] for b in betas if b is not None)
    cols = [np.zeros((m, 0))]
    for k, s in enumerate(splits):
        idx = np.flatnonzero(s)
        if len(idx):
            cols.append(np.zeros((m, len(idx))) if betas[k] is None
                        else betas[k][i][:, torch.from_numpy(idx)].numpy())
    return np.concatenate(cols, axis=1)


def inherit_refuted(refuted: np.ndarray, closed: np.ndarray, parents) -> None:
    """A conjunction refuted on a branch's parent is refuted on the branch (a
    sub-domain): ``refuted`` (B, n_conj) and ``closed`` (B,) updated in place from the
    parents' ``(n_conj,)`` flags (when every branch's are known)."""
    if parents and all(p is not None for p in parents):
        refuted |= np.stack(parents)
        closed |= refuted.all(axis=1)


def path_lower(own: np.ndarray, ancestors: np.ndarray | None) -> np.ndarray:
    """A branch's spec-row lower bounds ((m,)): its own bound's, or its ancestors' best
    where that is higher (an ancestor's bound holds on every sub-domain; a child's own
    bound can be looser than its parent's, and a conjunction the ancestors refuted must
    stay refuted in what is recorded -- mnist-net_256x4 image 14 at eps 0.012: one leaf
    of 161 was recorded with its own -0.024, its parent had 0.003, and every variant
    then re-searched it from scratch)."""
    return own if ancestors is None else np.fmax(own, ancestors)  # (a NaN never wins)


class RegionSearch(Splitting):
    """Decides one region of a property on one network."""

    def __init__(self, network: Network, region: Region, region_index: int,
                 options: VerifyOptions, deadline: float, stats: Statistics,
                 propagator: BoundPropagator | None = None, record: bool = False,
                 full_margin: bool = False):
        self.net = network
        self.region = region
        self.index = region_index
        self.opt = options
        self.deadline = deadline
        self.stats = stats
        self.prop = propagator or make_propagator(network, options.graph_bounds)
        self.use_z3 = options.use_z3 and isinstance(network, Network)  # chains only
        self.record = record  # keep each leaf's box and layer bounds
        self.n_conj = len(region.unsafe)
        self.whole_box_unsafe = any(c.coeffs.shape[0] == 0 for c in region.unsafe)
        self.C, self.d, self.owner = region_rows(region, network.n_outputs)
        # a branch's alpha/beta steps stop once its bound refutes it (verify.ascent.Settled),
        # except where leaves are recorded or ``full_margin`` is asked for (an original's
        # bounds that variants are checked against): a proof for reuse keeps the steps'
        # full margin
        # (mnist-net_256x4 image 14 at eps 0.012: with early stops in the proof, its int16
        # variant's re-check took 8.9-10.5 s instead of 2.4 s; its margins, 0.001-0.21 on
        # the middle 90 % of leaves, are near int16's change of 0.011)
        self.settle = None if record or full_margin else self.owner
        self.input_split = splits_inputs(network, options)
        self.leaves: list[Leaf] = []
        self.z3_unknown = 0
        self.root_candidates: np.ndarray | None = None  # set by closed_at_root
        self.root_result = None  # the bound closed_at_root took (what a reusable proof keeps)
        self.attack = InterleavedAttack(network, region, region_index, options, stats, deadline)
        self._root_bounds = False  # the tightened root's layer bounds, once computed
        self.tightened = None  # the root's bound over tightened intermediate bounds, if taken
        self._root_start = None  # see start_root_from
        self.root_slopes: dict | None = None  # the slopes tighten_root kept (verify.layer_alpha)
        self.branch_slopes = None  # ... as the branches' KeptSlopes (see tighten_root)
        # a threading.Event that ends the search as its deadline would (another
        # procedure decided the region: verify.milp_region.ProgramStage), and a callable
        # given this search and the root's bound once run() has bounded and tightened
        # the region's root and left it open
        self.interrupt = None
        self.on_root = None

    # ------------------------------------------------------------------
    def time_left(self) -> float:
        if self.interrupt is not None and self.interrupt.is_set():
            return 0.0
        return self.deadline - time.monotonic()

    def refutation(self, res, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(refuted (B, n_conj), closed (B,)) of a bounded batch: a branch is closed
        when every unsafe conjunction is refuted or the branch is infeasible."""
        refuted = refuted_conjunctions(res, self.owner, self.n_conj, lo, hi)
        return refuted, refuted.all(axis=1) | res.infeasible.numpy()

    def bound_branches(self, lo, hi, splits, fixed, alpha: int | None = None, mode: str | None = None,
                       inherited=None, refine=None, alpha_init=None, rows=None, beta_init=None,
                       tier_init=None):
        """Bound a batch of branches: (bounds, refuted, closed).  ``inherited``:
        optional linear lower bounds of the spec rows that hold on the boxes
        (their parents'), kept where they are better; ``refine``: back-substitute
        only these neurons (see :meth:`BoundPropagator.bound`).  With few inputs
        (input splitting) the cheap forward-mode intermediate bounds come first
        and only the branches they leave open are bounded again, with the
        neurons that forward bounds leave unstable back-substituted
        (``intermediate_bounds="hybrid"``).  ``alpha_init``: warm-start slopes
        (see :meth:`BoundPropagator.bound`).  ``rows``: None (every spec row), or
        ``(keep, known)``: bound only the rows ``keep`` ((m,) bool; the others'
        conjunctions are refuted on every branch's parent) and give the others the
        lower bounds ``known`` ((B, m), their parents': they hold on the branches).
        ``beta_init``: warm-start multipliers of the split constraints ((B, m, n_k) per
        hidden layer, all ``m`` rows).  ``tier_init``: warm-start slopes of the alpha
        tier ((B, n_k) per hidden layer, NaN rows: the default start; see
        :meth:`_alpha_tier`)."""
        C, d, owner = self.C, self.d, self.settle
        keep = known = None
        if rows is not None and not rows[0].all():
            keep, known = torch.from_numpy(rows[0]), torch.from_numpy(rows[1])
            C, d, owner = C[keep], d[keep], self._settle_rows(rows[0])
            if beta_init is not None:
                beta_init = [None if b is None else b[:, keep] for b in beta_init]
        if alpha is None:
            alpha = self.alpha_iterations
        if mode is None:
            mode = self.opt.intermediate_bounds if self.input_split else "backward"
        # a layer below a branch's new split is bounded as in its parent, so a recorded
        # leaf keeps its parent's bounds there (measured 2026-12-04 on a 213-leaf proof:
        # the same tree, leaf bounds equal to 2e-14, building 1.27x -> 1.11x plain)
        res = self.prop.bound(lo, hi, C, d, splits, fixed, alpha_iterations=alpha,
                              deadline=self.deadline, forward=mode != "backward", refine=refine,
                              alpha_init=alpha_init, beta_init=beta_init, conjunctions=owner,
                              layer_slopes=self.branch_slopes)
        if keep is not None:
            res = res.expand_rows(keep, known)
        self.stats.bound_evaluations += len(lo)
        if inherited is not None:
            res.merge_linear(*inherited, lo, hi)
        refuted, closed = self.refutation(res, lo.numpy(), hi.numpy())
        if mode == "hybrid" and not closed.all():
            rows = torch.from_numpy(np.flatnonzero(~closed))
            again = self.prop.bound(lo[rows], hi[rows], C, d,
                                    None if splits is None else [s[rows] for s in splits],
                                    None if fixed is None else [(l[rows], u[rows]) for l, u in fixed],
                                    alpha_iterations=alpha, deadline=self.deadline,
                                    forward=True, backward=True, conjunctions=owner)
            if keep is not None:
                again = again.expand_rows(keep, known[rows])
            self.stats.bound_evaluations += len(rows)
            # bounds are not monotone in the intermediate bounds: keep the better
            self._merge(res, rows, again, lo, hi, refuted, closed)
            self._alpha_tier(res, lo, hi, refuted, closed, keep, known, tier_init)
        return res, refuted, closed

    def _merge(self, res, rows, again, lo, hi, refuted, closed) -> None:
        """Merge ``again`` (branches ``rows`` bounded again) into ``res`` and
        update ``refuted``/``closed`` of those rows in place."""
        res.merge_rows(rows, again)
        r = rows.numpy()
        refuted[r] |= self.refutation(res.select(rows), lo[rows].numpy(), hi[rows].numpy())[0]
        closed[r] = refuted[r].all(axis=1) | res.infeasible.numpy()[r]

    def _settle_rows(self, keep: np.ndarray):
        """:attr:`settle` (the conjunction of each spec row, or None) of the rows
        ``keep`` ((m,) bool)."""
        return None if self.settle is None else self.settle[keep]

    def _alpha_tier(self, res, lo, hi, refuted, closed, keep=None, known=None,
                    init=None) -> None:
        """alpha-CROWN steps on the spec rows (``keep``: these only) of the open
        branches with few unstable ReLUs (over their intermediate bounds), from the
        slopes ``init`` where given ((B, n_k) per hidden layer, any slopes are sound);
        updates in place."""
        if not self.opt.alpha_tier_iterations or closed.all() or not self.prop.n_hidden:
            return
        r = np.flatnonzero(~closed & (res.unstable() <= self.opt.alpha_tier_max_unstable))
        if len(r) == 0:
            return
        rows = torch.from_numpy(r)
        C, d, owner = (self.C, self.d, self.settle) if keep is None else \
            (self.C[keep], self.d[keep], self._settle_rows(keep.numpy()))
        again = self.prop.spec_bound(lo[rows], hi[rows], C, d,
                                     [l[rows] for l in res.lower], [u[rows] for u in res.upper],
                                     self.opt.alpha_tier_iterations, deadline=self.deadline,
                                     conjunctions=owner,
                                     alpha_init=None if init is None else [a[rows] for a in init])
        if keep is not None:
            again = again.expand_rows(keep, known[rows])
        self.stats.bound_evaluations += len(r)
        self._merge(res, rows, again, lo, hi, refuted, closed)

    @property
    def alpha_iterations(self) -> int:
        """alpha-CROWN steps per bounding in this search's splitting mode."""
        return self.opt.alpha_iterations_input if self.input_split else self.opt.alpha_iterations

    def _close(self, node: Node, res, i: int, method: str | None = None, cores=None,
               digits=None, layer_b=None) -> None:
        """Record ``node`` (row ``i`` of the bounded batch ``res``) as a closed leaf."""
        self._close_rows([node], res, [i], method, cores, digits, layer_b)

    def _close_rows(self, nodes, res, rows, method: str | None = None, cores=None,
                    digits=None, layer_b=None) -> None:
        """Record ``nodes`` (rows ``rows`` of the bounded batch ``res``) as closed
        leaves.  With :attr:`record`, the batch's tensors are turned into arrays once
        for all of them (per leaf, that took 1.4 s of a 37 s proof of ACAS Xu 4_2 prop 2)."""
        infeasible = None if res is None else res.infeasible.numpy()
        keep = self.record and res is not None
        if keep:
            lower = [t.numpy() for t in res.lower]
            upper = [t.numpy() for t in res.upper]
            spec_lower = res.spec_lower.numpy()
            unstable = res.unstable()
            alphas = None if res.alphas is None else [a.numpy() for a in res.alphas]
            finite = None if alphas is None else np.logical_and.reduce(
                [np.isfinite(a).reshape(a.shape[0], -1).all(1) for a in alphas])
        for node, i in zip(nodes, rows):
            kind = method or ("infeasible" if infeasible[i] else "bounds")
            leaf = Leaf(kind, node.depth, split_facts(node.splits), cores or {}, digits or {})
            if self.record:
                leaf.lo, leaf.hi = node.lo, node.hi
                if layer_b is not None:
                    leaf.layer_bounds, leaf.unstable = layer_b, count_unstable(layer_b)
                else:
                    leaf.layer_bounds = [(lo_k[i], up_k[i]) for lo_k, up_k in zip(lower, upper)]
                    leaf.unstable = int(unstable[i])
                if keep:  # what a variant's bound of the branch starts from
                    leaf.spec_lower = path_lower(spec_lower[i], node.parent_lower)
                    if finite is not None and finite[i]:
                        leaf.alphas = [a[i] for a in alphas]
                    if leaf.splits:
                        leaf.betas = fact_betas(res.betas, i, node.splits)
            self.leaves.append(leaf)

    def closed_at_root(self) -> bool:
        """One plain CROWN bound of the whole region (milliseconds); True, with
        the proof's single leaf recorded, when it refutes every unsafe conjunction."""
        if self.whole_box_unsafe:
            return False
        res, closed = self.root_bound()
        self.root_result = res
        self._root_statistics(res)
        if not closed:
            lo, hi = self.root_box()
            # the bound's minimisers and the centre: free counterexample candidates
            self.root_candidates = res.candidates(lo, hi)
            return False
        self._close(self._root(), res, 0)
        return True

    def root_box(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The region's box as a batch of one."""
        return (torch.from_numpy(self.region.lower[None, :].copy()),
                torch.from_numpy(self.region.upper[None, :].copy()))

    def root_bound(self):
        """One plain CROWN bound of the whole region: (bounds, closed)."""
        lo, hi = self.root_box()
        splits = None if self.input_split else [torch.zeros((1, n), dtype=torch.int8)
                                                for n in self.net.hidden_sizes]
        # plain CROWN: forward-mode bounds are loose on a box this large
        res, _, closed = self.bound_branches(lo, hi, splits, None, alpha=0, mode="backward")
        return res, bool(closed.all())

    def root_check(self):
        """:meth:`closed_at_root`, then :meth:`root_counterexample`: True when the plain
        root bound closes the region, else a confirmed counterexample among its
        minimisers, or None (the minimisers stay in :attr:`root_candidates`)."""
        if self.closed_at_root():
            return True
        return self.root_counterexample()

    def root_counterexample(self) -> Counterexample | None:
        """After :meth:`closed_at_root` said no: a confirmed counterexample among
        its bound's minimisers and the box centre, or None."""
        if self.root_candidates is None:
            return None
        return confirm_batch(self.net, self.region, self.index, self.root_candidates)

    def root_margin(self) -> float:
        """After :meth:`closed_at_root` said no: the root bound's worst conjunction
        margin (<= 0; how far the bound is from refuting the region)."""
        spec = self.root_result.spec_lower.numpy()[0]
        return self._margin(spec, np.zeros(self.n_conj, dtype=bool))

    def _root(self) -> Node:
        return Node(self.region.lower.copy(), self.region.upper.copy(),
                    None if self.input_split else
                    [np.zeros(s, dtype=np.int8) for s in self.net.hidden_sizes])

    def run(self, nodes: list[Node] | None = None) -> RegionOutcome:
        """Branch and bound from the region's box, or from ``nodes`` (branches
        that together cover what is to be decided)."""
        if self.whole_box_unsafe:
            cex = confirm_batch(self.net, self.region, self.index,
                                (self.region.lower + self.region.upper)[None, :] / 2)
            return RegionOutcome(Status.VIOLATED, "attack", cex)
        n_hidden = self.prop.n_hidden
        # input splitting is best-first (lowest margin first: a counterexample
        # turns up early, and node-local splitting makes the order free for a
        # proof); ReLU splitting is depth-first (its nodes carry layer bounds)
        stack = _Frontier(best_first=self.input_split)
        root = None
        if nodes is not None and nodes and self.layer_alpha_applies():
            # branches of a proof tree (reuse): the region's tightened root bounds hold
            # on every branch of the region's box (measured on mnist-net_256x6: a
            # variant's open leaves searched over their moved bounds alone ran 60 s,
            # where scratch with the tightened root took 1 s)
            root = self.tightened_root_bounds()
            if root is None:
                return RegionOutcome(Status.HOLDS, self._method(), leaves=self.leaves)
        for node in nodes if nodes is not None else [self._root()]:
            if not self.input_split and node.splits is None:
                node = dataclasses.replace(node, splits=[np.zeros(s, dtype=np.int8)
                                                         for s in self.net.hidden_sizes])
            if root is not None and self._on_region_box(node):
                node = dataclasses.replace(node, parent=root if node.parent is None else [
                    (np.maximum(pl, rl), np.minimum(pu, ru))
                    for (pl, pu), (rl, ru) in zip(node.parent, root)])
            stack.push(node)
        first = nodes is None
        while stack:
            if self.time_left() <= 0:
                return RegionOutcome(Status.UNKNOWN, "timeout", reason="timeout during branch and bound",
                                     leaves=self.leaves)
            batch = stack.pop_many(self._batch_size())
            lo = torch.from_numpy(np.stack([n.lo for n in batch]))
            hi = torch.from_numpy(np.stack([n.hi for n in batch]))
            splits = None if self.input_split else [
                torch.from_numpy(np.stack([n.splits[k] for n in batch])) for k in range(n_hidden)]
            fixed = None
            if all(n.parent is not None for n in batch) and batch[0].parent is not None:
                fixed = [(torch.from_numpy(np.stack([n.parent[k][0] for n in batch])),
                          torch.from_numpy(np.stack([n.parent[k][1] for n in batch])))
                         for k in range(n_hidden)]
            inherited = None
            if all(n.parent_spec is not None for n in batch):
                inherited = (torch.from_numpy(np.stack([n.parent_spec[0] for n in batch])),
                             torch.from_numpy(np.stack([n.parent_spec[1] for n in batch])))
            refine = None
            if fixed is not None and not self.input_split and self.opt.refine_unstable_only:
                refine = [torch.ones(n, dtype=torch.bool) for n in self.net.hidden_sizes]
            res, refuted, closed = self.bound_branches(lo, hi, splits, fixed, inherited=inherited,
                                                       refine=refine, rows=self._open_rows(batch))
            if first:
                res, refuted, closed = self.tighten_root(lo, hi, splits, (res, refuted, closed))
            inherit_refuted(refuted, closed, [n.refuted for n in batch])
            spec_lower = res.spec_lower.numpy()
            unstable = res.unstable()
            if first:
                self._root_statistics(res)
                first = False
                if self.on_root is not None and not closed.all():
                    self.on_root(self, res)
            open_idx = np.flatnonzero(~closed)
            shut = np.flatnonzero(closed)
            self._close_rows([batch[i] for i in shut], res, shut)
            if len(open_idx) == 0:
                continue
            # concrete candidates: minimisers of every open row, and box centres
            corners = res.minimisers(lo, hi).numpy()[open_idx].reshape(-1, self.net.n_inputs)
            centres = ((lo + hi) / 2).numpy()[open_idx]
            cex = confirm_batch(self.net, self.region, self.index, np.vstack([corners, centres]))
            if cex is not None:
                return RegionOutcome(Status.VIOLATED, "bab-candidate", cex, leaves=self.leaves)
            if self.attack.due():  # PGD from the minimisers of each open branch's worst row
                worst = spec_lower[open_idx].argmin(axis=1)
                starts = corners.reshape(len(open_idx), -1, self.net.n_inputs)[
                    np.arange(len(open_idx)), worst]
                cex = self.attack.round(starts)
                if cex is not None:
                    return RegionOutcome(Status.VIOLATED, "bab-attack", cex, leaves=self.leaves)
            to_split = []
            for i in open_idx:
                node = batch[i]
                layer_b = [(res.lower[k][i].numpy(), res.upper[k][i].numpy()) for k in range(n_hidden)]
                if unstable[i] <= self._z3_threshold(node) and self._z3_allowed(layer_b):
                    outcome = self._z3_leaf(node, layer_b, refuted[i])
                    if outcome is not None:
                        return outcome
                    if self._closed_by_z3:
                        continue
                to_split.append((i, layer_b))
            if self.input_split:
                children = self._split_inputs(batch, res, spec_lower, refuted, [i for i, _ in to_split])
            else:
                children = self._split_relus(batch, res, to_split, spec_lower, refuted)
                # every ReLU of these is fixed: the branch is a linear program, whose
                # Lagrangian dual (beta-CROWN) is exact at convergence: optimise longer
                stuck = [k for k, pair in enumerate(children) if pair is None]
                closed_now = set()
                if stuck and self._close_fixed(batch, [to_split[k][0] for k in stuck], splits,
                                               lo, hi):
                    closed_now = set(stuck)
                else:  # an exact answer (Z3) for what beta-CROWN left open
                    for k in stuck:
                        i, layer_b = to_split[k]
                        if not self._z3_allowed(layer_b):
                            continue
                        outcome = self._z3_leaf(batch[i], layer_b, refuted[i])
                        if outcome is not None:
                            return outcome
                        if self._closed_by_z3:
                            closed_now.add(k)
                if closed_now:
                    keep = [k for k in range(len(children)) if k not in closed_now]
                    to_split = [to_split[k] for k in keep]
                    children = [children[k] for k in keep]
            for (i, _), pair in zip(to_split, children):
                if pair is None:
                    return RegionOutcome(Status.UNKNOWN, "bab", reason=self._stuck_reason(),
                                         leaves=self.leaves)
                self.stats.branches += len(pair)
                margin = self._margin(spec_lower[i], refuted[i])
                known = path_lower(spec_lower[i], batch[i].parent_lower)
                for child in pair:
                    child.score = margin
                    child.refuted, child.parent_lower = refuted[i], known
                    stack.push(child)
        return RegionOutcome(Status.HOLDS, self._method(), leaves=self.leaves)

    def layer_alpha_applies(self) -> bool:
        """Whether the root's intermediate bounds get alpha-CROWN steps: ReLU
        splitting with at least two hidden layers."""
        return (self.opt.layer_alpha_iterations > 0 and not self.input_split
                and self.prop.n_hidden >= 2)

    def tighten_root(self, lo, hi, splits, bounded):
        """``bounded``: (bounds, refuted, closed) of the region's root (a batch of one).
        Where they leave it open and :meth:`layer_alpha_applies`, the root bounded again
        over intermediate bounds tightened by alpha-CROWN (:mod:`verify.layer_alpha`),
        kept in :attr:`tightened`; else ``bounded`` itself. Its children intersect their
        bounds with these, so a proof's re-check (:mod:`verify.reuse.check`) tightens its
        root the same way. The slopes of these steps then serve the branches'
        intermediate back-substitution (:attr:`branch_slopes`)."""
        res, _, closed = bounded
        if closed.all() or not self.layer_alpha_applies():
            return bounded
        from .layer_alpha import optimise_layer_bounds
        deadline = time.monotonic() + self.opt.layer_alpha_time_share * self.time_left()
        warm = None if self._root_start is None else self._root_start[2]
        self.root_slopes = {}
        lower, upper = optimise_layer_bounds(
            self.prop, lo, hi, res.lower, res.upper, self.opt.layer_alpha_warm_iterations
            if warm else self.opt.layer_alpha_iterations, deadline, warm=warm,
            slopes_out=self.root_slopes)
        self._keep_branch_slopes(self.root_slopes)
        out = self.bound_branches(lo, hi, splits, list(zip(lower, upper)),
                                  inherited=(res.spec_coeffs, res.spec_const),
                                  alpha_init=res.alphas)
        self.tightened = out[0]
        return out

    def _keep_branch_slopes(self, slopes: dict | None) -> None:
        """The branches' intermediate back-substitution takes ``slopes`` (kept slopes of
        :func:`verify.layer_alpha.optimise_layer_bounds`), when the options ask for it
        (:attr:`branch_slopes`; a graph network's bound options too)."""
        wanted = self.opt.branch_layer_slopes and (
            isinstance(self.net, Network) or self.opt.graph_bounds.branch_layer_slopes)
        if wanted and slopes:
            from .layer_alpha import KeptSlopes
            self.branch_slopes = KeptSlopes(slopes, self.net.hidden_sizes)

    def start_root_from(self, bounds, tight: bool, slopes: dict | None = None) -> None:
        """Intermediate bounds known to hold for this network on the region's box
        (``bounds``: (lower, upper) (1, n_k) tensors per hidden layer, or None; e.g. a
        proof's tightened root moved by a bound of a variant's change,
        :mod:`verify.reuse`): :meth:`tightened_root_bounds` bounds the root over them,
        and takes that without the alpha-CROWN steps of :meth:`tighten_root` when
        ``tight``.  ``slopes``: a similar network's kept slopes
        (:func:`verify.layer_alpha.optimise_layer_bounds`, this network's numbering):
        the steps start from them, ``layer_alpha_warm_iterations`` of them; without the
        steps (``tight``), the branches' back-substitution takes them as they are."""
        self._root_start = (bounds, tight, slopes)

    def tightened_root_bounds(self):
        """The region's root bounded and tightened (:meth:`tighten_root`; see also
        :meth:`start_root_from`): its layer bounds (numpy (lower, upper) per hidden
        layer), or None when that closes the region (recorded as its one leaf).
        Computed once per search."""
        if self._root_bounds is not False:
            return self._root_bounds
        lo, hi = self.root_box()
        splits = [torch.zeros((1, n), dtype=torch.int8) for n in self.net.hidden_sizes]
        start, tight, slopes = self._root_start or (None, False, None)
        bounded = self.bound_branches(lo, hi, splits, None)
        if start is not None:  # CROWN's bounds intersected with the given ones
            both = [(torch.maximum(l, s_l), torch.minimum(u, s_u))
                    for l, u, (s_l, s_u) in zip(bounded[0].lower, bounded[0].upper, start)]
            bounded = self.bound_branches(lo, hi, splits, both)
        if start is not None and tight:
            self.tightened = bounded[0]
            self._keep_branch_slopes(slopes)
        else:
            bounded = self.tighten_root(lo, hi, splits, bounded)
        res, _, closed = bounded
        if closed.all():
            self._close(self._root(), res, 0)
            self._root_bounds = None
        else:
            self._root_bounds = [(l[0].numpy(), u[0].numpy()) for l, u in zip(res.lower, res.upper)]
        return self._root_bounds

    def root_layer_bounds(self, res):
        """The region's root as its program needs it (:mod:`verify.milp_region`), from
        ``res``, the root's bound (a batch of one; tightened when the search took it so):
        the (lower, upper) numpy pre-activation bounds per hidden layer, which
        conjunctions it refutes ((n_conj,) bool), and each conjunction's best row lower
        bound ((n_conj,); lowest: furthest from refuted)."""
        lo, hi = self.root_box()
        refuted, _ = self.refutation(res, lo.numpy(), hi.numpy())
        spec = res.spec_lower[0].numpy()
        best = np.array([spec[self.owner == j].max(initial=-np.inf) for j in range(self.n_conj)])
        return ([(l[0].numpy(), u[0].numpy()) for l, u in zip(res.lower, res.upper)],
                refuted[0], best)

    def _on_region_box(self, node: Node) -> bool:
        return (np.array_equal(node.lo, self.region.lower)
                and np.array_equal(node.hi, self.region.upper))

    def _open_rows(self, batch):
        """The spec rows a batch needs bounded, as ``bound_branches``' ``rows``: those
        of the conjunctions that some branch's parent left unrefuted (a refuted one
        stays refuted on the parent's sub-domains), the others keeping their parents'
        lower bounds (valid on the branch: what a proof's leaf records); None: all."""
        return self.rows_to_bound([n.refuted for n in batch], [n.parent_lower for n in batch])

    def rows_to_bound(self, refuted, known):
        """``bound_branches``' ``rows`` for branches whose parents refuted the
        conjunctions ``refuted`` ((n_conj,) bool each, or None: not known) with spec
        row lower bounds ``known`` ((m,) each); None: every row."""
        if not self.opt.drop_refuted_rows or any(r is None for r in refuted):
            return None
        done = np.logical_and.reduce(refuted)
        if not done.any():
            return None
        return ~done[self.owner], np.stack(known)

    def _close_fixed(self, batch, idx: list[int], splits, lo, hi) -> bool:
        """Bound the fully split branches ``idx`` again with many beta-CROWN steps;
        True (and recorded as closed) when that refutes every one of them."""
        sel = torch.tensor(idx)
        res = self.prop.bound(lo[sel], hi[sel], self.C, self.d, [s[sel] for s in splits], None,
                              alpha_iterations=self.opt.fixed_leaf_iterations,
                              deadline=self.deadline, conjunctions=self.settle)
        self.stats.bound_evaluations += len(idx)
        if not self.refutation(res, lo[sel].numpy(), hi[sel].numpy())[1].all():
            return False
        self._close_rows([batch[i] for i in idx], res, range(len(idx)))
        return True

    def _margin(self, spec_lower_row: np.ndarray, refuted_row: np.ndarray) -> float:
        """How far the branch is from refuting its least-refuted open conjunction."""
        return float(min(spec_lower_row[self.owner == j].max() for j in np.flatnonzero(~refuted_row)))

    # ------------------------------------------------------------------
    def _z3_terms(self, layer_b) -> int:
        """Size of the leaf's Z3 encoding (linear terms): inactive neurons drop out."""
        live = self.net.n_inputs
        terms = 0
        for k, (l, u) in enumerate(layer_b):
            rows = int((u > 0).sum())
            terms += rows * live
            live = rows
        return terms + live * self.net.n_outputs

    def _batch_size(self) -> int:
        """Branches bounded at once, so the back-substitution tensors
        (branches x 2*width x inputs doubles) stay around 100 MB."""
        if hasattr(self.prop, "max_batch"):  # graph bounds size batches by memory
            return int(max(1, min(self.opt.batch_size, self.prop.max_batch(len(self.C)))))
        width = max(self.net.layer_sizes()[1:])
        per_branch = 2 * width * self.net.n_inputs
        return int(max(1, min(self.opt.batch_size, 1.2e7 // per_branch)))

    def _z3_allowed(self, layer_b) -> bool:
        """Whether a branch may go to Z3 at all (Z3 on, not given up, query small enough)."""
        return (self.use_z3 and self.z3_unknown < self.opt.z3_max_failures
                and self._z3_terms(layer_b) <= self.opt.z3_max_terms)

    def _z3_threshold(self, node: Node) -> int:
        if self.input_split:
            return self.opt.z3_max_unstable if node.depth >= self.opt.z3_min_depth else 0
        return self.opt.z3_relu_split_max_unstable

    def _method(self) -> str:
        if any(l.method == "z3" for l in self.leaves):
            return "z3"
        if len(self.leaves) == 1:
            return "bounds"
        return "bab"

    def _stuck_reason(self) -> str:
        if self.z3_unknown:
            return f"{self.z3_unknown} Z3 leaf queries gave no answer and the branch cannot be split further"
        return "branch cannot be split further"

    def _root_statistics(self, res) -> None:
        self.stats.record_root([l[0].numpy() for l in res.lower], [u[0].numpy() for u in res.upper])

    # ------------------------------------------------------------------
    def _z3_leaf(self, node: Node, layer_b, refuted_row) -> RegionOutcome | None:
        """Try to close ``node`` with Z3, one query per open conjunction (recorded
        as a leaf with its cores when every one is UNSAT).  Sets
        ``self._closed_by_z3``; returns an outcome only for a confirmed
        counterexample."""
        from .encode import Branch, encode, solve  # z3 on first use (0.2 s of start-up)
        self._closed_by_z3 = False
        cores, digits_used = {}, {}
        for j in np.flatnonzero(~refuted_row):
            conj = self.region.unsafe[j]
            branch = Branch(node.lo, node.hi, layer_b, conj.coeffs, conj.rhs,
                            split_facts(node.splits))
            for digits in self.opt.z3_digits:
                budget = min(self.opt.z3_input_query_timeout if self.input_split
                             else self.opt.z3_query_timeout, self.time_left())
                if budget <= 0.05:
                    return None
                query = encode(self.net, branch, digits)
                ans = solve(query, timeout=budget)
                self.stats.z3_queries += 1
                self.stats.z3_time_s += ans.time_s
                if ans.status == "unsat":
                    cores[int(j)], digits_used[int(j)] = ans.core, digits
                    break
                if ans.status == "sat":
                    cex = confirm_batch(self.net, self.region, self.index, ans.model_input[None, :])
                    if cex is not None:
                        return RegionOutcome(Status.VIOLATED, "z3", cex, leaves=self.leaves)
                    continue  # rounding slack or float rounding: try finer coefficients
                self.z3_unknown += 1
                break
            if int(j) not in cores:
                return None  # the branch stays open (it is split)
        self._close(node, None, 0, "z3", cores, digits_used, layer_b)
        self._closed_by_z3 = True
        return None


def search_region(network: Network, region: Region, r: int, options: VerifyOptions,
                  deadline: float, stats: Statistics, propagator: BoundPropagator | None = None,
                  record: bool = False) -> RegionOutcome:
    """Branch and bound on one region, through the attempts of :func:`portfolio`
    (the outcome's leaves are those of the attempt that decided)."""
    attempts = portfolio(network, options, deadline)
    milp_at = milp_start(network, options, deadline, record)
    stage = None
    if milp_at is not None:
        from .milp_region import ProgramStage
        stage = ProgramStage(network, region, r, deadline, options.milp_workers)
    try:
        for k, (opts, until) in enumerate(attempts):
            search = RegionSearch(network, region, r, opts, until if milp_at is None else
                                  min(until, milp_at), stats, propagator, record)
            if stage is not None:
                search.interrupt = stage.done
                search.on_root = _start_stage(stage, options.milp_max_unstable, until)
            outcome = search.run()
            outcome.root, outcome.root_slopes = search.tightened, search.root_slopes
            if (outcome.method != "timeout" or time.monotonic() >= deadline
                    or k == len(attempts) - 1):
                break
        if stage is None or stage.declined or outcome.method != "timeout":
            return outcome
        stage.widen()  # branch and bound has stopped: every worker on the program
        decided = stage.outcome()
        decided.root, decided.root_slopes = outcome.root, outcome.root_slopes
        return decided
    finally:
        if stage is not None:
            stage.close()


def _start_stage(stage, max_unstable: int, until: float):
    """The search's ``on_root``: the program starts over the search's tightened root,
    its conjunctions furthest from refuted first; or, when that root leaves more than
    ``max_unstable`` ReLUs unstable (or no worker could start), the stage is declined
    and the search gets its time up to ``until`` back."""
    def start(search, res) -> None:
        bounds, refuted, best = search.root_layer_bounds(res)
        unstable = count_unstable(bounds)
        if unstable > max_unstable:
            stage.decline(f"{unstable} unstable ReLUs at the root (at most {max_unstable})")
        elif not stage.start(bounds, refuted, order=np.argsort(best, kind="stable")):
            stage.decline(stage.failed)
        if stage.declined:
            search.deadline = search.attack.deadline = until
    return start


def splits_inputs(network, options: VerifyOptions) -> bool:
    """Whether branch and bound splits the input box (few inputs), not ReLUs."""
    return network.n_inputs <= options.input_split_max


def milp_start(network, options: VerifyOptions, deadline: float, record: bool) -> float | None:
    """When branch and bound stops and hands a region over to its mixed-integer program
    (``VerifyOptions.milp_workers``; one worker solves it beside the search from the
    search's root on), or None: chains with ReLU splitting only, not
    while a proof is recorded (a program's verdict has no leaves to reuse), not in a
    daemonic process (it may not start processes: e.g. a batch run's workers), only with
    highspy installed, and only when the program would get ``milp_min_seconds``."""
    import multiprocessing
    left = deadline - time.monotonic()
    if (options.milp_workers == 0 or record or not isinstance(network, Network)
            or multiprocessing.current_process().daemon
            or splits_inputs(network, options)
            or (1.0 - options.milp_bab_share) * left < options.milp_min_seconds):
        return None
    from .milp import available
    if not available():
        return None
    return time.monotonic() + options.milp_bab_share * left


def portfolio(network: Network, options: VerifyOptions, deadline: float):
    """The attempts of one region's branch and bound, as (options, deadline):
    with input splitting by look-ahead over a few dimensions, that gets
    ``portfolio_share`` of the time, then a restart looks ahead over every
    dimension (each heuristic decides ACAS Xu instances the other cannot in
    time).  Callers move to the next attempt only when one times out."""
    few = 0 < options.lookahead_dims < network.n_inputs <= min(options.lookahead_max_inputs,
                                                                options.input_split_max)
    if not few or options.portfolio_share >= 1.0:
        return [(options, deadline)]
    first = time.monotonic() + options.portfolio_share * (deadline - time.monotonic())
    return [(options, first), (dataclasses.replace(options, lookahead_dims=0), deadline)]
