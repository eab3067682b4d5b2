"""Certified functional equivalence (``coreproof equiv``, :mod:`verify.equiv`)."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from compress import magnitude_prune, prune_neurons, quantize_weights
from verify.cli import main
from verify.equiv import bounds as eq_bounds
from verify.equiv.align import align
from verify.equiv.api import EquivOptions, certify_equivalence
from verify.equiv.attack import max_deviation
from verify.network import Affine, Network
from verify.result import Status

from conftest import assert_bad_input

VARIANTS = {
    "int8": lambda n: quantize_weights(n, 8).network,
    "int4": lambda n: quantize_weights(n, 4).network,
    "magnitude30": lambda n: magnitude_prune(n, 0.3).network,
    "neurons25": lambda n: prune_neurons(n, 0.25).network,
}
NO_SPLIT = EquivOptions(timeout=30, split=False)


def _box(x, eps):
    return np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)


def _largest_deviation(f, g, lo, hi, seed=1):
    """Per output, the largest |g - f| found by PGD (its own seed, more restarts)
    and by dense sampling, independently of what certify_equivalence searched."""
    rng = np.random.default_rng(seed)
    pgd = max_deviation(f, g, lo, hi, rng=rng, samples=0, restarts=12, steps=100).value
    xs = rng.uniform(lo, hi, size=(20000, lo.size))
    xs = np.vstack([xs, np.where(rng.random((2000, lo.size)) < 0.5, lo, hi)])  # corners
    dense = np.abs(g.forward(xs) - f.forward(xs)).max(0)
    return np.maximum(pgd, dense)


def _assert_sound(res, found):
    """Every bound the result reports is >= the deviation found, per output."""
    for name in ("delta", "root_differential", "root_product", "naive_delta"):
        bound = getattr(res, name)
        if bound is not None:
            assert np.all(np.asarray(bound) >= found), (name, bound, found)


@pytest.mark.parametrize("kind", sorted(VARIANTS))
@pytest.mark.parametrize("image", [0, 7])
def test_certified_delta_bounds_every_found_deviation(digits_mlp, kind, image):
    net, X, _ = digits_mlp
    variant = VARIANTS[kind](net)
    lo, hi = _box(X[image], 0.05)
    res = certify_equivalence(net, variant, lo, hi, NO_SPLIT)
    found = _largest_deviation(net, variant, lo, hi)
    _assert_sound(res, found)
    assert res.method == "differential"
    # the joint bound is tighter than the difference of two separate bounds
    assert res.max_delta < max(res.naive_delta)
    json.loads(res.to_json())


@pytest.mark.parametrize("kind", ["int8", "magnitude30"])
def test_interval_naive_bound_is_sound_and_looser(digits_mlp, kind):
    """The textbook baseline (two separate interval bounds) contains every sampled
    output of each network and every deviation found, and is looser than the
    certified delta."""
    from verify.bounds import interval_outputs
    net, X, _ = digits_mlp
    variant = VARIANTS[kind](net)
    lo, hi = _box(X[7], 0.05)
    xs = np.random.default_rng(0).uniform(lo, hi, size=(5000, lo.size))
    for n in (net, variant):
        low, up = interval_outputs(n, lo, hi)
        ys = n.forward(xs)
        assert np.all(ys >= low) and np.all(ys <= up)
    naive = eq_bounds.interval_naive_bound(net, variant, lo, hi)
    assert np.all(naive >= _largest_deviation(net, variant, lo, hi))
    assert certify_equivalence(net, variant, lo, hi, NO_SPLIT).max_delta < naive.max()


def test_split_bound_stays_sound_and_tightens(digits_mlp):
    net, X, _ = digits_mlp
    variant = VARIANTS["int4"](net)
    lo, hi = _box(X[3], 0.15)
    root = certify_equivalence(net, variant, lo, hi, NO_SPLIT)
    split = certify_equivalence(net, variant, lo, hi,
                                EquivOptions(timeout=4, target_delta=0.0, max_leaves=60))
    found = _largest_deviation(net, variant, lo, hi)
    _assert_sound(split, found)
    assert split.leaves > 1 and np.all(np.asarray(split.delta) <= np.asarray(root.delta) + 1e-12)


@pytest.mark.parametrize("mutation", ["drop_weight_change", "drop_chord_intercept"])
def test_a_mutated_bound_is_caught(digits_mlp, monkeypatch, mutation):
    """The soundness check above can fail: with a term of the differential
    bound dropped, some output's bound falls below a deviation found."""
    net, X, _ = digits_mlp
    if mutation == "drop_weight_change":
        init = eq_bounds.DiffPropagator.__init__

        def mutated(self, f, g):
            init(self, f, g)
            self.dW = [np.zeros_like(w) for w in self.dW]
        monkeypatch.setattr(eq_bounds.DiffPropagator, "__init__", mutated)
    else:
        relax = eq_bounds.diff_relaxation

        def mutated(*args):
            r = relax(*args)
            zero = np.zeros_like(r.cU)
            return eq_bounds.DiffRelaxation(r.aL, r.bL, zero, r.aU, r.bU, zero, r.alpha, r.s, r.t)
        monkeypatch.setattr(eq_bounds, "diff_relaxation", mutated)
    caught = False
    for kind in ("int4", "magnitude30"):
        for image in (0, 7):
            variant = VARIANTS[kind](net)
            lo, hi = _box(X[image], 0.05)
            res = certify_equivalence(net, variant, lo, hi, EquivOptions(split=False, product=False))
            found = _largest_deviation(net, variant, lo, hi)
            caught |= bool(np.any(np.asarray(res.root_differential) < found))
    assert caught


