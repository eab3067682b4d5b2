"""Differential bounds: the variant's bounds on a box from the original's
bounds there plus a bound on how far the variant's values can move.

On a box where the original was bounded -- pre-activations ``z_k`` in
``[l_k, u_k]``, spec rows ``c_r @ y - d_r >= a_r @ x + e_r`` -- write the
variant (in the original's numbering, :attr:`ChangeMap.embedded`) as
``W'_k = W_k + dW_k``.  Its pre-activations differ by

    dz_k = W'_k dh_{k-1} + dW_k h_{k-1} + db_k,    dh = relu(z + dz) - relu(z),

with ``dx = 0`` at the input and ``h_{k-1}`` in ``[relu(l), relu(u)]``.
Interval arithmetic over that recursion (centre/radius form, outward
widened) bounds every ``dz_k``; ``relu`` being monotone and 1-Lipschitz
gives ``dh`` in ``[min(dl, 0), max(du, 0)]``, clipped to ``[-relu(u),
relu(u + du)]``, and exactly ``dz`` where both networks are active.  The
spec is folded into the last layer, so each row's change gets one lower
bound ``m_r`` and ``a_r @ x + e_r + m_r`` is a sound linear lower bound of the
VARIANT's row ``r``; ``z_k + dz_k`` are sound bounds of its pre-activations.

This costs a few matrix-vector products per layer -- no back-substitution --
and settles a small change to a property the original settled with room to
spare (pruning 10 %, int8).  The original's bounds are derived from the
original network in this process (:func:`original_bounds`), never read
from a proof store, so a stored record cannot make a verdict unsound.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from ..bounds import TOLERANCE, BatchBounds
from ..diffbounds import (activation_change, backsub_difference, diff_relaxation, interval_change,
                          tighten_changes)
from ..search import RegionSearch
from .changes import ChangeMap


@dataclass(frozen=True)
class OriginalBounds:
    """The original network's plain CROWN bound of one box: hidden
    pre-activation intervals and the spec rows' linear lower bounds."""

    lower: tuple[np.ndarray, ...]
    upper: tuple[np.ndarray, ...]
    spec_coeffs: np.ndarray  # (m, n_inputs)
    spec_const: np.ndarray  # (m,)
    spec_lower: np.ndarray  # (m,) the rows' lower bounds (the original's margins)
    # the intermediate bounds were tightened by alpha-CROWN (RegionSearch.tighten_root)
    tightened: bool = False
    # derived once (one record's bounds serve every variant): per hidden layer the
    # original's activation interval [relu(l), relu(u)] as centre and radius, and
    # which neurons are active on the whole box
    act_mid: tuple[np.ndarray, ...] = field(init=False, repr=False, compare=False)
    act_rad: tuple[np.ndarray, ...] = field(init=False, repr=False, compare=False)
    active: tuple[np.ndarray, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        lo = [np.maximum(l, 0.0) for l in self.lower]
        hi = [np.maximum(u, 0.0) for u in self.upper]
        object.__setattr__(self, "act_mid", tuple((a + b) / 2 for a, b in zip(lo, hi)))
        object.__setattr__(self, "act_rad", tuple((b - a) / 2 for a, b in zip(lo, hi)))
        object.__setattr__(self, "active", tuple(l >= 0 for l in self.lower))

    def candidates(self, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
        """The box corners minimising each spec row's linear bound, and the
        centre: (m + 1, n) counterexample candidates."""
        return np.vstack([np.where(self.spec_coeffs > 0, lower, upper), (lower + upper) / 2])


def original_bounds(search: RegionSearch | None, res=None, tightened: bool = False) -> OriginalBounds:
    """The bound of ``search``'s whole region on its (original) network (the
    bound :meth:`RegionSearch.closed_at_root` takes; ``res``: that bound, when
    it was taken in this process already, ``tightened`` when over intermediate
    bounds :meth:`RegionSearch.tighten_root` tightened)."""
    if res is None:
        res, _ = search.root_bound()
    return OriginalBounds(tuple(l[0].numpy() for l in res.lower),
                          tuple(u[0].numpy() for u in res.upper),
                          res.spec_coeffs[0].numpy(), res.spec_const[0].numpy(),
                          res.spec_lower[0].numpy(), tightened)


def _interval(terms, const) -> tuple[np.ndarray, np.ndarray]:
    """``sum(A @ mid) + const +- sum(|A| @ rad)`` over (A, mid, rad) terms
    (``mid`` None: a zero interval), widened outward for rounding."""
    centre, radius = const, 0.0
    for A, mid, rad in terms:
        if mid is not None:
            centre = centre + A @ mid
            radius = radius + np.abs(A) @ rad
    radius = radius + TOLERANCE * (1.0 + np.abs(centre) + radius)
    return centre - radius, centre + radius


@dataclass
class Deviation:
    """Bounds of the variant's change on a box (see :func:`deviation`)."""

    changes: list[tuple[np.ndarray, np.ndarray]]  # per hidden layer: dl <= dz_k <= du
    spec: np.ndarray  # (m,) interval lower bound of spec_c @ (y' - y)
    # the last hidden layer's neurons active in both networks, and the intervals
    # around it (what :meth:`through_active` needs); None when there are none
    _last: tuple | None = field(default=None, repr=False)

    def through_active(self) -> np.ndarray | None:
        """The (m,) lower bound of the spec's change with the last hidden layer's
        neurons active in both networks written one layer further back (see
        :func:`_through_active`); None when it has no such neuron."""
        return None if self._last is None else _through_active(*self._last)

    def best(self) -> np.ndarray:
        through = self.through_active()
        return self.spec if through is None else np.maximum(self.spec, through)


def deviation(cmap: ChangeMap, ob: OriginalBounds, lower: np.ndarray, upper: np.ndarray,
              spec_c: np.ndarray) -> Deviation:
    """Bounds of the variant's change on the box ``[lower, upper]``: per hidden
    layer ``(dl, du)`` with ``dl <= dz_k <= du`` (original numbering), and the
    (m,) lower bound of ``spec_c @ (y' - y)`` by intervals; a second, often
    tighter bound of the latter on demand (:meth:`Deviation.through_active`)."""
    last = len(cmap.embedded) - 1
    h = ((lower + upper) / 2, (upper - lower) / 2)  # the original's activations: centre, radius
    e = (None, None)  # the change of the activations (none at the input)
    both = h_before = e_before = None
    out = []
    for k, ((W2, _), (dW, db)) in enumerate(zip(cmap.embedded, cmap.deltas)):
        if k == last:  # fold the spec in: one bound per spec row
            G, H, const = spec_c @ W2, spec_c @ dW, spec_c @ db
            dl, _ = _interval([(H, *h), (G, *e)], const)
            through = None if both is None or not both.any() else (
                cmap, k - 1, G, H, const, both, h, e, h_before, e_before)
            return Deviation(out, dl, through)
        dl, du = _interval([(dW, *h), (W2, *e)], db)
        out.append((dl, du))
        # dh = relu(z + dz) - relu(z): between 0 and dz, above -relu(z), below
        # relu(z + dz); equal to dz where both are active
        lo_h = np.maximum(np.minimum(dl, 0.0), -(ob.act_mid[k] + ob.act_rad[k]))
        hi_h = np.minimum(np.maximum(du, 0.0), np.maximum(ob.upper[k] + du, 0.0))
        both = ob.active[k] & (ob.lower[k] + dl >= 0)
        lo_h[both], hi_h[both] = dl[both], du[both]
        h_before, e_before = h, e
        e = ((lo_h + hi_h) / 2, (hi_h - lo_h) / 2)
        h = (ob.act_mid[k], ob.act_rad[k])
    raise AssertionError("unreachable: the last layer returns")


def _through_active(cmap: ChangeMap, j: int, G, H, const, both, h, e, h_before, e_before):
    """Lower bound of ``G @ dh_j + H @ h_j + const`` (the spec's change) with
    layer ``j``'s neurons in ``both`` (active in both networks) written through
    layer ``j``: ``dh = W'_j dh_{j-1} + dW_j h_{j-1} + db_j`` and ``h = W_j
    h_{j-1} + b_j``, so the two networks' terms cancel before any interval is
    taken; the others by their intervals."""
    W2, _ = cmap.embedded[j]
    dW, db = cmap.deltas[j]
    a = cmap.original.affines[j]
    rest = ~both
    GA, HA = G[:, both], H[:, both]
    lo, _ = _interval([(G[:, rest], e[0][rest], e[1][rest]),
                       (H[:, rest], h[0][rest], h[1][rest]),
                       (GA @ W2[both], *e_before),
                       (GA @ dW[both] + HA @ a.weight[both], *h_before)],
                      const + GA @ db[both] + HA @ a.bias[both])
    return lo


def variant_bounds(cmap: ChangeMap, ob: OriginalBounds, dev: Deviation, lower: np.ndarray,
                   upper: np.ndarray, spec_shift: np.ndarray | None = None) -> BatchBounds:
    """The variant's bounds on the box (a batch of one, in the variant's
    numbering): the original's bounds moved by ``dev``; the spec rows by
    ``spec_shift`` (default: ``dev.spec``)."""
    lows, ups = [], []
    for k, (dl, du) in enumerate(dev.changes):
        rows = cmap.kept_rows[k]
        l, u = ob.lower[k] + dl, ob.upper[k] + du
        if len(rows) < len(l):
            l, u = l[rows], u[rows]
        lows.append(torch.from_numpy(l - TOLERANCE * (1.0 + np.abs(l)))[None, :])
        ups.append(torch.from_numpy(u + TOLERANCE * (1.0 + np.abs(u)))[None, :])
    coeffs = torch.from_numpy(ob.spec_coeffs)[None]
    spec_lower, const = _moved_spec(ob, dev.spec if spec_shift is None else spec_shift,
                                    lower, upper)
    return BatchBounds(lows, ups, spec_lower, coeffs, torch.zeros(1, dtype=torch.bool),
                       [None] * len(lows), const, coeffs)


def with_spec_shift(moved: BatchBounds, ob: OriginalBounds, spec_shift: np.ndarray,
                    lower: np.ndarray, upper: np.ndarray) -> BatchBounds:
    """``moved`` with its spec rows moved by ``spec_shift`` instead."""
    spec_lower, const = _moved_spec(ob, spec_shift, lower, upper)
    return dataclasses.replace(moved, spec_lower=spec_lower, spec_const=const)


def _moved_spec(ob: OriginalBounds, spec_shift, lower, upper):
    """(spec_lower, spec_const) batch-of-one tensors of the original's linear spec
    bound shifted by ``spec_shift``, its minimum widened outward."""
    const = ob.spec_const + spec_shift
    a = ob.spec_coeffs
    value = const + np.where(a > 0, a * lower, a * upper).sum(axis=1)
    return (torch.from_numpy(value - TOLERANCE * (1.0 + np.abs(value)))[None],
            torch.from_numpy(const)[None])


def margin_loss(ob: OriginalBounds, moved: BatchBounds, owner: np.ndarray,
                refuted: np.ndarray) -> float:
    """How far the moved bound fell short: over the conjunctions it leaves
    unrefuted, the largest (of each one's best row) drop of a row's lower bound
    relative to the original's positive margin; inf where a row had none."""
    orig, now = ob.spec_lower, moved.spec_lower[0].numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = np.where(orig > 0, (orig - now) / orig, np.inf)
    per_conj = np.full(len(refuted), np.inf)
    np.minimum.at(per_conj, owner, loss)
    return float(per_conj[~refuted].max(initial=0.0))


def symbolic_deviation(cmap: ChangeMap, lowers, uppers, changes, box_lo: np.ndarray,
                       box_hi: np.ndarray, spec_c: np.ndarray):
    """Tighter bounds of the change on B branches than the interval ones
    (``changes``, per hidden layer (B, n_k)): the difference back-substituted
    symbolically through both networks (:mod:`verify.diffbounds`).  Returns the
    tightened per-layer changes and the (B, m) lower bound of ``spec_c @ (y' - y)``.
    Costs a back-substitution of the neurons whose relaxation is not exact, so
    callers keep it for branches whose interval bound came close."""
    tight, relax = tighten_changes(cmap.aligned, lowers, uppers, changes, box_lo, box_hi)
    spec, _ = backsub_difference(cmap.aligned, len(tight), spec_c, relax, box_lo, box_hi)
    return tight, spec


def interval_symbolic_deviation(cmap: ChangeMap, lowers, uppers, changes, box_lo: np.ndarray,
                                box_hi: np.ndarray, spec_c: np.ndarray) -> np.ndarray:
    """The (B, m) lower bound of ``spec_c @ (y' - y)`` by back-substituting the spec
    rows alone through both networks, each layer's relaxation taken over the interval
    changes ``changes`` (no neuron back-substituted): a few products per layer, and
    much tighter than the interval bound of the spec where the networks amplify a
    change that their last layers then cancel."""
    relax = [diff_relaxation(l, u, l + dl, u + du, dl, du)
             for l, u, (dl, du) in zip(lowers, uppers, changes)]
    spec, _ = backsub_difference(cmap.aligned, len(relax), spec_c, relax, box_lo, box_hi)
    return spec


def hopeful(spec_dl: np.ndarray, orig: np.ndarray, owner: np.ndarray, n_conj: int,
            max_loss: float) -> np.ndarray:
    """(B,) which branches' interval change bound ``spec_dl`` lost at most
    ``max_loss`` times the original's margin ``orig`` on some row of every
    conjunction (a row with no positive margin never counts)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = np.where(orig > 0, np.maximum(-spec_dl, 0.0) / orig, np.inf)
    per_conj = np.full((len(loss), n_conj), np.inf)
    for j in range(n_conj):
        per_conj[:, j] = loss[:, owner == j].min(axis=1)
    return per_conj.max(axis=1) <= max_loss


def leaf_deviation(cmap: ChangeMap, lowers, uppers, box_lo: np.ndarray, box_hi: np.ndarray,
                   spec_c: np.ndarray, caps: ChangeCaps | None = None):
    """Batched :func:`deviation` over ``B`` leaves:
    ``lowers[k]``/``uppers[k]`` (B, n_k) the original's pre-activation bounds on
    each leaf's domain, boxes (B, n0).  Returns per hidden layer ``(dl, du)``
    (B, n_k) bounding the variant's pre-activation change (original
    numbering) and the (B, m) lower bound of ``spec_c @ (y' - y)``.  ``caps``: bounds
    of the same changes over a domain containing every leaf (:class:`ChangeCaps`),
    intersected with each layer's before it is propagated to the next."""
    last = len(cmap.embedded) - 1
    h_lo, h_hi = box_lo, box_hi  # the original's activations (the input first)
    dh_lo = dh_hi = None  # the change of the activations (none at the input)
    out = []
    for k in range(last + 1):
        W2, _ = cmap.embedded[k]
        dW, db = cmap.deltas[k]
        if k == last:  # the spec folded into the output layer
            W2, dW, db = spec_c @ W2, spec_c @ dW, spec_c @ db
        dl, du = interval_change(W2, dW, db, h_lo, h_hi, dh_lo, dh_hi)
        if caps is not None:
            dl, du = caps.clip(k, dl, du)
        if k == last:
            return out, dl
        out.append((dl, du))
        l, u = lowers[k], uppers[k]
        dh_lo, dh_hi = activation_change(l, u, dl, du)
        h_lo, h_hi = np.maximum(l, 0.0), np.maximum(u, 0.0)
    raise AssertionError("unreachable: the last layer returns")


@dataclass(frozen=True)
class ChangeCaps:
    """Bounds of the variant's change over a domain that contains every leaf of a
    proof tree (the region's box): per hidden layer ``(dl, du)`` (n_k,), the original's
    numbering, and the (m,) lower bound of the spec rows' change.  Sound on every
    sub-domain, so each leaf's interval change is intersected with them
    (:func:`leaf_deviation`)."""

    layers: tuple
    spec_lower: np.ndarray

    def clip(self, k: int, dl: np.ndarray, du: np.ndarray):
        """Layer ``k``'s change (the spec's past the last hidden layer) intersected."""
        if k == len(self.layers):
            return np.maximum(dl, self.spec_lower), du
        cl, cu = self.layers[k]
        return np.maximum(dl, cl), np.minimum(du, cu)


def region_caps(cmap: ChangeMap, ob: OriginalBounds, box_lo: np.ndarray, box_hi: np.ndarray,
                spec_c: np.ndarray) -> ChangeCaps:
    """:class:`ChangeCaps` of a region from the original's bound of it (``ob``, derived
    from the original network in this process, as every bound here): the interval change
    tightened symbolically (:func:`symbolic_deviation`, one branch)."""
    lowers = [l[None] for l in ob.lower]
    uppers = [u[None] for u in ob.upper]
    lo, hi = box_lo[None], box_hi[None]
    changes, _ = leaf_deviation(cmap, lowers, uppers, lo, hi, spec_c)
    tight, spec = symbolic_deviation(cmap, lowers, uppers, changes, lo, hi, spec_c)
    return ChangeCaps(tuple((dl[0], du[0]) for dl, du in tight), spec[0])
