"""Many verification jobs at once: local worker processes or a Dask distributed cluster.

    from verify.batch import Job, verify_many
    for r in verify_many([Job("net.onnx", "p.vnnlib", 60)], jobs=2):
        print(r.job.key, r.status, r.time_s)

* Local: ``jobs`` worker processes (spawned, single-threaded torch), each fed one job at a
  time (``jobs=1``: in this process, no worker).  A worker that dies (killed, out of memory) costs its one job: it is retried once
  on a fresh worker, then reported as ``error``; the other jobs are not affected.
* Dask: ``scheduler="tcp://host:8786"`` (or a ``distributed.Client``) submits the same
  jobs to a cluster whose workers have coreproof installed.  Network and property files
  are shipped as bytes (``ship="bytes"``, the default) or read from a path every worker
  shares (``ship="path"``).  A task whose worker dies is retried by the scheduler (its
  ``allowed-failures``), an exception in a task once (``retries=1``).
* Order: the variants of one original (``Job.original``) run after that original's first
  job has finished, so its proof is built once and found in the shared proof store by the
  others.

Results come back as :class:`JobResult` objects as they finish (an iterator).
"""
from __future__ import annotations

import os
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from .options import VerifyOptions

ERROR = "error"


@dataclass(frozen=True)
class Job:
    """One verification: ``property`` on ``network`` (paths) within ``timeout`` seconds; with
    ``original``, ``network`` is checked as a compressed variant of it (proof reuse)."""

    network: str
    property: str
    timeout: float = 60.0
    original: str | None = None
    key: str = ""

    def __post_init__(self):
        object.__setattr__(self, "network", str(self.network))
        object.__setattr__(self, "property", str(self.property))
        if self.original is not None:
            object.__setattr__(self, "original", str(self.original))
        if not self.key:
            object.__setattr__(self, "key", f"{Path(self.network).name}|{Path(self.property).name}")


@dataclass
class JobResult:
    job: Job
    status: str  # holds | violated | unknown | error
    time_s: float
    result: object | None = None  # VerificationResult (None for an error)
    error: str | None = None
    attempts: int = 1
    method: str = ""
    extra: dict | None = None  # what a custom runner returned beside the verdict

    def to_dict(self) -> dict:
        return {"key": self.job.key, "network": self.job.network, "property": self.job.property,
                "original": self.job.original, "status": self.status,
                "time_s": round(self.time_s, 6), "method": self.method, "error": self.error,
                "attempts": self.attempts,
                "result": None if self.result is None else self.result.to_dict()}


@dataclass(frozen=True)
class BatchOptions:
    store: str | None = None  # proof store directory shared by the workers (variants)
    ship: str = "bytes"  # Dask: "bytes" (files sent with the task) or "path" (shared paths)
    retries: int = 1  # a job whose worker died (or whose task raised, on Dask) runs again
    verify: VerifyOptions = field(default_factory=VerifyOptions)


# ------------------------------------------------------------------ one job
def run_job(job: Job, options: BatchOptions = BatchOptions()) -> dict:
    """Run ``job`` in this process; returns the plain-data form of its :class:`JobResult`
    (``result`` as a dict) so it crosses process and network boundaries."""
    import dataclasses

    from .errors import CoreproofError
    t0 = time.monotonic()
    try:
        from .threads import single_threaded
        single_threaded()
        from .api import load_network, load_property, verify_property
        opts = dataclasses.replace(options.verify, timeout=job.timeout)
        net = load_network(job.network)
        prop = load_property(job.property, net)
        if job.original is None:
            res = verify_property(net, prop, opts)
        else:
            from .proof_store import ProofStore
            from .reuse.reverify import reverify
            original = load_network(job.original)
            store = ProofStore(options.store) if options.store else None
            reuse = reverify(original, net, prop, opts, store=store)
            res = reuse.to_verification_result()
        return {"status": res.status.value, "time_s": res.time_s, "method": res.method,
                "result": res.to_dict(), "error": None}
    except CoreproofError as exc:
        return {"status": ERROR, "time_s": time.monotonic() - t0, "method": "",
                "result": None, "error": " ".join(str(exc).split())}
    except Exception as exc:  # noqa: BLE001 - a job's failure is its row, not the batch's
        return {"status": ERROR, "time_s": time.monotonic() - t0, "method": "", "result": None,
                "error": f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}"}


def _result(job: Job, data: dict, attempts: int) -> JobResult:
    res = None
    if data.get("result") is not None:
        from .result import VerificationResult
        res = VerificationResult.from_dict(data["result"])
    return JobResult(job, data["status"], float(data["time_s"]), res, data.get("error"),
                     attempts, data.get("method", ""), data.get("extra"))


# ------------------------------------------------------------------ ordering
class _Order:
    """Jobs in groups per original: a group's first job runs alone, the rest after it."""

    def __init__(self, jobs: Iterable[Job]):
        groups: dict[str, list[Job]] = {}
        self.free: deque[Job] = deque()
        for j in jobs:
            if j.original is None:
                self.free.append(j)
            else:
                groups.setdefault(j.original, []).append(j)
        self.waiting = {o: deque(js[1:]) for o, js in groups.items()}
        self.heads: deque[Job] = deque(js[0] for js in groups.values())
        self.ready: deque[Job] = deque()

    def next(self) -> Job | None:
        for q in (self.ready, self.heads, self.free):
            if q:
                return q.popleft()
        return None

    def done(self, job: Job) -> None:
        if job.original is not None and job.original in self.waiting:
            self.ready.extend(self.waiting.pop(job.original))

    def __bool__(self) -> bool:
        return bool(self.ready or self.heads or self.free or self.waiting)


