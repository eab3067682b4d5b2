"""Re-checking a stored proof on its network: a certificate check, no search.

A ``holds`` read from a proof store or a pytest cache is untrusted input.  It
is accepted only after :func:`check_proof` replays its proof tree on the
network: the branches must tile every region's box (:func:`~.proof.covers`),
and each branch must close again with the network's own bounds on the branch
(its box and ReLU phase facts), or -- for a branch the bounds leave open --
with an exact Z3 query of that branch.  Nothing is split and nothing searched,
so a re-check costs one batched bound per ``batch_size`` branches; a proof
that needs more is rejected and the property is proved again.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..encode import Branch, encode, solve
from ..network import Network
from ..options import VerifyOptions
from ..properties import Property
from ..result import Statistics, Status, VerificationResult
from ..search import RegionSearch, split_arrays
from ..verifier import Proof
from .proof import ProofBranch, ProofRecord


@dataclass(frozen=True)
class CheckOutcome:
    ok: bool
    reason: str | None  # why the proof was rejected
    branches: int  # branches replayed
    by_z3: int  # ... of which closed by an exact Z3 query
    time_s: float

    def to_dict(self) -> dict:
        return {"ok": self.ok, "reason": self.reason, "branches": self.branches,
                "by_z3": self.by_z3, "time_s": round(self.time_s, 6)}


class _Rejected(Exception):
    pass


def record_of(network: Network, prop: Property, result: VerificationResult,
              proof: Proof) -> ProofRecord | None:
    """The re-checkable proof record of a ``holds`` found by ``verify_property``
    with ``proof`` recorded (None for any other verdict)."""
    if result.status is not Status.HOLDS:
        return None
    regions = {r: [ProofBranch(np.asarray(l.lo, dtype=np.float64),
                               np.asarray(l.hi, dtype=np.float64), tuple(l.splits),
                               l.method, l.depth) for l in leaves]
               for r, leaves in proof.leaves.items()}
    return ProofRecord(network.digest(), prop.digest(), result.status.value, result.time_s,
                       regions=regions, network_name=network.name, property_name=prop.name)


def check_proof(network: Network, prop: Property, record: ProofRecord,
                options: VerifyOptions = VerifyOptions()) -> CheckOutcome:
    """Replay ``record`` on ``network`` for ``prop`` within ``options.timeout``."""
    t0 = time.monotonic()
    counts = [0, 0]
    try:
        if record.status != Status.HOLDS.value:
            raise _Rejected(f"the record's verdict is {record.status!r}, not holds")
        if record.network != network.digest():
            raise _Rejected("the record belongs to another network")
        if record.property != prop.digest():
            raise _Rejected("the record belongs to another property")
        extra = set(record.regions) - set(range(len(prop.regions)))
        if extra:
            raise _Rejected(f"the record has regions {sorted(extra)} the property lacks")
        deadline = t0 + options.timeout
        torch.set_num_threads(1)
        for r, region in enumerate(prop.regions):
            branches = record.regions.get(r) or []
            if not branches:
                raise _Rejected(f"region {r} has no branches")
            _check_region(network, prop, r, branches, options, deadline, counts)
    except _Rejected as exc:
        return CheckOutcome(False, str(exc), counts[0], counts[1], time.monotonic() - t0)
    return CheckOutcome(True, None, counts[0], counts[1], time.monotonic() - t0)


def _check_region(network, prop, r, branches: list[ProofBranch], options, deadline, counts):
    region = prop.regions[r]
    n = network.n_inputs
    for i, b in enumerate(branches):
        lo, hi = np.asarray(b.lower, dtype=np.float64), np.asarray(b.upper, dtype=np.float64)
        if lo.shape != (n,) or hi.shape != (n,) or not (np.all(np.isfinite(lo))
                                                        and np.all(np.isfinite(hi))):
            raise _Rejected(f"region {r} branch {i}: its box is not {n} finite bounds")
    try:
        splits = [split_arrays(b.splits, network.hidden_sizes) for b in branches]
        from .proof import covers
        tiled = covers(region, branches)
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise _Rejected(f"region {r}: malformed ReLU split facts ({exc})") from None
    if not tiled:
        raise _Rejected(f"region {r}: the branches do not tile the region's box")
    search = RegionSearch(network, region, r, options, deadline, Statistics())
    relu_split = any(b.splits for b in branches)
    step = max(1, options.batch_size)
    for s in range(0, len(branches), step):
        if time.monotonic() > deadline:
            raise _Rejected(f"the re-check ran out of time after {counts[0]} branches")
        idx = range(s, min(len(branches), s + step))
        tlo = torch.from_numpy(np.stack([branches[i].lower for i in idx]).astype(np.float64))
        thi = torch.from_numpy(np.stack([branches[i].upper for i in idx]).astype(np.float64))
        sp = None if not relu_split else [
            torch.from_numpy(np.stack([splits[i][k] for i in idx]))
            for k in range(len(network.hidden_sizes))]
        res, refuted, closed = search.bound_branches(tlo, thi, sp, None)
        counts[0] += len(idx)
        for b_i, i in enumerate(idx):
            if closed[b_i]:
                continue
            layer_b = [(res.lower[k][b_i].numpy(), res.upper[k][b_i].numpy())
                       for k in range(len(network.hidden_sizes))]
            for j in np.flatnonzero(~refuted[b_i]):
                if not _z3_closes(network, region, branches[i], layer_b, int(j), options,
                                  deadline):
                    raise _Rejected(f"region {r} branch {i} (conjunction {j}) does not close "
                                    "on the network")
            counts[1] += 1


def _z3_closes(network, region, b: ProofBranch, layer_b, j: int, options, deadline) -> bool:
    conj = region.unsafe[j]
    for digits in options.z3_digits:
        left = deadline - time.monotonic()
        if left <= 0.05:
            return False
        q = encode(network, Branch(b.lower, b.upper, layer_b, conj.coeffs, conj.rhs), digits)
        ans = solve(q, None, timeout=min(options.z3_query_timeout, left))
        if ans.status == "unsat":
            return True
    return False
