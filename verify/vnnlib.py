"""VNN-LIB 1.0 reader: turns a ``.vnnlib`` file into a :class:`Property`.

Supported subset (everything else is a :class:`PropertyError` naming the file,
the line and what was expected):

* comments ``;`` to the end of the line;
* ``(declare-const X_i Real)`` / ``(declare-const Y_j Real)``: the inputs must be
  ``X_0 .. X_{n-1}`` and the outputs ``Y_0 .. Y_{m-1}`` without gaps (any order
  in the file); a variable must be declared before it is used.  The harmless
  SMT-LIB commands ``check-sat``, ``get-model``, ``exit``, ``set-logic``,
  ``set-info`` and ``set-option`` are ignored;
* ``(assert F)`` with ``F`` one of ``(<= a b ...)``, ``(>= ...)``, ``(< ...)``,
  ``(> ...)``, ``(= ...)`` (chainable as in SMT-LIB), ``(and F ...)``,
  ``(or F ...)``, ``true``, ``false``;
* terms: variables, numerals (decimal or scientific, with an optional sign such
  as ``-0.5``), ``(+ t ...)``, ``(- t)``, ``(- t t ...)``, ``(* c t)`` /
  ``(* t c)`` with at most one non-constant factor and ``(/ t c)``.  Every atom
  must be linear.

Semantics.  The file states the *unsafe* (counterexample) condition: the
conjunction of all asserts.  It is converted to disjunctive normal form (at most
:data:`MAX_DNF_TERMS` terms).  In each term the atoms over inputs only must be
bounds on a single input; they are intersected into a box, and every input
needs a finite lower and upper bound.  Atoms over outputs only become rows of
``coeffs @ y <= rhs``; atoms over constants only are evaluated; an atom mixing
inputs and outputs is an error.  Terms with an empty box are unsatisfiable and
dropped.  Terms with the same box form one :class:`Region` whose unsafe set is
the disjunction of their output conjunctions; a term without output atoms makes
its whole box unsafe (a conjunction with zero rows).

**Strict comparisons are read as non-strict** (``<`` as ``<=``, ``>`` as
``>=``).  This only enlarges the unsafe set, so a "holds" verdict stays sound;
a counterexample found on the closure is checked on the network anyway.

Numerals are read as the nearest IEEE double, as other VNN-LIB tools do.
Linear arithmetic on them is exact (rationals); a derived input bound that is
not exactly a double (e.g. from ``(<= (* 3 X_0) 1)``) is rounded outward and a
derived right-hand side upward, so the box and the unsafe set never shrink.

This module parses commands, terms and formulas; the tokens and S-expressions are read
by :mod:`verify.vnnlib_sexpr`, the regions assembled by :mod:`verify.vnnlib_regions`.
"""
from __future__ import annotations

import gzip
import math
import re
from fractions import Fraction
from pathlib import Path

from .errors import PropertyError, ShapeMismatchError
from .properties import Property
from .vnnlib_regions import RegionAssembly
from .vnnlib_sexpr import _List, _Sym, read_sexprs

__all__ = ["MAX_DNF_TERMS", "check_fits", "load_vnnlib", "parse_vnnlib"]

#: Largest disjunctive normal form accepted (number of conjunctive terms).
MAX_DNF_TERMS = 10_000

_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_NUMERIC_LOOKING_RE = re.compile(r"[+-]?\.?\d")
_VAR_RE = re.compile(r"([XY])_(0|[1-9][0-9]*)\Z")
_IGNORED = frozenset({"check-sat", "get-model", "exit", "set-logic", "set-info", "set-option"})
_COMPARISONS = frozenset({"<=", ">=", "<", ">", "="})
_ONE = Fraction(1)


def _round_outward(value: Fraction, up: bool) -> float:
    """The double nearest to ``value`` on the side given by ``up``."""
    f = float(value)
    if Fraction(f) != value:
        if up and Fraction(f) < value:
            f = math.nextafter(f, math.inf)
        elif not up and Fraction(f) > value:
            f = math.nextafter(f, -math.inf)
    return f


