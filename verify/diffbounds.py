"""Symbolic bounds on the difference of two aligned ReLU chains: one home for
the relaxation and the back-substitution that ``coreproof equiv``
(:mod:`verify.equiv.bounds`) and proof reuse (:mod:`verify.reuse.difference`)
both use.

Two chains are *aligned* when they have the same layer sizes; the variant's
layer ``k`` is ``W'_k = W_k + dW_k``, ``b'_k = b_k + db_k``.  Their
pre-activations differ by

    dz_k = W'_k dh_{k-1} + dW_k h_{k-1} + db_k,    z_k = W_k h_{k-1} + b_k,
    dh_k = relu(z_k + dz_k) - relu(z_k),           dh_{-1} = 0, h_{-1} = x.

A linear form in ``(dh_k, h_k)`` is relaxed into one in ``(dz_k, z_k)``
(:func:`diff_relaxation`) and rewritten one layer down until only ``x`` is
left (:func:`backsub_difference`), so the two networks' terms cancel before
any interval is taken -- unlike interval arithmetic on the recursion, whose
width grows with every layer.  Every relaxation holds wherever ``z`` lies in
the original's bounds ``[lf, uf]`` and ``dz`` in ``[dl, du]``: on a branch
of a proof tree (a box cut by ReLU phase splits) the original's bounds of the
branch serve, so the bound holds on that branch.  Results are widened
outward by :data:`verify.bounds.TOLERANCE` for float64 rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bounds import TOLERANCE


def widen_lower(x):
    return x - TOLERANCE * (1.0 + np.abs(x))


def widen_upper(x):
    return x + TOLERANCE * (1.0 + np.abs(x))


def mv(A: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``A @ v`` per box: A (m, n) or (B, m, n), v (B, n) -> (B, m)."""
    return np.einsum("...mn,...n->...m", A, v)


