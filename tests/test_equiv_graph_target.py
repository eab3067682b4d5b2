"""``equiv`` on graph networks tightened by the verifier (verify.equiv.graph_target): a
target delta proved on the product graph is above every deviation found, one below a
deviation is refuted with a replayed input, top-1 agreement is certified by verifying
each network's class, and broken verification makes these checks fail."""
import time

import numpy as np
import pytest

from compress.graph_compress import compress_graph
from verify.equiv import graph_target
from verify.equiv.api import EquivOptions, certify_equivalence
from verify.equiv.attack import find_disagreement, max_deviation, replay
from verify.equiv.search import PairBounder
from verify.result import Status

from graph_nets import pooling, residual


def _pair(make, recipe, seed=0):
    f = make(np.random.default_rng(seed))
    return f, compress_graph(f, recipe).network


def _box(f, eps, seed):
    x = np.random.default_rng(seed).uniform(0.2, 0.8, f.n_inputs)
    return x - eps, x + eps


def _largest_deviation(f, g, lo, hi):
    return max_deviation(f, g, lo, hi, rng=np.random.default_rng(5), samples=4000,
                         restarts=16, steps=80).value


def _sound(delta, f, g, lo, hi) -> bool:
    return bool(np.all(np.asarray(delta) >= _largest_deviation(f, g, lo, hi) - 1e-9))


@pytest.mark.parametrize("recipe,share", [("int8", 0.95), ("magnitude:0.3", 0.998)])
def test_a_target_below_the_root_bound_is_proved_on_the_product_graph(recipe, share):
    f, g = _pair(residual, recipe)
    lo, hi = _box(f, 0.01, 1)
    root = certify_equivalence(f, g, lo, hi, EquivOptions(timeout=5, split=False))
    target = share * root.max_delta
    res = certify_equivalence(f, g, lo, hi, EquivOptions(timeout=20, target_delta=target))
    assert res.splitting == "verify"
    assert res.status is Status.HOLDS and res.max_delta <= target < root.max_delta
    assert _sound(res.delta, f, g, lo, hi)


def test_a_target_below_a_deviation_is_refuted_with_a_replayed_input():
    f, g = _pair(residual, "magnitude:0.3")
    lo, hi = _box(f, 0.01, 1)
    found = float(_largest_deviation(f, g, lo, hi).max())
    got = graph_target.deviation_below(f, g, lo, hi, 0.99 * found, time.monotonic() + 20)
    assert got.status is Status.VIOLATED
    x = got.inputs[0]
    assert np.all(x >= lo) and np.all(x <= hi)
    assert np.abs(g.forward(x) - f.forward(x)).max() >= 0.99 * found


def test_a_broken_product_verification_is_caught(monkeypatch):
    """With the product graph replaced by g - g, any target 'holds', and the certified
    delta falls below a deviation found."""
    real = graph_target.product_graph
    monkeypatch.setattr(graph_target, "product_graph", lambda f, g: real(g, g))
    f, g = _pair(residual, "magnitude:0.3")
    lo, hi = _box(f, 0.01, 1)
    found = float(_largest_deviation(f, g, lo, hi).max())
    got = graph_target.deviation_below(f, g, lo, hi, 0.5 * found, time.monotonic() + 20)
    assert got.status is Status.HOLDS
    assert not _sound(np.full(f.n_outputs, 0.5 * found), f, g, lo, hi)


def _agreement(f, g, lo, hi, timeout=20.0):
    root = PairBounder(f, g).bound(lo, hi)
    leaf, unsafe = graph_target.tighten_graph(f, g, lo, hi, root, None, True, 1.0,
                                              time.monotonic() + timeout)
    return root, leaf, unsafe


def test_top1_agreement_is_certified_by_verifying_each_class():
    f, g = _pair(residual, "int8")
    lo, hi = _box(f, 0.05, 3)
    root, leaf, _ = _agreement(f, g, lo, hi)
    assert not root.agree and leaf.agree  # the verifier settled what one bound did not
    xs = np.random.default_rng(0).uniform(lo, hi, (4000, f.n_inputs))
    assert np.all(f.forward(xs).argmax(1) == leaf.top_class)
    assert np.all(g.forward(xs).argmax(1) == leaf.top_class)
    res = certify_equivalence(f, g, lo, hi, EquivOptions(timeout=20))
    assert res.top1 == "certified" and res.splitting == "verify"


def test_a_disagreement_is_not_certified_and_a_broken_verifier_is_caught(monkeypatch):
    f, g = _pair(pooling, "int8")
    lo, hi = _box(f, 0.05, 2)
    hit = find_disagreement(f, g, lo, hi, rng=np.random.default_rng(0), samples=2000,
                            restarts=16, steps=60)
    assert hit is not None and replay(f, g, np.array(hit.input)[None], lo, hi) is not None
    _, leaf, unsafe = _agreement(f, g, lo, hi)
    assert not leaf.agree and unsafe
    monkeypatch.setattr(graph_target, "_verify",
                        lambda net, prop, deadline: graph_target.Verified(Status.HOLDS))
    _, broken, _ = _agreement(f, g, lo, hi)
    assert broken.agree  # what the disagreement above shows to be wrong
