"""Many jobs at once: local worker processes and a Dask LocalCluster give the verdicts of
one-at-a-time runs; a dying worker costs one retry, never the batch."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from verify.batch import BatchOptions, Job, run_job, verify_many
from verify.errors import OptionError
from vnnlib_files import write_robustness_vnnlib as write_box


def write_robustness_vnnlib(path: Path, x0, eps: float, label: int, n_out: int) -> Path:
    return write_box(path, np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1), label, n_out)


@pytest.fixture(scope="module")
def instances(digits_mlp, tmp_path_factory):
    """A dozen small instances: 12 digits at eps 0.005 (hold) / 0.2 (violated)."""
    from verify.onnx_io import save_onnx
    net, x, y = digits_mlp
    folder = tmp_path_factory.mktemp("batch")
    onnx = folder / "digits.onnx"
    save_onnx(net, onnx)
    jobs = []
    for k in range(12):
        eps = 0.005 if k % 2 == 0 else 0.2
        p = write_robustness_vnnlib(folder / f"p{k}.vnnlib", x[k], eps, int(y[k]), 10)
        jobs.append(Job(onnx, p, 10.0))
    return jobs


def _statuses(results):
    return {r.job.key: r.status for r in results}


@pytest.fixture(scope="module")
def reference(instances):
    """The verdicts of one worker, one job at a time."""
    return _statuses(verify_many(instances, jobs_n=1))


def test_two_local_workers_give_the_verdicts_of_one(instances, reference):
    two = list(verify_many(instances, jobs_n=2))
    assert len(two) == len(instances)
    assert _statuses(two) == reference
    assert set(reference.values()) >= {"holds", "violated"}
    for r in two:
        if r.status == "violated":
            assert r.result.counterexample is not None


def dying_runner(job, options):
    """Kill the worker on the first attempt of p3 (a marker file remembers), and on every
    attempt of p5; otherwise run the job."""
    marker = Path(os.environ["COREPROOF_TEST_MARKERS"]) / Path(job.property).stem
    if job.property.endswith("p5.vnnlib") or (job.property.endswith("p3.vnnlib")
                                               and not marker.exists()):
        marker.touch()
        os._exit(9)
    return run_job(job, options)


def test_a_dying_worker_costs_one_retry_and_no_rows(instances, reference, tmp_path,
                                                    monkeypatch):
    monkeypatch.setenv("COREPROOF_TEST_MARKERS", str(tmp_path))
    results = {r.job.key: r for r in verify_many(instances, jobs_n=2, runner=dying_runner)}
    assert len(results) == len(instances)  # no lost rows
    p3 = next(r for k, r in results.items() if k.endswith("p3.vnnlib"))
    p5 = next(r for k, r in results.items() if k.endswith("p5.vnnlib"))
    assert p3.status == reference[p3.job.key] and p3.attempts == 2
    assert p5.status == "error" and p5.attempts == 2 and "worker died" in p5.error
    others = {k: r.status for k, r in results.items() if r not in (p3, p5)}
    assert others == {k: v for k, v in reference.items() if k in others}


def test_bad_rows_are_errors_and_duplicate_keys_are_refused(instances, tmp_path):
    bad = Job(tmp_path / "missing.onnx", instances[0].property, 5.0)
    (r,) = list(verify_many([bad], jobs_n=1))
    assert r.status == "error" and "missing.onnx" in r.error
    with pytest.raises(OptionError):
        list(verify_many([instances[0], instances[0]], jobs_n=1))


def test_variants_wait_for_their_originals_first_job(instances):
    from verify.batch import _Order
    a = [Job("v1.onnx", f"p{k}.vnnlib", 1, original="o.onnx") for k in range(3)]
    order = _Order(a + [Job("n.onnx", "q.vnnlib", 1)])
    first = order.next()
    assert first.key == a[0].key
    assert order.next().key == "n.onnx|q.vnnlib" and order.next() is None  # the rest wait
    order.done(first)
    assert [order.next().key for _ in range(2)] == [a[1].key, a[2].key]


def test_a_dask_local_cluster_gives_the_same_verdicts(instances, reference):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        remote = list(verify_many(instances[:6], scheduler=client,
                                  options=BatchOptions(ship="bytes")))
    assert _statuses(remote) == {j.key: reference[j.key] for j in instances[:6]}


# ---- the command: streaming, resume, interrupt --------------------------------------
@pytest.fixture()
def instances_csv(instances, tmp_path):
    import shutil
    shutil.copy(instances[0].network, tmp_path / "digits.onnx")
    lines = []
    for j in instances[:4]:
        shutil.copy(j.property, tmp_path / Path(j.property).name)
        lines.append(f"digits.onnx,{Path(j.property).name},10\n")
    (tmp_path / "instances.csv").write_text("".join(lines))
    return tmp_path / "instances.csv"


def _cli(*args):
    from click.testing import CliRunner

    from verify.cli import main
    return CliRunner().invoke(main, [str(a) for a in args])


def _rows(path):
    import csv
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_verify_instances_streams_and_resumes(instances_csv, reference):
    out = instances_csv.with_name("r.csv")
    first = _cli("verify-instances", instances_csv, "-o", out, "--jobs", "1")
    rows = _rows(out)
    assert [r["vnnlib"] for r in rows] == [f"p{k}.vnnlib" for k in range(4)]  # csv order
    assert {f"digits.onnx|{r['vnnlib']}": r["status"] for r in rows} == \
        {k: v for k, v in reference.items() if k.split("|")[1] in {r["vnnlib"] for r in rows}}
    out.write_text("".join(out.read_text().splitlines(keepends=True)[:3]))  # keep 2 rows
    again = _cli("verify-instances", instances_csv, "-o", out, "--jobs", "1")
    assert "2 of 4 instances to run" in again.stderr, again.stderr
    assert [r["status"] for r in _rows(out)] == [r["status"] for r in rows]
    assert again.exit_code == first.exit_code
    forced = _cli("verify-instances", instances_csv, "-o", out, "--jobs", "1", "--force")
    assert "4 of 4 instances to run" in forced.stderr


def test_verify_instances_jsonl_with_two_jobs(instances_csv):
    import json
    out = instances_csv.with_name("r.jsonl")
    res = _cli("verify-instances", instances_csv, "-o", out, "--jobs", "2", "--quiet")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and res.exit_code in (0, 1)
    assert all(r["status"] in ("holds", "violated") for r in rows)


def test_interrupting_leaves_a_parseable_partial_output(instances_csv, monkeypatch):
    import verify.batch
    real = verify.batch.verify_many

    def two_then_ctrl_c(jobs, **kw):
        for k, r in enumerate(real(jobs, **kw)):
            yield r
            if k == 1:
                raise KeyboardInterrupt
    monkeypatch.setattr(verify.batch, "verify_many", two_then_ctrl_c)
    out = instances_csv.with_name("r.csv")
    res = _cli("verify-instances", instances_csv, "-o", out, "--jobs", "1")
    assert res.exit_code == 130
    rows = _rows(out)
    assert len(rows) == 2 and all(r["status"] in ("holds", "violated") for r in rows)


def _store_writer(directory, worker, n):
    from verify.proof_store import ProofStore
    from verify.result import Status, VerificationResult
    store = ProofStore(directory)
    for k in range(n):  # the same keys from both writers, and their own
        for key in (f"shared{k % 5}", f"own{worker}-{k}"):
            store.put_result("n" * 64, "p" * 64, key,
                             VerificationResult(Status.HOLDS, 0.1 * k, "bounds"))


def test_concurrent_store_writers_leave_every_entry_readable(tmp_path):
    import multiprocessing as mp

    from verify.proof_store import ProofStore
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_store_writer, args=(str(tmp_path), w, 40)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = ProofStore(tmp_path)
    keys = [f"shared{k}" for k in range(5)] + [f"own{w}-{k}" for w in range(2) for k in range(40)]
    for key in keys:
        assert store.get_result("n" * 64, "p" * 64, key) is not None, key
    assert not store.problems
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_reverify_with_two_jobs_gives_the_rows_of_one(instances, tmp_path):
    import json

    from compress import compress
    from verify.loading import load_network
    original = instances[0].network
    net = load_network(original)
    variants = [str(compress(net, r).save(tmp_path, r.replace(":", "-"))[0])
                for r in ("int8", "magnitude:0.2")]
    props = [j.property for j in instances[:4]]
    args = ["reverify", original, *variants] + [x for p in props for x in ("-p", p)]
    rows = {}
    for jobs in ("1", "2"):
        res = _cli(*args, "--json", "--timeout", "20", "--jobs", jobs)
        assert res.exit_code in (0, 1), res.output
        got = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
        rows[jobs] = sorted((Path(r["variant"]).name, Path(r["property"]).name, r["status"])
                            for r in got)
    assert len(rows["1"]) == 8 and rows["1"] == rows["2"]
