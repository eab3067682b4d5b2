"""Counterexample candidates are screened in float32 (Network.screen) and decided
in float64: the screen agrees with the exact forward pass, and a point that
violates the property by less than float32 rounding is still confirmed (its
slack; without it the point is missed, which the test shows)."""
import numpy as np

import verify.attack as attack
from verify.network import Affine, Network
from verify.properties import Conjunction, Region


def _wide_net(seed=0) -> Network:
    rng = np.random.default_rng(seed)
    sizes = [784, 256, 256, 10]
    return Network(tuple(Affine(rng.normal(0, 1 / np.sqrt(a), (b, a)), rng.normal(0, 0.1, b))
                         for a, b in zip(sizes, sizes[1:])))


def test_screen_agrees_with_the_exact_forward_pass():
    net = _wide_net()
    xs = np.random.default_rng(1).uniform(0, 1, (200, 784))
    exact, fast = net.forward(xs), net.screen(xs)
    assert fast.dtype == np.float64 and fast.shape == exact.shape
    scale = 1.0 + np.abs(exact).max(axis=1, keepdims=True)
    err = np.abs(fast - exact) / scale
    assert err.max() < 1e-5 and err.max() > 0  # float32: close, not exact
    assert err.max() < attack.SCREEN_SLACK / 10


def test_a_violation_smaller_than_float32_rounding_is_confirmed(monkeypatch):
    net = _wide_net()
    xs = np.random.default_rng(2).uniform(0, 1, (2000, 784))
    exact = net.forward(xs)[:, 0] - net.forward(xs)[:, 1]
    fast = net.screen(xs)[:, 0] - net.screen(xs)[:, 1]
    # the lowest point that float32 puts on the safe side of its exact value
    above = np.flatnonzero(fast > exact)
    p = int(above[np.argmin(exact[above])])
    rhs = (exact[p] + fast[p]) / 2  # unsafe: y0 - y1 <= rhs; exact violates, float32 not
    others = exact > rhs + 1e-3  # safe by far, float32 or not
    others[p] = True
    region = Region(np.zeros(784), np.ones(784),
                    (Conjunction(np.eye(10)[0] - np.eye(10)[1], [rhs]),))
    batch = xs[others]
    assert len(batch) > attack.SCREEN_MIN_BATCH  # screened, not evaluated exactly
    cex = attack.confirm_batch(net, region, 0, batch)
    assert cex is not None and np.allclose(cex.input, xs[p])
    # the mutation: no slack -- float32 alone decides which points to confirm
    monkeypatch.setattr(attack, "SCREEN_SLACK", 0.0)
    assert attack.confirm_batch(net, region, 0, batch) is None
    # a small batch is evaluated exactly, slack or not
    assert attack.confirm_batch(net, region, 0, xs[p][None, :]) is not None
