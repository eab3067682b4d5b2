"""A branch's intermediate bounds with the root's kept alpha-CROWN slopes
(verify.layer_alpha.KeptSlopes, the propagators' ``layer_slopes``; chains and graph
networks): at the root
they give back exactly the bounds the steps kept (each neuron's rows found); in split
branches they contain sampled pre-activations of points that satisfy the splits, are
tighter than the adaptive slopes' somewhere, and slopes out of [0, 1] are clipped (a
mutation that drops the clip is caught); the search decides the same with them."""
import numpy as np
import pytest
import torch

from chain_nets import deep_chain, random_chain_instance
from graph_nets import NETS
from verify import bounds as bounds_module
from verify import layer_alpha
from verify.bounds import BoundPropagator
from verify.graphbounds import GraphBoundPropagator
from verify.layer_alpha import KeptSlopes
from verify.options import VerifyOptions
from verify.result import Status
from verify.verifier import verify_property

torch.set_num_threads(1)


CASES = {"chain": (deep_chain, BoundPropagator, 0.4),
         **{name: (lambda seed, make=make: make(np.random.default_rng(seed)),
                   GraphBoundPropagator, 0.3) for name, make in sorted(NETS.items())}}


def _root(seed: int, name: str = "chain"):
    """A network, a box, CROWN's bounds, the tightened ones and their kept slopes."""
    make, Prop, eps = CASES[name]
    net = make(seed)
    prop = Prop(net)
    c = np.random.default_rng(seed).normal(size=(1, net.n_inputs))
    lo, hi = torch.tensor(c - eps), torch.tensor(c + eps)
    C, d = torch.eye(net.n_outputs).double(), torch.zeros(net.n_outputs)
    crown = prop.bound(lo, hi, C, d)
    kept: dict = {}
    lower, upper = layer_alpha.optimise_layer_bounds(prop, lo, hi, crown.lower, crown.upper, 20,
                                                     slopes_out=kept)
    return net, prop, lo, hi, C, d, crown, lower, upper, kept


def _requery(prop, k, lower, upper, lo, hi, slopes):
    """Layer k's neurons back-substituted afresh (from infinite bounds) with ``slopes``
    over the bounds ``lower``/``upper`` of the layers below."""
    relax = [prop._relaxation(l, u) for l, u in zip(lower[:k], upper[:k])]
    inf = torch.full_like(lower[k], torch.inf)
    if isinstance(prop, GraphBoundPropagator):
        src = prop.nodes[prop.relus[k]].inputs[0]
        return prop._crown_neurons(src, -inf, inf, None, relax, lo, hi, slopes=slopes, layer=k)
    return prop._backsub_columns(k, -inf, inf, None, relax, lo, hi, slopes)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", ["chain", "residual", "normalised"])
def test_the_root_box_gives_back_the_kept_bounds(name, seed):
    """Layer k's neurons back-substituted with their kept slopes over the tightened
    bounds of the layers below: the bounds the steps kept, for every tightened neuron."""
    net, prop, lo, hi, _, _, crown, lower, upper, kept = _root(seed, name)
    slopes = KeptSlopes(kept, net.hidden_sizes)
    checked = 0
    for k in range(1, prop.n_hidden):
        if k not in slopes:
            continue
        l, u = _requery(prop, k, lower, upper, lo, hi, slopes)
        moved = (lower[k] > crown.lower[k]) | (upper[k] < crown.upper[k])
        assert torch.allclose(l[moved], lower[k][moved], atol=1e-6)
        assert torch.allclose(u[moved], upper[k][moved], atol=1e-6)
        checked += int(moved.sum())
    assert checked > (10 if name == "chain" else 0)


def _children(net, lower, upper):
    """Single-split children of the root: the widest unstable neuron of the first two
    hidden layers that have a hidden layer after them, each phase; (layer, neuron,
    sign, splits) per child."""
    out = []
    for k in range(min(2, len(net.hidden_sizes) - 1)):
        l, u = lower[k][0], upper[k][0]
        unstable = ((l < 0) & (u > 0)).nonzero()[:, 0]
        if len(unstable) == 0:
            continue
        j = int(unstable[torch.argmax(torch.minimum(-l[unstable], u[unstable]))])
        for sign in (1, -1):
            splits = [torch.zeros((1, n), dtype=torch.int8) for n in net.hidden_sizes]
            splits[k][0, j] = sign
            out.append((k, j, sign, splits))
    return out


def _outside_in_branch(net, res, lo, hi, k, j, sign, seed) -> int:
    """Sampled points of the box whose neuron (k, j) has the branch's phase, outside
    the branch's layer bounds."""
    rng = np.random.default_rng(seed)
    lo, hi = lo[0].numpy(), hi[0].numpy()
    xs = np.vstack([rng.uniform(lo, hi, size=(6000, lo.size)),
                    np.where(rng.random((6000, lo.size)) < 0.5, lo, hi)])
    pre = [p.reshape(len(xs), -1) for p in net.pre_activations(xs)]
    keep = sign * pre[k][:, j] >= 0
    assert keep.sum() > 20
    return sum(int(((p[keep] < l[0].numpy() - 1e-9) | (p[keep] > u[0].numpy() + 1e-9)).sum())
               for p, l, u in zip(pre, res.lower, res.upper))


