"""Minimal unsat cores of an encoded branch query.

:func:`extract_core` asks Z3 for a core over the query's tracked names (with
``core.minimize`` on), shrinks it by deletion -- drop one element, re-solve the
rest; an UNSAT answer replaces the core by the (smaller) new one, SAT keeps
the element -- and finally re-checks the result on its own.  The deletion
pass is budgeted in time: when the budget runs out (or a check answers
unknown) the core is returned as it is, flagged ``minimal=False``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import z3

from ..encode import Query, solve


@dataclass
class Core:
    names: tuple[str, ...]
    minimal: bool  # no single element can be dropped (every deletion check said SAT)
    checked: bool  # the final core alone was re-solved UNSAT
    total: int = 0  # tracked constraints in the query the core came from
    solve_s: float = 0.0  # first solve
    minimise_s: float = 0.0  # deletion pass
    check_s: float = 0.0  # final re-check
    checks: int = 0  # solver calls made by the deletion pass
    digits: int | None = None  # coefficient rounding of the query (None: exact)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "minimal": self.minimal, "checked": self.checked,
                "total": self.total, "solve_s": round(self.solve_s, 6),
                "minimise_s": round(self.minimise_s, 6), "check_s": round(self.check_s, 6),
                "checks": self.checks, "digits": self.digits}

    @classmethod
    def from_dict(cls, d: dict) -> "Core":
        return cls(tuple(str(n) for n in d["names"]), bool(d["minimal"]), bool(d["checked"]),
                   int(d.get("total", 0)), float(d.get("solve_s", 0.0)),
                   float(d.get("minimise_s", 0.0)), float(d.get("check_s", 0.0)),
                   int(d.get("checks", 0)),
                   None if d.get("digits") is None else int(d["digits"]))


def _set_minimize(query: Query) -> None:
    try:
        query.solver.set("core.minimize", True)
    except z3.Z3Exception:  # pragma: no cover - older z3 without the parameter
        pass


def minimise(query: Query, core: list[str], budget: float, timeout: float = 5.0
             ) -> tuple[list[str], bool, int]:
    """Deletion-based minimisation of an UNSAT subset ``core`` of the query.

    Returns (core, minimal, number of checks).  Elements found necessary stay
    necessary when the core shrinks (any subset of a SAT set is SAT), so one
    pass over the elements suffices."""
    deadline = time.monotonic() + budget
    core = list(core)
    i, checks, undecided = 0, 0, False
    while i < len(core):
        left = deadline - time.monotonic()
        if left <= 0:
            return core, False, checks
        trial = core[:i] + core[i + 1:]
        ans = solve(query, trial, timeout=min(timeout, left))
        checks += 1
        if ans.status == "unsat":
            keep = set(ans.core)
            core = [n for n in core if n in keep]  # element i is gone; i now points at the next
        else:
            undecided |= ans.status != "sat"
            i += 1
    return core, not undecided, checks


def extract_core(query: Query, names: list[str] | None = None, timeout: float = 10.0,
                 budget: float = 5.0) -> Core | None:
    """A minimal (when the budget allows) unsat core of ``names`` (all when None),
    or ``None`` when that set is not shown UNSAT within ``timeout``."""
    _set_minimize(query)
    total = len(query.constraints if names is None else names)
    ans = solve(query, names, timeout=timeout)
    if ans.status != "unsat":
        return None
    t0 = time.monotonic()
    core, minimal, checks = minimise(query, list(ans.core), budget, min(timeout, max(budget, 0.1)))
    t1 = time.monotonic()
    final = solve(query, core, timeout=timeout)
    t2 = time.monotonic()
    if final.status != "unsat":  # cannot happen for a sound solver; keep the first core
        core, minimal = list(ans.core), False
        final = solve(query, core, timeout=timeout)
    return Core(tuple(core), minimal, final.status == "unsat", total, ans.time_s,
                t1 - t0, t2 - t1, checks)