# ------------------------------------------------------------------ local processes
def _worker_main(conn, runner) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        job, options = msg
        conn.send(runner(job, options))


class _Worker:
    def __init__(self, ctx, runner):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, runner), daemon=True)
        self.proc.start()
        child.close()
        self.job: Job | None = None
        self.started = 0.0

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self.proc.join(2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def _local(jobs: list[Job], n: int, options: BatchOptions, runner) -> Iterator[JobResult]:
    import multiprocessing as mp
    from multiprocessing.connection import wait
    ctx = mp.get_context("spawn")
    order, attempts = _Order(jobs), {j.key: 0 for j in jobs}
    workers = [_Worker(ctx, runner) for _ in range(max(1, min(n, len(jobs))))]
    try:
        while True:
            for w in workers:
                if w.job is None:
                    job = order.next()
                    if job is None:
                        break
                    attempts[job.key] += 1
                    w.job, w.started = job, time.monotonic()
                    w.conn.send((job, options))
            busy = [w for w in workers if w.job is not None]
            if not busy:
                if order:  # only jobs waiting for a head that failed to dispatch: free them
                    for o in list(order.waiting):
                        order.ready.extend(order.waiting.pop(o))
                    continue
                return
            ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy])
            for k, w in enumerate(workers):
                if w.job is None:
                    continue
                job = w.job
                if w.conn in ready or (w.conn.poll() if w.proc.sentinel in ready else False):
                    try:
                        data = w.conn.recv()
                    except (EOFError, OSError):
                        data = None
                    if data is not None:
                        w.job = None
                        order.done(job)
                        yield _result(job, data, attempts[job.key])
                        continue
                if w.proc.sentinel in ready or not w.proc.is_alive():
                    code = w.proc.exitcode
                    w.proc.join()
                    workers[k] = _Worker(ctx, runner)  # a fresh worker in its place
                    if attempts[job.key] <= options.retries:
                        order.ready.appendleft(job)
                    else:
                        order.done(job)
                        yield JobResult(job, ERROR, time.monotonic() - w.started, None,
                                        f"the worker died (exit code {code}) on every one of "
                                        f"{attempts[job.key]} attempts", attempts[job.key])
    finally:
        for w in workers:
            w.stop()


# ------------------------------------------------------------------ Dask
def _shipped(job: Job, ship: str):
    if ship == "path":
        return job, None
    files = {}
    for role in ("network", "property", "original"):
        path = getattr(job, role)
        if path is not None:
            files[role] = (Path(path).name, Path(path).read_bytes())
    return job, files


def _dask_task(job: Job, files, options: BatchOptions, runner, *after) -> dict:
    """Runs on a Dask worker: writes shipped files to a temporary folder first."""
    if files is None:
        return runner(job, options)
    import dataclasses
    with tempfile.TemporaryDirectory(prefix="coreproof-") as tmp:
        paths = {}
        for role, (name, data) in files.items():
            folder = Path(tmp) / role
            folder.mkdir()
            (folder / name).write_bytes(data)
            paths[role] = str(folder / name)
        local = dataclasses.replace(job, **paths)
        return runner(local, options)


def _dask(jobs: list[Job], scheduler, options: BatchOptions, runner) -> Iterator[JobResult]:
    from distributed import Client, as_completed
    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    own = client is not scheduler
    try:
        heads: dict[str, object] = {}
        futures, submitted = {}, []
        for job in jobs:
            shipped_job, files = _shipped(job, options.ship)
            after = [heads[job.original]] if job.original in heads else []
            fut = client.submit(_dask_task, shipped_job, files, options, runner, *after,
                                pure=False, retries=options.retries)
            if job.original is not None and job.original not in heads:
                heads[job.original] = fut
            futures[fut.key] = job
            submitted.append(fut)
        for fut in as_completed(submitted):
            job = futures[fut.key]
            if fut.status == "finished":
                yield _result(job, fut.result(), 1)
            else:
                exc = fut.exception()
                yield JobResult(job, ERROR, 0.0, None,
                                f"the task failed on the cluster: {type(exc).__name__}: {exc}",
                                options.retries + 1)
    finally:
        if own:
            client.close()


# ------------------------------------------------------------------ API
def default_jobs() -> int:
    """The number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def verify_many(jobs: Iterable[Job], *, jobs_n: int | None = None, scheduler=None,
                options: BatchOptions = BatchOptions(), runner=run_job) -> Iterator[JobResult]:
    """Run ``jobs`` and yield a :class:`JobResult` for each as it finishes: on ``jobs_n``
    local worker processes (default: the usable cores), or on the Dask cluster at
    ``scheduler`` (an address or a ``distributed.Client``; default from the environment
    variable ``COREPROOF_SCHEDULER``).  ``runner`` (a module-level function ``(job,
    options) -> dict``) is :func:`run_job` unless a test replaces it."""
    jobs = list(jobs)
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        from .errors import OptionError
        raise OptionError("two jobs have the same key")
    if not jobs:
        return iter(())
    scheduler = scheduler or os.environ.get("COREPROOF_SCHEDULER") or None
    if scheduler is not None:
        return _dask(jobs, scheduler, options, runner)
    n = jobs_n or default_jobs()
    if n == 1 and runner is run_job:
        return _in_process(jobs, options)
    return _local(jobs, n, options, runner)


def _in_process(jobs: list[Job], options: BatchOptions) -> Iterator[JobResult]:
    """``jobs=1``: one job after another in this process (no worker to spawn; an error
    is still its job's row)."""
    order = _Order(jobs)
    while (job := order.next()) is not None:  # a head's waiters are released as it ends
        data = run_job(job, options)
        order.done(job)
        yield _result(job, data, 1)
