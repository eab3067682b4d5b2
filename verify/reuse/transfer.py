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
the region, checked), at most ``max_boxes`` of them; ``m`` is re-derived here on the
original (a proof file only says which boxes).  Proofs that split ReLUs have no margin
on a box and are not transferred.  Sums are widened outward for float rounding like
every bound of coreproof.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..bounds import TOLERANCE
from ..network import Network
from ..properties import Property


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
    return proof.status == "holds" and bool(proof.regions) and all(
        0 < len(bs) <= max_boxes and all(not b.splits and b.method == "bounds" for b in bs)
        for bs in proof.regions.values())


def equivalence_transfer(original: Network, variant: Network, prop: Property, proof,
                         max_boxes: int = 256) -> Transfer:
    """Try to carry the original's proof over to ``variant`` (see the module doc)."""
    from ..equiv.search import PairBounder
    if not has_margin(proof, max_boxes):
        return Transfer(False, 0, float("nan"), float("nan"),
                        "the original's proof has no margin on input boxes")
    bounder = PairBounder(original, variant, product=False)
    boxes, margin, deviation = 0, np.inf, 0.0
    for r, region in enumerate(prop.regions):
        branches = proof.regions.get(r) or []
        if not proof.covers(r, region):
            return Transfer(False, boxes, float("nan"), float("nan"),
                            f"the proof's boxes do not cover region {r}")
        lo = np.stack([b.lower for b in branches])
        hi = np.stack([b.upper for b in branches])
        rows, rhs, owner = _rows(region)
        f_low, change = bounder.spec_rows(lo, hi, rows)
        boxes += len(lo)
        m = f_low - rhs
        total = m + change
        total = total - TOLERANCE * (1.0 + np.abs(m) + np.abs(change))
        ok = total > 0  # (B, rows): the row refutes its conjunction on the variant
        for j in range(len(region.unsafe)):
            own = owner == j
            if not ok[:, own].any(axis=1).all():
                return Transfer(False, boxes, float(np.max(m)), float(np.max(-change)),
                                f"region {r}: the certified deviation exceeds the original's "
                                f"margin on conjunction {j}")
            best = np.where(ok[:, own], total[:, own], -np.inf).argmax(axis=1)
            idx = np.arange(len(lo))
            margin = min(margin, float(m[:, own][idx, best].min()))
            deviation = max(deviation, float(np.max(-change[:, own][idx, best])))
    return Transfer(True, boxes, margin, max(deviation, 0.0))