def test_identical_networks_have_delta_zero(digits_mlp):
    net, X, _ = digits_mlp
    lo, hi = _box(X[0], 0.02)
    res = certify_equivalence(net, net, lo, hi, NO_SPLIT)
    assert res.max_delta <= 1e-6 and res.status is Status.HOLDS and res.top1 == "certified"


def test_a_permuted_copy_is_aligned_and_has_delta_zero(digits_mlp):
    """Alignment matches neurons by their weights: a copy with its hidden
    neurons shuffled computes the same function, and gets delta ~ 0."""
    net, X, _ = digits_mlp
    rng = np.random.default_rng(3)
    p0, p1 = rng.permutation(16), rng.permutation(16)
    a0, a1, a2 = net.affines
    shuffled = Network((Affine(a0.weight[p0], a0.bias[p0]),
                        Affine(a1.weight[p1][:, p0], a1.bias[p1]),
                        Affine(a2.weight[:, p1], a2.bias)), net.input_shape, "shuffled")
    f, g = align(net, shuffled)
    xs = rng.uniform(0, 1, (200, 64))
    assert np.allclose(g.forward(xs), shuffled.forward(xs), atol=1e-12)
    lo, hi = _box(X[1], 0.05)
    assert certify_equivalence(net, shuffled, lo, hi, NO_SPLIT).max_delta <= 1e-6


def test_a_badly_compressed_variant_disagrees_on_a_replayed_input(digits_mlp):
    net, X, _ = digits_mlp
    variant = quantize_weights(net, 2).network
    lo, hi = _box(X[0], 0.1)
    res = certify_equivalence(net, variant, lo, hi, EquivOptions(timeout=5))
    assert res.status is Status.VIOLATED and res.top1 == "disagreement"
    x = np.asarray(res.disagreement["input"])
    assert np.all(x >= lo) and np.all(x <= hi)
    assert net.forward(x).argmax() != variant.forward(x).argmax()
    assert res.disagreement["original_class"] == net.forward(x).argmax()


# ---- command line -------------------------------------------------------------------------
@pytest.fixture()
def saved(digits_mlp, tmp_path):
    from verify.onnx_io import save_onnx
    net, X, _ = digits_mlp
    paths = {}
    for name, v in (("net", net), ("int8", VARIANTS["int8"](net)),
                    ("int2", quantize_weights(net, 2).network)):
        paths[name] = str(tmp_path / f"{name}.onnx")
        save_onnx(v, paths[name])
    np.save(tmp_path / "x0.npy", X[0])
    paths["x0"] = str(tmp_path / "x0.npy")
    return paths


