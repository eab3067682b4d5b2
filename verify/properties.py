"""Typed properties: input boxes plus the *unsafe* output region.

A :class:`Property` is a tuple of :class:`Region` s.  Each region is an input
box and a disjunction of conjunctions of linear output constraints describing
where the output is unsafe.  The property **holds** when no input in any box
maps into that region's unsafe set (the VNN-LIB query is UNSAT).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class Conjunction:
    """Unsafe when ``coeffs @ y <= rhs`` holds row by row (all rows at once)."""

    coeffs: np.ndarray  # (m, n_outputs)
    rhs: np.ndarray  # (m,)

    def __post_init__(self):
        c = np.atleast_2d(np.asarray(self.coeffs, dtype=np.float64))
        d = np.asarray(self.rhs, dtype=np.float64).reshape(-1)
        if c.shape[0] != d.shape[0]:
            raise ValueError("one right-hand side per constraint row")
        c.setflags(write=False)
        d.setflags(write=False)
        object.__setattr__(self, "coeffs", c)
        object.__setattr__(self, "rhs", d)

    def margins(self, y: np.ndarray) -> np.ndarray:
        """``coeffs @ y - rhs`` per row; all <= 0 means ``y`` is unsafe.

        ``y`` may be (n_outputs,) or (batch, n_outputs)."""
        y = np.asarray(y, dtype=np.float64)
        return y @ self.coeffs.T - self.rhs

    def contains(self, y: np.ndarray) -> np.ndarray | bool:
        return np.all(self.margins(y) <= 0.0, axis=-1)


@dataclass(frozen=True, eq=False)
class Region:
    """One input box with its unsafe output set (a disjunction of conjunctions)."""

    lower: np.ndarray
    upper: np.ndarray
    unsafe: tuple[Conjunction, ...]

    def __post_init__(self):
        lo = np.asarray(self.lower, dtype=np.float64).reshape(-1)
        hi = np.asarray(self.upper, dtype=np.float64).reshape(-1)
        if lo.shape != hi.shape:
            raise ValueError("lower and upper bounds differ in size")
        if np.any(lo > hi):
            raise ValueError("empty input box (some lower bound above its upper bound)")
        lo.setflags(write=False)
        hi.setflags(write=False)
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)
        object.__setattr__(self, "unsafe", tuple(self.unsafe))

    @property
    def n_inputs(self) -> int:
        return self.lower.shape[0]

    def contains_input(self, x: np.ndarray) -> bool:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        return bool(np.all(x >= self.lower) and np.all(x <= self.upper))

    def unsafe_output(self, y: np.ndarray) -> bool:
        """True when ``y`` lies in the unsafe set (any conjunction fully met)."""
        return any(bool(c.contains(y)) for c in self.unsafe)


@dataclass(frozen=True, eq=False)
class Property:
    """The property holds when every region is safe."""

    regions: tuple[Region, ...]
    n_outputs: int
    name: str = "property"
    source: str | None = None
    _digest: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self):
        regions = tuple(self.regions)
        if not regions:
            raise ValueError("a property needs at least one input region")
        n = regions[0].n_inputs
        for r in regions:
            if r.n_inputs != n:
                raise ValueError("all regions of a property must have the same input size")
            for c in r.unsafe:
                if c.coeffs.shape[1] != self.n_outputs:
                    raise ValueError("output constraint width differs from n_outputs")
        object.__setattr__(self, "regions", regions)

    @property
    def n_inputs(self) -> int:
        return self.regions[0].n_inputs

    def digest(self) -> str:
        """SHA-256 of the regions and unsafe sets (computed once: a property is immutable)."""
        if not self._digest:
            h = hashlib.sha256()
            h.update(f"{self.n_inputs},{self.n_outputs}".encode())
            for r in self.regions:
                h.update(r.lower.tobytes())
                h.update(r.upper.tobytes())
                for c in r.unsafe:
                    h.update(c.coeffs.tobytes())
                    h.update(c.rhs.tobytes())
                    h.update(b"|")
                h.update(b"#")
            self._digest.append(h.hexdigest())
        return self._digest[0]

    def violated_by(self, x: np.ndarray, y: np.ndarray) -> bool:
        """True when input ``x`` lies in some region whose unsafe set contains ``y``."""
        return any(r.contains_input(x) and r.unsafe_output(y) for r in self.regions)


def local_robustness(center, eps: float, target: int, n_outputs: int,
                     domain: tuple[float, float] | None = (0.0, 1.0),
                     name: str | None = None) -> Property:
    """L-inf ball of radius ``eps`` around ``center`` (clipped to ``domain``);
    unsafe when any other class scores at least as high as ``target``."""
    x0 = np.asarray(center, dtype=np.float64).reshape(-1)
    if eps < 0:
        raise ValueError("eps must be non-negative")
    if not 0 <= target < n_outputs:
        raise ValueError(f"target class {target} is outside 0..{n_outputs - 1}")
    lo, hi = x0 - eps, x0 + eps
    if domain is not None:
        lo = np.clip(lo, domain[0], domain[1])
        hi = np.clip(hi, domain[0], domain[1])
    unsafe = []
    for j in range(n_outputs):
        if j == target:
            continue
        row = np.zeros(n_outputs)
        row[target], row[j] = 1.0, -1.0  # y_target - y_j <= 0
        unsafe.append(Conjunction(row[None, :], np.zeros(1)))
    return Property((Region(lo, hi, tuple(unsafe)),), n_outputs,
                    name or f"robust_{target}_eps{eps:g}")
