"""The node-by-node differential bound of ``equiv`` on CNNs (verify.equiv.graph_diff_bound):
on the digits CNN trained here, for an int8 and a 10 % magnitude-pruned variant, the
differential bound alone and its best with the product-graph bound hold against a
gradient search and sampled points, the combination is never worse than the product
bound alone (and better on the wider box), a mutation that drops the weight change's
own term ``dL(h)`` is caught, and identical graphs get delta 0."""
import numpy as np
import pytest

from compress.graph_compress import compress_graph
from test_graph_search import digits_cnn  # noqa: F401 - the fixture
from verify.equiv.api import EquivOptions, certify_equivalence
from verify.equiv.attack import max_deviation
from verify.equiv.search import PairBounder

RECIPES = ["int8", "magnitude:0.1"]


def _box(X, eps, i=0):
    return X[i] - eps, X[i] + eps


def _sampled(f, g, lo, hi, n=2000, seed=4):
    """max |g - f| per output on uniform samples and corners of the box."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(lo, hi, size=(n, len(lo)))
    x[: n // 4] = np.where(rng.random((n // 4, len(lo))) < 0.5, lo, hi)
    return np.abs(g.forward(x) - f.forward(x)).max(axis=0)


def _found(f, g, lo, hi):
    """The larger of the gradient search's and the samples' deviations, per output."""
    dev = max_deviation(f, g, lo, hi, rng=np.random.default_rng(3), samples=1000, restarts=8,
                        steps=60)
    return np.maximum(dev.value, _sampled(f, g, lo, hi))


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("eps", [0.02, 0.05])
def test_differential_and_combined_bounds_hold(digits_cnn, recipe, eps):  # noqa: F811
    f, X, _ = digits_cnn
    g = compress_graph(f, recipe).network
    lo, hi = _box(X, eps)
    bounder = PairBounder(f, g)
    assert bounder.gdiff is not None and bounder.aligned
    root = bounder.bound(lo, hi)
    found = _found(f, g, lo, hi)
    assert np.all(found > 0)  # the variant really differs (the checks are not vacuous)
    assert np.all(root.differential >= found - 1e-9), (root.differential, found)
    assert np.all(root.delta >= found - 1e-9), (root.delta, found)
    # the best of two sound bounds: never above the product bound alone
    assert np.all(root.delta <= root.product + 1e-12)
    res = certify_equivalence(f, g, lo, hi, EquivOptions(timeout=5, split=False))
    assert res.method == "differential" and res.root_differential is not None
    assert np.all(np.asarray(res.delta) >= found - 1e-9)
    print(f"{recipe} eps {eps}: product {root.product.max():.4g}, differential "
          f"{root.differential.max():.4g}, combined {root.delta.max():.4g}, found "
          f"{found.max():.4g}")


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_differential_bound_beats_the_product_on_a_wider_box(digits_cnn, recipe):  # noqa: F811
    """On eps 0.05 the product graph's CROWN bound grows with the box, the change's
    interval bound with the (small) weight change: the combination is far tighter."""
    f, X, _ = digits_cnn
    g = compress_graph(f, recipe).network
    root = PairBounder(f, g).bound(*_box(X, 0.05))
    assert root.delta.max() < 0.75 * root.product.max(), (root.delta, root.product)


@pytest.mark.parametrize("recipe", RECIPES)
def test_spec_rows_change_bound_holds(digits_cnn, recipe):  # noqa: F811
    """``spec_rows`` (equivalence transfer's bound): the change of random rows is
    bounded below on two boxes at once."""
    f, X, _ = digits_cnn
    g = compress_graph(f, recipe).network
    rows = np.random.default_rng(5).normal(size=(3, f.n_outputs))
    boxes = [_box(X, 0.03, i) for i in (1, 2)]
    lo, hi = np.stack([b[0] for b in boxes]), np.stack([b[1] for b in boxes])
    f_low, change = PairBounder(f, g, product=False).spec_rows(lo, hi, rows)
    assert np.all(np.isfinite(change))
    for b in range(2):
        x = np.random.default_rng(b).uniform(lo[b], hi[b], size=(2000, f.n_inputs))
        assert np.all((g.forward(x) - f.forward(x)) @ rows.T >= change[b] - 1e-9)
        assert np.all(f.forward(x) @ rows.T >= f_low[b] - 1e-9)


def test_a_change_without_its_weight_term_is_caught(digits_cnn, monkeypatch):  # noqa: F811
    """The soundness check can fail: with ``dL(h)`` dropped from every changed node's
    change (only ``L_g(dh)`` kept), the differential bound falls below deviations found."""
    from verify.reuse import graph_difference as gd
    real = gd.GraphDiff._change

    def wrong(self, step, op, ins, h, ds, in_shapes, B):
        if step == "same":
            return real(self, step, op, ins, h, ds, in_shapes, B)
        linear, _ = step
        if ds[0] is None:
            return None
        mid, rad = linear.forward(ds[0][0]), linear.abs_forward(ds[0][1])
        return mid, rad
    monkeypatch.setattr(gd.GraphDiff, "_change", wrong)
    f, X, _ = digits_cnn
    g = compress_graph(f, "int8").network
    lo, hi = _box(X, 0.02)
    root = PairBounder(f, g).bound(lo, hi)
    assert np.any(root.differential < _found(f, g, lo, hi) - 1e-9)


def test_identical_cnns_get_delta_zero(digits_cnn):  # noqa: F811
    f, X, _ = digits_cnn
    lo, hi = _box(X, 0.05)
    bounder = PairBounder(f, f)
    root = bounder.bound(lo, hi)
    assert bounder.gdiff is not None
    # zero up to the final rounding allowance (no node changes, so none is carried
    # through the layers); the product bound is of the order of the outputs' range here
    assert root.differential.max() <= 1e-8 and root.delta.max() <= 1e-8
    assert root.product.max() > 0.1
    change = bounder.spec_rows(lo[None], hi[None], np.eye(f.n_outputs))[1]
    assert np.all(change >= -1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_verivital_avgpool_property_box(data_dir, recipe):
    """On a VNN-COMP CNN (784 inputs, 23328 ReLUs) and its first property's box, the
    combined bound holds against a gradient search and is below the product's."""
    from verify.api import load_network, load_property
    from verify.equiv.api import property_box
    f = load_network(data_dir / "verivital" / "Convnet_avgpool.onnx")
    prop = load_property(data_dir / "verivital" / "specs/avgpool_specs/prop_0_0.02.vnnlib.gz", f)
    lo, hi = property_box(prop)
    g = compress_graph(f, recipe).network
    root = PairBounder(f, g).bound(lo, hi)
    dev = max_deviation(f, g, lo, hi, rng=np.random.default_rng(0), samples=500, restarts=4,
                        steps=30)
    assert np.all(dev.value > 0)
    assert np.all(root.delta >= dev.value - 1e-9) and np.all(root.differential >= dev.value - 1e-9)
    assert root.delta.max() < root.product.max()
    print(f"{recipe}: product {root.product.max():.4g}, combined {root.delta.max():.4g}, "
          f"found {dev.value.max():.4g}")


def test_a_bound_past_its_deadline_is_looser_and_still_sound(digits_cnn):  # noqa: F811
    """equiv's root bound has a deadline (a large CNN's CROWN bound can take minutes):
    past it the graph propagators keep interval bounds for the neurons left."""
    import time
    f, X, _ = digits_cnn
    g = compress_graph(f, "int8").network
    lo, hi = _box(X, 0.05)
    bounder = PairBounder(f, g)
    full = bounder.bound(lo, hi)
    late = bounder.bound(lo, hi, deadline=time.monotonic() - 1.0)
    assert np.all(late.delta >= full.delta - 1e-9)
    assert late.delta.max() > full.delta.max()  # the deadline really cut the bound short
    assert np.all(late.delta >= _found(f, g, lo, hi) - 1e-9)
