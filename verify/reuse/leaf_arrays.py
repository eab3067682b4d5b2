"""A proof region's leaves as stacked arrays: what the differential tiers read of every
leaf (its box, the original's layer bounds, its spec rows' lower bounds), stacked once
per proof record instead of once per variant.

Stacking 7,671 leaves' small arrays took about 0.2 s of each variant's re-check of ACAS
Xu 4_2 prop 2 (of 0.3 s for a variant its first attack then refutes); a proof is re-checked
for many variants."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LeafArrays:
    lowers: list[np.ndarray]  # per hidden layer, (N, n_k): the original's pre-activation bounds
    uppers: list[np.ndarray]
    box_lo: np.ndarray  # (N, n0)
    box_hi: np.ndarray
    spec_lower: np.ndarray  # (N, m): the original's spec-row lower bounds (0 where unknown)
    known: np.ndarray  # (N,) bool: whether the leaf has them

    @classmethod
    def of(cls, branches) -> "LeafArrays":
        """Every branch needs its layer bounds (:func:`verify.reuse.tree.has_leaf_bounds`)."""
        n_hidden = len(branches[0].layer_bounds)
        known = np.array([b.spec_lower is not None for b in branches], dtype=bool)
        m = next((len(b.spec_lower) for b in branches if b.spec_lower is not None), 0)
        spec = np.zeros((len(branches), m))
        if known.any():
            spec[known] = np.stack([b.spec_lower for b in branches if b.spec_lower is not None])
        return cls([np.stack([b.layer_bounds[k][0] for b in branches]) for k in range(n_hidden)],
                   [np.stack([b.layer_bounds[k][1] for b in branches]) for k in range(n_hidden)],
                   np.stack([b.lower for b in branches]), np.stack([b.upper for b in branches]),
                   spec, known)
