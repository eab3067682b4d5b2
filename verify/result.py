"""Typed verification results, serialisable to JSON.

Users hear ``holds`` / ``violated`` / ``unknown``, never sat/unsat.
"""
from __future__ import annotations

import builtins
import json
from dataclasses import asdict, dataclass, field
from enum import Enum

import numpy as np

from . import exit_codes


class Status(str, Enum):
    HOLDS = "holds"
    VIOLATED = "violated"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


#: CLI exit codes per status (all codes: :mod:`verify.exit_codes`).
EXIT_CODES = {s: exit_codes.of_status(s.value) for s in Status}


@dataclass(frozen=True)
class Counterexample:
    """An input inside the property's box whose float64 output is unsafe.

    Only ever built after the input was re-run through the concrete network.
    ``margin`` is the largest ``coeffs @ y - rhs`` of the violated conjunction
    (<= 0; how deep inside the unsafe set the output lies)."""

    input: tuple[float, ...]
    output: tuple[float, ...]
    region: int
    conjunction: int
    margin: float

    def to_dict(self) -> dict:
        return {"input": list(self.input), "output": list(self.output),
                "region": self.region, "conjunction": self.conjunction,
                "margin": self.margin}


@dataclass
class Statistics:
    """What the decision procedure did.  Work counts (branches, queries, ...)
    are summed over regions; the ReLU phase counts count each ReLU once:
    unstable when it is unstable at the root bound of any region, else by its
    phase at the first root bound (so they add up to at most ``n_relus``)."""

    n_relus: int = 0
    stable_active: int = 0
    stable_inactive: int = 0
    unstable: int = 0
    branches: int = 0
    bound_evaluations: int = 0
    attack_restarts: int = 0
    z3_queries: int = 0
    z3_time_s: float = 0.0
    closed_by_fields: int = 0  # regions the receptive-field bound proved
    core_size: int | None = None
    constraints_total: int | None = None

    def record_root(self, lowers, uppers) -> None:
        """Note the hidden-layer bounds of one region's root bound (numpy arrays)."""
        lo = np.concatenate([np.asarray(l).reshape(-1) for l in lowers]) if lowers else np.zeros(0)
        hi = np.concatenate([np.asarray(u).reshape(-1) for u in uppers]) if uppers else np.zeros(0)
        phase = np.where(lo >= 0, 1, np.where(hi <= 0, -1, 0)).astype(np.int8)
        seen = self.__dict__.get("_root_phase")  # not a field: never serialised
        if seen is not None and seen.shape == phase.shape:
            phase = np.where((seen == 0) | (phase == 0), 0, seen).astype(np.int8)
        self.__dict__["_root_phase"] = phase
        self.stable_active = int((phase > 0).sum())
        self.stable_inactive = int((phase < 0).sum())
        self.unstable = int((phase == 0).sum())


@dataclass
class VerificationResult:
    status: Status
    time_s: float
    method: str  # what decided it: bounds, attack, bab, z3, timeout, ...
    counterexample: Counterexample | None = None
    reason: str | None = None  # why unknown (or a note)
    network: str | None = None
    property: str | None = None
    statistics: Statistics = field(default_factory=Statistics)

    def __post_init__(self):
        self.status = Status(self.status)
        if self.status is Status.VIOLATED and self.counterexample is None:
            raise ValueError("a violated verdict must carry a confirmed counterexample")

    @builtins.property  # the field ``property`` shadows the builtin in this class body
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_dict(self) -> dict:
        return {
            "status": self.status.value,
            "time_s": round(self.time_s, 6),
            "method": self.method,
            "counterexample": self.counterexample.to_dict() if self.counterexample else None,
            "reason": self.reason,
            "network": self.network,
            "property": self.property,
            "statistics": asdict(self.statistics),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=_json_default)

    @classmethod
    def from_dict(cls, d: dict) -> "VerificationResult":
        """Inverse of :meth:`to_dict` (unknown statistics keys are ignored).

        Raises ``KeyError``/``TypeError``/``ValueError`` on a malformed dict."""
        cex = d.get("counterexample")
        if cex is not None:
            cex = Counterexample(
                input=tuple(float(v) for v in cex["input"]),
                output=tuple(float(v) for v in cex["output"]),
                region=int(cex["region"]), conjunction=int(cex["conjunction"]),
                margin=float(cex["margin"]))
        known = Statistics.__dataclass_fields__
        stats = Statistics(**{k: v for k, v in (d.get("statistics") or {}).items()
                              if k in known})
        return cls(status=Status(d["status"]), time_s=float(d["time_s"]),
                   method=str(d["method"]), counterexample=cex, reason=d.get("reason"),
                   network=d.get("network"), property=d.get("property"), statistics=stats)


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
