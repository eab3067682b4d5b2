"""The assembly step of the VNN-LIB reader (:mod:`verify.vnnlib`): the declared input and
output counts, and the regions of a property from the parsed disjunctive normal form (the
input literals of a term intersected into a box, its output literals the rows of a
conjunction, terms with one box grouped into one :class:`Region`).

:class:`RegionAssembly` is a mixin of the parser: it reads the parser's declarations
(``vars``, ``decl_line``), literal table (``lit_*``), ``dnf`` and ``error``."""
from __future__ import annotations

import numpy as np

from .properties import Conjunction, Region


class RegionAssembly:
    """Sizes and regions of one parsed VNN-LIB text."""

    def sizes(self) -> tuple[int, int]:
        n_in = self._count(lambda k: k >= 0, lambda k: k, "X", "input")
        n_out = self._count(lambda k: k < 0, lambda k: ~k, "Y", "output")
        if n_in == 0:
            raise self.error("no input variables declared", None, "(declare-const X_0 Real)")
        return n_in, n_out

    def _count(self, select, index, letter: str, what: str) -> int:
        idx = sorted(index(k) for k in self.vars.values() if select(k))
        for expect, got in zip(range(len(idx)), idx):
            if got != expect:
                key = got if letter == "X" else ~got
                raise self.error(f"{what} variables must be {letter}_0..{letter}_{{n-1}} "
                                 f"without gaps: {letter}_{expect} is not declared",
                                 self.decl_line[key], f"(declare-const {letter}_{expect} Real)")
        return len(idx)

    def regions(self, n_in: int, n_out: int) -> tuple[Region, ...]:
        kind = np.asarray(self.lit_kind, dtype=np.int8)
        var = np.asarray(self.lit_var, dtype=np.int64)
        val = np.asarray(self.lit_val, dtype=np.float64)
        upper = np.asarray(self.lit_upper, dtype=bool)
        groups: dict[bytes, tuple[np.ndarray, np.ndarray, list[Conjunction]]] = {}
        empty = None  # the first empty box: (input, its literals)
        for term in self.dnf:
            ids = np.asarray(term, dtype=np.int64)
            lo = np.full(n_in, -np.inf)
            hi = np.full(n_in, np.inf)
            if ids.size:
                b = ids[kind[ids] == 0]
                ub = b[upper[b]]
                lb = b[~upper[b]]
                np.minimum.at(hi, var[ub], val[ub])
                np.maximum.at(lo, var[lb], val[lb])
            if np.any(lo > hi):
                if empty is None:
                    empty = (int(np.flatnonzero(lo > hi)[0]), ids)
                continue  # empty box: this disjunct is unsatisfiable
            for arr, side in ((lo, "lower"), (hi, "upper")):
                bad = np.flatnonzero(~np.isfinite(arr))
                if bad.size:
                    i = int(bad[0])
                    raise self.error(f"input X_{i} has no {side} bound", self.decl_line[i],
                                     f"an assert bounding X_{i} from "
                                     f"{'below' if side == 'lower' else 'above'}")
            row_ids = list(dict.fromkeys(int(i) for i in ids if kind[i] == 1))
            coeffs = np.zeros((len(row_ids), n_out))
            rhs = np.zeros(len(row_ids))
            for r, lit in enumerate(row_ids):
                row, bound = self.lit_row[lit]
                for j, x in row.items():
                    coeffs[r, j] = x
                rhs[r] = bound
            key = lo.tobytes() + hi.tobytes()
            if key not in groups:
                groups[key] = (lo, hi, [])
            groups[key][2].append(Conjunction(coeffs, rhs))
        if not groups:
            i, ids = empty if empty is not None else (None, None)
            if i is None:  # pragma: no cover - every disjunct is a term
                raise self.error("the constraints are unsatisfiable", None,
                                 "at least one non-empty input box")
            mine = [k for k in ids if kind[k] == 0 and var[k] == i]
            low = max((k for k in mine if not upper[k]), key=lambda k: val[k])
            high = min((k for k in mine if upper[k]), key=lambda k: val[k])
            raise self.error(f"input X_{i} has lower bound {val[low]:g} (line "
                             f"{self.lit_line[low]}) above its upper bound {val[high]:g} "
                             f"(line {self.lit_line[high]}): the input box is empty, the constraints "
                             "are unsatisfiable",
                             self.lit_line[high], f"lower <= upper for X_{i}")
        return tuple(Region(lo, hi, tuple(cs)) for lo, hi, cs in groups.values())
