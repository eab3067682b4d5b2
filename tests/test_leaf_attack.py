"""PGD confined to the leaf boxes of an input-split proof (``Attacker.attack_boxes``,
run by reverify on the leaves its differential tiers leave open): it finds a
counterexample planted inside one small leaf, where random sampling and PGD over the
whole region find nothing, and every start stays in its own box."""
import dataclasses

import numpy as np
import pytest
import torch

from verify.api import verify_property
from verify.attack import Attacker
from verify.network import Affine, Network
from verify.result import Status
from verify.reuse import ReuseOptions, build_proof, reverify


def _with_bump(net: Network, centre: np.ndarray, width: np.ndarray, target: int,
               dip: float) -> Network:
    """``net`` with a bump neuron ``relu(1 - sum_i |x_i - c_i| / w_i)`` carried through
    its hidden layers (2 more neurons per input in the first, 1 in each other), its
    output ``target`` lowered by ``dip`` times the bump: the same function when ``dip``
    is 0, else lowered only inside the L1 ball of radii ``width`` around ``centre``."""
    n, last = len(centre), len(net.affines) - 1
    out = []
    for j, a in enumerate(net.affines):
        W, b = a.weight.copy(), a.bias.copy()
        if j == 0:  # relu(x - c), relu(c - x)
            W = np.vstack([W, np.eye(n), -np.eye(n)])
            b = np.concatenate([b, -centre, centre])
        elif j == 1:  # 1 - sum of both over the widths
            W = np.hstack([W, np.zeros((W.shape[0], 2 * n))])
            row = np.zeros((1, W.shape[1]))
            row[0, -2 * n:] = -np.concatenate([1 / width, 1 / width])
            W, b = np.vstack([W, row]), np.append(b, 1.0)
        if j >= 2:  # the bump passes through (a ReLU of a non-negative value)
            W = np.hstack([W, np.zeros((W.shape[0], 1))])
            if j < last:
                row = np.zeros((1, W.shape[1]))
                row[0, -1] = 1.0
                W, b = np.vstack([W, row]), np.append(b, 0.0)
            else:
                W[target, -1] = -dip
        out.append(Affine(W, b))
    return Network(tuple(out))


@pytest.fixture(scope="module")
def bumped(input_split_proof):
    """(original with a silent bump, variant with the bump dipping, prop, options, the
    original's proof, the bump's centre and widths): the bump sits at the centre of the
    proof's smallest leaf, the variant is violated only there."""
    net, prop, opts, proof = input_split_proof
    region = prop.regions[0]
    leaves = proof.regions[0]
    small = min(leaves, key=lambda b: float(np.prod(b.upper - b.lower)))
    centre, width = (small.lower + small.upper) / 2, (small.upper - small.lower) / 4
    target = int(np.argmax(net.forward((region.lower + region.upper) / 2)))
    original = _with_bump(net, centre, width, target, 0.0)
    variant = _with_bump(net, centre, width, target, 100.0)
    xs = np.random.default_rng(0).uniform(region.lower, region.upper, (500, 5))
    assert np.allclose(original.forward(xs), net.forward(xs))
    assert variant.forward(centre)[target] < net.forward(centre)[target] - 50
    return original, variant, prop, opts, build_proof(original, prop, opts), centre, width


def _in_bump(x, centre, width) -> bool:
    return float(np.sum(np.abs(np.asarray(x) - centre) / width)) < 1.0


def test_the_leaves_find_a_bump_that_sampling_and_region_pgd_miss(bumped):
    original, variant, prop, _, proof, centre, width = bumped
    region = prop.regions[0]
    assert proof.status is Status.HOLDS and proof.n_branches > 20
    attacker = Attacker(variant)
    miss, _ = attacker.attack(region, 0, np.random.default_rng(0), float("inf"), restarts=8,
                              steps=40, samples=1000)
    assert miss is None
    leaves = proof.regions[0]
    cex = attacker.attack_boxes(region, 0, np.stack([b.lower for b in leaves]),
                                np.stack([b.upper for b in leaves]), 10, float("inf"))
    assert cex is not None and _in_bump(cex.input, centre, width)
    assert np.allclose(variant.forward(np.array(cex.input)), cex.output)


