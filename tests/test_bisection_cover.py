"""The level-by-level tiling check of input-split proofs (``bisection_tree_covers``)
answers as the recursive one (``proof_tree``) on random bisection trees and on
broken ones: a leaf dropped, shrunk, cut off its midpoint, or replaced by a box of
zero width."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from verify.properties import Region
from verify.reuse.proof import ProofBranch, bisection_tree_covers, covers, proof_tree


def _region(lo, hi) -> Region:
    return Region(np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64), ())


def _random_tree(rng, lo, hi, n_splits: int):
    """Leaves of a random tree of midpoint bisections of the box [lo, hi]."""
    leaves = [(lo.copy(), hi.copy())]
    for _ in range(n_splits):
        i = int(rng.integers(len(leaves)))
        a, b = leaves.pop(i)
        d = int(rng.integers(len(a)))
        mid = (a[d] + b[d]) / 2
        a_hi, b_lo = b.copy(), a.copy()
        a_hi[d], b_lo[d] = mid, mid
        leaves += [(a, a_hi), (b_lo, b)]
    return [ProofBranch(l, u, (), "bounds") for l, u in leaves]


def _break(rng, branches, how: str):
    out = list(branches)
    k = int(rng.integers(len(out)))
    b = out[k]
    d = int(np.argmax(b.upper - b.lower))
    if how == "drop":
        del out[k]
    elif how == "shrink":
        up = b.upper.copy()
        up[d] = b.lower[d] + 0.75 * (b.upper[d] - b.lower[d])
        out[k] = ProofBranch(b.lower, up, (), "bounds")
    elif how == "off-midpoint":  # two halves cut at a third: they still tile the leaf
        cut = b.lower[d] + (b.upper[d] - b.lower[d]) / 3
        a_hi, c_lo = b.upper.copy(), b.lower.copy()
        a_hi[d], c_lo[d] = cut, cut
        out[k:k + 1] = [ProofBranch(b.lower, a_hi, (), "bounds"),
                        ProofBranch(c_lo, b.upper, (), "bounds")]
    elif how == "zero-width":  # a leaf replaced by a flat box at its own midpoint
        mid = (b.lower[d] + b.upper[d]) / 2
        lo, up = b.lower.copy(), b.upper.copy()
        lo[d] = up[d] = mid
        out[k] = ProofBranch(lo, up, (), "bounds")
    elif how == "duplicate":  # harmless: a tiling with an extra copy of a leaf
        out.append(ProofBranch(b.lower.copy(), b.upper.copy(), (), "bounds"))
    return out


@pytest.mark.filterwarnings("ignore:The recursion limit")
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dims=st.integers(1, 5), n_splits=st.integers(0, 60),
       how=st.sampled_from(["none", "drop", "shrink", "off-midpoint", "zero-width", "duplicate"]))
def test_level_by_level_check_agrees_with_the_recursive_one(seed, dims, n_splits, how):
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-2, 0, dims)
    hi = lo + rng.uniform(0.1, 3, dims)
    region = _region(lo, hi)
    branches = _random_tree(rng, lo, hi, n_splits)
    if how != "none":
        branches = _break(rng, branches, how)
    rng.shuffle(branches)
    expected = proof_tree(region, branches) is not None
    assert bisection_tree_covers(region, branches) == expected
    assert covers(region, branches) == expected
    # intact or with a spare copy of a leaf it tiles; a hole (a leaf dropped, shrunk
    # or flat) or a cut off the midpoint does not
    assert expected == (how in ("none", "duplicate"))


def test_a_zero_width_box_at_a_midpoint_does_not_stand_for_a_half():
    """A flat box at the midpoint of [0, 1] x [0, 1] beside the lower half leaves the
    upper half uncovered."""
    region = _region([0.0, 0.0], [1.0, 1.0])
    lower = ProofBranch(np.array([0.0, 0.0]), np.array([0.5, 1.0]), (), "bounds")
    flat = ProofBranch(np.array([0.5, 0.0]), np.array([0.5, 1.0]), (), "bounds")
    assert not bisection_tree_covers(region, [lower, flat])
    assert not bisection_tree_covers(region, [lower, flat, flat])
    upper = ProofBranch(np.array([0.5, 0.0]), np.array([1.0, 1.0]), (), "bounds")
    assert bisection_tree_covers(region, [lower, upper])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dims=st.integers(1, 5), n_splits=st.integers(0, 60))
def test_each_level_tiles_the_box_with_the_leaves_above_it(seed, dims, n_splits):
    """The levels the walk bounds (``bisection_levels``): level 0 is the region; every
    branch lies in its node's box; a level's nodes and the leaves that ended above it
    tile the region (volumes add up, and each is inside it); every branch is a node
    (a leaf) of exactly one level, the last level's nodes are all leaves."""
    from verify.reuse.bisection import bisection_levels
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-2, 0, dims)
    hi = lo + rng.uniform(0.1, 3, dims)
    region = _region(lo, hi)
    branches = _random_tree(rng, lo, hi, n_splits)
    rng.shuffle(branches)
    levels = bisection_levels(region, branches)
    assert levels is not None
    np.testing.assert_array_equal(levels[0].lower, lo[None])
    np.testing.assert_array_equal(levels[0].upper, hi[None])
    LO = np.stack([b.lower for b in branches])
    HI = np.stack([b.upper for b in branches])
    vol = np.prod(HI - LO, axis=1)
    ended = np.zeros(len(branches), dtype=bool)
    leaf_levels = np.zeros(len(branches), dtype=int)
    for level in levels:
        ids, node = level.branch_ids, level.node_of
        assert (LO[ids] >= level.lower[node]).all() and (HI[ids] <= level.upper[node]).all()
        assert (level.lower >= lo).all() and (level.upper <= hi).all()
        nodes = np.unique(node)
        np.testing.assert_allclose(np.prod(level.upper[nodes] - level.lower[nodes], axis=1).sum()
                                   + vol[ended].sum(), np.prod(hi - lo))
        is_leaf = (LO[ids] == level.lower[node]).all(1) & (HI[ids] == level.upper[node]).all(1)
        assert not ended[ids].any()
        leaf_levels[ids[is_leaf]] += 1
        ended[ids[is_leaf]] = True
    assert (leaf_levels == 1).all()
    assert len(np.unique(levels[-1].node_of)) == len(levels[-1].branch_ids)