class _Parser(RegionAssembly):
    """One parse of one VNN-LIB text."""

    def __init__(self, text: str, source: str, max_terms: int):
        self.text = text
        self.source = source
        self.max_terms = max_terms
        # variable name -> key; inputs are keys i >= 0, outputs ~j (< 0)
        self.vars: dict[str, int] = {}
        self.decl_line: dict[int, int] = {}
        # literal table: kind 0 = input bound, 1 = output row
        self.lit_kind: list[int] = []
        self.lit_var: list[int] = []
        self.lit_val: list[float] = []
        self.lit_upper: list[bool] = []
        self.lit_line: list[int] = []
        self.lit_row: dict[int, tuple[dict[int, float], float]] = {}
        self.n_asserts = 0

    # -- errors -------------------------------------------------------------
    def error(self, message: str, line: int | None, expected: str | None = None):
        return PropertyError(message, path=self.source, line=line, expected=expected)

    # -- lexing and S-expressions -------------------------------------------
    def read(self) -> list[_List]:
        """Tokenize and build the top-level S-expressions (iteratively)."""
        return read_sexprs(self.text, self.error)

    # -- commands -------------------------------------------------------------
    def run(self):
        dnfs: list[list[list[int]]] = []
        for cmd in self.read():
            items = cmd.items
            if not items or not isinstance(items[0], _Sym):
                raise self.error("expected a command", cmd.line,
                                 "(declare-const ...) or (assert ...)")
            name = items[0].text
            if name == "declare-const":
                self.declare(cmd)
            elif name == "assert":
                if len(items) != 2:
                    raise self.error(f"assert takes one formula, got {len(items) - 1}",
                                     cmd.line, "(assert F)")
                self.n_asserts += 1
                try:
                    dnfs.append(self.formula(items[1]))
                except RecursionError:
                    raise self.error("formula nested too deeply", cmd.line) from None
            elif name in _IGNORED:
                continue
            else:
                raise self.error(f"unsupported command {name!r}", cmd.line,
                                 "(declare-const ...) or (assert ...)")
        self.dnf = self.conjoin(dnfs, None)

    def declare(self, cmd: _List):
        items = cmd.items
        if len(items) != 3 or not all(isinstance(i, _Sym) for i in items[1:]):
            raise self.error("malformed declaration", cmd.line, "(declare-const X_i Real)")
        name, sort = items[1].text, items[2].text
        m = _VAR_RE.match(name)
        if m is None:
            raise self.error(f"unsupported variable name {name!r}", cmd.line,
                             "X_i for inputs or Y_j for outputs")
        if sort != "Real":
            raise self.error(f"variable {name} has sort {sort!r}", cmd.line, "sort Real")
        if name in self.vars:
            raise self.error(f"variable {name} declared twice (first at line "
                             f"{self.decl_line[self.vars[name]]})", cmd.line)
        idx = int(m.group(2))
        key = idx if m.group(1) == "X" else ~idx
        self.vars[name] = key
        self.decl_line[key] = cmd.line

    # -- terms ------------------------------------------------------------------
    def term(self, node) -> tuple[dict[int, Fraction], Fraction]:
        """A linear term as ({var key: coefficient}, constant), exact."""
        if isinstance(node, _Sym):
            t = node.text
            key = self.vars.get(t)
            if key is not None:
                return {key: _ONE}, Fraction(0)
            if _NUMBER_RE.match(t):
                v = float(t)
                if not math.isfinite(v):
                    raise self.error(f"bad number {t!r} (out of range)", node.line,
                                     "a finite number")
                return {}, Fraction(v)
            if t.lower().lstrip("+-") in ("nan", "inf", "infinity"):
                raise self.error(f"bad number {t!r} (not finite)", node.line,
                                 "a finite number such as -0.5 or 1e-3")
            if _NUMERIC_LOOKING_RE.match(t):
                raise self.error(f"bad number {t!r}", node.line,
                                 "a decimal or scientific number such as -0.5 or 1e-3")
            if _VAR_RE.match(t):
                raise self.error(f"unknown variable {t}", node.line,
                                 f"(declare-const {t} Real) before its first use")
            raise self.error(f"unknown variable {t}", node.line,
                             "a declared variable X_i / Y_j or a number")
        items = node.items
        if not items or not isinstance(items[0], _Sym):
            raise self.error("expected a term", node.line,
                             "a number, a variable or (+ ...), (- ...), (* ...), (/ ...)")
        op, args = items[0].text, items[1:]
        if op == "+":
            if not args:
                raise self.error("'+' needs at least one argument", node.line, "(+ t ...)")
            coeffs: dict[int, Fraction] = {}
            const = Fraction(0)
            for a in args:
                c, k = self.term(a)
                for v, x in c.items():
                    coeffs[v] = coeffs.get(v, 0) + x
                const += k
            return coeffs, const
        if op == "-":
            if not args:
                raise self.error("'-' needs at least one argument", node.line,
                                 "(- t) or (- t t ...)")
            c0, k0 = self.term(args[0])
            if len(args) == 1:
                return {v: -x for v, x in c0.items()}, -k0
            coeffs, const = dict(c0), k0
            for a in args[1:]:
                c, k = self.term(a)
                for v, x in c.items():
                    coeffs[v] = coeffs.get(v, 0) - x
                const -= k
            return coeffs, const
        if op == "*":
            if len(args) < 2:
                raise self.error("'*' needs at least two arguments", node.line, "(* c t)")
            scale = _ONE
            var_part = None
            for a in args:
                c, k = self.term(a)
                if any(c.values()):
                    if var_part is not None:
                        raise self.error("nonlinear term: product of two variable terms",
                                         node.line, "at most one non-constant factor")
                    var_part = (c, k)
                else:
                    scale *= k
            if var_part is None:
                return {}, scale
            c, k = var_part
            return {v: x * scale for v, x in c.items()}, k * scale
        if op == "/":
            if len(args) < 2:
                raise self.error("'/' needs at least two arguments", node.line, "(/ t c)")
            coeffs, const = self.term(args[0])
            for a in args[1:]:
                c, k = self.term(a)
                if any(c.values()):
                    raise self.error("nonlinear term: division by a variable term", a.line,
                                     "a constant divisor")
                if k == 0:
                    raise self.error("division by zero", node.line, "a non-zero divisor")
                coeffs = {v: x / k for v, x in coeffs.items()}
                const = const / k
            return coeffs, const
        raise self.error(f"unsupported operator {op!r} in a term", node.line,
                         "+, -, * or / with linear arguments")

    # -- formulas -> DNF ------------------------------------------------------
    def formula(self, node) -> list[list[int]]:
        """DNF of a formula: a list of terms, each a list of literal ids."""
        if isinstance(node, _Sym):
            if node.text == "true":
                return [[]]
            if node.text == "false":
                return []
            raise self.error(f"expected a formula, got {node.text!r}", node.line,
                             "(<= a b), (>= a b), (= a b), (and ...), (or ...)")
        items = node.items
        if not items or not isinstance(items[0], _Sym):
            raise self.error("expected a formula", node.line,
                             "(<= a b), (>= a b), (= a b), (and ...), (or ...)")
        op, args = items[0].text, items[1:]
        if op == "and":
            return self.conjoin([self.formula(a) for a in args], node.line)
        if op == "or":
            out: list[list[int]] = []
            for a in args:
                out.extend(self.formula(a))
                if len(out) > self.max_terms:
                    raise self.error(f"disjunctive normal form exceeds {self.max_terms} terms",
                                     node.line, "a smaller disjunction")
            return out
        if op in _COMPARISONS:
            if len(args) < 2:
                raise self.error(f"'{op}' needs at least two arguments", node.line,
                                 f"({op} a b)")
            terms = [self.term(a) for a in args]
            lits: list[int] = []
            for a, b in zip(terms, terms[1:]):
                if op in ("<=", "<"):
                    pairs = [(a, b)]
                elif op in (">=", ">"):
                    pairs = [(b, a)]
                else:
                    pairs = [(a, b), (b, a)]
                for lo_side, hi_side in pairs:  # lo_side <= hi_side
                    lit = self.atom(lo_side, hi_side, node.line)
                    if lit is False:
                        return []
                    if lit is not True:
                        lits.append(lit)
            return [lits]
        if op == "not":
            raise self.error("negation is not supported", node.line,
                             "a formula in negation normal form (<=, >=, and, or)")
        raise self.error(f"unsupported operator {op!r} in a formula", node.line,
                         "<=, >=, <, >, =, and, or")

    def atom(self, a, b, line: int):
        """Literal id for ``a <= b``; True/False for a constant atom."""
        coeffs = dict(a[0])
        for v, x in b[0].items():
            coeffs[v] = coeffs.get(v, 0) - x
        coeffs = {v: x for v, x in coeffs.items() if x != 0}
        const = a[1] - b[1]  # sum coeffs*v + const <= 0
        if not coeffs:
            return const <= 0
        has_in = any(v >= 0 for v in coeffs)
        has_out = any(v < 0 for v in coeffs)
        if has_in and has_out:
            raise self.error("atom mixes input and output variables", line,
                             "constraints over inputs only or outputs only")
        lit = len(self.lit_kind)
        if has_in:
            if len(coeffs) != 1:
                names = ", ".join(f"X_{v}" for v in sorted(coeffs))
                raise self.error(f"only box constraints on inputs are supported "
                                 f"(this atom relates {names})", line,
                                 "a bound on a single input such as (<= X_0 0.5)")
            (v, c), = coeffs.items()
            upper = c > 0  # c*x <= -const
            self.lit_kind.append(0)
            self.lit_var.append(v)
            self.lit_val.append(_round_outward(-const / c, up=upper))
            self.lit_upper.append(upper)
            self.lit_line.append(line)
        else:
            row = {~v: float(x) for v, x in coeffs.items()}
            self.lit_kind.append(1)
            self.lit_var.append(-1)
            self.lit_val.append(0.0)
            self.lit_upper.append(False)
            self.lit_line.append(line)
            self.lit_row[lit] = (row, _round_outward(-const, up=True))
        return lit

    def conjoin(self, dnfs: list[list[list[int]]], line: int | None) -> list[list[int]]:
        common: list[int] = []
        multi: list[list[list[int]]] = []
        for d in dnfs:
            if not d:
                return []
            if len(d) == 1:
                common.extend(d[0])
            else:
                multi.append(d)
        size = 1
        for d in multi:
            size *= len(d)
            if size > self.max_terms:
                raise self.error(f"disjunctive normal form exceeds {self.max_terms} terms",
                                 line, "fewer or smaller disjunctions")
        terms = [common]
        for d in multi:
            terms = [t + u for t in terms for u in d]
        return terms


