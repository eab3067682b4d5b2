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
from ..constraint_names import fact_dict, split_arrays
from ..search import RegionSearch, inherit_refuted
from ..threads import single_threaded
from ..verifier import Proof
from .proof import ProofBranch, ProofRecord, proof_tree


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
    return ProofRecord(network.digest(), prop.digest(), result.status, result.time_s,
                       regions=regions, network_name=network.name, property_name=prop.name)


def check_proof(network: Network, prop: Property, record: ProofRecord,
                options: VerifyOptions = VerifyOptions()) -> CheckOutcome:
    """Replay ``record`` on ``network`` for ``prop`` within ``options.timeout``."""
    t0 = time.monotonic()
    counts = [0, 0]
    try:
        if record.status is not Status.HOLDS:
            raise _Rejected(f"the record's verdict is {record.status.value!r}, not holds")
        if record.network != network.digest():
            raise _Rejected("the record belongs to another network")
        if record.property != prop.digest():
            raise _Rejected("the record belongs to another property")
        extra = set(record.regions) - set(range(len(prop.regions)))
        if extra:
            raise _Rejected(f"the record has regions {sorted(extra)} the property lacks")
        deadline = t0 + options.timeout
        single_threaded()
        for r, region in enumerate(prop.regions):
            branches = record.regions.get(r) or []
            if not branches:
                raise _Rejected(f"region {r} has no branches")
            _check_region(network, prop, r, branches, options, deadline, counts)
    except _Rejected as exc:
        return CheckOutcome(False, str(exc), counts[0], counts[1], time.monotonic() - t0)
    return CheckOutcome(True, None, counts[0], counts[1], time.monotonic() - t0)


def _check_region(network, prop, r, branches: list[ProofBranch], options, deadline, counts):
    """Replay region ``r``'s proof tree top-down, as the search built it: each
    node is bounded on its box and phase facts, intersected with its parent's
    layer bounds and linear spec bound (a child lies inside its parent); a node
    those close is done with its subtree, a leaf they leave open needs Z3.
    Where the leaves allow several input bisections at a node (the tree is not
    unique), the one whose halves bound best is replayed first."""
    region = prop.regions[r]
    n = network.n_inputs
    for i, b in enumerate(branches):
        lo, hi = np.asarray(b.lower, dtype=np.float64), np.asarray(b.upper, dtype=np.float64)
        if lo.shape != (n,) or hi.shape != (n,) or not (np.all(np.isfinite(lo))
                                                        and np.all(np.isfinite(hi))):
            raise _Rejected(f"region {r} branch {i}: its box is not {n} finite bounds")
    try:
        facts_of = [fact_dict(b.splits) for b in branches]
        for b in branches:
            split_arrays(b.splits, network.hidden_sizes)  # facts name existing neurons
        tiled = proof_tree(region, branches) is not None
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise _Rejected(f"region {r}: malformed ReLU split facts ({exc})") from None
    if not tiled:
        raise _Rejected(f"region {r}: the branches do not tile the region's box")
    replay = _Replay(network, region, r, branches, facts_of, options, deadline, counts)
    lo, hi = region.lower.astype(np.float64), region.upper.astype(np.float64)
    if not replay.node(lo, hi, {}, np.arange(len(branches)), None, None):
        raise _Rejected(replay.why or f"region {r}: the proof does not close on the network")


