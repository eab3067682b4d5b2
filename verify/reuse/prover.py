"""A branch-and-bound prover that keeps every closed branch (box, splits, cores).

The main search (:mod:`verify.search`) records *how* branches were closed;
proof reuse also needs *which* branches: the input box and ReLU phase splits
of every leaf, so that a variant can re-check exactly the same partition.
This module is that search, kept small: batched bounds, joint refutation of
multi-row conjunctions, concrete candidates, Z3 on leaves with few unstable
ReLUs, and input bisection (small inputs) or ReLU splitting.  It starts from
any list of nodes, so a variant can also refine single branches with it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..attack import confirm_batch
from ..bounds import BoundPropagator, refute_conjunction
from ..encode import Branch, encode, solve
from ..network import Network
from ..options import VerifyOptions
from ..properties import Region
from ..result import Counterexample


@dataclass
class Node:
    lo: np.ndarray
    hi: np.ndarray
    splits: list[np.ndarray] | None  # per hidden layer, int8 in {-1, 0, +1}; None: input splitting
    parent: list[tuple[np.ndarray, np.ndarray]] | None = None
    depth: int = 0


@dataclass
class Leaf:
    """A closed branch: every conjunction refuted by bounds or by Z3 (``cores``)."""

    lo: np.ndarray
    hi: np.ndarray
    splits: tuple[str, ...]
    method: str  # "bounds" | "z3" | "infeasible"
    depth: int
    cores: dict[int, tuple[str, ...]] = field(default_factory=dict)  # conjunction -> raw core
    digits: dict[int, int | None] = field(default_factory=dict)  # conjunction -> rounding used
    layer_bounds: list | None = None  # the bounds it was closed with (not serialised)
    unstable: int = 0


@dataclass
class Outcome:
    status: str  # holds | violated | unknown
    leaves: list[Leaf]
    counterexample: Counterexample | None = None
    reason: str | None = None
    z3_queries: int = 0


def split_facts(splits) -> tuple[str, ...]:
    if splits is None:
        return ()
    return tuple(f"L{k}.N{i}.{'active' if s[i] > 0 else 'inactive'}"
                 for k, s in enumerate(splits) for i in np.flatnonzero(s))


def split_arrays(facts, hidden_sizes) -> list[np.ndarray]:
    arrays = [np.zeros(n, dtype=np.int8) for n in hidden_sizes]
    for f in facts:
        layer, neuron, phase = f.split(".")
        arrays[int(layer[1:])][int(neuron[1:])] = 1 if phase == "active" else -1
    return arrays


def region_rows(region: Region, n_outputs: int):
    """All unsafe rows of a region as (C, d) tensors plus the owning conjunction of each row."""
    rows, owner = [], []
    for j, conj in enumerate(region.unsafe):
        for r in range(conj.coeffs.shape[0]):
            rows.append((conj.coeffs[r], conj.rhs[r]))
            owner.append(j)
    m = len(rows)
    C = torch.tensor(np.array([r[0] for r in rows]).reshape(m, n_outputs))
    d = torch.tensor(np.array([r[1] for r in rows], dtype=np.float64).reshape(m))
    return C, d, np.array(owner, dtype=np.int64)


def refuted_conjunctions(res, owner, n_conj, lo, hi) -> np.ndarray:
    """(B, n_conj): conjunction refuted on the branch (one row > 0, or jointly)."""
    spec = res.spec_lower.numpy()
    out = np.zeros((spec.shape[0], n_conj), dtype=bool)
    coeffs, const = res.spec_coeffs.numpy(), res.spec_const.numpy()
    for j in range(n_conj):
        cols = np.flatnonzero(owner == j)
        if len(cols) == 0:
            continue
        out[:, j] = (spec[:, cols] > 0).any(axis=1)
        todo = np.flatnonzero(~out[:, j])
        if len(cols) > 1 and len(todo):
            ok = refute_conjunction(coeffs[np.ix_(todo, cols)], const[np.ix_(todo, cols)],
                                    lo[todo], hi[todo])
            out[todo[ok], j] = True
    return out


class BranchProver:
    """Closes branches of one region of one network, recording every leaf."""

    def __init__(self, network: Network, region: Region, region_index: int,
                 options: VerifyOptions, deadline: float,
                 propagator: BoundPropagator | None = None):
        self.net, self.region, self.index, self.opt = network, region, region_index, options
        self.deadline = deadline
        self.prop = propagator or BoundPropagator(network)
        self.C, self.d, self.owner = region_rows(region, network.n_outputs)
        self.n_conj = len(region.unsafe)
        self.input_split = network.n_inputs <= options.input_split_max
        # alpha-CROWN as in the main search (sound for any slopes; tighter, fewer branches)
        self.alpha_iterations = (options.alpha_iterations_input if self.input_split
                                 else options.alpha_iterations)
        self.leaves: list[Leaf] = []
        self.z3_queries = 0
        self.z3_unknown = 0

    def root(self) -> Node:
        return Node(self.region.lower.copy(), self.region.upper.copy(),
                    None if self.input_split else
                    [np.zeros(s, dtype=np.int8) for s in self.net.hidden_sizes])

    def run(self, nodes: list[Node] | None = None) -> Outcome:
        if any(c.coeffs.shape[0] == 0 for c in self.region.unsafe):
            cex = confirm_batch(self.net, self.region, self.index,
                                (self.region.lower + self.region.upper)[None, :] / 2)
            return Outcome("violated", self.leaves, cex)
        stack = list(nodes) if nodes is not None else [self.root()]
        n_hidden = self.prop.n_hidden
        while stack:
            if time.monotonic() >= self.deadline:
                return self._unknown("timeout during branch and bound")
            batch = [stack.pop() for _ in range(min(len(stack), self.opt.batch_size))]
            lo = np.stack([n.lo for n in batch])
            hi = np.stack([n.hi for n in batch])
            splits = None if batch[0].splits is None else [
                torch.from_numpy(np.stack([n.splits[k] for n in batch])) for k in range(n_hidden)]
            fixed = None
            if n_hidden and all(n.parent is not None for n in batch):
                fixed = [(torch.from_numpy(np.stack([n.parent[k][0] for n in batch])),
                          torch.from_numpy(np.stack([n.parent[k][1] for n in batch])))
                         for k in range(n_hidden)]
            res = self.prop.bound(torch.from_numpy(lo), torch.from_numpy(hi), self.C, self.d,
                                  splits, fixed, alpha_iterations=self.alpha_iterations,
                                  deadline=self.deadline)
            refuted = refuted_conjunctions(res, self.owner, self.n_conj, lo, hi)
            infeasible = res.infeasible.numpy()
            unstable = np.zeros(len(batch), dtype=np.int64)
            for l, u in zip(res.lower, res.upper):
                unstable += ((l < 0) & (u > 0)).sum(-1).numpy()
            open_idx = []
            for i, node in enumerate(batch):
                lb = [(res.lower[k][i].numpy(), res.upper[k][i].numpy()) for k in range(n_hidden)]
                if infeasible[i] or refuted[i].all():
                    self.leaves.append(Leaf(node.lo, node.hi, split_facts(node.splits),
                                            "infeasible" if infeasible[i] else "bounds",
                                            node.depth, layer_bounds=lb, unstable=int(unstable[i])))
                else:
                    open_idx.append(i)
            if not open_idx:
                continue
            t_lo, t_hi = torch.from_numpy(lo), torch.from_numpy(hi)
            corners = res.minimisers(t_lo, t_hi).numpy()[open_idx].reshape(-1, self.net.n_inputs)
            cex = confirm_batch(self.net, self.region, self.index,
                                np.vstack([corners, (lo[open_idx] + hi[open_idx]) / 2]))
            if cex is not None:
                return Outcome("violated", self.leaves, cex, z3_queries=self.z3_queries)
            for i in open_idx:
                node = batch[i]
                lb = [(res.lower[k][i].numpy(), res.upper[k][i].numpy()) for k in range(n_hidden)]
                if self.opt.use_z3 and unstable[i] <= self._z3_threshold(node):
                    closed, cex = self._z3_leaf(node, lb, refuted[i], int(unstable[i]))
                    if cex is not None:
                        return Outcome("violated", self.leaves, cex, z3_queries=self.z3_queries)
                    if closed:
                        continue
                children = self._split(node, res, i, lb, refuted[i])
                if children is None:
                    return self._unknown("a branch cannot be split further"
                                         + (f" ({self.z3_unknown} Z3 queries gave no answer)"
                                            if self.z3_unknown else ""))
                stack.extend(children)
        return Outcome("holds", self.leaves, z3_queries=self.z3_queries)

    def _unknown(self, reason: str) -> Outcome:
        return Outcome("unknown", self.leaves, reason=reason, z3_queries=self.z3_queries)

    def _z3_threshold(self, node: Node) -> int:
        if self.input_split and node.depth < self.opt.z3_min_depth:
            return 0
        return self.opt.z3_max_unstable

    def _z3_leaf(self, node: Node, lb, refuted_row, unstable: int):
        """Z3 per open conjunction; returns (closed, confirmed counterexample)."""
        cores, digits_used = {}, {}
        for j in np.flatnonzero(~refuted_row):
            conj = self.region.unsafe[j]
            branch = Branch(node.lo, node.hi, lb, conj.coeffs, conj.rhs)
            for digits in self.opt.z3_digits:
                budget = min(self.opt.z3_query_timeout, self.deadline - time.monotonic())
                if budget <= 0.05:
                    return False, None
                ans = solve(encode(self.net, branch, digits), timeout=budget)
                self.z3_queries += 1
                if ans.status == "unsat":
                    cores[int(j)], digits_used[int(j)] = ans.core, digits
                    break
                if ans.status == "sat":
                    cex = confirm_batch(self.net, self.region, self.index, ans.model_input[None, :])
                    if cex is not None:
                        return False, cex
                    continue  # rounding slack: try finer coefficients
                self.z3_unknown += 1
                break
            if int(j) not in cores:
                return False, None
        self.leaves.append(Leaf(node.lo, node.hi, split_facts(node.splits), "z3", node.depth,
                                cores, digits_used, lb, unstable))
        return True, None

    def _input_dim(self, node: Node, coeff: np.ndarray, open_conj, lb) -> int | None:
        width = node.hi - node.lo
        dims = np.flatnonzero(width > 1e-12 * np.maximum(1.0, np.abs(node.hi)))
        if len(dims) == 0:
            return None
        # relative to the region, a dimension split down to almost nothing does not
        # help any more (CROWN is not monotone: it can look best by noise, forever)
        rel = width[dims] / np.maximum(self.region.upper - self.region.lower, 1e-300)[dims]
        dims = dims[rel >= 1e-3 * rel.max()]
        score = np.abs(coeff[dims]) * width[dims]
        if len(dims) > self.opt.lookahead_max_inputs:
            return int(dims[np.argmax(score)] if np.any(score > 0) else dims[np.argmax(width[dims])])
        if self.opt.lookahead_dims:  # look ahead over the best few by coefficients only
            dims = dims[np.lexsort((-width[dims], -score))][:self.opt.lookahead_dims]
        los, his = [], []
        for dim in dims:  # look ahead: bound both halves, keep the best worse half
            mid = (node.lo[dim] + node.hi[dim]) / 2
            a_hi = node.hi.copy(); a_hi[dim] = mid
            b_lo = node.lo.copy(); b_lo[dim] = mid
            los += [node.lo, b_lo]
            his += [a_hi, node.hi]
        n = len(los)
        fixed = [(torch.from_numpy(l).expand(n, -1), torch.from_numpy(u).expand(n, -1))
                 for l, u in lb] if lb else None
        res = self.prop.bound(torch.from_numpy(np.stack(los)), torch.from_numpy(np.stack(his)),
                              self.C, self.d, None, fixed)
        spec = res.spec_lower.numpy()
        per_conj = np.stack([spec[:, self.owner == j].max(axis=1) for j in open_conj], 1)
        child = np.where(res.infeasible.numpy(), np.inf, per_conj.min(axis=1))
        return int(dims[np.argmax(np.minimum(child, 1e30).reshape(len(dims), 2).sum(axis=1))])

    def _split(self, node: Node, res, i, lb, refuted_row):
        spec_row = res.spec_lower[i].numpy()
        open_conj = np.flatnonzero(~refuted_row)
        best_rows = []
        for j in open_conj:
            rows = np.flatnonzero(self.owner == j)
            best_rows.append(int(rows[np.argmax(spec_row[rows])]))
        worst = best_rows[int(np.argmin([spec_row[r] for r in best_rows]))]
        if node.splits is None:
            open_rows = np.isin(self.owner, open_conj) & (spec_row <= 0)
            coeff = np.abs(res.spec_coeffs[i].numpy()[open_rows]).sum(0)  # as verify.search
            dim = self._input_dim(node, coeff, open_conj, lb)
            if dim is None:
                return None
            mid = (node.lo[dim] + node.hi[dim]) / 2
            left_hi = node.hi.copy(); left_hi[dim] = mid
            right_lo = node.lo.copy(); right_lo[dim] = mid
            parent = lb or None  # the parent's bounds hold on both halves
            return [Node(node.lo, left_hi, None, parent, node.depth + 1),
                    Node(right_lo, node.hi, None, parent, node.depth + 1)]
        best, best_score = None, 0.0
        for k in range(self.prop.n_hidden):
            l, u = lb[k]
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
            children.append(Node(node.lo, node.hi, sp, lb, node.depth + 1))
        return children
