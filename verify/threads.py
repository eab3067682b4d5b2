"""One thread per process for the verifier's matrix products.

Bounding works on small matrices (a few hundred columns) in many short calls.
Intra-op threads only slow those down -- torch's were measured 100x slower on
50-wide layers on 2 cores -- and numpy's multithreaded BLAS, which evaluates the
counterexample candidates, spins against the other process when benchmarks run
one process per core: with it limited to one thread, 100 points through
mnist-net_256x4 took 1.8 ms instead of 17.6 ms, and three branch-and-bound
proofs on that network 14.2 s instead of 20.3 s beside another two-process run.
One thread per process is also fair to pytest-xdist and the batch workers.
"""
from __future__ import annotations

import functools
import sys


def single_threaded() -> None:
    """torch and the BLAS numpy uses on one thread each (idempotent, cheap)."""
    import torch
    torch.set_num_threads(1)
    # again once modules were imported since: a library imported later can load a BLAS
    # of its own (scipy's OpenBLAS, through sklearn) with as many threads as cores
    _blas_single_threaded(len(sys.modules))


@functools.cache
def _blas_single_threaded(_modules_loaded: int) -> None:
    # threadpoolctl finds the BLAS libraries loaded in the process (numpy's
    # OpenBLAS here) and sets their thread count at run time; 14 ms, once per count
    # of imported modules
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=1, user_api="blas")
