"""The data of branch and bound: open branches (:class:`Node`), closed branches
(:class:`Leaf`), a region's outcome and the frontier of open branches (ReLU phase
splits as named facts: :mod:`verify.constraint_names`)."""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import numpy as np

from .result import Counterexample, Status


@dataclass
class Node:
    lo: np.ndarray
    hi: np.ndarray
    splits: list[np.ndarray] | None  # per hidden layer, int8 in {-1, 0, +1}
    parent: list[tuple[np.ndarray, np.ndarray]] | None = None  # parent bounds to intersect
    depth: int = 0
    score: float = 0.0  # the parent's worst open margin: most negative is searched first
    parent_spec: tuple[np.ndarray, np.ndarray] | None = None  # parent's linear spec bound
    # (n_conj,) bool: the unsafe conjunctions refuted on the parent (so on this branch),
    # and (m,) the parent's lower bounds of the spec rows (they hold on this branch)
    refuted: np.ndarray | None = None
    parent_lower: np.ndarray | None = None


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
    # (m, n_facts): the beta-CROWN multipliers of its split facts it ended with (the
    # order of ``splits``)
    betas: np.ndarray | None = None


@dataclass
class RegionOutcome:
    status: Status
    method: str
    counterexample: Counterexample | None = None
    reason: str | None = None
    leaves: list[Leaf] = field(default_factory=list)
    # the region's root bound over tightened intermediate bounds, when the search took
    # one (verify.layer_alpha): the original's bound a reusable proof keeps
    root: object | None = None
    root_slopes: dict | None = None  # ... and the slopes that tightened it (a warm start)


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
