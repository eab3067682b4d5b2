"""The data of branch and bound: open branches (:class:`Node`), closed branches
(:class:`Leaf`), a region's outcome, the frontier of open branches, and ReLU phase
splits as named facts (what proofs record)."""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import numpy as np

from .result import Counterexample


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


def neuron_name(layer: int, index: int, kind: str) -> str:
    """A neuron's constraint name, ``L{layer}.N{index}.{kind}`` (kind: relu, affine,
    bounds, or a phase fact's active / inactive)."""
    return f"L{layer}.N{index}.{kind}"


def _phase(p) -> str:
    return "active" if p > 0 else "inactive"


def split_facts(splits) -> tuple[str, ...]:
    """ReLU phase splits (per hidden layer, int8 in {-1, 0, +1}) as named facts."""
    if splits is None:
        return ()
    return tuple(neuron_name(k, i, _phase(s[i]))
                 for k, s in enumerate(splits) for i in np.flatnonzero(s))


def parse_fact(fact: str) -> tuple[tuple[int, int], int]:
    """``"L1.N7.active"`` -> ((1, 7), +1); ``inactive`` -> -1."""
    layer, neuron, phase = fact.split(".")
    return (int(layer[1:]), int(neuron[1:])), (1 if phase == "active" else -1)


def fact_dict(facts) -> dict[tuple[int, int], int]:
    """Named facts as {(layer, neuron): +1 active / -1 inactive}."""
    return dict(parse_fact(f) for f in facts)


def fact_names(facts: dict) -> tuple[str, ...]:
    """The inverse of :func:`fact_dict`."""
    return tuple(neuron_name(k, i, _phase(p)) for (k, i), p in facts.items())


def split_arrays(facts, hidden_sizes) -> list[np.ndarray]:
    """The inverse of :func:`split_facts`."""
    arrays = [np.zeros(n, dtype=np.int8) for n in hidden_sizes]
    for f in facts:
        (layer, neuron), phase = parse_fact(f)
        arrays[layer][neuron] = phase
    return arrays


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
