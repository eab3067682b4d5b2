"""Z3 encoding of one branch as tracked, structurally named assertions.

Names: :mod:`verify.constraint_names` (``in.{i}.box``, ``L{k}.N{i}.affine`` -- within a
proven rounding slack when coefficients are rounded --, ``.relu``, ``.bounds``,
``.inactive``, ``out.{j}.affine``, ``spec.{r}``).

Stable-inactive neurons are left out (their activation is the constant 0) and
stable-active neurons are used linearly (a = z); both facts hold for every
input of the branch.  Leaving constraints out only weakens the query, so UNSAT
stays a sound ``holds``; but a model may then lie outside the branch (a
spurious SAT).  A branch's ReLU split facts (``Branch.splits``) close that gap
for the neurons it split: active ones keep ``l >= 0`` in their bounds, inactive
ones get their pre-activation asserted ``<= 0``, so a fully split branch is an
exact linear program.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import z3

from .network import Network
from .constraint_names import input_name, neuron_name, output_name, spec_name, split_arrays


def _rational(v: float, digits: int | None) -> Fraction:
    if digits is None:
        return Fraction(float(v))
    scale = 10 ** digits
    scaled = float(v) * scale
    if not math.isfinite(scaled):  # too large to round at this scale: exact instead
        return Fraction(float(v))  # (raises for NaN/Inf, which loaders reject)
    return Fraction(int(round(scaled)), scale)


def _round_up(v: float) -> float:
    return float(v) * (1.0 + 1e-9) + 1e-300 if v > 0 else 0.0


@dataclass
class Branch:
    """What the encoder needs of a branch: its box, the hidden-layer bounds
    (numpy, one (lower, upper) pair per hidden layer) and the unsafe rows."""

    lower: np.ndarray
    upper: np.ndarray
    layer_bounds: list[tuple[np.ndarray, np.ndarray]]
    coeffs: np.ndarray  # (m, n_out)
    rhs: np.ndarray  # (m,)
    splits: tuple[str, ...] = ()  # the branch's ReLU phase facts, e.g. "L1.N7.inactive"


@dataclass
class Query:
    ctx: z3.Context
    solver: z3.Solver
    inputs: list
    constraints: dict[str, z3.BoolRef] = field(default_factory=dict)
    digits: int | None = None


def encode(network: Network, branch: Branch, digits: int | None = None) -> Query:
    """Encode the branch; coefficients rounded to ``digits`` decimals (with a
    sound slack per neuron) or exact when ``digits`` is None.  Quantized layers
    are always encoded exactly with their integer weights."""
    ctx = z3.Context()
    solver = z3.SolverFor("QF_LRA", ctx=ctx)
    cons: dict[str, z3.BoolRef] = {}

    def R(v: Fraction):
        return z3.RealVal(f"{v.numerator}/{v.denominator}", ctx)

    n0 = network.n_inputs
    xs = [z3.Real(f"x{i}", ctx) for i in range(n0)]
    for i in range(n0):
        cons[input_name(i)] = z3.And(xs[i] >= R(Fraction(float(branch.lower[i]))),
                                     xs[i] <= R(Fraction(float(branch.upper[i]))), ctx)
    acts = list(xs)  # z3 terms (or None for constant zero)
    amax = np.maximum(np.abs(branch.lower), np.abs(branch.upper))
    n_layers = len(network.affines)
    needed_out = np.flatnonzero(np.any(branch.coeffs != 0, axis=0))
    ys = {}
    phases = split_arrays(branch.splits, network.hidden_sizes)  # -1: split inactive

    def linear(aff, i, live):
        """W_i a + b_i as a z3 term, and the rounding slack it is exact within."""
        if aff.is_quantized:
            sc = Fraction(float(aff.weight_scale[i]))
            terms = [int(aff.weight_int[i, j]) * acts[j] for j in live if aff.weight_int[i, j] != 0]
            lin = (R(sc) * z3.Sum(terms) if terms else R(Fraction(0)))
            return lin + R(Fraction(float(aff.bias[i]))), 0.0
        w = aff.weight[i]
        coeffs = [(_rational(w[j], digits), j) for j in live]
        terms = [R(c) * acts[j] for c, j in coeffs if c != 0]
        b = _rational(aff.bias[i], digits)
        lin = (z3.Sum(terms) if terms else R(Fraction(0))) + R(b)
        if digits is None:
            return lin, 0.0
        err = sum(abs(float(w[j]) - float(c)) * amax[j] for c, j in coeffs)
        return lin, _round_up(err + abs(float(aff.bias[i]) - float(b)))

    for k, aff in enumerate(network.affines):
        hidden = k < n_layers - 1
        live = [j for j, a in enumerate(acts) if a is not None]
        if hidden:
            l, u = branch.layer_bounds[k]
            rows = [i for i in range(aff.out_size) if u[i] > 0]
            for i in np.flatnonzero(phases[k] < 0):
                if u[i] <= 0:  # split inactive: left out below, its phase asserted here
                    lin, slack = linear(aff, i, live)
                    cons[neuron_name(k, i, "inactive")] = lin <= R(Fraction(slack))
        else:
            rows = list(needed_out)
        new_acts: list = [None] * aff.out_size
        for i in rows:
            lin, slack = linear(aff, i, live)
            z = z3.Real(f"z{k}_{i}" if hidden else f"y{i}", ctx)
            name = neuron_name(k, i, "affine") if hidden else output_name(i)
            if slack > 0:
                s = R(Fraction(slack))
                cons[name] = z3.And(z - lin <= s, lin - z <= s, ctx)
            else:
                cons[name] = z == lin
            if not hidden:
                ys[i] = z
                continue
            lo_i, hi_i = float(l[i]), float(u[i])
            cons[neuron_name(k, i, "bounds")] = z3.And(z >= R(Fraction(lo_i)), z <= R(Fraction(hi_i)), ctx)
            if lo_i >= 0:
                new_acts[i] = z
            else:
                a = z3.Real(f"a{k}_{i}", ctx)
                zero = R(Fraction(0))
                cons[neuron_name(k, i, "relu")] = z3.Or(z3.And(z >= zero, a == z, ctx),
                                                        z3.And(z <= zero, a == zero, ctx), ctx)
                new_acts[i] = a
        if hidden:
            acts = new_acts
            amax = np.maximum(branch.layer_bounds[k][1], 0.0)
    for r in range(branch.coeffs.shape[0]):
        terms = [R(Fraction(float(branch.coeffs[r, j]))) * ys[j]
                 for j in range(branch.coeffs.shape[1]) if branch.coeffs[r, j] != 0]
        cons[spec_name(r)] = (z3.Sum(terms) if terms else R(Fraction(0))) <= R(Fraction(float(branch.rhs[r])))
    return Query(ctx, solver, xs, cons, digits)


@dataclass
class Answer:
    status: str  # "unsat" | "sat" | "unknown"
    core: tuple[str, ...] = ()
    model_input: np.ndarray | None = None
    reason: str = ""
    time_s: float = 0.0


def solve(query: Query, names: list[str] | None = None, timeout: float = 10.0) -> Answer:
    """Check the tracked assertions ``names`` (all when None) with a hard
    wall-clock ``timeout``: Z3's own timeout is soft, so an interrupt fires too."""
    t0 = time.monotonic()
    names = list(query.constraints) if names is None else list(names)
    solver = query.solver
    solver.reset()
    solver.set("timeout", max(1, int(timeout * 1000)))
    # Z3's own SIGINT handling would cancel the query and swallow Ctrl-C (or re-raise
    # it past Python's handler, killing the process): leave it to Python, which
    # raises KeyboardInterrupt when the query returns (within its timeout)
    solver.set("ctrl_c", False)
    trackers = {}
    for n in names:
        b = z3.Bool(n, query.ctx)
        trackers[str(b)] = n
        solver.assert_and_track(query.constraints[n], b)
    timer = threading.Timer(timeout + 0.5, query.ctx.interrupt)
    timer.daemon = True
    timer.start()
    try:
        res = solver.check()
    except z3.Z3Exception as exc:  # interrupted
        return Answer("unknown", reason=f"z3 interrupted: {exc}", time_s=time.monotonic() - t0)
    finally:
        timer.cancel()
    dt = time.monotonic() - t0
    if res == z3.unsat:
        core = tuple(sorted(trackers[str(c)] for c in solver.unsat_core()))
        return Answer("unsat", core=core, time_s=dt)
    if res == z3.sat:
        model = solver.model()
        x = np.array([_model_float(model.eval(v, model_completion=True)) for v in query.inputs])
        return Answer("sat", model_input=x, time_s=dt)
    return Answer("unknown", reason=f"z3: {solver.reason_unknown()}", time_s=dt)


def _model_float(v) -> float:
    if z3.is_rational_value(v):
        return float(Fraction(v.numerator_as_long(), v.denominator_as_long()))
    if z3.is_algebraic_value(v):
        return float(v.approx(20).as_fraction())
    return float(v.as_fraction())
