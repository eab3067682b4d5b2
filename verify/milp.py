"""A chain network's region as a mixed-integer linear program, and its unsafe
conjunctions refuted one at a time by HiGHS (the optional ``milp`` extra).

Each unstable ReLU of the given layer bounds gets one binary (the big-M encoding:
``h >= z``, ``h <= z - l (1 - a)``, ``h <= u a``, ``0 <= h``); a stable one is a
linear equation or drops out. A conjunction ``all rows <= 0`` is refuted when the
program with its rows ``<= margin`` is infeasible (its first row is also the
objective, with HiGHS's objective cut-off at the margin, so the branch and bound
prunes by it).
The margin is positive, so float tolerances inside the solver cannot turn a
feasible point into an infeasibility. A feasible point is a candidate only: its
input is re-run on the network (:func:`verify.attack.confirm_batch`).

This module imports only numpy (and highspy when solving): its workers
(:mod:`verify.milp_region`) run :func:`solve_rows` and nothing else."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

REFUTED, CANDIDATE, OPEN = "refuted", "candidate", "open"


def available() -> bool:
    """Whether highspy (the ``milp`` extra) can be imported."""
    try:
        import highspy  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class ChainProgram:
    """The constraints of a chain over a box (arrays, so they pickle to workers).

    Columns: the inputs first (``0 .. n_inputs - 1``), then per hidden neuron that is
    not always inactive its output ``h``, and per unstable one its binary.
    ``out_coeffs`` / ``out_const``: the network's outputs as ``out_coeffs @ cols +
    out_const`` (over the last hidden layer's columns)."""

    n_inputs: int
    col_lower: np.ndarray
    col_upper: np.ndarray
    integer_cols: np.ndarray
    row_lower: np.ndarray
    row_upper: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    out_coeffs: np.ndarray  # (n_outputs, n_cols)
    out_const: np.ndarray  # (n_outputs,)

    @property
    def n_cols(self) -> int:
        return len(self.col_lower)

    @property
    def n_binaries(self) -> int:
        return len(self.integer_cols)


def _widen(lower: np.ndarray, upper: np.ndarray):
    """Layer bounds widened by a relative 1e-6: bounds computed in float32 must not cut
    off a point of the network by their rounding."""
    lower = np.asarray(lower, dtype=np.float64)
    upper = np.asarray(upper, dtype=np.float64)
    return lower - 1e-6 * (1.0 + np.abs(lower)), upper + 1e-6 * (1.0 + np.abs(upper))


def chain_program(weights, biases, lower_in: np.ndarray, upper_in: np.ndarray,
                  layer_bounds) -> ChainProgram:
    """The program of a chain (``weights[k]`` (out, in), ``biases[k]``; the last pair
    the output layer) over the input box, with sound pre-activation bounds
    ``layer_bounds`` ((lower, upper) per hidden layer) as the big-M constants."""
    n0 = len(lower_in)
    col_lo, col_hi = [np.asarray(lower_in, np.float64)], [np.asarray(upper_in, np.float64)]
    integer, r_lo, r_hi, indptr, indices, values = [], [], [], [0], [], []
    n_cols = n0
    prev = np.arange(n0)  # the columns of the previous layer's outputs ...
    keep = np.ones(n0, dtype=bool)  # ... and which of its neurons they are

    def add_row(lo, hi, idx, val):
        r_lo.append(lo)
        r_hi.append(hi)
        indices.append(idx)
        values.append(val)
        indptr.append(indptr[-1] + len(idx))

    for W, b, (lo, hi) in zip(weights[:-1], biases, layer_bounds):
        W = np.asarray(W, np.float64)[:, keep]
        b = np.asarray(b, np.float64)
        lo, hi = _widen(lo, hi)
        hid = np.full(len(b), -1)
        for i in range(len(b)):
            if hi[i] <= 0:
                continue  # always inactive: h = 0
            h = n_cols
            n_cols += 1
            col_lo.append([0.0])
            col_hi.append([hi[i]])
            idx = np.append(prev, h)
            if lo[i] >= 0:  # always active: h = W_i prev + b_i
                add_row(b[i], b[i], idx, np.append(-W[i], 1.0))
            else:
                a = n_cols
                n_cols += 1
                col_lo.append([0.0])
                col_hi.append([1.0])
                integer.append(a)
                add_row(b[i], np.inf, idx, np.append(-W[i], 1.0))  # h >= z
                add_row(-np.inf, b[i] - lo[i], np.append(idx, a),  # h <= z - l (1 - a)
                        np.concatenate([-W[i], [1.0, -lo[i]]]))
                add_row(-np.inf, 0.0, np.array([h, a]), np.array([1.0, -hi[i]]))  # h <= u a
            hid[i] = h
        keep = hid >= 0
        prev = hid[keep]
    W_out = np.asarray(weights[-1], np.float64)[:, keep]
    out_coeffs = np.zeros((W_out.shape[0], n_cols))
    out_coeffs[:, prev] = W_out
    return ChainProgram(
        n0, np.concatenate([np.ravel(c) for c in col_lo]), np.concatenate([np.ravel(c) for c in col_hi]),
        np.array(integer, dtype=np.int32), np.array(r_lo, np.float64), np.array(r_hi, np.float64),
        np.array(indptr, dtype=np.int64),
        np.concatenate(indices).astype(np.int32) if indices else np.zeros(0, np.int32),
        np.concatenate(values) if values else np.zeros(0), out_coeffs,
        np.asarray(biases[-1], np.float64))


@dataclass(frozen=True)
class ConjunctionAnswer:
    """``status``: REFUTED (no input has every row <= margin), CANDIDATE (``x``: an
    input the solver found with every row <= margin; not yet re-run) or OPEN (time
    limit, or the solver gave no answer: ``solver_status`` says which)."""

    index: int
    status: str
    x: np.ndarray | None
    seconds: float
    solver_status: str


def conjunction_rows(program: ChainProgram, coeffs: np.ndarray, rhs: np.ndarray, margin: float):
    """A conjunction's rows ``coeffs @ y - rhs <= margin`` over the program's columns:
    (rows (m, n_cols), upper (m,))."""
    coeffs = np.atleast_2d(np.asarray(coeffs, np.float64))
    rows = coeffs @ program.out_coeffs
    return rows, margin - (coeffs @ program.out_const - np.atleast_1d(rhs))


def solve_conjunction(program: ChainProgram, index: int, coeffs: np.ndarray, rhs: np.ndarray,
                      margin: float, time_limit: float) -> ConjunctionAnswer:
    """Whether some input of the box has ``coeffs @ y - rhs <= margin`` on every row
    (``y`` the network's output), within ``time_limit`` seconds of HiGHS (one thread)."""
    rows, upper = conjunction_rows(program, coeffs, rhs, margin)
    return solve_rows(program, index, rows, upper, time_limit)


def solve_rows(program: ChainProgram, index: int, rows: np.ndarray, upper: np.ndarray,
               time_limit: float) -> ConjunctionAnswer:
    """:func:`solve_conjunction` on rows already over the program's columns (no BLAS
    call here: a forked worker runs this)."""
    import highspy
    t0 = time.monotonic()
    inf = highspy.kHighsInf  # float inf: the arrays' infinities pass as they are
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("time_limit", max(float(time_limit), 0.01))
    h.setOptionValue("mip_max_improving_sols", 1)  # a candidate is all we need of a point
    n = program.n_cols
    h.addVars(n, program.col_lower, program.col_upper)
    if program.n_binaries:
        h.changeColsIntegrality(program.n_binaries, program.integer_cols,
                                np.full(program.n_binaries, highspy.HighsVarType.kInteger))
    h.addRows(len(program.row_lower), program.row_lower, program.row_upper,
              len(program.values), program.indptr[:-1].astype(np.int32), program.indices,
              program.values)
    # every row a constraint, so "infeasible" means what it says whatever else the solver
    # does with the cut-off; the first row is also the objective, cut off at its bound,
    # so the branch and bound prunes by it. (With the cut-off alone, a small program
    # solved in presolve came back "optimal" above the cut-off.)
    for r in range(len(rows)):
        nz = np.flatnonzero(rows[r])
        h.addRow(-inf, float(upper[r]), len(nz), nz.astype(np.int32), rows[r][nz])
    h.changeColsCost(n, np.arange(n, dtype=np.int32), rows[0])
    h.setOptionValue("objective_bound", float(upper[0]))
    h.run()
    status = h.getModelStatus()
    name = h.modelStatusToString(status)
    seconds = time.monotonic() - t0
    if status in (highspy.HighsModelStatus.kInfeasible, highspy.HighsModelStatus.kObjectiveBound):
        return ConjunctionAnswer(index, REFUTED, None, seconds, name)
    info = h.getInfo()
    if info.primal_solution_status == 2:  # a feasible point (kSolutionStatusFeasible)
        x = np.array(h.getSolution().col_value[:program.n_inputs])
        return ConjunctionAnswer(index, CANDIDATE, x, seconds, name)
    return ConjunctionAnswer(index, OPEN, None, seconds, name)
