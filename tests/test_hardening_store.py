"""Issue 13, the proof store and the pytest cache as untrusted input: entries are
sealed with a content digest, undecodable bytes are a corrupt entry, and a
stored holds is used only after its proof re-checks on the network.  Each test
failed on main before."""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_bad_input
from test_hardening import NET, PROP1, box_prop, run, small_net
from test_pytest_plugin import FAILING_SUITE, suite, summary  # noqa: F401 - fixture
from test_pytest_plugin import run as run_suite

pytest_plugins = ["pytester"]


# ---- proof store and pytest cache: untrusted input ------------------------------------------
def _acas_proof(prop_path=PROP1):
    from verify.api import VerifyOptions, load_network, load_property, verify_property
    from verify.reuse.check import record_of
    from verify.verifier import Proof
    net = load_network(NET)
    prop = load_property(prop_path, net)
    proof = Proof()
    res = verify_property(net, prop, VerifyOptions(timeout=60), proof=proof)
    return net, prop, record_of(net, prop, res, proof)


@pytest.fixture(scope="module")
def acas_proof():
    return _acas_proof()


def test_store_entry_with_undecodable_bytes_is_a_reported_miss(tmp_path):
    from verify.proof_store import ProofStore
    store = ProofStore(tmp_path)
    path = store.path_for("a" * 64, "b" * 64, "k")
    path.parent.mkdir(parents=True)
    for data in (b'{"schema": 1, "x": "\xff\xfe"}', b"[" * 100000):
        path.write_bytes(data)
        assert store.get("a" * 64, "b" * 64, "k") is None
        assert "corrupt entry" in store.problems[-1]


def test_store_entry_edited_after_writing_is_a_reported_miss(tmp_path):
    from verify.proof_store import ProofStore
    from verify.result import Counterexample, Status, VerificationResult
    store = ProofStore(tmp_path)
    cex = Counterexample((0.0,), (1.0,), 0, 0, -1.0)
    res = VerificationResult(Status.VIOLATED, 1.0, "attack", cex)
    path = store.put_result("a" * 64, "b" * 64, "k", res)
    assert store.get("a" * 64, "b" * 64, "k") is not None
    path.write_text(path.read_text().replace('"violated"', '"holds"'))
    assert store.get("a" * 64, "b" * 64, "k") is None
    assert "content digest" in store.problems[-1]


def test_a_proof_rechecks_and_tampered_proofs_do_not(acas_proof):
    import dataclasses

    from verify.reuse.check import check_proof
    net, prop, record = acas_proof
    assert len(record.regions[0]) > 1
    assert check_proof(net, prop, record).ok
    branches = record.regions[0]
    dropped = dataclasses.replace(record, regions={0: branches[1:]})
    assert "do not tile" in check_proof(net, prop, dropped).reason
    moved = [dataclasses.replace(b, lower=b.lower + 0.5, upper=b.upper + 0.5) for b in branches]
    assert not check_proof(net, prop, dataclasses.replace(record, regions={0: moved})).ok
    other = net.with_affines([net.affines[0], *net.affines[1:-1],
                              type(net.affines[-1])(-np.asarray(net.affines[-1].weight),
                                                    net.affines[-1].bias)])
    assert "another network" in check_proof(other, prop, record).reason


def test_a_fake_proof_of_a_violated_property_is_rejected(tmp_path):
    import dataclasses

    from verify.api import load_property
    from verify.reuse.check import check_proof
    from verify.reuse.proof import ProofBranch
    net, prop, record = _acas_proof()
    bad = load_property(box_prop(tmp_path / "v.vnnlib", lo=-0.1, hi=0.1, rhs=-1e6), net)  # y0 <= 1e6
    region = bad.regions[0]
    fake = dataclasses.replace(record, property=bad.digest(),
                               regions={0: [ProofBranch(region.lower, region.upper, (), "bounds")]})
    out = check_proof(net, bad, fake)
    assert not out.ok and "does not close" in out.reason


