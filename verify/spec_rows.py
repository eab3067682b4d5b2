"""A region's unsafe rows as one linear specification, and which of its
conjunctions a bound refutes."""
from __future__ import annotations

import numpy as np
import torch

from .bounds import TOLERANCE
from .properties import Region


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


def rows_refute_all(spec_lower: np.ndarray, owner: np.ndarray, n_conj: int) -> np.ndarray:
    """(B,) whether lower bounds (B, m) of the spec rows -- moved or combined ones, not yet
    widened for rounding, hence the tolerance -- refute every conjunction: each has a
    row whose bound is positive."""
    spec_lower = np.atleast_2d(spec_lower)
    rows_pos = spec_lower - TOLERANCE * (1.0 + np.abs(spec_lower)) > 0
    refuted = np.zeros((len(spec_lower), n_conj), dtype=bool)
    for j in range(n_conj):
        refuted[:, j] = rows_pos[:, owner == j].any(axis=1)
    return refuted.all(axis=1)


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


def refute_conjunction(coeffs: np.ndarray, const: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                       iterations: int = 40) -> np.ndarray:
    """Refute conjunctions of linear lower bounds over boxes.

    ``coeffs``: (B, m, n), ``const``: (B, m) with row_j(x) >= coeffs_j @ x + const_j.
    The conjunction "all rows <= 0" is impossible on a box when some convex
    combination ``lam`` of the rows has a positive minimum over the box.
    Maximises that minimum by projected supergradient ascent over ``lam``;
    returns (B,) booleans (True: refuted, soundly widened for rounding)."""
    B, m, n = coeffs.shape
    lam = np.full((B, m), 1.0 / m)
    best = np.full(B, -np.inf)
    scale = 1.0 + np.abs(const).sum(1) + (np.abs(coeffs) * np.maximum(np.abs(lo), np.abs(hi))[:, None, :]).sum((1, 2))
    step = 1.0
    for it in range(iterations):
        a = np.einsum("bm,bmn->bn", lam, coeffs)
        xmin = np.where(a > 0, lo, hi)
        value = np.einsum("bm,bm->b", lam, const) + (a * xmin).sum(1)
        best = np.maximum(best, value)
        grad = const + np.einsum("bmn,bn->bm", coeffs, xmin)
        g = grad / (np.abs(grad).max(1, keepdims=True) + 1e-300)
        lam = _project_simplex(lam + step * g / (1.0 + it))
    return best - 1e-9 * scale > 0


def _project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row of ``v`` onto the probability simplex."""
    u = -np.sort(-v, axis=1)
    css = np.cumsum(u, axis=1) - 1.0
    idx = np.arange(1, v.shape[1] + 1)
    cond = u - css / idx > 0
    rho = cond.shape[1] - 1 - np.argmax(cond[:, ::-1], axis=1)
    theta = css[np.arange(v.shape[0]), rho] / (rho + 1)
    return np.maximum(v - theta[:, None], 0.0)
