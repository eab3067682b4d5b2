"""The bisection walk (``verify.reuse.bisection_walk``): coarser nodes of an input-split
proof tree bounded on a variant close whole subtrees when the variant is easier, never
a subtree where the variant is violated, and reverify keeps scratch's verdicts."""
import dataclasses
import time

import numpy as np
import pytest

from compress import compress
from verify.network import Affine, Network
from verify.result import Statistics, Status
from verify.reuse import ReuseOptions, reverify
from verify.reuse.bisection_walk import walk_bisection
from verify.search import RegionSearch
from verify.api import verify_property

WALK = dict(step=3, first=3, probe_share=0.0625, min_payoff=2.0)


def _shifted(net, region, target, easier: float, dip: float) -> Network:
    """``net`` whose target output is raised by ``easier`` everywhere and lowered by
    ``dip * relu(x0 - t)``, ``t`` at 90 % of input 0's range (one more hidden ReLU
    per layer carries it): easier than ``net`` on most of the box, violated near its
    top face in input 0 when ``dip`` is large."""
    t = region.lower[0] + 0.9 * (region.upper[0] - region.lower[0])
    out, last = [], len(net.affines) - 1
    for j, a in enumerate(net.affines):
        W, b = a.weight, a.bias.copy()
        if j < last:
            if j:
                W = np.hstack([W, np.zeros((W.shape[0], 1))])
            row = np.zeros((1, W.shape[1]))
            row[0, 0 if j == 0 else -1] = 1.0
            W, b = np.vstack([W, row]), np.append(b, -t if j == 0 else 0.0)
        else:
            col = np.zeros((W.shape[0], 1))
            col[target, 0] = -dip
            W = np.hstack([W, col])
            b[target] += easier
        out.append(Affine(W, b))
    return Network(tuple(out))


def _walk(variant, prop, opts, proof):
    region = prop.regions[0]
    levels = proof.bisection_levels(0, region)
    assert levels is not None and len(levels) > 4
    search = RegionSearch(variant, region, 0, opts, time.monotonic() + 60, Statistics())
    ids = list(range(proof.n_branches))
    return walk_bisection(search, region, 0, levels, ids, **WALK), ids


def _violations(net, region, xs):
    ys = net.forward(xs)
    bad = np.zeros(len(xs), dtype=bool)
    for conj in region.unsafe:
        bad |= np.all(ys @ conj.coeffs.T - conj.rhs <= 0, axis=1)
    return bad


def _leaf_of(proof, xs):
    """For each point, the index of a leaf whose box holds it."""
    lo = np.stack([b.lower for b in proof.regions[0]])
    hi = np.stack([b.upper for b in proof.regions[0]])
    inside = (xs[:, None, :] >= lo[None]) & (xs[:, None, :] <= hi[None])
    return np.argmax(inside.all(-1), axis=1)


def test_an_easier_variant_closes_subtrees_and_every_pruned_leaf_holds(input_split_proof):
    net, prop, opts, proof = input_split_proof
    region = prop.regions[0]
    target = int(np.argmax(net.forward((region.lower + region.upper) / 2)))
    variant = _shifted(net, region, target, easier=0.5, dip=0.0)
    out, ids = _walk(variant, prop, opts, proof)
    assert out.counterexample is None
    assert out.closed > 0 and out.nodes < out.closed  # it paid
    assert out.closed + len(out.open_ids) == len(ids)
    pruned = sorted(set(ids) - set(out.open_ids))
    assert len(pruned) == out.closed
    rng = np.random.default_rng(0)
    for i in pruned[::7]:
        b = proof.regions[0][i]
        xs = b.lower + rng.random((200, len(b.lower))) * (b.upper - b.lower)
        assert not _violations(variant, region, xs).any()


def test_a_violated_part_of_the_box_is_never_pruned(input_split_proof, monkeypatch):
    """With the bound minimisers' counterexamples withheld, every leaf that holds a
    violating sample stays open; with them, the walk returns a confirmed one."""
    import verify.reuse.bisection_walk as walk_module
    net, prop, opts, proof = input_split_proof
    region = prop.regions[0]
    target = int(np.argmax(net.forward((region.lower + region.upper) / 2)))
    variant = _shifted(net, region, target, easier=0.5, dip=1000.0)
    found, _ = _walk(variant, prop, opts, proof)
    assert found.counterexample is not None
    assert _violations(variant, region, np.array([found.counterexample.input])).all()
    monkeypatch.setattr(walk_module, "confirm_batch", lambda *a, **k: None)
    out, ids = _walk(variant, prop, opts, proof)
    assert out.closed > 0  # the easier part of the box closed ...
    rng = np.random.default_rng(1)
    xs = region.lower + rng.random((20000, len(region.lower))) * (region.upper - region.lower)
    bad = _violations(variant, region, xs)
    assert bad.sum() > 10
    assert set(_leaf_of(proof, xs[bad]).tolist()) <= set(out.open_ids)  # ... never this


def test_reverify_with_the_walk_keeps_scratchs_verdict(input_split_proof, monkeypatch):
    """On and off, reverify answers as scratch; the walk ran on each variant, and what it
    closed is counted (on one of them, some leaves)."""
    import verify.reuse.tree as tree
    net, prop, opts, proof = input_split_proof
    walks = []
    real = tree.walk_bisection

    def spy(*args, **kw):
        walks.append(real(*args, **kw))
        return walks[-1]
    monkeypatch.setattr(tree, "walk_bisection", spy)
    closed = []
    for recipe in ("int8", "magnitude:0.3", "neurons:0.1"):
        variant = compress(net, recipe)
        walks.clear()
        on = reverify(net, variant, prop, opts, proof=proof)
        assert len(walks) == 1
        off = reverify(net, variant, prop, opts, proof=proof,
                       reuse_options=ReuseOptions(bisection_walk_step=0))
        assert len(walks) == 1
        scratch = verify_property(variant.network, prop, opts).status
        assert on.status == off.status == scratch
        assert not on.reuse.fallback
        assert on.reuse.closed_by_ancestor == walks[0].closed
        assert off.reuse.closed_by_ancestor == 0
        closed.append(walks[0].closed)
    assert max(closed) > 0


def test_a_near_copy_is_not_walked(input_split_proof, monkeypatch):
    import verify.reuse.tree as tree
    net, prop, opts, proof = input_split_proof
    calls = []
    monkeypatch.setattr(tree, "walk_bisection", lambda *a, **k: calls.append(1))
    got = reverify(net, compress(net, "int16"), prop, opts, proof=proof,
                   reuse_options=ReuseOptions(attack=False))
    assert got.status is Status.HOLDS and not calls


@pytest.mark.parametrize("bad", [dict(bisection_walk_step=-1), dict(bisection_walk_first=-1),
                                 dict(bisection_walk_probe=1.5),
                                 dict(bisection_walk_min_payoff=float("nan"))])
def test_walk_options_refuse_bad_values(bad):
    from verify.errors import OptionError
    with pytest.raises(OptionError):
        dataclasses.replace(ReuseOptions(), **bad)
