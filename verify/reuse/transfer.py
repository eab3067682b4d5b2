"""Proof transfer by equivalence: the original's proof margin against the certified
deviation of the variant along the property's rows.

Every unsafe conjunction of a property is a set of rows ``c . y <= rhs``; the original's
proof refutes each conjunction on each of its boxes by a row with ``c . f(x) - rhs >= m
> 0`` there (its margin ``m``).  On the same box, a sound lower bound ``d`` of ``c . (g(x)
- f(x))`` -- the differential bound (:class:`verify.equiv.bounds.DiffPropagator`) of the
two networks aligned neuron by neuron, or the product network's bound for networks that
cannot be aligned, e.g. a distilled student of another depth -- gives ``c . g(x) - rhs >=
m + d``: the row refutes the conjunction on the variant as well when ``m + d > 0``.  The
variant needs no structural relation to the original (same inputs and outputs suffice).

The boxes are the original proof's branches when they are input boxes the original's
bounds closed (no ReLU phase splits: such a proof has a margin on every box; they tile
the region, checked), at most ``max_boxes`` of them; ``m`` is the original's bound
on the box, re-derived here (a proof file only says which boxes), or the proof's own
when it was built in this process (kept in memory only).  A box the margin does not carry is
bisected a few times (few inputs only): a proof's boxes were split just until the
original's bound closed them, so its margin is often tiny on some of them.  Proofs that split ReLUs have no margin
on a box and are not transferred.  Sums are widened outward for float rounding like
every bound of coreproof.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..bounds import TOLERANCE
from ..network import Network
from ..properties import Property
from ..result import Status


@dataclass(frozen=True)
class Transfer:
    closed: bool  # every region of the property holds on the variant by transfer
    boxes: int  # boxes bounded
    margin: float  # the original's smallest margin over the refuting rows (nan: none)
    deviation: float  # the largest certified deviation along those rows (nan: none)
    reason: str = ""


def _rows(region):
    rows = np.vstack([c.coeffs for c in region.unsafe])
    rhs = np.concatenate([c.rhs for c in region.unsafe])
    owner = np.concatenate([np.full(len(c.rhs), j) for j, c in enumerate(region.unsafe)])
    return rows, rhs, owner


def has_margin(proof, max_boxes: int) -> bool:
    """Whether every branch of the proof is an input box closed by bounds (and there
    are at most ``max_boxes`` per region)."""
    return proof.status is Status.HOLDS and bool(proof.regions) and all(
        0 < len(bs) <= max_boxes and all(not b.splits and b.method == "bounds" for b in bs)
        for bs in proof.regions.values())


def equivalence_transfer(original: Network, variant: Network, prop: Property, proof,
                         max_boxes: int = 256, refine_rounds: int = 3,
                         refine_max_inputs: int = 16, deadline: float | None = None
                         ) -> Transfer:
    """Try to carry the original's proof over to ``variant`` (see the module doc).

    A box on which some conjunction stays open is bisected (widest input first, up
    to ``refine_rounds`` times while the open boxes' halves number at most
    ``max_boxes``, only for networks of at most ``refine_max_inputs`` inputs, where
    input splitting pays): the halves tile it, and both the original's margin and the
    certified deviation tighten on smaller boxes.  Past ``deadline`` a graph network's
    bounds keep interval bounds for the neurons left (sound, looser)."""
    from ..equiv.search import PairBounder
    if not has_margin(proof, max_boxes):
        return Transfer(False, 0, float("nan"), float("nan"),
                        "the original's proof has no margin on input boxes")
    bounder = PairBounder(original, variant, product=False)
    rounds = refine_rounds if original.n_inputs <= refine_max_inputs else 0
    boxes, margin, deviation = 0, np.inf, 0.0
    for r, region in enumerate(prop.regions):
        branches = proof.regions.get(r) or []
        if not proof.covers(r, region):
            return Transfer(False, boxes, float("nan"), float("nan"),
                            f"the proof's boxes do not cover region {r}")
        lo = np.stack([b.lower for b in branches])
        hi = np.stack([b.upper for b in branches])
        rows, rhs, owner = _rows(region)
        # a proof built in this process keeps the original's own margins of its boxes
        # (its search's bounds, often tighter than the plain bound here; never read
        # from a file); a bisected box inherits its parent's
        inherit = np.array([np.full(len(rhs), -np.inf) if b.spec_lower is None
                            else np.asarray(b.spec_lower, dtype=np.float64) for b in branches])
        for step in range(rounds + 1):
            f_low, change = bounder.spec_rows(lo, hi, rows, deadline)
            boxes += len(lo)
            m = np.maximum(f_low - rhs, inherit)
            total = m + change
            total = total - TOLERANCE * (1.0 + np.abs(m) + np.abs(change))
            ok = total > 0  # (B, rows): the row refutes its conjunction on the variant
            closed = np.ones(len(lo), dtype=bool)
            for j in range(len(region.unsafe)):
                own = owner == j
                refuted = ok[:, own].any(axis=1)
                closed &= refuted
                if refuted.any():
                    idx = np.flatnonzero(refuted)
                    best = np.where(ok[idx][:, own], total[idx][:, own], -np.inf).argmax(axis=1)
                    margin = min(margin, float(m[idx][:, own][np.arange(len(idx)), best].min()))
                    deviation = max(deviation, float(np.max(
                        -change[idx][:, own][np.arange(len(idx)), best])))
            if closed.all():
                break
            if step == rounds or 2 * int((~closed).sum()) > max_boxes:
                return Transfer(False, boxes, float(np.max(m)), float(np.max(-change)),
                                f"region {r}: the certified deviation exceeds the original's "
                                f"margin on {int((~closed).sum())} of its boxes")
            lo, hi = _bisect(lo[~closed], hi[~closed])
            inherit = np.vstack([m[~closed], m[~closed]])
    return Transfer(True, boxes, margin, max(deviation, 0.0))


def _bisect(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each box halved along its widest input (the halves tile it)."""
    d = np.argmax(hi - lo, axis=1)
    rows = np.arange(len(lo))
    mid = (lo[rows, d] + hi[rows, d]) / 2
    hi_left, lo_right = hi.copy(), lo.copy()
    hi_left[rows, d] = mid
    lo_right[rows, d] = mid
    return np.vstack([lo, lo_right]), np.vstack([hi_left, hi])


def try_transfer(original, variant, prop, proof, ropt, stats, refine: bool,
                 deadline: float | None = None) -> bool:
    """:func:`equivalence_transfer` for ``reverify``, its figures in ``stats``
    (:class:`~verify.reuse.results.ReuseStats`).  ``refine``: bisect boxes the
    margin does not carry (for a variant with no structural map, whose only other
    way is verification from scratch; a compressed variant has the reuse tiers)."""
    if not has_margin(proof, ropt.transfer_max_boxes if refine else ropt.transfer_first_max_boxes):
        return False
    t = equivalence_transfer(original, variant, prop, proof, ropt.transfer_max_boxes,
                             refine_rounds=ropt.transfer_refine_rounds if refine else 0,
                             deadline=deadline)
    stats.transfer_tried, stats.transfer_boxes = True, t.boxes
    stats.transfer_margin = None if np.isnan(t.margin) else t.margin
    stats.transfer_deviation = None if np.isnan(t.deviation) else t.deviation
    return t.closed
