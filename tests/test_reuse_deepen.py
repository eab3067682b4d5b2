"""Deepening the original's proof tree where a variant needs it
(verify.reuse.deepen): the children of a leaf tile its domain and their bounds
hold on sampled points of it (swapping two children's bounds is caught); a leaf
the tiers leave open is closed through its children instead of walking the
whole tree, with scratch's verdict; a broken variant still gets a replayed
counterexample."""
import time

import numpy as np
import pytest
import torch

from compress import compress
from verify.api import VerifyOptions, verify_property
from verify.constraint_names import fact_dict
from verify.reuse import ReuseOptions, reverify
from verify.reuse.deepen import Deepening
from verify.search import region_rows

OPTS = VerifyOptions(timeout=5, z3_query_timeout=1)


def _pre_activations(net, xs):
    """Per hidden layer (N, n_k): the pre-activations at points ``xs``."""
    out, h = [], xs
    for a in net.affines[:-1]:
        z = h @ a.weight.T + a.bias
        out.append(z)
        h = np.maximum(z, 0.0)
    return out


def _in_domain(zs, facts) -> np.ndarray:
    """(N,) whether each point has the ReLU phases ``facts`` ({(k, i): +-1})."""
    ok = np.ones(len(zs[0]), dtype=bool)
    for (k, i), phase in facts.items():
        ok &= zs[k][:, i] * phase >= 0
    return ok


def _outside(net, region, child, zs, xs) -> int:
    """Points of ``child``'s domain outside its layer bounds or below its spec bounds."""
    inside = _in_domain(zs, fact_dict(child.splits))
    bad = 0
    for (l, u), z in zip(child.layer_bounds, zs):
        zi = z[inside]
        bad += int(((zi < l - 1e-7) | (zi > u + 1e-7)).any(axis=1).sum())
    C, d, _ = region_rows(region, net.n_outputs)
    spec = net.forward(xs[inside]) @ C.numpy().T - d.numpy()
    return bad + int((spec < child.spec_lower - 1e-7).any(axis=1).sum())


def test_children_tile_the_leaf_and_their_bounds_hold(split_proof):
    net, prop, proof = split_proof
    region = prop.regions[0]
    leaf = max((b for b in proof.regions[0] if b.method != "infeasible"),
               key=lambda b: len(b.splits))
    deep = Deepening(net, region, 0, OPTS, time.monotonic() + 30)
    kids = deep.children([leaf])
    assert len(kids) == 2
    parent = fact_dict(leaf.splits)
    new = [set(fact_dict(k.splits).items()) - set(parent.items()) for k in kids]
    assert all(len(n) == 1 for n in new)
    (n0, p0), = new[0]
    (n1, p1), = new[1]
    assert n0 == n1 and p0 == -p1  # one original ReLU, both phases
    rng = np.random.default_rng(0)
    xs = rng.uniform(region.lower, region.upper, size=(40000, net.n_inputs))
    zs = _pre_activations(net, xs)
    mine = _in_domain(zs, parent)
    assert mine.sum() >= 20, "too few sampled points in the leaf's domain"
    per_child = [_in_domain(zs, fact_dict(k.splits)) for k in kids]
    assert np.array_equal(per_child[0] | per_child[1], mine)  # the children cover the leaf
    for k in kids:
        assert _outside(net, region, k, zs, xs) == 0
    # the mutation: each child checked against its sibling's bounds (the active
    # child's points lie above the inactive one's upper bound of the split neuron)
    swapped = [kids[0].__class__(k.lower, k.upper, k.splits, k.method,
                                 layer_bounds=other.layer_bounds, spec_lower=other.spec_lower)
               for k, other in ((kids[0], kids[1]), (kids[1], kids[0]))]
    hits = [per_child[i].sum() for i in range(2)]
    assert sum(_outside(net, region, s, zs, xs) for s, h in zip(swapped, hits) if h) > 0