class _Replay:
    def __init__(self, network, region, r, branches, facts_of, options, deadline, counts):
        self.net, self.region, self.r = network, region, r
        self.sizes = network.hidden_sizes
        self.LO = np.stack([np.asarray(b.lower, dtype=np.float64) for b in branches])
        self.HI = np.stack([np.asarray(b.upper, dtype=np.float64) for b in branches])
        self.facts_of = facts_of
        self.options, self.deadline, self.counts = options, deadline, counts
        self.search = RegionSearch(network, region, r, options, deadline, Statistics())
        self.relu_split = any(facts_of)
        self.why: str | None = None

    def bound(self, boxes, facts, parent, spec, mode=None, alpha=None, done=None):
        """Bound boxes [(lo, hi)] (all with phase ``facts``) under one parent's bounds;
        ``done``: (refuted (n_conj,), spec row lower bounds (m,)) of the parent: its
        refuted conjunctions count as refuted on the boxes, and only the other rows are
        bounded, the rest keeping the parent's bounds -- as the search bounds a branch
        (the alpha steps' slopes serve the open rows alone; with every row the replay
        missed leaves the search closed by a margin of 1e-5)."""
        if time.monotonic() > self.deadline:
            raise _Rejected(f"the re-check ran out of time after {self.counts[0]} nodes")
        k = len(boxes)
        tlo = torch.from_numpy(np.stack([b[0] for b in boxes]))
        thi = torch.from_numpy(np.stack([b[1] for b in boxes]))
        sp = None
        if self.relu_split or not self.search.input_split:
            arr = _facts_arrays(facts, self.sizes)
            sp = [torch.from_numpy(np.repeat(a[None, :], k, axis=0)) for a in arr]
        fixed = None if parent is None or not self.sizes else [
            (torch.from_numpy(np.repeat(l[None, :], k, axis=0)),
             torch.from_numpy(np.repeat(u[None, :], k, axis=0))) for l, u in parent]
        inherited = None if spec is None else (
            torch.from_numpy(np.repeat(spec[0][None], k, axis=0)),
            torch.from_numpy(np.repeat(spec[1][None], k, axis=0)))
        self.counts[0] += k
        rows = None if done is None else self.search.rows_to_bound([done[0]] * k, [done[1]] * k)
        res, refuted, closed = self.search.bound_branches(tlo, thi, sp, fixed, alpha=alpha,
                                                          mode=mode, inherited=inherited, rows=rows)
        if parent is None and not facts and k == 1:
            # the root, as the search bounded it: its branches inherit the tightened bounds
            res, refuted, closed = self.search.tighten_root(tlo, thi, sp, (res, refuted, closed))
        if done is not None:
            inherit_refuted(refuted, closed, [done[0]] * k)
        return res, refuted, closed

    @staticmethod
    def row(res, i, sizes):
        return ([(res.lower[k][i].numpy(), res.upper[k][i].numpy()) for k in range(len(sizes))],
                (res.spec_coeffs[i].numpy(), res.spec_const[i].numpy()))

    def node(self, lo, hi, facts, idx, parent, spec, own=None, done=None) -> bool:
        """Whether the subtree of leaves ``idx`` at box [lo, hi] with ``facts``
        closes.  ``own``: this node's bound, when already computed (res, i, refuted, closed)."""
        if own is None:
            res, refuted, closed = self.bound([(lo, hi)], facts, parent, spec, done=done)
            own = (res, 0, refuted, closed)
        res, i, refuted, closed = own
        if closed[i]:
            return True
        layer_b, my_spec = self.row(res, i, self.sizes)
        LO, HI = self.LO[idx], self.HI[idx]
        same = np.flatnonzero((LO == lo).all(axis=1) & (HI == hi).all(axis=1))
        if any(self.facts_of[j] == facts for j in idx[same]):
            return self.leaf(lo, hi, facts, parent, spec, layer_b, refuted[i], int(idx[same][0]),
                             res.spec_lower[i].numpy())
        mid = (lo + hi) / 2
        left, right = HI <= mid, LO >= mid
        valid = np.flatnonzero(left.any(axis=0) & right.any(axis=0)
                               & (left.sum(axis=0) + right.sum(axis=0) == len(idx)))
        if len(valid):
            halves = []
            for d in valid:
                a_hi = hi.copy(); a_hi[d] = mid[d]
                b_lo = lo.copy(); b_lo[d] = mid[d]
                halves += [(lo, a_hi), (b_lo, hi)]
            cres, crefuted, cclosed = self.bound(halves, facts, layer_b, my_spec,
                                                 done=(refuted[i], res.spec_lower[i].numpy()))
            score = np.where(cclosed, np.inf, cres.spec_lower.numpy().min(axis=1))
            score = np.minimum(score, 1e30).reshape(len(valid), 2).sum(axis=1)
            for t in np.argsort(-score):
                d = valid[t]
                ok = all(self.node(*halves[2 * t + side], facts,
                                   idx[(left if side == 0 else right)[:, d]],
                                   layer_b, my_spec, (cres, 2 * t + side, crefuted, cclosed))
                         for side in (0, 1))
                if ok:
                    return True
            return False
        common = set.intersection(*(set(self.facts_of[j]) - set(facts) for j in idx))
        for neuron in sorted(common)[:1]:  # a ReLU split every leaf carries
            for phase in (1, -1):
                sub = np.array([j for j in idx if self.facts_of[j][neuron] == phase],
                               dtype=np.int64)
                if not self.node(lo, hi, {**facts, neuron: phase}, sub, layer_b, my_spec,
                                 done=(refuted[i], res.spec_lower[i].numpy())):
                    return False
            return True
        return False

    def leaf(self, lo, hi, facts, parent, spec, layer_b, refuted_row, index, known) -> bool:
        """A proof leaf the replayed bound left open: a plain CROWN bound with
        alpha steps (the search's root bound), then with as many steps as the search
        gives a fully split branch (the replay's steps need not end where the search's
        did, so a leaf the search closed by a small margin may need more), then Z3."""
        for steps in (max(self.options.alpha_iterations, 20), self.options.fixed_leaf_iterations):
            res, refuted, closed = self.bound([(lo, hi)], facts, parent, spec, mode="backward",
                                              alpha=steps, done=(refuted_row, known))
            if closed[0]:
                return True
            refuted_row = refuted_row | refuted[0]
        for j in np.flatnonzero(~refuted_row):
            if not _z3_closes(self.net, self.region, lo, hi, layer_b, int(j), self.options,
                              self.deadline, self.search.input_split):
                self.why = (f"region {self.r} branch {index} (conjunction {j}) does not close "
                            "on the network")
                return False
        self.counts[1] += 1
        return True


def _facts_arrays(facts: dict, sizes) -> list[np.ndarray]:
    arrays = [np.zeros(n, dtype=np.int8) for n in sizes]
    for (layer, neuron), phase in facts.items():
        arrays[layer][neuron] = phase
    return arrays


def _z3_closes(network, region, lo, hi, layer_b, j: int, options, deadline, input_split) -> bool:
    conj = region.unsafe[j]
    per_query = options.z3_input_query_timeout if input_split else options.z3_query_timeout
    for digits in options.z3_digits:
        left = deadline - time.monotonic()
        if left <= 0.05:
            return False
        q = encode(network, Branch(lo, hi, layer_b, conj.coeffs, conj.rhs), digits)
        ans = solve(q, None, timeout=min(per_query, left))
        if ans.status == "unsat":
            return True
    return False