def test_every_start_stays_in_its_own_box(bumped):
    """The iterates of each start, at every step, lie in that start's box (small boxes
    around random points, where steps over the region's box would leave them)."""
    _, variant, prop, _, _, _, _ = bumped
    region = prop.regions[0]
    rng = np.random.default_rng(3)
    mid = rng.uniform(region.lower, region.upper, (40, 5))
    half = 0.01 * (region.upper - region.lower)
    lo, hi = np.maximum(mid - half, region.lower), np.minimum(mid + half, region.upper)
    attacker = Attacker(variant)
    seen = []
    model = attacker._model32()  # (its gradients are float32 on a chain)
    attacker._model32 = lambda: lambda x: (seen.append(x.detach().numpy().copy()), model(x))[1]
    assert attacker.attack_boxes(region, 0, lo, hi, 8, float("inf")) is None
    assert len(seen) == 8
    for x in seen:
        assert x.dtype == np.float32
        assert np.all(x >= lo - 1e-6) and np.all(x <= hi + 1e-6)
    assert any(np.abs(x - (lo + hi) / 2).max() > 0.5 * half.min() for x in seen)  # moved


def test_reverify_finds_the_bump_in_an_open_leaf(bumped, monkeypatch):
    """reverify's tree check runs the leaf attack on the open leaves and reports its
    counterexample (replayed on the variant); scratch agrees."""
    original, variant, prop, opts, proof, centre, width = bumped
    calls = []
    real = Attacker.attack_boxes

    def spy(self, region, r, lower, upper, steps, deadline):
        calls.append((len(lower), real(self, region, r, lower, upper, steps, deadline)))
        return calls[-1][1]
    monkeypatch.setattr(Attacker, "attack_boxes", spy)
    got = reverify(original, variant, prop, opts, proof=proof)
    assert got.status is Status.VIOLATED and not got.reuse.fallback
    assert len(calls) == 1 and calls[0][1] is not None
    assert 0 < calls[0][0] <= proof.n_branches  # only the leaves left open
    assert _in_bump(got.counterexample.input, centre, width)
    assert verify_property(variant, prop, opts).status is Status.VIOLATED
    calls.clear()
    off = reverify(original, variant, prop, opts, proof=proof,
                   reuse_options=ReuseOptions(leaf_attack_steps=0))
    assert not calls and off.status in (Status.VIOLATED, Status.UNKNOWN)


def test_no_leaf_attack_where_every_leaf_closed_or_on_a_near_copy(bumped, monkeypatch):
    """A variant whose tiers close every leaf (the original itself, not taken for a near
    copy) needs no attack; a near copy (int16) gets none either."""
    from compress import compress
    from verify.reuse.changes import ChangeMap
    original, _, prop, opts, proof, _, _ = bumped
    calls = []
    monkeypatch.setattr(Attacker, "attack_boxes", lambda *a, **k: calls.append(1))
    got = reverify(original, original, prop, opts, proof=proof,
                   reuse_options=ReuseOptions(attack_skip_below=0.0))
    assert got.status is Status.HOLDS and got.reuse.closed_by_difference > 0 and not calls
    near = compress(original, "int16")
    got = reverify(original, near, prop, opts, proof=proof)
    assert got.status is Status.HOLDS and not calls
    assert ChangeMap(original, near.network, near.record).relative_change < \
        ReuseOptions().attack_skip_below
    far = reverify(original, near, prop, opts, proof=proof,
                   reuse_options=ReuseOptions(attack_skip_below=0.0))
    assert far.status is Status.HOLDS and (calls or far.reuse.closed_by_bounds == proof.n_branches)


def test_leaf_attack_steps_must_not_be_negative():
    from verify.errors import OptionError
    with pytest.raises(OptionError):
        dataclasses.replace(ReuseOptions(), leaf_attack_steps=-1)