def test_check_proof_command(tmp_path):
    proof = tmp_path / "proof.json"
    res = run("verify", NET, PROP1, "--quiet", "--save-proof", proof)
    assert res.exit_code == 0 and proof.is_file()
    ok = run("check-proof", NET, PROP1, proof)
    assert ok.exit_code == 0 and "CERTIFIED" in ok.stdout, ok.output
    d = json.loads(proof.read_text())
    d["regions"]["0"] = d["regions"]["0"][1:]
    proof.write_text(json.dumps(d))
    bad = run("check-proof", NET, PROP1, proof)
    assert bad.exit_code == 3 and "NOT CERTIFIED" in bad.stdout, bad.output
    proof.write_bytes(b"\xff\xfe garbage")
    assert_bad_input(run("check-proof", NET, PROP1, proof), "proof.json")


def _fake_original_proof(tmp_path):
    """A store entry claiming the (violated) property holds on the original, with
    a one-branch proof and a recomputed digest: a forged, well-formed entry."""
    from verify.api import VerifyOptions, load_network, load_property
    from verify.onnx_io import save_onnx
    from verify.proof_store import ProofStore
    from verify.reuse.proof import ProofBranch, ProofRecord, save_proof
    orig = small_net()
    save_onnx(orig, tmp_path / "orig.onnx")
    net = load_network(tmp_path / "orig.onnx")
    prop_path = box_prop(tmp_path / "v.vnnlib", rhs=-1e6)  # y0 <= 1e6: violated everywhere
    prop = load_property(prop_path, net)
    region = prop.regions[0]
    fake = ProofRecord(net.digest(), prop.digest(), "holds", 0.1,
                       regions={0: [ProofBranch(region.lower, region.upper, (), "bounds")]})
    save_proof(ProofStore(tmp_path / "store"), fake, prop, VerifyOptions(timeout=10))
    return tmp_path / "orig.onnx", prop_path


def test_reverify_cache_rechecks_the_originals_stored_proof(tmp_path):
    orig, prop = _fake_original_proof(tmp_path)
    res = run("reverify", orig, orig, "-p", prop, "--cache", tmp_path / "store", "--timeout", "10")
    assert "failed its re-check" in res.stderr, res.output
    assert "original orig / v.vnnlib: violated" in res.stderr
    assert res.exit_code == 1, res.output  # the variant (the same network) is violated too


def test_reverify_trust_cache_is_the_explicit_opt_out(tmp_path):
    orig, prop = _fake_original_proof(tmp_path)
    res = run("reverify", orig, orig, "-p", prop, "--cache", tmp_path / "store", "--timeout", "10",
              "--trust-cache")
    assert "holds (from the proof store, trusted)" in res.stderr, res.output


def _forge_holds(entry: Path) -> None:
    """Edit a cached 'violated' into 'holds', as a user could, and reseal it."""
    from verify.proof_store import content_digest
    d = json.loads(entry.read_text())
    d["result"]["status"], d["result"]["counterexample"] = "holds", None
    d["digest"] = content_digest(d)
    entry.write_text(json.dumps(d))


def test_pytest_cache_edited_to_holds_does_not_make_a_failing_test_pass(suite):
    suite.makepyfile(test_fail=FAILING_SUITE)
    run_suite(suite).assert_outcomes(failed=1)
    entries = sorted((suite.path / ".coreproof" / "proofs").rglob("*.json"))
    violated = [e for e in entries if '"violated"' in e.read_text()]
    assert len(violated) == 1
    # an edit without resealing: the digest does not match
    violated[0].write_text(violated[0].read_text().replace('"violated"', '"holds"', 1))
    again = run_suite(suite)
    again.assert_outcomes(failed=1)
    assert "content digest does not match" in again.stdout.str()
    # a resealed forgery: a holds without a proof is not served
    entry = next(e for e in sorted((suite.path / ".coreproof" / "proofs").rglob("*.json"))
                 if '"violated"' in e.read_text())
    _forge_holds(entry)
    third = run_suite(suite)
    third.assert_outcomes(failed=1)
    assert "has no proof to re-check" in third.stdout.str()
    assert summary(third)["cached"] == 1  # only the genuine holds, re-checked
    # the explicit opt-out serves it
    _forge_holds(entry)
    trusted = run_suite(suite, "--coreproof-trust-cache")
    trusted.assert_outcomes(passed=1)
