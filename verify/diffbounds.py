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
:func:`optimise_difference` is the back-substitution with the relaxation's
free slopes (and the multipliers of a branch's phase splits) chosen per row by
projected gradient ascent, alpha-/beta-CROWN style.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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


def _best_beta(base, v, d, lo, hi):
    """Per row, the ``beta >= 0`` maximising ``min_box (base - beta v) x - beta d``
    (rows (B, m, n), ``v`` (B, 1, n), ``d`` (B, 1)): a concave piecewise-linear
    function whose slope ``-(v x*) - d`` drops by ``|v_k| (hi_k - lo_k)`` at each
    breakpoint ``base_k / v_k``; the maximum is at the first breakpoint where
    the slope turns <= 0.  Found in float32 (any ``beta >= 0`` gives a sound
    bound; the caller evaluates it in float64)."""
    c0 = np.where(base != 0, base, -v)  # the coefficients' signs just above beta = 0
    slope0 = -(v * np.where(c0 > 0, lo, hi)).sum(-1) - d
    beta = np.zeros(slope0.shape)
    bi, mi = np.nonzero(slope0 > 0)  # elsewhere beta = 0 is best
    if not len(bi):
        return beta
    f32 = np.float32
    base, vv = base[bi, mi], v[bi, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = base / vv
    t = np.where((vv != 0) & (t > 0), t, f32(np.inf))
    order = np.argsort(t, axis=-1)
    ts = np.take_along_axis(t, order, -1)
    drop = np.take_along_axis(np.abs(vv) * (hi[bi, 0] - lo[bi, 0]), order, -1)
    left = slope0[bi, mi, None].astype(f32) - np.cumsum(drop, -1)
    k = np.argmax(left <= 0, axis=-1)
    b = np.take_along_axis(ts, k[:, None], -1)[:, 0].astype(float)
    beta[bi, mi] = np.where(np.isfinite(b), b, 0.0)
    return beta


def cut_min(A: np.ndarray, c: np.ndarray, lo: np.ndarray, hi: np.ndarray, cuts=None,
            passes: int = 1) -> np.ndarray:
    """Lower bound of the minimum of each row of ``A @ x + c`` (rows (B, m), boxes
    (B, n)) over the inputs of each box that satisfy its linear cuts ``V @ x + d
    >= 0`` (``cuts`` = (V (B, q, n), d (B, q)); all-zero cuts are padding), widened
    outward.  Lagrangian duality: for every ``beta >= 0`` the minimum over the box
    of ``(A - beta V) x + c - beta d`` is a lower bound; ``beta`` per row and cut
    by coordinate ascent (each coordinate exactly, :func:`_best_beta`).  No cuts:
    :func:`box_min`."""
    if cuts is None or cuts[0].shape[1] == 0:
        return box_min(A, c, lo, hi)
    V, d = cuts
    B, m, n = A.shape if A.ndim == 3 else (lo.shape[0],) + A.shape
    A = np.broadcast_to(A, (B, m, n))
    beta = cut_multipliers(A, lo, hi, cuts, passes)
    A2 = A - np.einsum("bmq,bqn->bmn", beta, V)
    c2 = c - np.einsum("bmq,bq->bm", beta, d)
    v = c2 + mv(np.clip(A2, 0, None), lo) + mv(np.clip(A2, None, 0), hi)
    reach = np.maximum(np.abs(lo), np.abs(hi))
    scale = (np.abs(c) + np.abs(c2) + mv(np.abs(A) + np.abs(A2), reach)
             + np.einsum("bmq,bq->bm", beta, mv(np.abs(V), reach) + np.abs(d)))
    return np.maximum(v - TOLERANCE * (1.0 + np.abs(v) + scale), box_min(A, c, lo, hi))


def cut_multipliers(A: np.ndarray, lo: np.ndarray, hi: np.ndarray, cuts,
                    passes: int = 1) -> np.ndarray:
    """The multipliers ``beta >= 0`` (B, m, q) of :func:`cut_min` (rows A (B, m, n))."""
    V, d = cuts
    B, m, n = A.shape
    q = V.shape[1]
    beta = np.zeros((B, m, q))
    L, H = lo[:, None, :].astype(np.float32), hi[:, None, :].astype(np.float32)
    used = np.flatnonzero(np.abs(V).sum((0, 2)) > 0)
    A2 = A.astype(np.float32)  # the search runs in float32: any beta >= 0 is sound
    V32 = V.astype(np.float32)
    for _ in range(passes):
        for i in used:
            base = A2 + beta[..., i:i + 1].astype(np.float32) * V32[:, i][:, None, :]
            beta[..., i] = _best_beta(base, V32[:, i][:, None, :], d[:, i][:, None], L, H)
            A2 = base - beta[..., i:i + 1].astype(np.float32) * V32[:, i][:, None, :]
    return beta


def relaxation_gaps(r: DiffRelaxation, lf, uf, dl, du):
    """Per neuron, the worst gap over its bounds of ``r``'s relaxation of ``dh``
    (upper minus lower) and of ``h`` (``s z + t - alpha z``)."""
    da, dbz = r.aU - r.aL, r.bU - r.bL
    gap_dh = (r.cU - r.cL) + np.maximum(da * dl, da * du) + np.maximum(dbz * lf, dbz * uf)
    ds = r.s - r.alpha
    return gap_dh, np.maximum(ds * lf, ds * uf) + r.t


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


def diff_relaxation(lf, uf, lg, ug, dl, du, mixed_by_change: bool = False) -> DiffRelaxation:
    """The relaxation of ``dh = relu(z + dz) - relu(z)`` for ``z`` in ``[lf, uf]``,
    ``z + dz`` in ``[lg, ug]``, ``dz`` in ``[dl, du]``: per neuron the better (by
    its worst gap) of the chords of the "bow tie" (``dh`` between 0 and ``dz``:
    relu is monotone and 1-Lipschitz), whose gap shrinks with the change, and
    the two networks' own CROWN relaxations (exact where both are stable).
    ``mixed_by_change``: where the two are stable in opposite phases, the chords
    (``dh`` between 0 and ``dz``) rather than the exact ``dh = -z`` or ``z + dz``:
    when bounds are clamped by phase splits, ``z`` ranges over the whole box in
    the back-substitution, while ``dz`` stays small there."""
    p = _RelaxParts(lf, uf, lg, ug, dl, du, mixed_by_change)
    aL, bL, cL, aU, bU, cU = (np.where(p.pick, b, a) for a, b in zip(p.A, p.B))
    return DiffRelaxation(aL, bL, cL, aU, bU, cU, p.alpha, p.s, p.t)


class _RelaxParts:
    """The pieces :func:`diff_relaxation` chooses from: the two networks' CROWN
    relaxations (``alpha``, ``s``, ``t``; ``ag``, ``sg``, ``tg``), ``A`` (the
    relaxation of ``dh`` they give) and ``B`` (the bow tie's chords), each
    (aL, bL, cL, aU, bU, cU), and ``pick`` (B chosen)."""

    def __init__(self, lf, uf, lg, ug, dl, du, mixed_by_change):
        alpha, s, t = crown_relax(lf, uf)
        ag, sg, tg = crown_relax(lg, ug)
        # A: relu(z') - relu(z) with both CROWN relaxations, z' = z + dz
        self.A = (ag, ag - s, -t, sg, sg - alpha, tg)
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
        gap_b = (np.maximum((up_slope - lo_slope) * dl, (up_slope - lo_slope) * du)
                 + up_const - lo_const)
        zero = np.zeros_like(dl)
        self.B = (lo_slope, zero, lo_const, up_slope, zero, up_const)
        pick = gap_b < err_a
        if mixed_by_change:
            pick |= ((lf >= 0) & (ug <= 0)) | ((uf <= 0) & (lg >= 0))
        self.pick = pick
        self.alpha, self.s, self.t, self.ag, self.sg, self.tg = alpha, s, t, ag, sg, tg
        self.open_f, self.open_g = (lf < 0) & (uf > 0), (lg < 0) & (ug > 0)


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
                       relax: list[DiffRelaxation], lo: np.ndarray, hi: np.ndarray,
                       record: dict | None = None, cuts=None):
    """Lower bound over each box ``[lo[b], hi[b]]`` of the rows ``lam @ dz_K`` (K:
    an affine layer; ``relax``: the relaxations of the hidden layers below it) and
    the rows' input coefficients: ((B, m), (B, m, n)).  ``record``: if given,
    ``record[j] = (P, Q)``, the rows' coefficients on ``dh_j`` and ``h_j`` before
    layer ``j``'s relaxation (what each neuron's relaxation gap costs the rows).
    ``cuts``: linear constraints on the input that hold on each branch (see
    :func:`cut_min`); the bound is then over the box's inputs that meet them."""
    P = lam @ layers.Wg[K]
    Q = lam @ layers.dW[K]
    c = lam @ layers.db[K]
    for j in range(K - 1, -1, -1):
        r = relax[j]
        if record is not None:
            record[j] = (P, Q)
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
    return cut_min(Q, c, lo, hi, cuts), Q


def activation_change(l, u, dl, du):
    """Interval ``(lo, hi)`` of ``dh = relu(z + dz) - relu(z)`` for ``z`` in ``[l, u]``
    and ``dz`` in ``[dl, du]``: between 0 and ``dz`` (relu is monotone and
    1-Lipschitz), above ``-relu(u)``, below ``relu(u + du)``; exactly ``dz`` where
    both networks are active."""
    lo_h = np.maximum(np.minimum(dl, 0.0), -np.maximum(u, 0.0))
    hi_h = np.minimum(np.maximum(du, 0.0), np.maximum(u + du, 0.0))
    both = (l >= 0) & (l + dl >= 0)
    return np.where(both, dl, lo_h), np.where(both, du, hi_h)


def interval_change(Wg, dW, db, h_lo, h_hi, dh_lo=None, dh_hi=None):
    """Interval ``(dl, du)`` of ``dz = Wg dh + dW h + db`` for ``h`` in ``[h_lo, h_hi]``
    and ``dh`` in ``[dh_lo, dh_hi]`` (none at the input), per box (rows), in
    centre/radius form, widened outward."""
    centre = (h_lo + h_hi) / 2 @ dW.T + db
    radius = (h_hi - h_lo) / 2 @ np.abs(dW).T
    if dh_lo is not None:
        centre = centre + (dh_lo + dh_hi) / 2 @ Wg.T
        radius = radius + (dh_hi - dh_lo) / 2 @ np.abs(Wg).T
    radius = radius + TOLERANCE * (1.0 + np.abs(centre) + radius)
    return centre - radius, centre + radius


def tighten_changes(layers: AlignedLayers, lowers, uppers, changes, lo: np.ndarray,
                    hi: np.ndarray):
    """Given the original's pre-activation bounds ``lowers[k]``/``uppers[k]``
    (B, n_k) on B branches (boxes ``lo``/``hi``) and sound bounds ``changes[k] =
    (dl, du)`` of each ``dz_k`` there, tighter ones by back-substitution, layer
    by layer, and the relaxations they give: (changes, relaxations).

    Only neurons whose relaxation is not exact on some branch are
    back-substituted (the rest are stable in the same phase in both networks:
    ``dh = dz`` or ``dh = 0`` whatever ``[dl, du]`` is), which keeps the cost a
    small share of the full pass on the deep branches of a proof tree.  Each layer's
    interval change is first propagated again from the layer below's tightened one
    (and intersected with ``changes[k]``): interval widths compound with depth, so
    this leaves fewer neurons to back-substitute in the layers above."""
    out, relax = [], []
    for k, (dl, du) in enumerate(changes):
        l, u = lowers[k], uppers[k]
        dl, du = dl.copy(), du.copy()
        if k:
            pl, pu = lowers[k - 1], uppers[k - 1]
            dh_lo, dh_hi = activation_change(pl, pu, *out[k - 1])
            il, iu = interval_change(layers.Wg[k], layers.dW[k], layers.db[k],
                                     np.maximum(pl, 0.0), np.maximum(pu, 0.0), dh_lo, dh_hi)
            dl, du = np.maximum(dl, il), np.minimum(du, iu)
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


#: the free parameters of the optimised relaxation, per neuron and row, each in [0, 1]:
#: the original's lower slope where it bounds ``h`` and where it bounds ``dh``, the
#: variant's lower slope, and the weights of the CROWN relaxation against the chords
#: in ``dh``'s lower and upper bound
SLOPES = ("alpha_h", "alpha_d", "alpha_g", "mix_lower", "mix_upper")


def project(x: dict) -> dict:
    """The free slopes projected onto their sound range [0, 1]."""
    return {k: v.clamp(0.0, 1.0) for k, v in x.items()}


def nonnegative(beta):
    """Split multipliers projected onto their sound range ``beta >= 0``."""
    return beta.clamp(min=0.0)


def _slope_relaxation(p: "_RelaxParts", x: dict, T):
    """Per row, the relaxation given the free slopes ``x`` (tensors (B, m, n)),
    each projected onto its sound range [0, 1]: a lower slope of relu in [0, 1]
    on an unstable neuron (fixed on a stable one), and a convex combination of
    two sound bounds of ``dh``.  Returns (aL, bL, cL, aU, bU, cU, alpha_h, s, t)."""
    e = lambda v: T(v)[:, None, :]  # noqa: E731 - per branch, shared by the rows
    y = project(x)
    ah = torch.where(e(p.open_f) > 0, y["alpha_h"], e(p.alpha))
    ad = torch.where(e(p.open_f) > 0, y["alpha_d"], e(p.alpha))
    ag = torch.where(e(p.open_g) > 0, y["alpha_g"], e(p.ag))
    s, t, sg, tg = e(p.s), e(p.t), e(p.sg), e(p.tg)
    (bl, _, bc, bu, _, bcu), wl, wu = p.B, y["mix_lower"], y["mix_upper"]
    return (wl * ag + (1 - wl) * e(bl), wl * (ag - s), -wl * t + (1 - wl) * e(bc),
            wu * sg + (1 - wu) * e(bu), wu * (sg - ad), wu * tg + (1 - wu) * e(bcu), ah, s, t)


def _backsub_rows(layers: AlignedLayers, K: int, lam, rel, T, split=None):
    """:func:`backsub_difference` in torch with a relaxation per row: (Q, c).
    ``split``: per layer, (phase_f, phase_g, beta_f, beta_g): the branch's phase
    constraints ``phase_f z >= 0`` and ``phase_g (z + dz) >= 0`` (B, n) and their
    multipliers (B, m, n), projected onto ``beta >= 0`` (beta-CROWN: for every
    such ``beta`` the rows minus ``beta phase z`` bound them below on the branch)."""
    P = T(lam @ layers.Wg[K])[None]
    Q = T(lam @ layers.dW[K])[None]
    c = T(lam @ layers.db[K])[None]
    for j in range(K - 1, -1, -1):
        aL, bL, cL, aU, bU, cU, ah, s, t = rel[j]
        Pp, Pn, Qp, Qn = P.clamp(min=0), P.clamp(max=0), Q.clamp(min=0), Q.clamp(max=0)
        Cdz = Pp * aL + Pn * aU
        Cz = Pp * bL + Pn * bU + Qp * ah + Qn * s
        if split is not None:
            pf, pg, bf, bg = split[j]
            bf, bg = nonnegative(bf), nonnegative(bg)
            Cz = Cz - bf * T(pf)[:, None] - bg * T(pg)[:, None]
            Cdz = Cdz - bg * T(pg)[:, None]
        c = c + (Pp * cL + Pn * cU + Qn * t).sum(-1)
        P = Cdz @ T(layers.Wg[j])
        Q = Cdz @ T(layers.dW[j]) + Cz @ T(layers.Wf[j])
        c = c + Cdz @ T(layers.db[j]) + Cz @ T(layers.bf[j])
    return Q, c


def optimise_difference(layers: AlignedLayers, K: int, lam: np.ndarray, bounds, lo: np.ndarray,
                        hi: np.ndarray, cuts=None, steps: int = 20, lr: float = 0.2,
                        init: list | None = None, phases=None) -> np.ndarray:
    """Lower bound (B, m) over each box (and its cuts, :func:`cut_min`) of the
    rows ``lam @ dz_K``, like :func:`backsub_difference` but with the
    relaxation's free slopes (:data:`SLOPES`) chosen per row and branch by
    projected gradient ascent on the bound (alpha-CROWN style).  Every slope in
    its range gives a sound bound, so the search runs in float32 with the cuts'
    multipliers of the start held fixed; the result is evaluated in float64.
    ``bounds``: per hidden layer below ``K``, (lf, uf, lg, ug, dl, du) of the
    branches, (B, n_k) each (as for :func:`diff_relaxation` with
    ``mixed_by_change``, which is the start).  ``init``: per layer, starting
    slopes {name: (B, m, n_k)} instead.  ``phases``: per hidden layer, the
    branches' phase splits (phase_f, phase_g) (B, n_k) (+1 active, -1 inactive,
    0 free), whose multipliers (beta-CROWN) are optimised with the slopes."""
    B, m = lo.shape[0], lam.shape[0]
    parts = [_RelaxParts(*b, True) for b in bounds]
    x = []
    for j, p in enumerate(parts):
        start = {"alpha_h": p.alpha, "alpha_d": p.alpha, "alpha_g": p.ag,
                 "mix_lower": 1.0 - p.pick, "mix_upper": 1.0 - p.pick}
        if init is not None:
            start = init[j]
        x.append({k: torch.tensor(np.broadcast_to(np.asarray(start[k], np.float32)[..., None, :]
                                                  if np.ndim(start[k]) == 2 else start[k],
                                                  (B, m, p.s.shape[-1])).copy(),
                                  requires_grad=True) for k in SLOPES})
    f32 = lambda a: torch.as_tensor(np.asarray(a, np.float32))  # noqa: E731
    betas = [] if phases is None else [
        tuple(torch.zeros((B, m, p.s.shape[-1]), requires_grad=True) for _ in range(2))
        for p in parts]

    def split(T):
        return None if phases is None else [(pf, pg) + tuple(b.to(T(0.0).dtype) for b in bs)
                                            for (pf, pg), bs in zip(phases, betas)]
    if steps > 0:
        with torch.no_grad():
            Q0, _ = _backsub_rows(layers, K, lam, [_slope_relaxation(p, v, f32)
                                                   for p, v in zip(parts, x)], f32)
        Q0 = np.broadcast_to(Q0.detach().numpy().astype(float), (B, m, lo.shape[1]))
        use_cuts = cuts is not None and cuts[0].shape[1] > 0
        beta = f32(cut_multipliers(Q0, lo, hi, cuts)) if use_cuts else None
        L, H = f32(lo)[:, None], f32(hi)[:, None]
        opt = torch.optim.Adam([v for d in x for v in d.values()]
                               + [b for bs in betas for b in bs], lr=lr)
        for _ in range(steps):
            Q, c = _backsub_rows(layers, K, lam, [_slope_relaxation(p, v, f32)
                                                  for p, v in zip(parts, x)], f32, split(f32))
            if beta is not None:
                Q = Q - torch.einsum("bmq,bqn->bmn", beta, f32(cuts[0]))
                c = c - torch.einsum("bmq,bq->bm", beta, f32(cuts[1]))
            val = c + (Q.clamp(min=0) * L).sum(-1) + (Q.clamp(max=0) * H).sum(-1)
            opt.zero_grad()
            (-val.sum()).backward()
            opt.step()
    f64 = lambda a: torch.as_tensor(np.asarray(a, float))  # noqa: E731
    with torch.no_grad():
        Q, c = _backsub_rows(layers, K, lam, [_slope_relaxation(p, {k: v.double() for k, v in d.items()}, f64)
                                              for p, d in zip(parts, x)], f64, split(f64))
    Q = np.broadcast_to(Q.numpy(), (B, m, lo.shape[1]))
    return cut_min(Q, np.broadcast_to(c.numpy(), (B, m)), lo, hi, cuts)
