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


def test_each_branchs_candidates_are_the_corners_its_own_bound_points_to():
    """``BatchBounds.candidates(lo, hi, i)``: branch ``i``'s spec rows' minimising corners
    (by its own coefficients, not branch 0's) and its centre; on a batch of boxes
    bounded by CROWN, each corner's linear lower bound is the row's minimum over its box."""
    import torch
    from verify.bounds import BoundPropagator
    rng = np.random.default_rng(3)
    sizes = [3, 16, 16, 4]
    net = Network(tuple(Affine(rng.normal(size=(b, a)), rng.normal(size=b))
                        for a, b in zip(sizes, sizes[1:])))
    lo = torch.from_numpy(rng.uniform(-1, 0, (6, 3)))
    hi = lo + torch.from_numpy(rng.uniform(0.1, 1, (6, 3)))
    C = torch.from_numpy(np.eye(4)[1:] - np.eye(4)[0])
    res = BoundPropagator(net).bound(lo, hi, C, torch.zeros(3), None, None)
    A = res.spec_coeffs
    assert (torch.sign(A[1:]) != torch.sign(A[:1])).any()  # the branches' signs differ
    for i in range(len(lo)):
        cand = res.candidates(lo, hi, i)
        assert cand.shape == (4, 3)
        np.testing.assert_allclose(cand[-1], ((lo[i] + hi[i]) / 2).numpy())
        for r in range(3):
            at_corner = A[i, r].numpy() @ cand[r]
            box_min = (A[i, r].clamp(min=0) @ lo[i] + A[i, r].clamp(max=0) @ hi[i]).item()
            np.testing.assert_allclose(at_corner, box_min)
    # several branches at once: theirs one after another
    np.testing.assert_array_equal(res.candidates(lo, hi, [4, 1, 2]), np.vstack(
        [res.candidates(lo, hi, i) for i in (4, 1, 2)]))
