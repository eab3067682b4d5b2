"""Closing one branch conjunction of a proof on a variant with Z3: the
original's core re-encoded with the variant's constraints, refined with the
constraints a spurious model violates, then the branch's full query (a mixin
of the reuser in :mod:`verify.reuse.reverify`)."""
from __future__ import annotations

import z3

from ..attack import confirm_batch
from ..encode import Branch, encode, solve
from ..properties import Region
from .proof import ProofBranch


class CoreChecks:
    """Needs ``net``, ``cmap``, ``opt``, ``ropt``, ``stats`` and ``left()``."""

    def z3_branch(self, region: Region, r: int, b: ProofBranch, lb, j: int, unstable: int):
        """"unsat", a confirmed counterexample, or None (not decided; always for a graph
        network: its leaves are closed by bounds or split further, not sent to Z3)."""
        if not hasattr(self.net, "affines"):
            return None
        conj = region.unsafe[j]
        core = b.cores.get(j)
        full_ok = unstable <= max(self.opt.z3_max_unstable, self.ropt.core_max_unstable)
        if core is None and not full_ok:
            return None  # no core and a full query this large rarely finishes: split instead
        names = None
        if core is not None:
            names = []
            for n in core.names:
                m = self.cmap.map_name(n)
                if m is not None and m not in names:
                    names.append(m)
        facts = self.cmap.map_splits(b.splits)  # the branch's splits, on the variant's neurons
        for digits in self.opt.z3_digits:
            q = encode(self.net, Branch(b.lower, b.upper, lb, conj.coeffs, conj.rhs, facts), digits)
            spurious = False
            if names is not None:
                self.stats.cores_used += 1
                current = [n for n in names if n in q.constraints]
                for _ in range(self.ropt.refine_rounds + 1):
                    if self.left() <= 0.05:
                        return None
                    ans = solve(q, current, timeout=min(self.opt.z3_query_timeout, self.left()))
                    self.stats.z3_queries += 1
                    if ans.status == "unsat":
                        self.stats.closed_by_core += 1
                        return "unsat"
                    if ans.status != "sat":
                        break
                    cex = confirm_batch(self.net, region, r, ans.model_input[None, :])
                    if cex is not None:
                        return cex
                    extra = self.violated(q, current)
                    if not extra:  # the model meets every constraint: rounding slack
                        spurious = True
                        break
                    current += extra
                    names += [n for n in extra if n not in names]
                    self.stats.refinements += 1
            if spurious:
                continue
            if not full_ok or self.left() <= 0.05:
                return None
            ans = solve(q, None, timeout=min(self.opt.z3_query_timeout, self.left()))
            self.stats.z3_queries += 1
            if ans.status == "unsat":
                self.stats.closed_by_full += 1
                return "unsat"
            if ans.status != "sat":
                return None
            cex = confirm_batch(self.net, region, r, ans.model_input[None, :])
            if cex is not None:
                return cex
        return None

    def violated(self, q, asserted: list[str]) -> list[str]:
        """The variant's constraints (not yet asserted) that the last model violates;
        without a model, those of the neurons in the affected region."""
        have = set(asserted)
        try:
            model = q.solver.model()
            return [n for n, c in q.constraints.items()
                    if n not in have and z3.is_false(model.eval(c, model_completion=True))]
        except z3.Z3Exception:
            return [n for n in self.cmap.affected_names(q.constraints) if n not in have]
