"""The typed results of proof reuse: a variant's verdict with what reuse did
(:class:`ReuseStats`), JSON-serialisable."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..result import Counterexample, Statistics, Status, VerificationResult


@dataclass
class ReuseStats:
    core_size: int = 0  # names in the original proof's cores (all branches)
    constraints_total: int = 0  # tracked constraints of the queries those cores came from
    cores: int = 0  # cores in the original proof
    cores_minimal: int = 0
    reused: int = 0  # core names whose constraint is unchanged in the variant
    revalued: int = 0  # ... whose weights, bias or bound values changed
    dropped: int = 0  # ... of removed neurons
    branches: int = 0  # branches of the original proof
    closed_by_bounds: int = 0  # branches the variant's own bounds closed
    closed_by_bound_core: int = 0  # ... back-substituting only a bound core's neurons
    closed_by_difference: int = 0  # ... by the original's bounds moved by the change
    closed_by_difference_backsub: int = 0  # ... of which over the moved intermediate bounds
    closed_by_symbolic: int = 0  # ... of which by the symbolic bound of the change (tier 0)
    # ... of which below a coarser node of the original's input-bisection tree that the
    # variant's bound closed (verify.reuse.bisection_walk)
    closed_by_ancestor: int = 0
    closed_at_root: int = 0  # regions of a split proof closed by one bound of the region
    closed_by_core: int = 0  # branch conjunctions closed by a reused (refined) core
    closed_by_full: int = 0  # ... by the full query of the branch
    closed_by_split: int = 0  # branches re-proved by branch and bound on the variant
    deepened: int = 0  # leaves of the original's proof split further on it (verify.reuse.deepen)
    # no root bound and attack up front: a near copy (ReuseOptions.attack_skip_below)
    attack_skipped: bool = False
    cores_used: int = 0
    refinements: int = 0
    z3_queries: int = 0
    fallback: bool = False
    fallback_reason: str | None = None
    original_status: Status | None = None  # the original proof record's verdict
    original_time_s: float = 0.0  # deciding the original (the search that built its proof)
    original_core_time_s: float = 0.0  # the proof's cores (at build and made on demand since)
    # building the original's proof in all: original_time_s + original_core_time_s (the
    # end-to-end accounting charges it once per original, not per variant)
    original_proof_s: float = 0.0
    original_name: str = ""  # the original network
    proof_from_store: bool = False
    change_map: str = ""  # how the variant's neurons were related: change record, position, matched by weights
    # equivalence transfer (verify.reuse.transfer): tried, boxes bounded, the original's
    # smallest margin and the largest certified deviation along the refuting rows
    transfer_tried: bool = False
    transfer_boxes: int = 0
    transfer_margin: float | None = None
    transfer_deviation: float | None = None


#: methods that proved a variant from the original's margin plus a certified bound of the
#: variant's change along the property's rows (transfer by certified deviation): the
#: transfer module (:mod:`verify.reuse.transfer`, boxes of a margin proof, any variant)
#: and the difference tier (:mod:`verify.reuse.difference`, the original's bounds on
#: the proof's boxes or the root moved by the change of a related variant; tried first)
DEVIATION_TRANSFER_METHODS = ("equivalence-transfer", "reuse-difference",
                              "reuse-difference-root")


@dataclass
class ReuseResult:
    status: Status
    time_s: float
    method: str  # equivalence-transfer | reuse-* | scratch-* | attack ...
    counterexample: Counterexample | None = None
    reason: str | None = None
    network: str | None = None
    property: str | None = None
    reuse: ReuseStats = field(default_factory=ReuseStats)
    scratch_status: Status | None = None
    scratch_time_s: float | None = None

    def __post_init__(self):
        self.status = Status(self.status)
        if self.status is Status.VIOLATED and self.counterexample is None:
            raise ValueError("a violated verdict must carry a confirmed counterexample")
        if self.scratch_status is not None:
            self.scratch_status = Status(self.scratch_status)

    def to_dict(self) -> dict:
        reuse = asdict(self.reuse)
        original = self.reuse.original_status
        reuse["original_status"] = "" if original is None else Status(original).value  # "": unset
        d = {"status": self.status.value, "time_s": round(self.time_s, 6), "method": self.method,
             "counterexample": self.counterexample.to_dict() if self.counterexample else None,
             "reason": self.reason, "network": self.network, "property": self.property,
             "reuse": reuse}
        if self.scratch_status is not None:
            d["scratch_status"] = Status(self.scratch_status).value
            d["scratch_time_s"] = round(self.scratch_time_s, 6)
        return d

    def to_verification_result(self) -> VerificationResult:
        """The plain verdict (what a proof cache or a pytest report holds); the
        reuse statistics become the note and the core size."""
        s = self.reuse
        note = (f"proof reuse: {s.reused} core constraints reused, {s.revalued} re-valued, "
                f"{s.dropped} dropped, {s.refinements} refinements"
                + (f"; fallback: {s.fallback_reason}" if s.fallback else ""))
        stats = Statistics(branches=s.branches, z3_queries=s.z3_queries,
                           core_size=s.core_size, constraints_total=s.constraints_total)
        return VerificationResult(self.status, self.time_s, self.method, self.counterexample,
                                  self.reason or note, self.network, self.property, stats)