def parse_vnnlib(text: str, source: str = "<string>", n_inputs: int | None = None,
                 n_outputs: int | None = None, *, name: str | None = None,
                 max_terms: int = MAX_DNF_TERMS) -> Property:
    """Parse VNN-LIB text into a :class:`Property` (see the module docstring).

    ``n_inputs`` / ``n_outputs`` (usually the network's sizes) are checked
    against the declarations; a difference raises :class:`ShapeMismatchError`.
    A file that declares no output variables (a pure input region) takes
    ``n_outputs`` from the caller, or 0 when none is given; its regions are
    then unsafe as a whole, which is what the VNN-LIB query means.
    """
    p = _Parser(text, source, max_terms)
    p.run()
    n_in, n_out = p.sizes()
    if n_inputs is not None and n_inputs != n_in:
        raise ShapeMismatchError(f"the property declares {n_in} inputs but the network has "
                                 f"{n_inputs}", path=source)
    if n_outputs is not None and n_outputs != n_out:
        if n_out == 0:
            n_out = n_outputs
        else:
            raise ShapeMismatchError(f"the property declares {n_out} outputs but the network "
                                     f"has {n_outputs}", path=source)
    regions = p.regions(n_in, n_out)
    if name is None:
        name = Path(source).stem if source != "<string>" else "vnnlib"
        if name.endswith(".vnnlib"):  # "x.vnnlib.gz"
            name = name[: -len(".vnnlib")]
    return Property(regions, n_out, name=name, source=source)


