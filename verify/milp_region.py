"""A region of a chain decided by its mixed-integer program (:mod:`verify.milp`):
each unsafe conjunction the root bound leaves open goes to a worker process, one
beside branch and bound and up to ``workers`` once it stops, until the deadline
(:class:`ProgramStage`). ``holds`` when every one is refuted; ``violated`` when a
worker's point, re-run on the network, is a counterexample."""
from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time

import numpy as np

from .attack import confirm_batch
from .milp import CANDIDATE, REFUTED, ChainProgram, chain_program, conjunction_rows, solve_rows
from .network import Network
from .properties import Region
from .result import Status
from .search_types import RegionOutcome

_PROGRAM: ChainProgram | None = None  # a worker's program, set once by _start_worker


def _start_worker(program: ChainProgram) -> None:
    global _PROGRAM
    _PROGRAM = program
    # HiGHS prints a banner when a solver is made, whatever its output_flag: a worker's
    # answers go back through the pool, its standard streams nowhere
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


def _solve(args):
    # ``deadline``: time.monotonic() of the parent; Linux's monotonic clock is system-wide
    index, rows, upper, deadline = args
    return solve_rows(_PROGRAM, index, rows, upper, deadline - time.monotonic())


def _context():
    """Forked workers where the platform has fork: they inherit the program, and do not
    import the caller's ``__main__`` again (spawn would re-run a script without a
    ``__main__`` guard). They run HiGHS and numpy only, never torch."""
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def region_program(network: Network, region: Region, layer_bounds) -> ChainProgram:
    """The program of ``network`` over ``region``'s box; ``layer_bounds``: sound
    (lower, upper) pre-activation bounds per hidden layer (the search's tightened root)."""
    return chain_program([a.weight for a in network.affines], [a.bias for a in network.affines],
                         region.lower, region.upper, layer_bounds)


def margin_of(coeffs: np.ndarray, program: ChainProgram) -> float:
    """The positive slack a refutation must clear: 1e-4 of the rows' scale (their
    coefficients times the largest output term), at least 1e-6."""
    scale = np.abs(coeffs).sum() * (1.0 + np.abs(program.out_const).max(initial=0.0))
    return max(1e-6, 1e-4 * float(scale))


class ProgramStage:
    """A region's program solved beside branch and bound: :meth:`start` (the search
    calls it once its root is tightened) hands the open conjunctions to a pool of
    ``workers`` processes, ``during`` of them busy while the search runs;
    :meth:`widen` lets all of them work (the search has stopped). :attr:`done` is set
    once the program decided the region (every conjunction refuted, or a worker's point
    confirmed as a counterexample): the search reads it as its deadline."""

    def __init__(self, network: Network, region: Region, index: int, deadline: float,
                 workers: int, during: int = 1, log=None):
        self.network, self.region, self.index = network, region, index
        self.deadline = deadline
        self.workers = max(1, workers)
        self.limit = max(1, min(during, self.workers))
        self.log = log
        self.done = threading.Event()
        self.counterexample = None
        self.failed = None  # the first conjunction the program could not refute, and why
        self.declined = None  # why the program was not started (see decline)
        self._lock = threading.Lock()
        self._tasks: list = []
        self._busy = 0
        self._pool = None

    def start(self, layer_bounds, refuted: np.ndarray, order=None) -> bool:
        """Solve every conjunction not ``refuted`` over these sound layer bounds, in
        ``order`` (conjunction indices: the hardest first keeps the workers' loads even,
        the last ones to start being the short ones). False when no worker could start
        (:attr:`failed` says why)."""
        order = range(len(self.region.unsafe)) if order is None else order
        todo = [int(j) for j in order if not refuted[j]]
        if not todo:
            self.done.set()
            return True
        program = region_program(self.network, self.region, layer_bounds)
        for j in todo:
            conj = self.region.unsafe[j]
            rows, upper = conjunction_rows(program, conj.coeffs, conj.rhs,
                                           margin_of(conj.coeffs, program))
            self._tasks.append((j, rows, upper, self.deadline))
        try:
            self._pool = _context().Pool(min(self.workers, len(todo)), initializer=_start_worker,
                                         initargs=(program,))
        except (OSError, AssertionError) as error:  # no processes to be had here
            self.failed = f"the MILP workers could not start: {error}"
            return False
        with self._lock:
            self._submit()
        return True

    def decline(self, reason: str) -> None:
        """The program is not worth starting (``reason``): the search decides alone."""
        self.declined = reason

    def widen(self) -> None:
        """Every worker may take a conjunction now."""
        with self._lock:
            self.limit = self.workers
            self._submit()

    def _submit(self) -> None:  # under the lock
        while self._tasks and self._busy < self.limit and self.failed is None:
            self._busy += 1
            self._pool.apply_async(_solve, (self._tasks.pop(0),), callback=self._answered,
                                   error_callback=self._crashed)

    def _answered(self, answer) -> None:  # the pool's result thread
        if self.log is not None:
            self.log(answer)
        cex = None
        if answer.status == CANDIDATE:  # re-run on the network (numpy, float64)
            cex = confirm_batch(self.network, self.region, self.index, answer.x[None, :])
        with self._lock:
            self._busy -= 1
            if cex is not None:
                self.counterexample = cex
                self.done.set()
            elif answer.status != REFUTED and self.failed is None:
                self.failed = f"conjunction {answer.index}: " + (
                    "the program's point is not a counterexample of the network (within the "
                    "margin)" if answer.status == CANDIDATE else answer.solver_status)
            elif self.failed is None and not self._tasks and self._busy == 0:
                self.done.set()  # every conjunction refuted
            self._submit()

    def _crashed(self, error) -> None:
        with self._lock:
            self._busy -= 1
            if self.failed is None:
                self.failed = f"a MILP worker failed: {error!r}"

    def outcome(self) -> RegionOutcome:
        """Wait for the program until the deadline: holds, violated, or unknown."""
        while not self.done.is_set() and self.failed is None and self._pool is not None:
            if time.monotonic() >= self.deadline + 1.0:  # the workers' own limit, then a second
                break
            self.done.wait(0.05)
        if self.counterexample is not None:
            return RegionOutcome(Status.VIOLATED, "milp", self.counterexample)
        if self.done.is_set():
            return RegionOutcome(Status.HOLDS, "milp")
        timed_out = time.monotonic() >= self.deadline
        return RegionOutcome(Status.UNKNOWN, "timeout" if timed_out else "milp",
                             reason=self.failed or "timeout in the MILP stage")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


def decide_region(network: Network, region: Region, index: int, layer_bounds,
                  refuted: np.ndarray, deadline: float, workers: int, order=None,
                  log=None) -> RegionOutcome:
    """Decide ``region`` (index ``index``) by its program alone, every worker busy:
    every conjunction not in ``refuted`` (bool per conjunction, e.g. by the root bound)
    solved before ``deadline`` (see :class:`ProgramStage`). ``log``: optional callable
    taking each ConjunctionAnswer."""
    stage = ProgramStage(network, region, index, deadline, workers, during=workers, log=log)
    try:
        stage.start(layer_bounds, refuted, order)
        return stage.outcome()
    finally:
        stage.close()
