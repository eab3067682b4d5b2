"""Certified equivalence on graph networks (CNNs, residual nets): the
product-graph bound of ``|g - f|`` (with the node-by-node differential bound for
variants of one architecture, see test_equiv_graph_diff.py) holds against a gradient
search for every variant kind, a mutated product is caught, a disagreement is replayed, and the
CLI reads two ONNX CNNs."""
import json

import numpy as np
import pytest

from compress.graph_compress import compress_graph
from verify.equiv import bounds as eq_bounds
from verify.equiv.api import EquivOptions, certify_equivalence
from verify.equiv.attack import max_deviation
from verify.equiv.bounds import product_graph
from verify.equiv.graph_diff_bound import graph_diff

from graph_nets import pooling, residual

RECIPES = ["int8", "magnitude:0.3", "channels:0.34", "svd:2"]


def _pair(make, recipe, seed=0):
    net = make(np.random.default_rng(seed))
    return net, compress_graph(net, recipe).network


def _box(net, eps, seed=1):
    x = np.random.default_rng(seed).uniform(0.2, 0.8, net.n_inputs)
    return x - eps, x + eps


@pytest.mark.parametrize("make", [residual, pooling])
def test_product_graph_computes_the_difference(make):
    f, g = _pair(make, "int8")
    xs = np.random.default_rng(2).uniform(-1, 1, (16, f.n_inputs))
    np.testing.assert_allclose(product_graph(f, g).forward(xs), g.forward(xs) - f.forward(xs),
                               rtol=1e-12, atol=1e-12)


# (channel pruning leaves the pooling net as it is: its channels feed a MaxPool rewrite;
# svd:2 factorises every Conv and Gemm into two nodes, compress.graph_factorize)
@pytest.mark.parametrize("make,recipe", [(residual, r) for r in RECIPES]
                         + [(pooling, r) for r in RECIPES[:2] + RECIPES[3:]])
def test_certified_delta_is_above_every_deviation_found(make, recipe):
    f, g = _pair(make, recipe)
    lo, hi = _box(f, 0.05)
    res = certify_equivalence(f, g, lo, hi, EquivOptions(timeout=5, split=False))
    # one architecture (int8, magnitude): also the node-by-node differential bound
    aligned = graph_diff(f, g) is not None
    assert res.method == ("differential" if aligned else "product")
    assert (res.root_differential is not None) == aligned
    assert aligned or recipe.startswith(("channels", "svd"))  # other nodes: product only
    dev = max_deviation(f, g, lo, hi, rng=np.random.default_rng(3), samples=3000, restarts=16,
                        steps=80)
    assert np.all(np.asarray(res.delta) >= dev.value - 1e-9), (recipe, res.delta, dev.value)
    assert np.all(np.asarray(res.delta) >= np.asarray(res.deviation_found) - 1e-9)
    assert np.all(dev.value > 0)  # the variant really differs (the check is not vacuous)


def test_a_mutated_product_graph_is_caught(monkeypatch):
    """With the original's branch of the product replaced by the variant's own
    (so the product bounds g - g), the certified delta falls below a deviation found
    (the differential bound left out: it would mask the mutation)."""
    real = eq_bounds.product_graph
    monkeypatch.setattr("verify.equiv.search.product_graph", lambda f, g: real(g, g))
    monkeypatch.setattr("verify.equiv.search.graph_diff", lambda f, g: None)
    f, g = _pair(residual, "magnitude:0.3")
    lo, hi = _box(f, 0.05)
    res = certify_equivalence(f, g, lo, hi, EquivOptions(timeout=5, split=False))
    dev = max_deviation(f, g, lo, hi, rng=np.random.default_rng(3), samples=3000, restarts=16,
                        steps=80)
    assert np.any(np.asarray(res.delta) < dev.value - 1e-9)


def test_a_disagreement_is_found_and_replayed():
    f, g = _pair(residual, "magnitude:0.8")
    lo, hi = _box(f, 0.5)
    res = certify_equivalence(f, g, lo, hi, EquivOptions(timeout=5, split=False))
    assert res.status.value == "violated" and res.top1 == "disagreement"
    d = res.disagreement
    x = np.array(d["input"])
    assert np.all(x >= lo) and np.all(x <= hi)
    assert int(np.argmax(f.forward(x))) == d["original_class"]
    assert int(np.argmax(g.forward(x))) == d["variant_class"] != d["original_class"]


def test_identical_cnns_are_certified_to_agree():
    f = residual(np.random.default_rng(0))
    lo, hi = _box(f, 0.01)
    res = certify_equivalence(f, f, lo, hi, EquivOptions(timeout=5, split=False))
    assert res.top1 == "certified" and res.status.value == "holds"


def test_cli_on_two_onnx_cnns(tmp_path):
    from click.testing import CliRunner
    from verify.cli import main
    from verify.graph.onnx_write import save_graph_onnx
    f, g = _pair(pooling, "int8")
    save_graph_onnx(f, tmp_path / "f.onnx", dtype=np.float64)
    save_graph_onnx(g, tmp_path / "g.onnx", dtype=np.float64)
    lo, hi = _box(f, 0.02)
    np.save(tmp_path / "x.npy", (lo + hi) / 2)
    out = CliRunner().invoke(main, ["equiv", str(tmp_path / "f.onnx"), str(tmp_path / "g.onnx"),
                                    "--around", str(tmp_path / "x.npy"), "--eps", "0.02",
                                    "--no-split", "--json", "--timeout", "5"])
    assert out.exit_code in (0, 1, 3), out.output
    d = json.loads(out.output)
    assert d["method"] == "differential" and len(d["delta"]) == f.n_outputs
    assert d["root_differential"] is not None and d["root_product"] is not None
    assert max(d["delta"]) >= max(d["deviation_found"])