def matmul(A: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``A @ W`` for A (m, n) or (B, m, n) as one 2-d product (numpy's stacked
    matmul is several times slower)."""
    if A.ndim == 2:
        return A @ W
    return (A.reshape(-1, A.shape[-1]) @ W).reshape(A.shape[:-1] + (W.shape[-1],))


def box_min(A: np.ndarray, c: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Minimum over each box of each row of ``A @ x + c`` (boxes (B, n), rows
    (B, m)), widened outward."""
    v = c + mv(np.clip(A, 0, None), lo) + mv(np.clip(A, None, 0), hi)
    scale = np.abs(c) + mv(np.abs(A), np.maximum(np.abs(lo), np.abs(hi)))
    return v - TOLERANCE * (1.0 + np.abs(v) + scale)


def crown_relax(l: np.ndarray, u: np.ndarray):
    """CROWN relaxation of relu on [l, u]: ``alpha z <= relu(z) <= s z + t``."""
    unstable = (l < 0) & (u > 0)
    denom = np.where(unstable, u - l, 1.0)
    s = np.where(unstable, u / denom, (l >= 0).astype(float))
    t = np.where(unstable, -s * l, 0.0)
    alpha = np.where(unstable, (u > -l).astype(float), (l >= 0).astype(float))
    return alpha, s, t


@dataclass(frozen=True)
class DiffRelaxation:
    """Per neuron of one hidden layer: ``aL dz + bL z + cL <= dh <= aU dz + bU z + cU``
    and ``alpha z <= h <= s z + t``."""

    aL: np.ndarray
    bL: np.ndarray
    cL: np.ndarray
    aU: np.ndarray
    bU: np.ndarray
    cU: np.ndarray
    alpha: np.ndarray
    s: np.ndarray
    t: np.ndarray


def diff_relaxation(lf, uf, lg, ug, dl, du) -> DiffRelaxation:
    """The relaxation of ``dh = relu(z + dz) - relu(z)`` for ``z`` in ``[lf, uf]``,
    ``z + dz`` in ``[lg, ug]``, ``dz`` in ``[dl, du]``: per neuron the better (by
    its worst gap) of the chords of the "bow tie" (``dh`` between 0 and ``dz``:
    relu is monotone and 1-Lipschitz), whose gap shrinks with the change, and
    the two networks' own CROWN relaxations (exact where both are stable)."""
    alpha, s, t = crown_relax(lf, uf)
    ag, sg, tg = crown_relax(lg, ug)
    # A: relu(z') - relu(z) with both CROWN relaxations, z' = z + dz
    A = (ag, ag - s, -t, sg, sg - alpha, tg)
    gap_g = np.maximum((sg - ag) * lg, (sg - ag) * ug) + tg
    gap_f = np.maximum((s - alpha) * lf, (s - alpha) * uf) + t
    err_a = gap_g + gap_f
    # B: the chords of the bow tie (dh between 0 and dz) over [dl, du]
    pos, neg = dl >= 0, du <= 0
    width = np.where(pos | neg, 1.0, du - dl)
    up_slope = np.where(pos, 1.0, np.where(neg, 0.0, du / width))
    up_const = np.where(pos | neg, 0.0, -du * dl / width)
    lo_slope = np.where(neg, 1.0, np.where(pos, 0.0, -dl / width))
    lo_const = np.where(pos | neg, 0.0, dl * du / width)
    gap_b = np.maximum((up_slope - lo_slope) * dl, (up_slope - lo_slope) * du) + up_const - lo_const
    zero = np.zeros_like(dl)
    B = (lo_slope, zero, lo_const, up_slope, zero, up_const)
    pick = gap_b < err_a
    aL, bL, cL, aU, bU, cU = (np.where(pick, b, a) for a, b in zip(A, B))
    return DiffRelaxation(aL, bL, cL, aU, bU, cU, alpha, s, t)


@dataclass(frozen=True)
class AlignedLayers:
    """The weights of an aligned pair, per affine layer: the variant's ``Wg``, the
    changes ``dW``/``db`` and the original's ``Wf``/``bf``."""

    Wg: tuple[np.ndarray, ...]
    dW: tuple[np.ndarray, ...]
    db: tuple[np.ndarray, ...]
    Wf: tuple[np.ndarray, ...]
    bf: tuple[np.ndarray, ...]


def backsub_difference(layers: AlignedLayers, K: int, lam: np.ndarray,
                       relax: list[DiffRelaxation], lo: np.ndarray, hi: np.ndarray):
    """Lower bound over each box ``[lo[b], hi[b]]`` of the rows ``lam @ dz_K`` (K:
    an affine layer; ``relax``: the relaxations of the hidden layers below it) and
    the rows' input coefficients: ((B, m), (B, m, n))."""
    P = lam @ layers.Wg[K]
    Q = lam @ layers.dW[K]
    c = lam @ layers.db[K]
    for j in range(K - 1, -1, -1):
        r = relax[j]
        e = lambda v: v[..., None, :]  # noqa: E731 - per box, shared by the rows
        Pp, Pn = np.clip(P, 0, None), np.clip(P, None, 0)
        Qp, Qn = np.clip(Q, 0, None), np.clip(Q, None, 0)
        Cdz = Pp * e(r.aL) + Pn * e(r.aU)
        Cz = Pp * e(r.bL) + Pn * e(r.bU) + Qp * e(r.alpha) + Qn * e(r.s)
        c = c + mv(Pp, r.cL) + mv(Pn, r.cU) + mv(Qn, r.t)
        P = matmul(Cdz, layers.Wg[j])
        Q = matmul(Cdz, layers.dW[j]) + matmul(Cz, layers.Wf[j])
        c = c + Cdz @ layers.db[j] + Cz @ layers.bf[j]
    if Q.ndim == 2:  # K = 0: the same for every box
        Q = np.broadcast_to(Q, (lo.shape[0],) + Q.shape)
    return box_min(Q, c, lo, hi), Q


def tighten_changes(layers: AlignedLayers, lowers, uppers, changes, lo: np.ndarray,
                    hi: np.ndarray):
    """Given the original's pre-activation bounds ``lowers[k]``/``uppers[k]``
    (B, n_k) on B branches (boxes ``lo``/``hi``) and sound bounds ``changes[k] =
    (dl, du)`` of each ``dz_k`` there, tighter ones by back-substitution, layer
    by layer, and the relaxations they give: (changes, relaxations).

    Only neurons whose relaxation is not exact on some branch are
    back-substituted (the rest are stable in the same phase in both networks:
    ``dh = dz`` or ``dh = 0`` whatever ``[dl, du]`` is), which keeps the cost a
    small share of the full pass on the deep branches of a proof tree."""
    out, relax = [], []
    for k, (dl, du) in enumerate(changes):
        l, u = lowers[k], uppers[k]
        dl, du = dl.copy(), du.copy()
        exact = ((l >= 0) & (l + dl >= 0)) | ((u <= 0) & (u + du <= 0))
        idx = np.flatnonzero((~exact).any(axis=0))
        if len(idx):
            eye = np.eye(l.shape[1])[idx]
            low, _ = backsub_difference(layers, k, np.vstack([eye, -eye]), relax, lo, hi)
            m = len(idx)
            dl[:, idx] = np.maximum(dl[:, idx], low[:, :m])
            du[:, idx] = np.minimum(du[:, idx], -low[:, m:])
        out.append((dl, du))
        relax.append(diff_relaxation(l, u, l + dl, u + du, dl, du))
    return out, relax
