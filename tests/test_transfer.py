"""Proof transfer by equivalence (:mod:`verify.reuse.transfer`): distilled students and
ordinary variants re-verified from the original's proof margin."""
from __future__ import annotations

import json

import numpy as np
import pytest

from compress import quantize_weights
from verify.network import Affine
from verify.options import VerifyOptions
from verify.properties import local_robustness
from verify.reuse import ReuseOptions, build_proof, reverify
from verify.verifier import verify_property
from vnnlib_files import write_robustness_vnnlib

OPTS = VerifyOptions(timeout=20)


@pytest.fixture(scope="module")
def student(digits_mlp):
    """A 64-32-10 student (one hidden layer; the original has two) distilled from
    the digits MLP's logits on all digits images (fixed seed, under a second)."""
    import torch
    from sklearn.datasets import load_digits

    from verify.torch_io import from_torch, to_torch
    net, _, _ = digits_mlp
    X, _ = load_digits(return_X_y=True)
    x = torch.from_numpy((X / 16.0).astype(np.float32))
    torch.manual_seed(1)
    with torch.no_grad():
        target = to_torch(net).float()(x)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(400):
        opt.zero_grad()
        loss = ((model(x) - target) ** 2).mean()
        loss.backward()
        opt.step()
    return from_torch(model.eval())


def _no_sampled_violation(net, prop, n=3000, seed=0):
    region = prop.regions[0]
    xs = np.random.default_rng(seed).uniform(region.lower, region.upper,
                                             size=(n, region.n_inputs))
    return not any(region.unsafe_output(y) for y in net.forward(xs))


def test_a_distilled_student_is_reverified_and_says_how(digits_mlp, student):
    net, X, _ = digits_mlp
    assert student.hidden_sizes != net.hidden_sizes  # no structural map to the original
    methods = []
    for i in range(6):
        for eps in (0.005, 0.02, 0.05):
            prop = local_robustness(X[i], eps, int(net.forward(X[i]).argmax()), 10)
            r = reverify(net, student, prop, OPTS)
            s = verify_property(student, prop, OPTS)
            assert r.status == s.status, (i, eps, r.method, s.status)
            json.loads(json.dumps(r.to_dict(), allow_nan=False))
            methods.append(r.method)
            if r.method == "equivalence-transfer":
                assert r.status.value == "holds" and _no_sampled_violation(student, prop)
                assert r.reuse.transfer_tried and r.reuse.transfer_boxes >= 1
                assert r.reuse.transfer_margin > 0
            elif r.status.value == "holds":
                # the transfer did not close it: verified from scratch, and said so
                assert r.method.startswith("scratch-"), r.method
                assert r.reuse.fallback
    assert "equivalence-transfer" in methods
    assert any(m.startswith("scratch-") for m in methods)


def test_ordinary_variants_transfer_after_the_tiers(digits_mlp):
    """A related variant: the proof's tiers first (they close this pair without the
    transfer); the transfer, which reverify tries once they give up, carries it too."""
    from verify.reuse.results import ReuseStats
    from verify.reuse.transfer import try_transfer
    net, X, _ = digits_mlp
    prop = local_robustness(X[2], 0.02, int(net.forward(X[2]).argmax()), 10)
    proof = build_proof(net, prop, OPTS)
    v = quantize_weights(net, 8)
    r = reverify(net, v, prop, OPTS, proof=proof)
    assert r.status.value == "holds" and r.method.startswith("reuse-"), r.method
    assert not r.reuse.transfer_tried
    stats = ReuseStats()
    assert try_transfer(net, getattr(v, "network", v), prop, proof, ReuseOptions(), stats, False)
    # the certified deviation along the rows stays below the original's margin
    assert 0 <= stats.transfer_deviation < stats.transfer_margin
    # a variant whose target score drops below another class's is not transferred
    y = net.forward(X[2])
    t = int(y.argmax())
    bias = net.affines[-1].bias.copy()
    bias[t] -= y[t] - np.sort(y)[-2] + 1.0
    broken = net.with_affines(net.affines[:-1] + (Affine(net.affines[-1].weight, bias),))
    assert not try_transfer(net, broken, prop, proof, ReuseOptions(), ReuseStats(), False)
    r = reverify(net, broken, prop, OPTS, proof=proof)
    assert r.status.value == "violated" and r.method != "equivalence-transfer"


def test_transfer_cuts_no_corners_on_a_nearly_broken_variant(digits_mlp):
    """A variant just inside / just outside the original's margin at the box centre:
    the transfer never claims a property the variant violates."""
    net, X, _ = digits_mlp
    prop = local_robustness(X[4], 0.01, int(net.forward(X[4]).argmax()), 10)
    proof = build_proof(net, prop, OPTS)
    y = net.forward(X[4])
    t = int(y.argmax())
    gap = y[t] - np.sort(y)[-2]
    for shift in (0.2 * gap, 0.9 * gap, 1.05 * gap):
        bias = net.affines[-1].bias.copy()
        bias[t] -= shift
        v = net.with_affines(net.affines[:-1] + (Affine(net.affines[-1].weight, bias),))
        r = reverify(net, v, prop, OPTS, proof=proof)
        s = verify_property(v, prop, OPTS)
        assert r.status == s.status, (shift / gap, r.method)
        if r.method == "equivalence-transfer":
            assert _no_sampled_violation(v, prop)


def test_cli_reverify_of_a_student_names_the_method(digits_mlp, student, tmp_path):
    from click.testing import CliRunner

    from verify.cli import main
    from verify.onnx_io import save_onnx
    net, X, _ = digits_mlp
    save_onnx(net, tmp_path / "teacher.onnx")
    save_onnx(student, tmp_path / "student.onnx")  # no change record: no structural map
    target = int(net.forward(X[0]).argmax())
    write_robustness_vnnlib(tmp_path / "p.vnnlib", np.clip(X[0] - 0.005, 0, 1),
                      np.clip(X[0] + 0.005, 0, 1), target)
    res = CliRunner().invoke(main, ["reverify", str(tmp_path / "teacher.onnx"),
                                    str(tmp_path / "student.onnx"), "--property",
                                    str(tmp_path / "p.vnnlib"), "--json", "--quiet"])
    assert res.exit_code in (0, 1, 3), res.output
    row = json.loads(res.stdout)
    assert row["method"] == "equivalence-transfer" or row["method"].startswith("scratch-")
    assert row["recipe"] is None
    human = CliRunner().invoke(main, ["reverify", str(tmp_path / "teacher.onnx"),
                                      str(tmp_path / "student.onnx"), "--property",
                                      str(tmp_path / "p.vnnlib"), "--quiet"])
    assert row["method"] in human.stdout
    if row["method"] == "equivalence-transfer":
        assert "original's margin >=" in human.stdout