def load_vnnlib(path, n_inputs: int | None = None, n_outputs: int | None = None, *,
                max_terms: int = MAX_DNF_TERMS) -> Property:
    """Read a ``.vnnlib`` (or ``.vnnlib.gz``) file; see :func:`parse_vnnlib`."""
    p = Path(path)
    source = str(path)
    try:
        if p.suffix == ".gz":
            with gzip.open(p, "rt", encoding="utf-8") as f:
                text = f.read()
        else:
            text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PropertyError("no such file", path=source) from None
    except IsADirectoryError:
        raise PropertyError("is a directory, not a VNN-LIB file", path=source) from None
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise PropertyError(f"cannot read the file: {e}", path=source) from None
    return parse_vnnlib(text, source, n_inputs, n_outputs, max_terms=max_terms)


def check_fits(network, prop: Property, path=None) -> None:
    """Raise :class:`ShapeMismatchError` unless ``network`` and ``prop`` agree on sizes."""
    where = str(path) if path is not None else prop.source
    for what, net_n, prop_n in (("inputs", network.n_inputs, prop.n_inputs),
                                ("outputs", network.n_outputs, prop.n_outputs)):
        if net_n != prop_n:
            raise ShapeMismatchError(f"the property has {prop_n} {what} but the network has "
                                     f"{net_n}", path=where)
