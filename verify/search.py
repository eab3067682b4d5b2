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
"""
from __future__ import annotations

import dataclasses
import heapq
import itertools
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .attack import confirm_batch
from .bounds import BoundPropagator, refute_conjunction
from .graphbounds import make_propagator
from .network import Network
from .options import VerifyOptions
from .properties import Region
from .result import Counterexample, Statistics


@dataclass
class Node:
    lo: np.ndarray
    hi: np.ndarray
    splits: list[np.ndarray] | None  # per hidden layer, int8 in {-1, 0, +1}
    parent: list[tuple[np.ndarray, np.ndarray]] | None = None  # parent bounds to intersect
    depth: int = 0
    score: float = 0.0  # the parent's worst open margin: most negative is searched first
    parent_spec: tuple[np.ndarray, np.ndarray] | None = None  # parent's linear spec bound


@dataclass
class Leaf:
    """A closed branch: every unsafe conjunction refuted by bounds, the branch
    infeasible, or (``z3``) each open conjunction UNSAT with its raw core.
    With ``RegionSearch(record=True)`` the box and the layer bounds it was
    closed with are kept too (what a reusable proof needs)."""

    method: str  # "bounds" | "infeasible" | "z3"
    depth: int
    splits: tuple[str, ...] = ()  # ReLU phase facts, e.g. "L1.N7.active"
    cores: dict[int, tuple[str, ...]] = field(default_factory=dict)  # conjunction -> raw core
    digits: dict[int, int | None] = field(default_factory=dict)  # conjunction -> rounding used
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    layer_bounds: list | None = None
    unstable: int = 0
    spec_lower: np.ndarray | None = None  # (m,) the spec rows' lower bounds (bounds leaves)
    alphas: list | None = None  # per hidden layer (n_k,) the alpha-CROWN slopes it ended with


@dataclass
class RegionOutcome:
    status: str  # holds | violated | unknown
    method: str
    counterexample: Counterexample | None = None
    reason: str | None = None
    leaves: list[Leaf] = field(default_factory=list)


def region_rows(region: Region, n_outputs: int):
    """All unsafe rows of a region as (C, d) tensors plus the owning conjunction of each row."""
    rows, owner = [], []
    for j, conj in enumerate(region.unsafe):
        for r in range(conj.coeffs.shape[0]):
            rows.append((conj.coeffs[r], conj.rhs[r]))
            owner.append(j)
    m = len(rows)
    assert all(a <= b for a, b in zip(owner, owner[1:]))  # refuted_conjunctions needs it
    C = torch.tensor(np.array([r[0] for r in rows]).reshape(m, n_outputs))
    d = torch.tensor(np.array([r[1] for r in rows], dtype=np.float64).reshape(m))
    return C, d, np.array(owner, dtype=np.int64)


def refuted_conjunctions(res, owner, n_conj: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(B, n_conj): conjunction refuted on the branch -- one of its rows has a
    positive lower bound, or (multi-row) a convex combination of its rows does.
    ``owner``: the conjunction of each spec row, ascending (as ``region_rows``)."""
    spec = res.spec_lower.numpy()
    if len(owner) == n_conj and (owner == np.arange(n_conj)).all():
        return spec > 0  # one row per conjunction (local robustness): the common case
    out = np.zeros((spec.shape[0], n_conj), dtype=bool)
    counts = np.bincount(owner, minlength=n_conj)
    nonempty = np.flatnonzero(counts)
    if len(nonempty) == 0:
        return out
    starts = np.cumsum(counts) - counts
    # per conjunction: any of its (consecutive) rows positive
    out[:, nonempty] = np.logical_or.reduceat(spec > 0, starts[nonempty], axis=1)
    multi = np.flatnonzero(counts > 1)
    if len(multi):
        coeffs, const = res.spec_coeffs.numpy(), res.spec_const.numpy()
        for j in multi:
            cols = np.arange(starts[j], starts[j] + counts[j])
            todo = np.flatnonzero(~out[:, j])
            if len(todo):
                ok = refute_conjunction(coeffs[np.ix_(todo, cols)], const[np.ix_(todo, cols)],
                                        lo[todo], hi[todo])
                out[todo[ok], j] = True
    return out