def _tiers_give_up_at_the_top(monkeypatch, proof):
    """The proof's own leaves all stay open through tiers 0-2 (sound: closures are
    only given up); the children deepening makes are checked as usual."""
    import verify.reuse.tree as tree
    tier2_open = tree.TreeCheck._tier2_open

    def top_open(self, region, r, ids, moved_of):
        cex, items = tier2_open(self, region, r, ids, moved_of)
        if self.branches is not proof.regions[0] or cex is not None:
            return cex, items
        leaves = [i for i, b in enumerate(self.branches) if b.method != "infeasible"]
        free = [(np.full(s, -np.inf), np.full(s, np.inf)) for s in self.search.net.hidden_sizes]
        return None, [(self.branches[i], free) for i in leaves]
    tiers01 = tree.TreeCheck._tiers01

    def top_tiers01(self, idx, max_open_leaves, backsub=True):
        if self.branches is not proof.regions[0]:
            return tiers01(self, idx, max_open_leaves, backsub)
        free = tree.MovedRows()
        free.add(list(idx), [(torch.full((len(idx), s), -np.inf, dtype=torch.float64),
                              torch.full((len(idx), s), np.inf, dtype=torch.float64))
                             for s in self.search.net.hidden_sizes])
        return list(idx), free
    monkeypatch.setattr(tree.TreeCheck, "_tiers01", top_tiers01)
    monkeypatch.setattr(tree.TreeCheck, "_tier2_open", top_open)


def test_open_leaves_close_through_their_children_not_the_walk(split_proof, monkeypatch,
                                                                tree_walks):
    net, prop, proof = split_proof
    variant = compress(net, "int16")
    scratch = verify_property(variant.network, prop, OPTS).status
    _tiers_give_up_at_the_top(monkeypatch, proof)
    walks = tree_walks
    got = {}
    for levels in (0, 4):
        walks.clear()
        ropt = ReuseOptions(tree_max_open=1.0, deepen_levels=levels, deepen_share=50.0,
                            leaf_search_max_open=0)
        r = reverify(net, variant, prop, OPTS, reuse_options=ropt, proof=proof)
        assert not r.reuse.fallback, r.reuse.fallback_reason
        if r.reuse.closed_at_root:
            pytest.skip("the variant closes at its root")
        got[levels] = (r.status, r.reuse.deepened, len(walks))
    assert got[0] == (scratch, 0, 1)  # too many leaves open: the tree is walked
    status, deepened, n_walks = got[4]
    assert status == scratch and deepened > 0 and n_walks == 0


def test_broken_variant_is_violated_through_deepening(split_proof, monkeypatch):
    from broken_nets import broken_everywhere
    net, prop, proof = split_proof
    broken = broken_everywhere(net, prop.regions[0])
    _tiers_give_up_at_the_top(monkeypatch, proof)
    ropt = ReuseOptions(tree_max_open=1.0, deepen_levels=4, deepen_share=50.0)
    r = reverify(net, broken, prop, OPTS, reuse_options=ropt, proof=proof)
    assert r.status.value == "violated"
    x = np.array(r.counterexample.input)
    assert prop.violated_by(x, broken.forward(x))


def test_a_leafs_children_are_made_once_for_all_variants(split_proof, monkeypatch):
    """The children of a leaf split on the original are the same for every variant: the
    proof keeps them, and a second variant deepening the same leaves makes none again
    (with scratch's verdict)."""
    net, prop, proof = split_proof
    _tiers_give_up_at_the_top(monkeypatch, proof)
    made = []
    real = Deepening._children

    def counting(self, leaves):
        made.append(len(leaves))
        return real(self, leaves)
    monkeypatch.setattr(Deepening, "_children", counting)
    ropt = ReuseOptions(tree_max_open=1.0, deepen_levels=1, deepen_share=50.0,
                        leaf_search_max_open=10 ** 6)
    proof.deepened.clear()
    counts = []
    for recipe in ("int16", "int16"):
        variant = compress(net, recipe)
        r = reverify(net, variant, prop, OPTS, reuse_options=ropt, proof=proof)
        assert r.status == verify_property(variant.network, prop, OPTS).status
        if r.reuse.closed_at_root:
            pytest.skip("the variant closes at its root")
        counts.append(sum(made))
        made.clear()
    assert counts[0] > 0 and counts[1] == 0
    assert r.reuse.deepened > 0
