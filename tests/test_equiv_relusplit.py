"""ReLU phase splitting of the difference (:mod:`verify.equiv.relusplit`) and the
input cuts it relies on (:func:`verify.diffbounds.cut_min`)."""
import dataclasses

import numpy as np
import pytest

from compress import magnitude_prune, prune_neurons, quantize_weights
from verify import diffbounds
from verify.equiv import relusplit
from verify.equiv.api import EquivOptions, certify_equivalence
from verify.equiv.search import PairBounder
from verify.result import Status

from test_equiv import _box, _largest_deviation

VARIANTS = {
    "int8": lambda n: quantize_weights(n, 8).network,
    "int4": lambda n: quantize_weights(n, 4).network,
    "magnitude30": lambda n: magnitude_prune(n, 0.3).network,
    "neurons25": lambda n: prune_neurons(n, 0.25).network,
}
EPS = 0.1  # wide enough that many first-layer neurons are unstable on these images
#: deterministic: the search stops at the leaf limit long before the timeout
RELU = EquivOptions(timeout=60, split_by="relu", target_delta=0.0, max_leaves=48,
                    attack_time_share=0.05)


def _split_leaves(net, variant, lo, hi, max_leaves=48):
    bounder = PairBounder(net, variant, product=False)
    root = bounder.bound(lo, hi)
    splitter = relusplit.ReluSplitter(bounder.diff, lo, hi, bounder.top_rows(root.top_class))
    return splitter, relusplit.relu_branch_and_bound(
        splitter, splitter.root(), target=0.0, agreement=False, deadline=float("inf"),
        max_leaves=max_leaves)


@pytest.mark.parametrize("slope_steps", [0, 8])  # fixed relaxation; optimised slopes
@pytest.mark.parametrize("kind", sorted(VARIANTS))
def test_relu_split_delta_bounds_every_found_deviation(digits_mlp, kind, slope_steps):
    net, X, _ = digits_mlp
    variant = VARIANTS[kind](net)
    for image in (0, 7):
        lo, hi = _box(X[image], EPS)
        root = certify_equivalence(net, variant, lo, hi, EquivOptions(split=False))
        res = certify_equivalence(net, variant, lo, hi,
                                  dataclasses.replace(RELU, slope_steps=slope_steps))
        found = _largest_deviation(net, variant, lo, hi)
        assert res.splitting == "relu" and res.leaves > 1
        assert np.all(np.asarray(res.delta) >= found), (res.delta, found)
        assert np.all(np.asarray(res.delta) <= np.asarray(root.delta))


def test_relu_split_tightens_the_bound(digits_mlp):
    """Splitting the first layer's phases (with their input cuts) gains on a
    pair whose one-shot bound is loose."""
    net, X, _ = digits_mlp
    variant = VARIANTS["int8"](net)
    lo, hi = _box(X[0], EPS)
    root = certify_equivalence(net, variant, lo, hi, EquivOptions(split=False))
    res = certify_equivalence(net, variant, lo, hi, RELU)
    assert res.max_delta < 0.9 * root.max_delta, (res.max_delta, root.max_delta)


def _pre_activations(net, xs):
    """Every hidden layer's pre-activations of ``net`` at ``xs``."""
    out, h = [], xs
    for a in net.affines[:-1]:
        out.append(h @ np.asarray(a.weight).T + np.asarray(a.bias))
        h = np.maximum(out[-1], 0.0)
    return out


@pytest.mark.parametrize("kind", ["int4", "magnitude30"])
def test_every_leaf_bounds_the_deviation_on_its_own_inputs(digits_mlp, kind):
    """Each leaf's delta holds on the sampled inputs that meet its phase
    constraints, and every sample meets some leaf's (the leaves cover the box)."""
    net, X, _ = digits_mlp
    variant = VARIANTS[kind](net)
    lo, hi = _box(X[7], EPS)
    splitter, out = _split_leaves(net, variant, lo, hi)
    f, g = splitter.diff.f, splitter.diff.g  # the aligned pair the splits refer to
    assert out.leaves > 4
    rng = np.random.default_rng(5)
    xs = rng.uniform(lo, hi, size=(20000, lo.size))
    dev = np.abs(g.forward(xs) - f.forward(xs))
    zf, zg = _pre_activations(f, xs), _pre_activations(g, xs)
    covered = np.zeros(len(xs), bool)
    for leaf in out.branches:
        ok = np.ones(len(xs), bool)
        for k, phases in enumerate(leaf.splits):
            for z, phase in ((zf[k], phases[0]), (zg[k], phases[1])):
                ok &= np.all((phase <= 0) | (z >= 0), axis=1) & np.all((phase >= 0) | (z <= 0), axis=1)
        covered |= ok
        assert np.all(dev[ok] <= leaf.delta + 1e-9), (leaf.splits[0], dev[ok].max(0), leaf.delta)
    assert covered.all()