def _run(*args):
    return CliRunner().invoke(main, ["equiv", *args])


def test_cli_exit_codes(saved):
    same = _run(saved["net"], saved["net"], "--around", saved["x0"], "--eps", "0.02",
                "--clip", "0,1", "--json")
    assert same.exit_code == 0, same.output
    d = json.loads(same.stdout)
    assert d["status"] == "holds" and d["max_delta"] <= 1e-6
    bad = _run(saved["net"], saved["int2"], "--around", saved["x0"], "--eps", "0.1", "--clip", "0,1")
    assert bad.exit_code == 1 and "disagreement (replayed)" in bad.stdout
    # a target below the float widening cannot be certified, and nothing exceeds it
    unknown = _run(saved["net"], saved["net"], "--box", "0,1", "--target-delta", "0", "--no-split")
    assert unknown.exit_code == 3, unknown.output


def test_cli_bad_input(saved):
    assert_bad_input(_run(saved["net"], saved["int8"], "--box", "0,1", "--around", saved["x0"]),
                     "exactly one region")
    assert_bad_input(_run(saved["net"], saved["int8"], "--around", saved["x0"]), "--eps")
    assert_bad_input(_run(saved["net"], saved["int8"], "--box", "1,0"), "--box")
    assert_bad_input(_run(saved["net"], saved["int8"], "--around", saved["net"], "--eps", "0.1"),
                     "net.onnx")


# ---- ACAS Xu (data) ------------------------------------------------------------------------
def test_acasxu_int8_and_magnitude(data_dir):
    from verify.api import load_network, load_property
    from verify.equiv.api import property_box
    net = load_network(data_dir / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx")
    lo, hi = property_box(load_property(data_dir / "acasxu" / "prop_3.vnnlib", net))
    for variant in (quantize_weights(net, 8).network, magnitude_prune(net, 0.1).network):
        res = certify_equivalence(net, variant, lo, hi,
                                  EquivOptions(timeout=3, target_delta=0.0, argmin=True))
        _assert_sound(res, _largest_deviation(net, variant, lo, hi))
        assert res.max_delta < min(res.root_differential)  # splitting tightened it


def test_cli_property_region_on_acasxu(data_dir, tmp_path):
    from verify.api import load_network
    from verify.onnx_io import save_onnx
    acas = data_dir / "acasxu"
    net = load_network(acas / "ACASXU_run2a_1_1_batch_2000.onnx")
    save_onnx(quantize_weights(net, 8).network, tmp_path / "int8.onnx")
    res = _run(str(acas / "ACASXU_run2a_1_1_batch_2000.onnx"), str(tmp_path / "int8.onnx"),
               "--property", str(acas / "prop_4.vnnlib"), "--argmin", "--no-split", "--json")
    d = json.loads(res.stdout)
    assert res.exit_code == {"holds": 0, "violated": 1, "unknown": 3}[d["status"]]
    assert d["region"] == "the input box of prop_4.vnnlib" and d["n_inputs"] == 5
    assert d["max_delta"] >= max(d["deviation_found"]) and d["method"] == "differential"


def test_a_network_of_another_depth_falls_back_to_the_product_bound(digits_mlp):
    """No neuron alignment exists between different depths: the product
    network's bound is used, and it is sound too."""
    net, X, _ = digits_mlp
    rng = np.random.default_rng(4)
    student = Network((Affine(rng.normal(0, 0.2, (12, 64)), rng.normal(0, 0.1, 12)),
                       Affine(rng.normal(0, 0.3, (10, 12)), rng.normal(0, 0.1, 10))),
                      net.input_shape, "student")
    lo, hi = _box(X[2], 0.05)
    res = certify_equivalence(net, student, lo, hi, NO_SPLIT)
    assert res.method == "product" and res.root_differential is None
    _assert_sound(res, _largest_deviation(net, student, lo, hi))
