"""A branch's intermediate bounds with the root's kept alpha-CROWN slopes
(verify.layer_alpha.KeptSlopes, BoundPropagator.bound's ``layer_slopes``): at the root
they give back exactly the bounds the steps kept (each neuron's rows found); in split
branches they contain sampled pre-activations of points that satisfy the splits, are
tighter than the adaptive slopes' somewhere, and slopes out of [0, 1] are clipped (a
mutation that drops the clip is caught); the search decides the same with them."""
import numpy as np
import pytest
import torch

from chain_nets import deep_chain, random_chain_instance
from verify import bounds as bounds_module
from verify import layer_alpha
from verify.bounds import BoundPropagator
from verify.layer_alpha import KeptSlopes
from verify.options import VerifyOptions
from verify.result import Status
from verify.verifier import verify_property

torch.set_num_threads(1)


def _root(seed: int, eps: float = 0.4):
    """A deep chain, a box, CROWN's bounds, the tightened ones and their kept slopes."""
    net = deep_chain(seed)
    prop = BoundPropagator(net)
    c = np.random.default_rng(seed).normal(size=(1, net.n_inputs))
    lo, hi = torch.tensor(c - eps), torch.tensor(c + eps)
    C, d = torch.eye(net.n_outputs).double(), torch.zeros(net.n_outputs)
    crown = prop.bound(lo, hi, C, d)
    kept: dict = {}
    lower, upper = layer_alpha.optimise_layer_bounds(prop, lo, hi, crown.lower, crown.upper, 20,
                                                     slopes_out=kept)
    return net, prop, lo, hi, C, d, crown, lower, upper, kept


@pytest.mark.parametrize("seed", [1, 2])
def test_the_root_box_gives_back_the_kept_bounds(seed):
    """Layer k's neurons back-substituted with their kept slopes over the tightened
    bounds of the layers below: the bounds the steps kept, for every tightened neuron."""
    net, prop, lo, hi, _, _, crown, lower, upper, kept = _root(seed)
    slopes = KeptSlopes(kept, net.hidden_sizes)
    checked = 0
    for k in range(1, prop.n_hidden):
        if k not in slopes:
            continue
        relax = [prop._relaxation(l, u) for l, u in zip(lower[:k], upper[:k])]
        inf = torch.full_like(lower[k], torch.inf)
        l, u = prop._backsub_columns(k, -inf, inf, None, relax, lo, hi, slopes)
        moved = (lower[k] > crown.lower[k]) | (upper[k] < crown.upper[k])
        assert moved.any()
        assert torch.allclose(l[moved], lower[k][moved], atol=1e-9)
        assert torch.allclose(u[moved], upper[k][moved], atol=1e-9)
        checked += int(moved.sum())
    assert checked > 10


def _children(net, lower, upper, seed):
    """Single-split children of the root: the widest unstable neuron of layers 1 and
    2, each phase; (layer, neuron, sign, splits) per child."""
    out = []
    for k in (1, 2):
        l, u = lower[k][0], upper[k][0]
        unstable = ((l < 0) & (u > 0)).nonzero()[:, 0]
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
    pre = net.pre_activations(xs)
    keep = sign * pre[k][:, j] >= 0
    assert keep.sum() > 50
    return sum(int(((p[keep] < l[0].numpy() - 1e-9) | (p[keep] > u[0].numpy() + 1e-9)).sum())
               for p, l, u in zip(pre, res.lower, res.upper))


@pytest.mark.parametrize("seed", [1, 2])
def test_branches_with_kept_slopes_are_sound_and_tighter(seed):
    net, prop, lo, hi, C, d, _, lower, upper, kept = _root(seed)
    slopes = KeptSlopes(kept, net.hidden_sizes)
    fixed = list(zip(lower, upper))
    gain = 0.0
    for k, j, sign, splits in _children(net, lower, upper, seed):
        plain = prop.bound(lo, hi, C, d, splits, fixed, refine=[torch.ones(n, dtype=torch.bool)
                                                                 for n in net.hidden_sizes])
        with_slopes = prop.bound(lo, hi, C, d, splits, fixed, layer_slopes=slopes,
                                 refine=[torch.ones(n, dtype=torch.bool) for n in net.hidden_sizes])
        assert _outside_in_branch(net, with_slopes, lo, hi, k, j, sign, seed) == 0
        for l, u, f_l, f_u, p_l, p_u in zip(with_slopes.lower, with_slopes.upper, lower, upper,
                                           plain.lower, plain.upper):
            assert (l >= f_l).all() and (u <= f_u).all()  # within the parent's
            gain += float((l - p_l).clamp(min=0).sum() + (p_u - u).clamp(min=0).sum())
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
    for seed in (1, 2):
        net, prop, lo, hi, C, d, crown, lower, upper, kept = _root(seed)
        wild = {k: (neurons, [4.0 * r - 1.5 for r in rows]) for k, (neurons, rows) in kept.items()}
        slopes = KeptSlopes(wild, net.hidden_sizes)
        # the parent's bounds are CROWN's (loose): the branch's own back-substitution counts
        fixed = list(zip(crown.lower, crown.upper))
        for k, j, sign, splits in _children(net, crown.lower, crown.upper, seed):
            res = prop.bound(lo, hi, C, d, splits, fixed, layer_slopes=slopes,
                             refine=[torch.ones(n, dtype=torch.bool) for n in net.hidden_sizes])
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
