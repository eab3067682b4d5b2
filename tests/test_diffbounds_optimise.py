"""Optimised slopes and split multipliers of the difference relaxation
(:func:`verify.diffbounds.optimise_difference`) and ReLU splitting with them (the
delta against found deviations with optimised slopes: test_equiv_relusplit)."""
import numpy as np
import pytest
from dataclasses import replace

from verify import diffbounds
from verify.equiv import relusplit
from verify.equiv.api import EquivOptions
from verify.equiv.search import PairBounder

from test_equiv import _box
from test_equiv_relusplit import EPS, RELU, VARIANTS, _pre_activations

OPT = replace(RELU, slope_steps=8)


def _leaves_violated(net, X):
    """Per leaf of an optimised ReLU split, whether a sampled input that meets
    its phase constraints deviates by more than its delta; and the leaf count."""
    variant = VARIANTS["int4"](net)
    lo, hi = _box(X[7], EPS)
    bounder = PairBounder(net, variant, product=False)
    root = bounder.bound(lo, hi)
    splitter = relusplit.ReluSplitter(bounder.diff, lo, hi, bounder.top_rows(root.top_class),
                                      slope_steps=8)
    out = relusplit.relu_branch_and_bound(splitter, splitter.root(), target=0.0, agreement=False,
                                          deadline=float("inf"), max_leaves=32)
    f, g = splitter.diff.f, splitter.diff.g
    xs = np.random.default_rng(5).uniform(lo, hi, size=(20000, lo.size))
    dev = np.abs(g.forward(xs) - f.forward(xs))
    zf, zg = _pre_activations(f, xs), _pre_activations(g, xs)
    bad = []
    for leaf in out.branches:
        ok = np.ones(len(xs), bool)
        for k, phases in enumerate(leaf.splits):
            for z, phase in ((zf[k], phases[0]), (zg[k], phases[1])):
                ok &= np.all((phase <= 0) | (z >= 0), axis=1) & np.all((phase >= 0) | (z <= 0), axis=1)
        bad.append(bool(np.any(dev[ok] > leaf.delta + 1e-9)))
    return bad


def test_optimised_leaves_bound_their_own_inputs(digits_mlp):
    """With the split multipliers optimised, each leaf's delta still holds on
    the sampled inputs that meet its phase constraints."""
    net, X, _ = digits_mlp
    bad = _leaves_violated(net, X)
    assert len(bad) > 4 and not any(bad)


def test_a_negative_split_multiplier_is_caught(digits_mlp, monkeypatch):
    """The leaf check can fail: multipliers of the phase constraints left
    negative break some leaf's delta."""
    monkeypatch.setattr(diffbounds, "nonnegative", lambda b: b)
    net, X, _ = digits_mlp
    assert any(_leaves_violated(net, X))


def _root_rows(net, variant, lo, hi, init, steps=0):
    """The optimised lower bounds of the rows ``lam @ (g - f)`` on the box, and
    those rows' smallest value on sampled inputs."""
    bounder = PairBounder(net, variant, product=False)
    root = bounder.bound(lo, hi)
    sp = relusplit.ReluSplitter(bounder.diff, lo, hi, bounder.top_rows(root.top_class))
    r = sp.root()
    bounds = [tuple(a[None] for a in (*r.f[k], *r.g[k], *r.d[k])) for k in range(sp.H)]
    low = diffbounds.optimise_difference(sp.layers, sp.H, sp.lam, bounds, lo[None], hi[None],
                                         steps=steps, init=init and init(bounds))[0]
    f, g = sp.diff.f, sp.diff.g
    xs = np.random.default_rng(2).uniform(lo, hi, size=(20000, lo.size))
    xs = np.vstack([xs, np.where(np.random.default_rng(3).random((4000, lo.size)) < 0.5, lo, hi)])
    return low, ((g.forward(xs) - f.forward(xs)) @ sp.lam.T).min(0), sp, bounds


def _out_of_range(bounds):
    """Slopes far outside [0, 1] on every neuron."""
    return [{"alpha_h": 4.0 + 0 * b[0], "alpha_d": -3.0 + 0 * b[0], "alpha_g": -3.0 + 0 * b[0],
             "mix_lower": 3.0 + 0 * b[0], "mix_upper": -2.0 + 0 * b[0]} for b in bounds]


@pytest.mark.parametrize("kind", ["int8", "magnitude30"])
def test_optimised_bound_is_sound_from_any_start(digits_mlp, kind):
    """Slopes started outside their range are projected back: the bound stays
    below every sampled value; without slopes given and no steps it is the
    fixed relaxation's bound; steps never make it worse there."""
    net, X, _ = digits_mlp
    variant = VARIANTS[kind](net)
    lo, hi = _box(X[0], EPS)
    for init in (_out_of_range, None):
        low, seen, sp, bounds = _root_rows(net, variant, lo, hi, init)
        assert np.all(low <= seen + 1e-9), (low - seen).max()
    fixed, _ = diffbounds.backsub_difference(
        sp.layers, sp.H, sp.lam, [diffbounds.diff_relaxation(*b, mixed_by_change=True)
                                  for b in bounds], lo[None], hi[None])
    assert np.allclose(low, fixed[0], atol=1e-9)
    better, seen, _, _ = _root_rows(net, variant, lo, hi, None, steps=15)
    assert np.all(better <= seen + 1e-9) and better.sum() >= low.sum() - 1e-9


def test_an_unprojected_slope_is_caught(digits_mlp, monkeypatch):
    """The soundness check above can fail: slopes outside [0, 1] left as they
    are give a bound above a sampled value."""
    monkeypatch.setattr(diffbounds, "project", lambda x: x)
    net, X, _ = digits_mlp
    caught = False
    for kind in ("int8", "magnitude30"):
        low, seen, _, _ = _root_rows(net, VARIANTS[kind](net), *_box(X[0], EPS), _out_of_range)
        caught |= bool(np.any(low > seen + 1e-9))
    assert caught


def test_slope_steps_is_checked():
    from verify.errors import OptionError
    with pytest.raises(OptionError, match="slope_steps"):
        EquivOptions(slope_steps=-1)
