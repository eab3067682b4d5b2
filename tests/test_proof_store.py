"""Tests for verify.proof_store (and VerificationResult.from_dict)."""
from __future__ import annotations

import json
import multiprocessing as mp
import os

import pytest

from verify.options import VerifyOptions
from verify.proof_store import (ProofStore, make_payload, options_key,
                                result_from_dict)
from verify.result import Counterexample, Statistics, Status, VerificationResult

NET = "a" * 64
PROP = "b" * 64
KEY = options_key(VerifyOptions())


def holds_result(**kw) -> VerificationResult:
    return VerificationResult(Status.HOLDS, 0.25, "bounds", network="net", property="p",
                              statistics=Statistics(n_relus=4, stable_active=3, **kw))


def violated_result() -> VerificationResult:
    cex = Counterexample(input=(0.1, 0.2), output=(1.0, 2.0), region=0, conjunction=0,
                         margin=-1.0)
    return VerificationResult(Status.VIOLATED, 0.5, "attack", counterexample=cex)


def test_from_dict_round_trips():
    for r in (holds_result(core_size=7), violated_result(),
              VerificationResult(Status.UNKNOWN, 1.0, "timeout", reason="out of time")):
        back = VerificationResult.from_dict(json.loads(r.to_json()))
        assert back == r
        assert result_from_dict(r.to_dict()) == r


def test_from_dict_ignores_unknown_statistics_and_rejects_garbage():
    d = holds_result().to_dict()
    d["statistics"]["added_later"] = 3
    assert VerificationResult.from_dict(d).statistics.n_relus == 4
    with pytest.raises((KeyError, TypeError, ValueError)):
        VerificationResult.from_dict({"status": "maybe", "time_s": 1, "method": "x"})
    with pytest.raises((KeyError, TypeError, ValueError)):  # violated needs a counterexample
        VerificationResult.from_dict({"status": "violated", "time_s": 1, "method": "x"})


def test_options_key_ignores_time_budgets_only():
    base = options_key(VerifyOptions())
    assert base == options_key(None)
    assert len(base) == 8
    assert options_key(VerifyOptions(timeout=1.0, z3_query_timeout=3.0)) == base
    assert options_key(VerifyOptions(use_z3=False)) != base
    assert options_key(VerifyOptions(seed=1)) != base


def test_put_get_round_trip_and_layout(tmp_path):
    store = ProofStore(tmp_path / "proofs")
    assert store.get(NET, PROP, KEY) is None
    path = store.put_result(NET, PROP, KEY, holds_result(), proof={"core": [1, 2]})
    assert path == tmp_path / "proofs" / NET[:16] / f"{PROP[:16]}-{KEY}.json"
    payload = store.get(NET, PROP, KEY)
    assert payload["schema"] == 1
    assert payload["network"] == NET and payload["property"] == PROP
    assert payload["proof"] == {"core": [1, 2]}
    assert payload["created"] and payload["coreproof_version"]
    assert store.get_result(NET, PROP, KEY) == holds_result()
    # other keys are separate entries
    assert store.get(NET, PROP, "other") is None
    assert store.get(NET, "c" * 64, KEY) is None
    # no temp files left behind
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert store.problems == []


def test_violated_is_cached_with_counterexample(tmp_path):
    store = ProofStore(tmp_path)
    store.put_result(NET, PROP, KEY, violated_result())
    back = store.get_result(NET, PROP, KEY)
    assert back.status is Status.VIOLATED
    assert back.counterexample.input == (0.1, 0.2)


def test_unknown_is_never_cached(tmp_path):
    store = ProofStore(tmp_path)
    unknown = VerificationResult(Status.UNKNOWN, 1.0, "timeout", reason="deadline")
    assert store.put_result(NET, PROP, KEY, unknown) is None
    assert store.put(NET, PROP, KEY, make_payload(NET, PROP, unknown)) is None
    assert store.get(NET, PROP, KEY) is None
    assert not any(tmp_path.rglob("*.json"))


def test_put_rejects_mismatching_payload(tmp_path):
    store = ProofStore(tmp_path)
    with pytest.raises(ValueError):
        store.put(NET, PROP, KEY, make_payload(NET, "c" * 64, holds_result()))
    with pytest.raises(ValueError):
        store.path_for("../etc", PROP, KEY)


@pytest.mark.parametrize("content", [
    "{not json",
    "",
    "[1, 2, 3]",
    json.dumps({"schema": 99}),
    json.dumps(make_payload(NET, "c" * 64, holds_result().to_dict())),
    json.dumps({**make_payload(NET, PROP, holds_result()), "result": {"status": "holds"}}),
    json.dumps(make_payload(NET, PROP, {"status": "unknown", "time_s": 1, "method": "x"})),
])
def test_corrupt_entries_are_misses_and_reported(tmp_path, content, caplog):
    store = ProofStore(tmp_path)
    path = store.path_for(NET, PROP, KEY)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert store.get(NET, PROP, KEY) is None
    assert store.get_result(NET, PROP, KEY) is None
    assert len(store.problems) == 2 and str(path) in store.problems[0]
    assert "proof store" in caplog.text
    # a fresh put repairs the entry
    store.put_result(NET, PROP, KEY, holds_result())
    assert store.get_result(NET, PROP, KEY).status is Status.HOLDS


@pytest.mark.skipif(os.name == "nt" or getattr(os, "geteuid", lambda: 0)() == 0,
                    reason="needs POSIX permissions as a non-root user")
def test_unwritable_directory_is_reported_not_raised(tmp_path):
    tmp_path.chmod(0o500)
    try:
        store = ProofStore(tmp_path / "proofs")
        assert store.put_result(NET, PROP, KEY, holds_result()) is None
        assert store.problems and "cannot write" in store.problems[0]
    finally:
        tmp_path.chmod(0o700)


def test_unwritable_path_is_reported_not_raised(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the store wants a directory
    store = ProofStore(blocker)
    assert store.put_result(NET, PROP, KEY, holds_result()) is None
    assert store.problems and "cannot write" in store.problems[0]


def _writer(directory: str, worker: int, rounds: int, barrier) -> None:
    store = ProofStore(directory)
    # each writer's payload is distinguishable but equally valid
    result = VerificationResult(Status.HOLDS, float(worker), f"worker{worker}",
                                statistics=Statistics(n_relus=worker))
    big_proof = {"worker": worker, "core": list(range(20000))}  # > one page: tearing would show
    barrier.wait()
    for _ in range(rounds):
        assert store.put_result(NET, PROP, KEY, result, proof=big_proof) is not None
        got = store.get(NET, PROP, KEY)  # a reader never sees a torn file
        assert got is not None, store.problems
        assert got["proof"]["core"][-1] == 19999


def test_concurrent_writers_never_corrupt(tmp_path):
    ctx = mp.get_context("spawn" if os.name == "nt" else "fork")
    n = 6
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 15, barrier)) for w in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * n
    store = ProofStore(tmp_path)
    path = store.path_for(NET, PROP, KEY)
    payload = json.loads(path.read_text())  # parses
    assert payload["proof"]["worker"] in range(n)
    assert store.get_result(NET, PROP, KEY).method == f"worker{payload['proof']['worker']}"
    assert store.problems == []
    leftovers = [p.name for p in path.parent.iterdir() if p.name != path.name]
    assert leftovers == []