def _all(net):
    return [torch.ones(n, dtype=torch.bool) for n in net.hidden_sizes]


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", sorted(CASES))
def test_branches_with_kept_slopes_are_sound_and_tighter(name, seed):
    net, prop, lo, hi, C, d, _, lower, upper, kept = _root(seed, name)
    slopes = KeptSlopes(kept, net.hidden_sizes)
    fixed = list(zip(lower, upper))
    gain, children = 0.0, _children(net, lower, upper)
    assert children
    for k, j, sign, splits in children:
        plain = prop.bound(lo, hi, C, d, splits, fixed, refine=_all(net))
        with_slopes = prop.bound(lo, hi, C, d, splits, fixed, layer_slopes=slopes, refine=_all(net))
        assert _outside_in_branch(net, with_slopes, lo, hi, k, j, sign, seed) == 0
        for l, u, f_l, f_u, p_l, p_u in zip(with_slopes.lower, with_slopes.upper, lower, upper,
                                           plain.lower, plain.upper):
            assert (l >= f_l).all() and (u <= f_u).all()  # within the parent's
            gain += float((l - p_l).clamp(min=0).sum() + (p_u - u).clamp(min=0).sum())
    if name == "chain":  # five hidden layers of 24: the slopes matter
        assert gain > 1e-2


def _no_clip(q, alpha, s):
    """Mutation: the kept slopes used as they are, not clipped to [0, 1]."""
    unstable = ((s > 0) & (s < 1))[:, None, :]
    return torch.where(unstable & ~torch.isnan(q), q.to(alpha.dtype), alpha[:, None, :])


@pytest.mark.parametrize("mutation", [None, "no_clip"])
def test_slopes_out_of_range_are_clipped(monkeypatch, mutation):
    """Kept slopes moved to [-1.5, 2.5] (any the steps could leave behind): clipped,
    the branches' bounds contain the samples; with the clip dropped they do not."""
    if mutation:
        monkeypatch.setattr(bounds_module, "_row_slopes", _no_clip)
    bad = 0
    for name, seed in (("chain", 1), ("chain", 2), ("residual", 1)):
        net, prop, lo, hi, C, d, crown, lower, upper, kept = _root(seed, name)
        wild = {k: (neurons, [4.0 * r - 1.5 for r in rows]) for k, (neurons, rows) in kept.items()}
        slopes = KeptSlopes(wild, net.hidden_sizes)
        # the parent's bounds are CROWN's (loose): the branch's own back-substitution counts
        fixed = list(zip(crown.lower, crown.upper))
        for k, j, sign, splits in _children(net, crown.lower, crown.upper):
            res = prop.bound(lo, hi, C, d, splits, fixed, layer_slopes=slopes, refine=_all(net))
            bad += _outside_in_branch(net, res, lo, hi, k, j, sign, seed)
    assert (bad > 0) == (mutation is not None)


@pytest.mark.parametrize("seed", [0, 2])
def test_the_search_decides_the_same_with_and_without_them(seed):
    """A 32-48x6-3 chain at an eps where the tightened root stays open: the search
    branches both ways and the verdicts agree (a holds checked by sampling). (Measured
    2026-12-06: 660 / 458 branches with the kept slopes, 1,522 / 2,628 without.)"""
    net, prop = random_chain_instance(seed, 0.05)
    on = verify_property(net, prop, VerifyOptions(timeout=30))
    off = verify_property(net, prop, VerifyOptions(timeout=30, branch_layer_slopes=False))
    assert on.status == off.status != Status.UNKNOWN
    assert on.statistics.branches > 0 and off.statistics.branches > 0
    if on.status == Status.HOLDS:
        region = prop.regions[0]
        xs = np.random.default_rng(seed).uniform(region.lower, region.upper, size=(4000, 32))
        ys = net.forward(xs)
        for conj in region.unsafe:
            assert not np.any(np.all(ys @ conj.coeffs.T <= conj.rhs, axis=1))


def test_kept_slopes_rows_of_each_neuron_and_nan_for_the_others():
    """Layer 2 of a 5-wide chain kept for neurons 3 and 1 only: their rows in query
    order (lower, then upper), NaN rows for the others, one pair per query."""
    rows = [np.arange(4 * n, dtype=np.float32).reshape(4, n) for n in (6, 7)]  # layers 0, 1
    slopes = KeptSlopes({2: (np.array([3, 1]), rows)}, (6, 7, 5))
    assert 2 in slopes and 1 not in slopes and slopes.columns(1, None) is None
    got = slopes.columns(2, torch.tensor([1, 4, 3]))
    for r, g in zip(rows, got):
        assert g.shape == (1, 6, r.shape[1])
        np.testing.assert_array_equal(g[0, 0], r[1])  # neuron 1's lower query: kept row 1
        np.testing.assert_array_equal(g[0, 2], r[0])  # neuron 3's: kept row 0
        np.testing.assert_array_equal(g[0, 3], r[3])  # neuron 1's upper query: row m + 1
        np.testing.assert_array_equal(g[0, 5], r[2])
        assert torch.isnan(g[0, 1]).all() and torch.isnan(g[0, 4]).all()
    pairs = slopes.queries(2, torch.tensor([3, 0]))
    np.testing.assert_array_equal(pairs[1][0, 0], rows[1][0])
    np.testing.assert_array_equal(pairs[1][0, 1], rows[1][2])
    assert torch.isnan(pairs[1][1]).all()