@pytest.mark.parametrize("mutation", ["swap_clamp", "flip_cut"])
def test_a_mutated_split_is_caught(digits_mlp, monkeypatch, mutation):
    """The checks above can fail: with a branch's clamped phase swapped (or its
    input cut pointing the wrong way), some certified delta falls below a
    deviation found."""
    if mutation == "swap_clamp":
        clamp = relusplit.clamp
        monkeypatch.setattr(relusplit, "clamp", lambda l, u, phase: clamp(l, u, -phase))
    else:
        children = relusplit.children

        def flipped(parent, layers):
            kids = children(parent, layers)
            return [k[:6] + (k[6][:-1] + ((-k[6][-1][0], -k[6][-1][1]),) if k[6] else (),)
                    for k in kids]
        monkeypatch.setattr(relusplit, "children", flipped)
    net, X, _ = digits_mlp
    caught = False
    for kind in ("int4", "magnitude30"):
        for image in (0, 7):
            variant = VARIANTS[kind](net)
            lo, hi = _box(X[image], EPS)
            _, out = _split_leaves(net, variant, lo, hi, max_leaves=24)
            found = _largest_deviation(net, variant, lo, hi)
            caught |= bool(np.any(out.delta < found))
    assert caught


def test_identical_networks_keep_delta_zero(digits_mlp):
    net, X, _ = digits_mlp
    lo, hi = _box(X[0], EPS)
    res = certify_equivalence(net, net, lo, hi, RELU)
    assert res.max_delta <= 1e-6 and res.splitting == "relu"
    lo, hi = _box(X[0], 0.02)  # the class is constant here: agreement certified too
    res = certify_equivalence(net, net, lo, hi, EquivOptions(split_by="relu"))
    assert res.max_delta <= 1e-6 and res.status is Status.HOLDS and res.top1 == "certified"


def test_cut_min_matches_the_linear_program():
    """With one cut the Lagrangian bound is the LP's optimum (strong duality);
    with several it is a lower bound of it; never above it."""
    from scipy.optimize import linprog
    rng = np.random.default_rng(0)
    n = 12
    for q in (1, 3):
        for _ in range(10):
            lo = rng.uniform(-1, 0, n)
            hi = lo + rng.uniform(0.1, 1, n)
            A, c = rng.normal(size=(1, 4, n)), rng.normal(size=(1, 4))
            x0 = rng.uniform(lo, hi)  # the cuts hold at x0: the set is not empty
            V = rng.normal(size=(1, q, n))
            d = -(V[0] @ x0) + rng.uniform(0, 0.5, q)
            got = diffbounds.cut_min(A, c, lo[None], hi[None], (V, d[None]))[0]
            for r in range(4):
                lp = linprog(A[0, r], A_ub=-V[0], b_ub=d, bounds=list(zip(lo, hi)))
                best = lp.fun + c[0, r]
                assert got[r] <= best + 1e-7
                if q == 1:
                    assert got[r] >= best - 1e-6
    # no cuts: the box minimum
    A, c = rng.normal(size=(1, 2, n)), rng.normal(size=(1, 2))
    assert np.allclose(diffbounds.cut_min(A, c, lo[None], hi[None], None),
                       diffbounds.box_min(A, c, lo[None], hi[None]))


def test_split_by_is_checked():
    from verify.errors import OptionError
    with pytest.raises(OptionError, match="split_by"):
        EquivOptions(split_by="neurons")