def split_facts(splits) -> tuple[str, ...]:
    """ReLU phase splits (per hidden layer, int8 in {-1, 0, +1}) as named facts."""
    if splits is None:
        return ()
    return tuple(f"L{k}.N{i}.{'active' if s[i] > 0 else 'inactive'}"
                 for k, s in enumerate(splits) for i in np.flatnonzero(s))


def split_arrays(facts, hidden_sizes) -> list[np.ndarray]:
    """The inverse of :func:`split_facts`."""
    arrays = [np.zeros(n, dtype=np.int8) for n in hidden_sizes]
    for f in facts:
        layer, neuron, phase = f.split(".")
        arrays[int(layer[1:])][int(neuron[1:])] = 1 if phase == "active" else -1
    return arrays


class RegionSearch:
    """Decides one region of a property on one network."""

    def __init__(self, network: Network, region: Region, region_index: int,
                 options: VerifyOptions, deadline: float, stats: Statistics,
                 propagator: BoundPropagator | None = None, record: bool = False):
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
        self.input_split = network.n_inputs <= options.input_split_max
        self.leaves: list[Leaf] = []
        self.z3_unknown = 0
        self.root_candidates: np.ndarray | None = None  # set by closed_at_root
        self.root_result = None  # the bound closed_at_root took (what a reusable proof keeps)

    # ------------------------------------------------------------------
    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def refutation(self, res, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(refuted (B, n_conj), closed (B,)) of a bounded batch: a branch is closed
        when every unsafe conjunction is refuted or the branch is infeasible."""
        refuted = refuted_conjunctions(res, self.owner, self.n_conj, lo, hi)
        return refuted, refuted.all(axis=1) | res.infeasible.numpy()

    def bound_branches(self, lo, hi, splits, fixed, alpha: int | None = None, mode: str | None = None,
                       inherited=None, refine=None, alpha_init=None):
        """Bound a batch of branches: (bounds, refuted, closed).  ``inherited``:
        optional linear lower bounds of the spec rows that hold on the boxes
        (their parents'), kept where they are better; ``refine``: back-substitute
        only these neurons (see :meth:`BoundPropagator.bound`).  With few inputs
        (input splitting) the cheap forward-mode intermediate bounds come first
        and only the branches they leave open are bounded again, with the
        neurons that forward bounds leave unstable back-substituted
        (``intermediate_bounds="hybrid"``).  ``alpha_init``: warm-start slopes
        (see :meth:`BoundPropagator.bound`)."""
        if alpha is None:
            alpha = self.alpha_iterations
        if mode is None:
            mode = self.opt.intermediate_bounds if self.input_split else "backward"
        res = self.prop.bound(lo, hi, self.C, self.d, splits, fixed, alpha_iterations=alpha,
                              deadline=self.deadline, forward=mode != "backward", refine=refine,
                              alpha_init=alpha_init)
        self.stats.bound_evaluations += len(lo)
        if inherited is not None:
            res.merge_linear(*inherited, lo, hi)
        refuted, closed = self.refutation(res, lo.numpy(), hi.numpy())
        if mode == "hybrid" and not closed.all():
            rows = torch.from_numpy(np.flatnonzero(~closed))
            again = self.prop.bound(lo[rows], hi[rows], self.C, self.d,
                                    None if splits is None else [s[rows] for s in splits],
                                    None if fixed is None else [(l[rows], u[rows]) for l, u in fixed],
                                    alpha_iterations=alpha, deadline=self.deadline,
                                    forward=True, backward=True)
            self.stats.bound_evaluations += len(rows)
            # bounds are not monotone in the intermediate bounds: keep the better
            self._merge(res, rows, again, lo, hi, refuted, closed)
            self._alpha_tier(res, lo, hi, refuted, closed)
        return res, refuted, closed

    def _merge(self, res, rows, again, lo, hi, refuted, closed) -> None:
        """Merge ``again`` (branches ``rows`` bounded again) into ``res`` and
        update ``refuted``/``closed`` of those rows in place."""
        res.merge_rows(rows, again)
        r = rows.numpy()
        refuted[r] |= self.refutation(res.select(rows), lo[rows].numpy(), hi[rows].numpy())[0]
        closed[r] = refuted[r].all(axis=1) | res.infeasible.numpy()[r]

    def _alpha_tier(self, res, lo, hi, refuted, closed) -> None:
        """alpha-CROWN steps on the spec rows of the open branches with few
        unstable ReLUs (over their intermediate bounds); updates in place."""
        if not self.opt.alpha_tier_iterations or closed.all() or not self.prop.n_hidden:
            return
        r = np.flatnonzero(~closed & (res.unstable() <= self.opt.alpha_tier_max_unstable))
        if len(r) == 0:
            return
        rows = torch.from_numpy(r)
        again = self.prop.spec_bound(lo[rows], hi[rows], self.C, self.d,
                                     [l[rows] for l in res.lower], [u[rows] for u in res.upper],
                                     self.opt.alpha_tier_iterations, deadline=self.deadline)
        self.stats.bound_evaluations += len(r)
        self._merge(res, rows, again, lo, hi, refuted, closed)

    @property
    def alpha_iterations(self) -> int:
        """alpha-CROWN steps per bounding in this search's splitting mode."""
        return self.opt.alpha_iterations_input if self.input_split else self.opt.alpha_iterations

    def _close(self, node: Node, res, i: int, method: str | None = None, cores=None,
               digits=None, layer_b=None) -> None:
        """Record ``node`` (row ``i`` of the bounded batch ``res``) as a closed leaf."""
        if method is None:
            method = "infeasible" if bool(res.infeasible[i]) else "bounds"
        leaf = Leaf(method, node.depth, split_facts(node.splits), cores or {}, digits or {})
        if self.record:
            leaf.lo, leaf.hi = node.lo, node.hi
            leaf.layer_bounds = layer_b if layer_b is not None else [
                (res.lower[k][i].numpy(), res.upper[k][i].numpy()) for k in range(self.prop.n_hidden)]
            leaf.unstable = int(sum(((l < 0) & (u > 0)).sum() for l, u in leaf.layer_bounds))
            if res is not None:  # what a variant's bound of the branch starts from
                leaf.spec_lower = res.spec_lower[i].numpy()
                if res.alphas is not None:
                    leaf.alphas = [a[i].numpy() for a in res.alphas]
        self.leaves.append(leaf)

    def closed_at_root(self) -> bool:
        """One plain CROWN bound of the whole region (milliseconds); True, with
        the proof's single leaf recorded, when it refutes every unsafe conjunction."""
        if self.whole_box_unsafe:
            return False
        res, closed = self.root_bound()
        self.root_result = res
        if not closed:
            lo, hi = self.root_box()
            # the bound's minimisers and the centre: free counterexample candidates
            self.root_candidates = res.candidates(lo, hi)
            return False
        self._root_statistics(res)
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

    def root_counterexample(self) -> Counterexample | None:
        """After :meth:`closed_at_root` said no: a confirmed counterexample among
        its bound's minimisers and the box centre, or None."""
        if self.root_candidates is None:
            return None
        return confirm_batch(self.net, self.region, self.index, self.root_candidates)

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
            return RegionOutcome("violated", "attack", cex)
        n_hidden = self.prop.n_hidden
        # input splitting is best-first (lowest margin first: a counterexample
        # turns up early, and node-local splitting makes the order free for a
        # proof); ReLU splitting is depth-first (its nodes carry layer bounds)
        stack = _Frontier(best_first=self.input_split)
        for node in nodes if nodes is not None else [self._root()]:
            if not self.input_split and node.splits is None:
                node = dataclasses.replace(node, splits=[np.zeros(s, dtype=np.int8)
                                                         for s in self.net.hidden_sizes])
            stack.push(node)
        first = nodes is None
        while stack:
            if self.time_left() <= 0:
                return RegionOutcome("unknown", "timeout", reason="timeout during branch and bound",
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
            res, refuted, closed = self.bound_branches(lo, hi, splits, fixed, inherited=inherited)
            spec_lower = res.spec_lower.numpy()
            unstable = res.unstable()
            if first:
                self._root_statistics(res)
                first = False
            open_idx = np.flatnonzero(~closed)
            for i in np.flatnonzero(closed):
                self._close(batch[i], res, i)
            if len(open_idx) == 0:
                continue
            # concrete candidates: minimisers of every open row, and box centres
            corners = res.minimisers(lo, hi).numpy()[open_idx].reshape(-1, self.net.n_inputs)
            centres = ((lo + hi) / 2).numpy()[open_idx]
            cex = confirm_batch(self.net, self.region, self.index, np.vstack([corners, centres]))
            if cex is not None:
                return RegionOutcome("violated", "bab-candidate", cex, leaves=self.leaves)
            to_split = []
            for i in open_idx:
                node = batch[i]
                layer_b = [(res.lower[k][i].numpy(), res.upper[k][i].numpy()) for k in range(n_hidden)]
                if (self.use_z3 and self.z3_unknown < self.opt.z3_max_failures
                        and unstable[i] <= self._z3_threshold(node)
                        and self._z3_terms(layer_b) <= self.opt.z3_max_terms):
                    outcome = self._z3_leaf(node, layer_b, refuted[i])
                    if outcome is not None:
                        return outcome
                    if self._closed_by_z3:
                        continue
                to_split.append((i, layer_b))
            if self.input_split:
                children = self._split_inputs(batch, res, spec_lower, refuted, [i for i, _ in to_split])
            else:
                children = [self._split_relu(batch[i], res, i, lb, spec_lower[i], refuted[i])
                            for i, lb in to_split]
                # every ReLU of these is fixed: the branch is a linear program, whose
                # Lagrangian dual (beta-CROWN) is exact at convergence: optimise longer
                stuck = [k for k, pair in enumerate(children) if pair is None]
                if stuck and self._close_fixed(batch, [to_split[k][0] for k in stuck], splits,
                                               lo, hi):
                    keep = [k for k in range(len(children)) if k not in stuck]
                    to_split = [to_split[k] for k in keep]
                    children = [children[k] for k in keep]
            for (i, _), pair in zip(to_split, children):
                if pair is None:
                    return RegionOutcome("unknown", "bab", reason=self._stuck_reason(),
                                         leaves=self.leaves)
                self.stats.branches += len(pair)
                margin = self._margin(spec_lower[i], refuted[i])
                for child in pair:
                    child.score = margin
                    stack.push(child)
        return RegionOutcome("holds", self._method(), leaves=self.leaves)

    def _close_fixed(self, batch, idx: list[int], splits, lo, hi) -> bool:
        """Bound the fully split branches ``idx`` again with many beta-CROWN steps;
        True (and recorded as closed) when that refutes every one of them."""
        sel = torch.tensor(idx)
        res = self.prop.bound(lo[sel], hi[sel], self.C, self.d, [s[sel] for s in splits], None,
                              alpha_iterations=self.opt.fixed_leaf_iterations,
                              deadline=self.deadline)
        self.stats.bound_evaluations += len(idx)
        if not self.refutation(res, lo[sel].numpy(), hi[sel].numpy())[1].all():
            return False
        for row, i in enumerate(idx):
            self._close(batch[i], res, row)
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

    def _z3_threshold(self, node: Node) -> int:
        if self.input_split:
            return self.opt.z3_max_unstable if node.depth >= self.opt.z3_min_depth else 0
        return self.opt.z3_max_unstable

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
            branch = Branch(node.lo, node.hi, layer_b, conj.coeffs, conj.rhs)
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
                        return RegionOutcome("violated", "z3", cex, leaves=self.leaves)
                    continue  # rounding slack or float rounding: try finer coefficients
                self.z3_unknown += 1
                break
            if int(j) not in cores:
                return None  # the branch stays open (it is split)
        self._close(node, None, 0, "z3", cores, digits_used, layer_b)
        self._closed_by_z3 = True
        return None

    def _split_inputs(self, batch, res, spec_lower, refuted, idx) -> list:
        """Bisect each box in ``idx``.  With few inputs, look ahead: bound both
        halves for the best few dimensions by coefficients (all boxes in one
        batch) and keep the dimension whose halves are best; else the largest
        |coefficient| * width."""
        out, cands = [], []
        for i in idx:
            node = batch[i]
            width = node.hi - node.lo
            dims = np.flatnonzero(width > 1e-12 * np.maximum(1.0, np.abs(node.hi)))
            if len(dims) == 0:
                return [None]
            cands.append((node, dims))
        if not cands:
            return out
        if self.net.n_inputs <= self.opt.lookahead_max_inputs:
            if self.opt.lookahead_dims:  # the best few by coefficients, and the relatively
                # widest (coefficients can hide how much it loosens the bounds)
                cands = [(node, self._lookahead_dims(node, dims, res, i, spec_lower[i], refuted[i]))
                         for (node, dims), i in zip(cands, idx)]
            los, his, rows = [], [], []
            for (node, dims), i in zip(cands, idx):
                rows += [i] * (2 * len(dims))
                for dim in dims:
                    mid = (node.lo[dim] + node.hi[dim]) / 2
                    a_hi = node.hi.copy(); a_hi[dim] = mid
                    b_lo = node.lo.copy(); b_lo[dim] = mid
                    los += [node.lo, b_lo]
                    his += [a_hi, node.hi]
            los, his = np.stack(los), np.stack(his)
            child = np.full(len(los), np.nan)
            forward_lookahead = self.opt.intermediate_bounds != "backward"
            for s in range(0, len(los), self.LOOKAHEAD_CHUNK):  # deadline checked per chunk
                if self.time_left() <= 0:
                    break
                e = min(len(los), s + self.LOOKAHEAD_CHUNK)
                sel = torch.tensor(rows[s:e])
                # the parent's bounds hold on its halves, but with forward-mode bounds
                # they would mask how much each split tightens the deep layers
                fixed = [(l[sel], u[sel]) for l, u in zip(res.lower, res.upper)] \
                    if self.opt.inherit_bounds and not forward_lookahead else None
                r = self.prop.bound(torch.from_numpy(los[s:e]), torch.from_numpy(his[s:e]), self.C,
                                    self.d, None, fixed, forward=forward_lookahead)
                self.stats.bound_evaluations += e - s
                spec = r.spec_lower.numpy()
                per_conj = np.stack([spec[:, self.owner == j].max(axis=1) for j in range(self.n_conj)], 1)
                child[s:e] = np.where(r.infeasible.numpy(), np.inf, per_conj.min(axis=1))
            pos = 0
            for (node, dims), i in zip(cands, idx):
                scores = child[pos:pos + 2 * len(dims)]
                pos += 2 * len(dims)
                if np.isnan(scores).any():  # out of time: the cheap heuristic instead
                    out += self._split_by_coefficients([((node, dims), i)], res, spec_lower, refuted)
                    continue
                scores = np.minimum(scores, 1e30).reshape(len(dims), 2).sum(axis=1)
                out.append(self._bisect(node, int(dims[np.argmax(scores)]), *self._inherited(res, i)))
            return out
        return self._split_by_coefficients(list(zip(cands, idx)), res, spec_lower, refuted)

    LOOKAHEAD_CHUNK = 512

    def _split_by_coefficients(self, items, res, spec_lower, refuted) -> list:
        """Bisect the dimension with the largest sum over open rows of
        |input coefficient| * width."""
        return [self._bisect(node, int(self._coefficient_ranking(node, dims, res, i, spec_lower[i],
                                                                  refuted[i])[0]),
                             *self._inherited(res, i))
                for (node, dims), i in items]

    def _inherited(self, res, i: int):
        """Row ``i``'s layer bounds and linear spec bound, for its children to
        intersect with (a half box lies inside its parent, so the parent's
        bounds hold on it)."""
        if not self.opt.inherit_bounds:
            return None, None
        layers = [(l[i].numpy(), u[i].numpy()) for l, u in zip(res.lower, res.upper)] \
            if self.prop.n_hidden else None
        return layers, (res.spec_coeffs[i].numpy(), res.spec_const[i].numpy())

    def _span(self, dims) -> np.ndarray:
        span = (self.region.upper - self.region.lower)[dims]
        return np.where(span > 0, span, 1.0)

    def _lookahead_dims(self, node: Node, dims, res, i: int, spec_lower_row, refuted_row):
        """The look-ahead's dimensions: the best few by coefficients, and the
        relatively widest."""
        ranked = self._coefficient_ranking(node, dims, res, i, spec_lower_row, refuted_row)
        best = list(ranked[:self.opt.lookahead_dims])
        widest = int(dims[np.argmax((node.hi - node.lo)[dims] / self._span(dims))])
        return np.array(best if widest in best else best + [widest])

    def _coefficient_ranking(self, node: Node, dims, res, i: int, spec_lower_row,
                             refuted_row) -> np.ndarray:
        """``dims`` best first by the sum over open rows of |input coefficient| * width
        (dimensions already split to a millionth of the region come last)."""
        open_rows = ~refuted_row[self.owner] & (spec_lower_row <= 0)
        width = (node.hi - node.lo)[dims]
        coeff = np.abs(res.guide_coeffs[i].numpy()[open_rows][:, dims]).sum(0) * width
        rel = width / self._span(dims)
        coeff = np.where(rel > 1e-6, coeff, 0.0)  # never starve the other dimensions
        return dims[np.lexsort((-rel, -coeff))]

    @staticmethod
    def _bisect(node: Node, dim: int, parent=None, parent_spec=None) -> list[Node]:
        mid = (node.lo[dim] + node.hi[dim]) / 2
        left_hi = node.hi.copy(); left_hi[dim] = mid
        right_lo = node.lo.copy(); right_lo[dim] = mid
        return [Node(node.lo, left_hi, None, parent, node.depth + 1, parent_spec=parent_spec),
                Node(right_lo, node.hi, None, parent, node.depth + 1, parent_spec=parent_spec)]

    def _worst_row(self, spec_lower_row: np.ndarray, refuted_row: np.ndarray) -> int:
        """The open conjunction furthest from refuted, and its most promising row."""
        open_conj = np.flatnonzero(~refuted_row)
        best_rows = [self._best_row(spec_lower_row, j) for j in open_conj]
        return best_rows[int(np.argmin([spec_lower_row[r] for r in best_rows]))]

    def _best_row(self, spec_lower_row: np.ndarray, conj: int) -> int:
        rows = np.flatnonzero(self.owner == conj)
        return int(rows[np.argmax(spec_lower_row[rows])])

    def _split_relu(self, node: Node, res, i, layer_b, spec_lower_row, refuted_row):
        """Split the unstable ReLU with the largest relaxation gap weighted by
        its back-substitution coefficient for the worst open row."""
        worst = self._worst_row(spec_lower_row, refuted_row)
        best, best_score = None, 0.0
        for k in range(self.prop.n_hidden):
            l, u = layer_b[k]
            unst = (l < 0) & (u > 0)
            if not unst.any():
                continue
            lam = res.layer_coeffs[k][i, worst].numpy()
            gap = np.where(unst, u * -l / np.where(unst, u - l, 1.0), 0.0)
            score = np.abs(lam) * gap + 1e-9 * gap
            j = int(np.argmax(score))
            if score[j] > best_score:
                best, best_score = (k, j), score[j]
        if best is None:
            return None
        k, j = best
        children = []
        for phase in (1, -1):
            sp = [s.copy() for s in node.splits]
            sp[k][j] = phase
            children.append(Node(node.lo, node.hi, sp, layer_b, node.depth + 1))
        return children


class _Frontier:
    """Open branches: a heap on ``Node.score`` (best-first) or a stack."""

    def __init__(self, best_first: bool):
        self.best_first = best_first
        self.items: list = []
        self.counter = itertools.count()

    def __len__(self) -> int:
        return len(self.items)

    def push(self, node: Node) -> None:
        if self.best_first:
            heapq.heappush(self.items, (node.score, next(self.counter), node))
        else:
            self.items.append(node)

    def pop_many(self, n: int) -> list[Node]:
        n = min(n, len(self.items))
        if self.best_first:
            return [heapq.heappop(self.items)[2] for _ in range(n)]
        return [self.items.pop() for _ in range(n)]


def search_region(network: Network, region: Region, r: int, options: VerifyOptions,
                  deadline: float, stats: Statistics, propagator: BoundPropagator | None = None,
                  record: bool = False) -> RegionOutcome:
    """Branch and bound on one region, through the attempts of :func:`portfolio`
    (the outcome's leaves are those of the attempt that decided)."""
    attempts = portfolio(network, options, deadline)
    for k, (opts, until) in enumerate(attempts):
        outcome = RegionSearch(network, region, r, opts, until, stats, propagator, record).run()
        if outcome.method != "timeout" or time.monotonic() >= deadline or k == len(attempts) - 1:
            return outcome


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
