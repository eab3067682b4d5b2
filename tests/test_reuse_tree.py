"""Re-checking a proof tree (verify.reuse.tree) and warm starts: warm-started
bounds and the leaves' moved bounds hold on sampled points (and a mutation
that breaks them is caught), a proof record with warm-start slopes round-trips
through the store (an old schema is rejected cleanly), and a broken proof tree
still falls back soundly."""
import dataclasses
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from compress import compress
from verify.api import VerifyOptions, local_robustness, verify_property
from verify.bounds import BoundPropagator
from verify.errors import InputError
from verify.proof_store import ProofStore
from verify.result import Status
from verify.reuse import ReuseOptions, load_proof, reverify, save_proof
from verify.reuse.changes import ChangeMap
from verify.reuse.check_cli import read_proof_file
from verify.reuse.proof import (ProofRecord, pack_alphas, pack_betas, store_key, unpack_alphas,
                                 unpack_betas)
from verify.reuse.difference import (ChangeCaps, leaf_deviation, original_bounds, region_caps,
                                    symbolic_deviation)
from verify.reuse.tree import moved_bounds, split_constraints, warm_betas
from verify.constraint_names import split_arrays, split_facts
from verify.result import Statistics
from verify.search import RegionSearch, fact_betas, region_rows

OPTS = VerifyOptions(timeout=5, z3_query_timeout=1)


def _samples(region, rng, n=4000):
    lo, hi = region.lower, region.upper
    inside = rng.uniform(lo, hi, size=(n, len(lo)))
    corners = np.where(rng.random((n, len(lo))) < 0.5, lo, hi)
    return np.vstack([inside, corners])


def _spec_values(net, region, xs):
    """(N, m) values of the region's spec rows c @ y - d."""
    C, d, _ = region_rows(region, net.n_outputs)
    return net.forward(xs) @ C.numpy().T - d.numpy()


def _violations(net, region, alpha_init, rng) -> int:
    """Sampled points below a warm-started bound of the whole box."""
    prop = BoundPropagator(net)
    C, d, _ = region_rows(region, net.n_outputs)
    lo = torch.from_numpy(region.lower[None, :].copy())
    hi = torch.from_numpy(region.upper[None, :].copy())
    res = prop.bound(lo, hi, C, d, alpha_iterations=3, alpha_init=alpha_init)
    values = _spec_values(net, region, _samples(region, rng))
    return int((values < res.spec_lower.numpy()[0] - 1e-9).sum())


def test_warm_started_bounds_hold_on_sampled_points(digits_mlp, split_proof, monkeypatch):
    net, X, _ = digits_mlp
    _, _, proof = split_proof
    rng = np.random.default_rng(0)
    # a wide box: many unstable neurons, so the lower slopes matter
    region = local_robustness(X[3], 0.15, int(np.argmax(net.forward(X[3]))), 10).regions[0]
    warm = next(b.alphas for b in proof.regions[0] if b.alphas is not None)
    starts = {"the original's slopes": [torch.from_numpy(a.astype(np.float64))[None] for a in warm],
              "out of range": [torch.full((1, n), 50.0, dtype=torch.float64)
                               for n in net.hidden_sizes],
              "not finite": [torch.full((1, n), np.nan, dtype=torch.float64)
                             for n in net.hidden_sizes],
              "random": [torch.from_numpy(rng.uniform(-2, 3, (1, n))) for n in net.hidden_sizes]}
    for name, alpha_init in starts.items():
        assert _violations(net, region, alpha_init, rng) == 0, name
    # the mutation: warm slopes used unclipped, and on every neuron rather than on
    # the unstable ones only (an active neuron's lower line must be z itself)
    original = BoundPropagator._relaxation

    def mutated(l, u, alpha_free=None):
        alpha, s, t = original(l, u, None)
        return (alpha if alpha_free is None else alpha_free), s, t
    monkeypatch.setattr(BoundPropagator, "_relaxation", staticmethod(mutated))
    assert _violations(net, region, starts["out of range"], rng) > 0


@pytest.mark.parametrize("recipe", ["int8", "magnitude:0.3", "neurons:0.25"])
def test_moved_leaf_bounds_hold_on_each_leaf_domain(split_proof, recipe):
    """The variant's pre-activations and spec rows at sampled points of a leaf's
    domain (its box with the ORIGINAL's phase facts) lie within the leaf's
    moved bounds; a mutation (no change added) is caught."""
    net, prop, proof = split_proof
    region = prop.regions[0]
    variant = compress(net, recipe)
    cmap = ChangeMap(net, variant.network, variant.record)
    C = region_rows(region, net.n_outputs)[0].numpy()
    xs = _samples(region, np.random.default_rng(2), 20000)
    z_orig = net.pre_activations(xs)
    z_var = variant.network.pre_activations(xs)
    spec_var = _spec_values(variant.network, region, xs)
    checked = caught = 0
    for b in proof.regions[0]:
        if b.method == "infeasible":
            continue
        phases = split_arrays(b.splits, net.hidden_sizes)
        inside = np.ones(len(xs), dtype=bool)
        for k, ph in enumerate(phases):
            for i in np.flatnonzero(ph):
                inside &= (z_orig[k][:, i] >= 0) if ph[i] > 0 else (z_orig[k][:, i] <= 0)
        if not inside.any():
            continue
        lowers = [b.layer_bounds[k][0][None] for k in range(len(net.hidden_sizes))]
        uppers = [b.layer_bounds[k][1][None] for k in range(len(net.hidden_sizes))]
        changes, spec_dl = leaf_deviation(cmap, lowers, uppers, b.lower[None], b.upper[None], C)
        moved = moved_bounds(cmap, lowers, uppers, changes)
        for k, (l, u) in enumerate(moved):
            z = z_var[k][inside]
            assert (z >= l.numpy()[0] - 1e-9).all() and (z <= u.numpy()[0] + 1e-9).all(), (k, b.splits)
        if b.spec_lower is not None:
            assert (spec_var[inside] >= b.spec_lower + spec_dl[0] - 1e-9).all()
        # mutation: the original's bounds taken as the variant's (change ignored)
        for k, (l, u) in enumerate(moved_bounds(cmap, lowers, uppers,
                                                [(0 * dl, 0 * du) for dl, du in changes])):
            z = z_var[k][inside]
            caught += int(((z < l.numpy()[0] - 1e-9) | (z > u.numpy()[0] + 1e-9)).any())
        checked += 1
    assert checked >= 2
    assert caught > 0


def test_proof_record_with_warm_starts_round_trips_through_the_store(split_proof, tmp_path):
    net, prop, proof = split_proof
    store = ProofStore(tmp_path)
    save_proof(store, proof, prop, OPTS)
    again = load_proof(store, net, prop, OPTS)
    assert again is not None and again.n_branches == proof.n_branches
    for a, b in zip(proof.regions[0], again.regions[0]):
        assert a.splits == b.splits and a.method == b.method
        np.testing.assert_array_equal(a.lower, b.lower)
        assert (a.alphas is None) == (b.alphas is None)
        if a.alphas is not None:
            for x, y in zip(a.alphas, b.alphas):
                assert y.dtype == np.float16
                np.testing.assert_array_equal(x, y)
        assert (a.betas is None) == (b.betas is None)
        if a.betas is not None:
            assert b.betas.dtype == np.float16 and b.betas.shape == (a.betas.shape[0], len(a.splits))
            np.testing.assert_array_equal(a.betas, b.betas)
        assert b.layer_bounds is None and b.spec_lower is None  # never from a file
        assert {j: c.names for j, c in a.cores.items()} == {j: c.names for j, c in b.cores.items()}
    # the root's layer slopes (a variant's warm root), float16, and refused when malformed
    from verify.reuse.proof import pack_root_slopes, unpack_root_slopes
    assert proof.root_slopes.get(0) and set(again.root_slopes) == set(proof.root_slopes)
    for k, (neurons, rows) in proof.root_slopes[0].items():
        got_neurons, got_rows = again.root_slopes[0][k]
        np.testing.assert_array_equal(neurons, got_neurons)
        for x, y in zip(rows, got_rows):
            assert y.dtype == np.float16 and y.shape == x.shape
            np.testing.assert_allclose(x, y, atol=5e-4)
    k = max(proof.root_slopes[0])
    neurons, rows = proof.root_slopes[0][k]
    bad_nan = pack_root_slopes({k: (neurons, [np.full_like(r, np.nan) for r in rows])})
    bad_size = pack_root_slopes({k: (neurons, [r[:, :-1].ravel()[:-1] for r in rows])})
    for bad in (bad_nan, bad_size):
        with pytest.raises(ValueError):
            unpack_root_slopes(bad)
    # float16 packing: exact for float16 values, rejects a wrong length
    packed = pack_alphas([np.array([0.0, 0.5, 1.0]), np.array([0.25])])
    assert [list(a) for a in unpack_alphas(packed)] == [[0.0, 0.5, 1.0], [0.25]]
    with pytest.raises(ValueError):
        unpack_alphas({**packed, "sizes": [3, 2]})
    # the split facts' multipliers: the leaves that have splits carry them, (m, n_facts)
    assert any(b.betas is not None and b.betas.any() for b in proof.regions[0])
    betas = np.array([[0.0, 2.5], [0.125, 7.0], [1.0, 0.0]])
    assert unpack_betas(pack_betas(betas), 2).tolist() == betas.tolist()
    with pytest.raises(ValueError):
        unpack_betas(pack_betas(betas), 3)
    # a record of the previous schema under today's key: ignored
    from verify.reuse.proof import SCHEMA_VERSION
    payload = json.loads(store.path_for(net.digest(), prop.digest(), store_key(OPTS)).read_text())
    payload["proof"]["version"] = SCHEMA_VERSION - 1
    store.put(net.digest(), prop.digest(), store_key(OPTS), payload)
    assert load_proof(store, net, prop, OPTS) is None
    assert any(f"v{SCHEMA_VERSION}" in p for p in store.problems)
    # a variant verified from the loaded record (no leaf bounds: the variant's own)
    variant = compress(net, "int8")
    r = reverify(net, variant, prop, OPTS, proof=again)
    assert r.status == verify_property(variant.network, prop, OPTS).status


def test_stored_proof_record_has_status_verdicts_and_rejects_a_bad_one(split_proof, tmp_path):
    net, prop, proof = split_proof
    assert proof.status is Status.HOLDS
    store = ProofStore(tmp_path)
    save_proof(store, proof, prop, OPTS)
    path = store.path_for(net.digest(), prop.digest(), store_key(OPTS))
    payload = json.loads(path.read_text())
    assert type(payload["proof"]["status"]) is str and payload["proof"]["status"] == "holds"
    again = load_proof(store, net, prop, OPTS)
    assert again.status is Status.HOLDS and again.to_result().status is Status.HOLDS
    # a record whose status is not a verdict (resealed, as a user could): ignored, with
    # a problem naming the file and what was expected
    payload["proof"]["status"] = "maybe"
    store.put(net.digest(), prop.digest(), store_key(OPTS), payload)
    assert load_proof(store, net, prop, OPTS) is None
    assert any(str(path) in p and "'maybe'" in p and '"holds", "violated" or "unknown"' in p
               for p in store.problems), store.problems
    # the same file given to check-proof: the project's error, naming the file
    with pytest.raises(InputError) as err:
        read_proof_file(str(path), prop)
    assert err.value.path == str(path) and "'maybe'" in str(err.value)
    assert err.value.expected == '"holds", "violated" or "unknown"'


def test_broken_proof_tree_falls_back_soundly(split_proof):
    net, prop, proof = split_proof
    variant = compress(net, "int8")
    scratch = verify_property(variant.network, prop, OPTS).status
    # a leaf missing: the tree does not cover the region -> verified from scratch
    holed = ProofRecord(proof.network, proof.property, proof.status, proof.time_s,
                        regions={0: proof.regions[0][1:]})
    r = reverify(net, variant, prop, OPTS, proof=holed)
    assert r.reuse.fallback and "do not cover" in r.reuse.fallback_reason
    assert r.status == scratch
    # garbage warm starts (NaN, out of range): never a wrong verdict
    junk = ProofRecord.from_dict(proof.to_dict(prop), prop)
    for b, orig in zip(junk.regions[0], proof.regions[0]):
        b.layer_bounds, b.spec_lower = orig.layer_bounds, orig.spec_lower
        b.alphas = [np.full(n, np.nan if k % 2 else 7.0, dtype=np.float16)
                    for k, n in enumerate(net.hidden_sizes)]
    for recipe in ("int8", "magnitude:0.3"):
        v = compress(net, recipe)
        r = reverify(net, v, prop, OPTS, proof=junk)
        s = verify_property(v.network, prop, OPTS).status
        assert r.status == s or "unknown" in (r.status.value, s.value)
    # a variant the proof cannot carry over to (its spec pushed below zero): the
    # tree does not close, and the verdict is violated with a replayed counterexample
    last = net.affines[-1]
    target = int(np.argmax(net.forward(prop.regions[0].lower / 2 + prop.regions[0].upper / 2)))
    bias = last.bias.copy()
    bias[target] -= 100.0
    from verify.network import Affine
    broken = net.with_affines(net.affines[:-1] + (Affine(last.weight, bias),), "broken")
    r = reverify(net, broken, prop, OPTS, proof=proof)
    assert r.status.value == "violated"
    x = np.array(r.counterexample.input)
    assert prop.violated_by(x, broken.forward(x))


def test_report_end_to_end_and_hard_pairs(tmp_path):
    """The proof is charged once per original; hard pairs are those whose
    scratch run takes >= 1 s; the HTML page shows the three figures."""
    from verify.reuse.report import end_to_end, hard_pairs, headline, render_html

    def row(orig, prop, recipe, t, st, proof_s, orig_s):
        return {"status": "holds", "time_s": t, "scratch_status": "holds", "scratch_time_s": st,
                "property": prop, "recipe": recipe, "variant_name": f"{orig}~{recipe}",
                "reuse": {"original_name": orig, "original_proof_s": proof_s,
                          "original_time_s": orig_s, "original_status": "holds",
                          "branches": 3, "fallback": False}}
    rows = [row("a", "p", "int8", 0.5, 4.0, 2.0, 3.0), row("a", "p", "int16", 0.1, 3.0, 2.0, 3.0),
            row("b", "q", "int8", 0.01, 0.05, 0.02, 0.04)]
    per, total = end_to_end(rows)
    assert [e.label for e in per] == ["a / p", "b / q"]
    assert per[0].ratio == pytest.approx((3.0 + 4.0 + 3.0) / (2.0 + 0.5 + 0.1))
    assert total.ratio == pytest.approx((3.0 + 7.0 + 0.04 + 0.05) / (2.0 + 0.6 + 0.02 + 0.01))
    h = hard_pairs(rows)
    assert h.pairs == 2 and h.speedup == pytest.approx((8.0 * 30.0) ** 0.5)
    head = headline(rows)
    assert head["hard_total_ratio"] == pytest.approx(7.0 / 0.6)
    page = render_html(rows)
    assert "End to end per original" in page and f"{head['end_to_end']:.2f}x" in page


def _tiers01_closing_nothing(net):
    """A stand-in for TreeCheck._tiers01 that closes no leaf (sound: it only gives
    up closures) and moves no bound."""
    from verify.reuse.tree import MovedRows

    def nothing_closed(self, idx, max_open_leaves, backsub=True):
        free = MovedRows()
        free.add(list(idx), [(torch.full((len(idx), n), -np.inf, dtype=torch.float64),
                              torch.full((len(idx), n), np.inf, dtype=torch.float64))
                             for n in net.hidden_sizes])
        return list(idx), free
    return nothing_closed


def test_leaves_left_open_are_searched_within_a_share_then_the_tree_is_walked(
        split_proof, monkeypatch, tree_walks):
    """Leaves the tiers leave open are searched on the original's leaf domains for
    ``leaf_search_share`` of the original's time, when at most ``leaf_search_max_open``
    are open; past either the tree is walked on the variant instead, and the verdict
    is scratch's either way."""
    import verify.reuse.tree as tree

    net, prop, proof = split_proof
    variant = compress(net, "int16")
    scratch = verify_property(variant.network, prop, OPTS).status

    nothing_closed = _tiers01_closing_nothing(net)
    tier2 = tree.TreeCheck._tier2

    def tier2_all_open(self, idx, moved_of):
        _, res, rows = tier2(self, idx, moved_of)
        return list(idx), res, rows
    walks = tree_walks
    monkeypatch.setattr(tree.TreeCheck, "_tiers01", nothing_closed)
    monkeypatch.setattr(tree.TreeCheck, "_tier2", tier2_all_open)
    verdicts = {}
    n_leaves = sum(b.method != "infeasible" for b in proof.regions[0])
    for share, max_open in ((0.0, n_leaves), (50.0, n_leaves), (50.0, 0)):
        walks.clear()
        ropt = ReuseOptions(tree_max_open=1.0, leaf_search_share=share,
                            leaf_search_max_open=max_open)
        r = reverify(net, variant, prop, OPTS, reuse_options=ropt, proof=proof)
        assert not r.reuse.fallback, r.reuse.fallback_reason
        verdicts[share, max_open] = (r.status, len(walks))
        if r.reuse.closed_at_root:  # the variant's own root bound closed it: nothing to see
            pytest.skip("the variant closes at its root")
    assert verdicts[0.0, n_leaves] == (scratch, 1)  # no time for the leaves: walked
    assert verdicts[50.0, n_leaves] == (scratch, 0)  # the leaves closed by their own search
    assert verdicts[50.0, 0] == (scratch, 1)  # more leaves open than searched: walked


def test_walk_bounds_interior_nodes_without_alpha_steps(split_proof, monkeypatch):
    """The walk bounds the original's interior nodes with plain CROWN (alpha steps
    down to ``walk_alpha_depth`` only) and its leaves from their slopes; the verdict
    is scratch's."""
    import verify.reuse.tree as tree
    from verify.search import RegionSearch

    net, prop, proof = split_proof
    variant = compress(net, "int8")
    scratch = verify_property(variant.network, prop, OPTS).status
    monkeypatch.setattr(tree.TreeCheck, "_tiers01", _tiers01_closing_nothing(net))
    alphas = []
    bound = RegionSearch.bound_branches

    def recorded(self, lo, hi, splits, fixed, alpha=None, *args, **kwargs):
        alphas.append(alpha)
        return bound(self, lo, hi, splits, fixed, alpha, *args, **kwargs)
    monkeypatch.setattr(RegionSearch, "bound_branches", recorded)
    for depth, plain_interior in ((-1, True), (99, False)):
        alphas.clear()
        ropt = ReuseOptions(tree_max_open=0.0, walk_alpha_depth=depth)
        r = reverify(net, variant, prop, OPTS, reuse_options=ropt, proof=proof)
        assert r.status == scratch
        assert r.reuse.closed_by_bounds > 0 and not r.reuse.fallback
        assert (0 in alphas) == plain_interior, alphas



def test_walk_bounds_leaves_left_open_again_together(digits_mlp, monkeypatch, tree_walks):
    """The leaves a walk's first (warm) pass leaves open are bounded again with the
    search's steps in batches that gather several first-pass batches; the verdict is
    scratch's, and a leaf closed only by the second pass counts."""
    import verify.reuse.tree as tree
    from verify.reuse import build_proof

    net, X, _ = digits_mlp
    # near the largest eps that holds: a proof of 6 leaves
    prop = local_robustness(X[3], 0.0965, int(np.argmax(net.forward(X[3]))), 10)
    proof = build_proof(net, prop, OPTS)
    assert proof.status is Status.HOLDS and proof.n_branches >= 4
    variant = compress(net, "magnitude:0.3")
    scratch = verify_property(variant.network, prop, OPTS).status
    monkeypatch.setattr(tree.TreeCheck, "_tiers01", _tiers01_closing_nothing(net))
    groups, closed_again = [], []
    second = tree.TreeWalk._second_pass

    def counted(self, pending):
        groups.append([len(g["lo"]) for g in pending])
        out = second(self, pending)
        closed_again.append(sum(int(c.sum()) for _, c in out))
        return out
    monkeypatch.setattr(tree.TreeWalk, "_second_pass", counted)
    opts = dataclasses.replace(OPTS, batch_size=2)
    # no warm steps: the first pass is plain CROWN, so the second has leaves to close
    ropt = ReuseOptions(tree_max_open=0.0, warm_alpha_iterations=0)
    r = reverify(net, variant, prop, opts, reuse_options=ropt, proof=proof)
    assert tree_walks and not r.reuse.fallback, r.reuse.fallback_reason
    assert r.status == scratch
    assert groups and any(len(g) > 1 for g in groups), groups
    assert sum(closed_again) > 0


@pytest.mark.parametrize("recipe", ["int8", "magnitude:0.3"])
def test_walk_bounds_the_root_and_the_leaves_only(digits_mlp, monkeypatch, tree_walks, recipe):
    """By default (``walk_interior_depth`` 0) the walk bounds its root and then the
    leaves, each from the root's bounds; with -1 it bounds every interior node it
    reaches as well.  Both give scratch's verdict."""
    import verify.reuse.tree as tree
    from verify.reuse import build_proof

    net, X, _ = digits_mlp
    prop = local_robustness(X[3], 0.0965, int(np.argmax(net.forward(X[3]))), 10)
    proof = build_proof(net, prop, OPTS)
    n_leaves = proof.n_branches
    assert proof.status is Status.HOLDS and n_leaves >= 4  # so at least 3 interior nodes
    variant = compress(net, recipe)
    scratch = verify_property(variant.network, prop, OPTS).status
    monkeypatch.setattr(tree.TreeCheck, "_tiers01", _tiers01_closing_nothing(net))
    interior, leaves = [], []
    bound = tree.TreeWalk._bound_nodes

    def counted(self, lo, hi, splits, fixed, leaf_ids, alpha, rows=None):
        (interior if leaf_ids is None else leaves).append(len(lo))
        return bound(self, lo, hi, splits, fixed, leaf_ids, alpha, rows)
    monkeypatch.setattr(tree.TreeWalk, "_bound_nodes", counted)
    seen = {}
    for depth in (0, -1):
        interior.clear(), leaves.clear(), tree_walks.clear()
        r = reverify(net, variant, prop, OPTS, proof=proof,
                     reuse_options=ReuseOptions(tree_max_open=0.0, walk_interior_depth=depth))
        assert tree_walks and not r.reuse.fallback, r.reuse.fallback_reason
        assert r.status == scratch
        seen[depth] = (sum(interior), sum(leaves))
    assert seen[0][0] == 1, seen  # the root alone
    # (unless the root closes the region, every leaf is reached)
    assert seen[0][1] in (0, n_leaves), seen
    assert seen[-1][0] > 1, seen


def test_tier_0b_runs_only_on_leaves_whose_interval_bound_came_close(split_proof, monkeypatch):
    """Tier 0b (``interval_symbolic_deviation``) takes the leaves whose interval change
    bound lost at most ``interval_symbolic_max_loss`` times their margin: none at 0,
    every open one at infinity; the verdict is scratch's either way."""
    import verify.reuse.tree as tree

    net, prop, proof = split_proof
    variant = compress(net, "magnitude:0.1")  # tier 0 leaves some of its leaves open
    scratch = verify_property(variant.network, prop, OPTS).status
    sizes = []
    isd = tree.interval_symbolic_deviation

    def counted(cmap, lowers, *args):
        sizes.append(len(lowers[0]))
        return isd(cmap, lowers, *args)
    monkeypatch.setattr(tree, "interval_symbolic_deviation", counted)
    seen = {}
    for max_loss in (0.0, float("inf")):
        sizes.clear()
        r = reverify(net, variant, prop, OPTS, proof=proof,
                     reuse_options=ReuseOptions(interval_symbolic_max_loss=max_loss))
        assert r.status == scratch and not r.reuse.fallback
        seen[max_loss] = sum(sizes)
    assert seen[0.0] == 0 and seen[float("inf")] > 0, seen


def test_walk_finds_a_broken_variants_counterexample(split_proof, monkeypatch, tree_walks):
    """A variant broken everywhere, with no other source of candidates: the walk's
    open nodes' bound minimisers give a counterexample, replayed on the variant."""
    from broken_nets import broken_everywhere
    from verify.reuse.reuser import Reuser
    import verify.reuse.tree as tree

    net, prop, proof = split_proof
    broken = broken_everywhere(net, prop.regions[0])
    monkeypatch.setattr(tree.TreeCheck, "_tiers01", _tiers01_closing_nothing(net))
    monkeypatch.setattr(Reuser, "_original_candidates", lambda self, region, r, ob: None)
    monkeypatch.setattr(Reuser, "_root_closes", lambda self, search: None)
    monkeypatch.setattr(Reuser, "attack", lambda self, *a, **k: None)
    r = reverify(net, broken, prop, OPTS,
                 reuse_options=ReuseOptions(tree_max_open=0.0, sample_first_share=0), proof=proof)
    assert tree_walks and r.status is Status.VIOLATED and r.method == "reuse"
    x = np.array(r.counterexample.input)
    assert prop.violated_by(x, broken.forward(x))


def test_a_quick_proofs_broken_variant_is_found_by_samples_first(split_proof):
    """A variant broken everywhere, of a proof shorter than ``attack_first_proof_s``:
    random samples up front find its counterexample before any tree is re-checked
    (without them, the tree's own candidates do); replayed on the variant."""
    from broken_nets import broken_everywhere
    net, prop, proof = split_proof
    assert proof.time_s < ReuseOptions().attack_first_proof_s
    broken = broken_everywhere(net, prop.regions[0])
    got = {}
    for share in (0.02, 0.0):
        r = reverify(net, broken, prop, OPTS, reuse_options=ReuseOptions(sample_first_share=share),
                     proof=proof)
        assert r.status is Status.VIOLATED
        x = np.array(r.counterexample.input)
        assert prop.violated_by(x, broken.forward(x))
        got[share] = r.method
    assert got == {0.02: "attack", 0.0: "reuse"}, got


def _unstable_at_root(prop, region, C, d) -> list[tuple[int, int]]:
    """(layer, neuron) of the ReLUs a plain bound of the region's box leaves unstable."""
    lo, hi = torch.from_numpy(region.lower[None].copy()), torch.from_numpy(region.upper[None].copy())
    root = prop.bound(lo, hi, C, d)
    return [(k, j) for k in range(len(root.lower))
            for j in np.flatnonzero((root.lower[k][0] < 0) & (root.upper[k][0] > 0))]


def _split_domain(hidden_sizes, unstable, z, anchor: int, n_splits: int, rng):
    """``n_splits`` of the ``unstable`` ReLUs fixed in the phases of sampled point
    ``anchor`` (pre-activations ``z`` per layer, (N, n_k)): (phases per layer, which
    sampled points lie in that domain)."""
    phases = [np.zeros(n, dtype=np.int8) for n in hidden_sizes]
    for t in rng.choice(len(unstable), size=n_splits, replace=False):
        k, j = unstable[t]
        phases[k][j] = 1 if z[k][anchor, j] >= 0 else -1
    inside = np.ones(len(z[0]), dtype=bool)
    for k, ph in enumerate(phases):
        for j in np.flatnonzero(ph):
            inside &= (z[k][:, j] >= 0) if ph[j] > 0 else (z[k][:, j] <= 0)
    return phases, inside


def _root_bound(net, region):
    """The original's bound of the whole region (as reverify derives it)."""
    return original_bounds(RegionSearch(net, region, 0, OPTS, time.monotonic() + 60,
                                        Statistics()))


def _caps(net, cmap, region, C) -> ChangeCaps:
    """The region's change caps."""
    return region_caps(cmap, _root_bound(net, region), region.lower, region.upper, C)


@pytest.mark.parametrize("recipe", ["int16", "int8", "magnitude:0.3"])
def test_region_caps_bound_the_change_at_sampled_points(digits_mlp, recipe):
    """The change's bounds over a region (each layer's pre-activation change and the
    spec rows' change, tightened symbolically once) hold at sampled points of the
    region; a mutation -- the caps of a smaller box inside it taken for the region's --
    is caught."""
    net, X, _ = digits_mlp
    region = local_robustness(X[3], 0.1, int(np.argmax(net.forward(X[3]))), 10).regions[0]
    variant = compress(net, recipe)
    cmap = ChangeMap(net, variant.network, variant.record)
    C = region_rows(region, net.n_outputs)[0].numpy()
    xs = _samples(region, np.random.default_rng(8), 20000)
    dz = [zv - zo for zv, zo in zip(variant.network.pre_activations(xs), net.pre_activations(xs))]
    dspec = _spec_values(variant.network, region, xs) - _spec_values(net, region, xs)
    ob = _root_bound(net, region)
    caps = region_caps(cmap, ob, region.lower, region.upper, C)
    for k, (cl, cu) in enumerate(caps.layers):
        assert (dz[k] >= cl - 1e-9).all() and (dz[k] <= cu + 1e-9).all(), k
    assert (dspec >= caps.spec_lower - 1e-9).all()
    # and tighter than the interval change of the region on the deepest layer
    interval, _ = leaf_deviation(cmap, [l[None] for l in ob.lower], [u[None] for u in ob.upper],
                                 region.lower[None], region.upper[None], C)
    assert (caps.layers[-1][1] - caps.layers[-1][0]).sum() < \
        (interval[-1][1] - interval[-1][0]).sum()
    # mutation: a box of a tenth of the width around the centre
    mid, rad = (region.lower + region.upper) / 2, (region.upper - region.lower) / 20
    small = _caps(net, cmap, dataclasses.replace(region, lower=mid - rad, upper=mid + rad), C)
    outside = sum(int(((dz[k] < cl - 1e-9) | (dz[k] > cu + 1e-9)).any())
                  for k, (cl, cu) in enumerate(small.layers))
    assert outside + int((dspec < small.spec_lower - 1e-9).any()) > 0


@pytest.mark.parametrize("changes_by", ["interval", "symbolic", "capped"])
@pytest.mark.parametrize("recipe", ["int8", "magnitude:0.3", "neurons:0.25"])
def test_split_constraints_moved_by_the_change_hold_on_each_leaf_domain(digits_mlp, recipe,
                                                                        changes_by):
    """Tier 1's beta-CROWN bound of a variant on a domain split by the ORIGINAL's
    phases (as constraints ``z' >= dl`` / ``z' <= du`` on the variant's neurons, started
    from the original's multipliers there) lies below the variant's spec rows at sampled
    points of the domain; a mutation (the constraints' sense flipped) is caught.
    ``symbolic``: tier 1c's changes, tightened by the symbolic change bound, and the
    variant's pre-activations there lie within the bounds they move; ``capped``: the
    interval changes within the region's caps (tier 0 with ``ReuseOptions.region_caps``)."""
    net, X, _ = digits_mlp
    region = local_robustness(X[3], 0.1, int(np.argmax(net.forward(X[3]))), 10).regions[0]
    variant = compress(net, recipe)
    cmap = ChangeMap(net, variant.network, variant.record)
    C, d, _ = region_rows(region, net.n_outputs)
    oprop, vprop = BoundPropagator(net), BoundPropagator(variant.network)
    rng = np.random.default_rng(4)
    xs = _samples(region, rng, 20000)
    z_orig = net.pre_activations(xs)
    z_var = variant.network.pre_activations(xs)
    spec_var = _spec_values(variant.network, region, xs)
    lo, hi = torch.from_numpy(region.lower[None].copy()), torch.from_numpy(region.upper[None].copy())
    unstable = _unstable_at_root(oprop, region, C, d)
    caps = _caps(net, cmap, region, C.numpy()) if changes_by == "capped" else None
    checked = caught = 0
    for _ in range(12):
        # a domain with sampled points: a random sampled point's phases
        phases, inside = _split_domain(net.hidden_sizes, unstable, z_orig,
                                       int(rng.integers(len(xs))), 3, rng)
        sp = [torch.from_numpy(ph[None].copy()) for ph in phases]
        orig = oprop.bound(lo, hi, C, d, splits=sp, alpha_iterations=20)
        leaf = SimpleNamespace(splits=split_facts(phases), betas=fact_betas(orig.betas, 0, phases))
        assert leaf.betas.shape == (len(C), 3) and (leaf.betas >= 0).all()
        lowers = [l.numpy() for l in orig.lower]
        uppers = [u.numpy() for u in orig.upper]
        changes, _ = leaf_deviation(cmap, lowers, uppers, region.lower[None], region.upper[None],
                                    C.numpy(), caps)
        if changes_by == "symbolic":
            changes, _ = symbolic_deviation(cmap, lowers, uppers, changes, region.lower[None],
                                            region.upper[None], C.numpy())
        moved = moved_bounds(cmap, lowers, uppers, changes)
        for k, (l, u) in enumerate(moved):
            z = z_var[k][inside]
            assert (z >= l.numpy()[0] - 1e-9).all() and (z <= u.numpy()[0] + 1e-9).all(), k
        kw = split_constraints(cmap, [leaf.splits], changes)
        kw["beta_init"] = warm_betas(cmap, [leaf], [0], len(C))
        res = vprop.spec_bound(lo, hi, C, d, [m[0] for m in moved], [m[1] for m in moved], 30,
                               **kw)
        assert (spec_var[inside] >= res.spec_lower.numpy()[0] - 1e-9).all(), leaf.splits
        # mutation: the constraints' sense flipped (z' <= -dl where z >= 0)
        wrong = {"splits": [-s for s in kw["splits"]], "split_offsets": kw["split_offsets"]}
        bad = vprop.spec_bound(lo, hi, C, d, [m[0] for m in moved], [m[1] for m in moved], 30,
                               **wrong)
        caught += int((spec_var[inside] < bad.spec_lower.numpy()[0] - 1e-9).any())
        checked += 1
    assert checked == 12
    assert caught > 0


def test_any_start_of_the_split_multipliers_gives_a_sound_bound(digits_mlp):
    """beta-CROWN started from any multipliers (the original's, random with negative
    values, huge, not finite -- a forged record's) gives a finite bound below the spec
    rows at sampled points of the split domain, and ends with multipliers >= 0."""
    net, X, _ = digits_mlp
    region = local_robustness(X[5], 0.1, int(np.argmax(net.forward(X[5]))), 10).regions[0]
    C, d, _ = region_rows(region, net.n_outputs)
    prop = BoundPropagator(net)
    rng = np.random.default_rng(6)
    xs = _samples(region, rng, 20000)
    z = net.pre_activations(xs)
    values = _spec_values(net, region, xs)
    lo, hi = torch.from_numpy(region.lower[None].copy()), torch.from_numpy(region.upper[None].copy())
    phases, inside = _split_domain(net.hidden_sizes, _unstable_at_root(prop, region, C, d), z,
                                   int(np.argmax(values.min(axis=1))), 4, rng)
    assert inside.sum() > 10
    sp = [torch.from_numpy(ph[None].copy()) for ph in phases]
    first = prop.bound(lo, hi, C, d, splits=sp, alpha_iterations=20)
    shape = [(1, len(C), n) for n in net.hidden_sizes]
    starts = {"the original's": first.betas,
              "random": [torch.from_numpy(rng.uniform(-3, 3, s)) for s in shape],
              "huge": [torch.full(s, 1e6, dtype=torch.float64) for s in shape],
              "not finite": [torch.full(s, np.nan, dtype=torch.float64) for s in shape]}
    for name, beta_init in starts.items():
        res = prop.bound(lo, hi, C, d, splits=sp, alpha_iterations=3, beta_init=beta_init)
        assert np.isfinite(res.spec_lower.numpy()).all(), name
        assert (values[inside] >= res.spec_lower.numpy()[0] - 1e-9).all(), name
        assert all(b is None or (b >= 0).all() for b in res.betas), name


def _variant_roots(net, variant, prop, proof, monkeypatch):
    """Reverify walking the proof tree (tiers 0-1 closing nothing): the result and, per
    search that started its root from the original's (``_root_start``), that start and
    its tightened root bounds."""
    import verify.reuse.tree as tree
    monkeypatch.setattr(tree.TreeCheck, "_tiers01", _tiers01_closing_nothing(net))
    seen = []
    tightened = RegionSearch.tightened_root_bounds

    def recorded(self):
        first = self._root_bounds is False
        out = tightened(self)
        if first and self._root_start is not None:
            seen.append((self._root_start, out))
        return out
    monkeypatch.setattr(RegionSearch, "tightened_root_bounds", recorded)
    r = reverify(net, variant, prop, OPTS, reuse_options=ReuseOptions(tree_max_open=0.0),
                 proof=proof)
    return r, seen


@pytest.mark.parametrize("recipe, mutation", [("int16", False), ("int8", False),
                                              ("magnitude:0.1", False), ("neurons:0.05", False),
                                              ("magnitude:0.2", True)])
def test_a_variants_root_starts_from_the_originals_and_contains_samples(
        split_proof, monkeypatch, recipe, mutation):
    """A walked variant's root starts from the original's tightened root moved by the
    region's change caps, and its alpha steps from the original's slopes
    (``Reuser._leaf_search``): the bounds contain the variant's sampled pre-activations,
    and the verdict is scratch's. On int16 the moved root is taken as it is (no alpha
    steps) and is tighter than the variant's CROWN. The mutation (the original's root
    not moved) is caught by the samples."""
    import verify.reuse.reuser as reuser
    net, prop, proof = split_proof
    assert proof.root_bounds[0].tightened and proof.root_slopes.get(0)
    variant = compress(net, recipe)
    if mutation:
        monkeypatch.setattr(reuser, "moved_bounds", lambda cmap, lowers, uppers, changes: moved_bounds(
            cmap, lowers, uppers, [(0 * dl, 0 * du) for dl, du in changes]))
    r, seen = _variant_roots(net, variant, prop, proof, monkeypatch)
    assert seen, "no search started its root from the original's"
    (start, tight, slopes), bounds = seen[0]
    assert start is not None and slopes and bounds is not None
    region = prop.regions[0]
    pre = variant.network.pre_activations(_samples(region, np.random.default_rng(3)))
    outside = sum(int(((p < l) | (p > u)).sum()) for p, (l, u) in zip(pre, bounds))
    assert (outside > 0) == mutation
    if mutation:
        return
    assert r.status == verify_property(variant.network, prop, OPTS).status
    assert not r.reuse.fallback
    if recipe == "int16":
        assert tight
        lo, hi = (torch.from_numpy(x[None].copy()) for x in (region.lower, region.upper))
        crown = BoundPropagator(variant.network).bound(lo, hi, torch.eye(10).double(),
                                                       torch.zeros(10))
        gain = sum(float((l - c_l[0].numpy()).sum() + (c_u[0].numpy() - u).sum())
                   for (l, u), c_l, c_u in zip(bounds, crown.lower, crown.upper))
        assert gain > 1e-6


def test_the_originals_root_slopes_map_onto_a_neuron_pruned_variant(split_proof):
    """``warm_root_slopes``: a neuron the variant drops loses its queries (lower and
    upper rows) and its columns; the others keep their rows, renumbered."""
    from verify.reuse.tree import warm_root_slopes
    net, _, proof = split_proof
    variant = compress(net, "neurons:0.25")
    cmap = ChangeMap(net, variant.network, variant.record)
    slopes = proof.root_slopes[0]
    mapped = warm_root_slopes(cmap, slopes)
    assert set(mapped) <= set(slopes) and mapped
    # slopes of another network's shapes (a record from a file): left out
    k = max(slopes)
    wrong = {k: (slopes[k][0], [r[:, :-1] for r in slopes[k][1]])}
    assert warm_root_slopes(cmap, wrong) == {}
    for k, (neurons, rows) in mapped.items():
        kept = cmap.kept_rows[k]
        orig_neurons, orig_rows = slopes[k]
        m, mo = len(neurons), len(orig_neurons)
        assert len(neurons) <= len(orig_neurons)
        for i, v in enumerate(neurons):
            o = int(np.flatnonzero(orig_neurons == kept[v])[0])
            for j, (r, orr) in enumerate(zip(rows, orig_rows)):
                assert r.shape == (2 * m, len(cmap.kept_rows[j]))
                np.testing.assert_array_equal(r[i], orr[o][cmap.kept_rows[j]])
                np.testing.assert_array_equal(r[m + i], orr[mo + o][cmap.kept_rows[j]])


def test_input_split_leaves_closed_with_alpha_steps_are_rechecked_from_their_slopes(
        input_split_proof):
    """Input splitting: a leaf the original's alpha tier closed keeps its slopes (finite;
    a leaf closed without alpha steps keeps none), and tier 1 bounds such a leaf of an
    int16 variant again from them: it closes more leaves than from the same proof with
    the slopes dropped, and the verdict is scratch's."""
    import copy
    net, prop, opts, proof = input_split_proof
    assert proof.status is Status.HOLDS
    with_slopes = [b for b in proof.regions[0] if b.alphas is not None]
    assert 0 < len(with_slopes) < len(proof.regions[0])
    assert all(np.isfinite(np.asarray(a, dtype=np.float64)).all()
               for b in with_slopes for a in b.alphas)
    bare = copy.deepcopy(proof)
    for b in bare.regions[0]:
        object.__setattr__(b, "alphas", None)
    variant = compress(net, "int16")
    scratch = verify_property(variant.network, prop, opts).status
    warm = reverify(net, variant, prop, opts, proof=proof)
    cold = reverify(net, variant, prop, opts, proof=bare)
    assert warm.status == cold.status == scratch
    assert warm.reuse.closed_by_difference_backsub > cold.reuse.closed_by_difference_backsub


def test_input_split_leaves_left_open_are_searched_lowest_margin_first(input_split_proof,
                                                                      monkeypatch):
    """Input splitting: the leaves tier 2 leaves open reach the variant's search with
    their margin on the variant as the node's score (the search is best-first: a
    counterexample is likeliest where the margin is lowest), and the verdict is
    scratch's."""
    import verify.reuse.tree as tree
    net, prop, opts, proof = input_split_proof
    seen = []
    real = tree.search_open

    def spy(search, nodes, *a, **k):
        seen.extend(nodes)
        return real(search, nodes, *a, **k)
    monkeypatch.setattr(tree, "search_open", spy)
    for recipe in ("int8", "magnitude:0.3"):
        variant = compress(net, recipe)
        got = reverify(net, variant, prop, opts, proof=proof, reuse_options=ReuseOptions(
            attack=False))
        assert got.status == verify_property(variant.network, prop, opts).status
    assert len(seen) >= 2
    assert all(n.score < 0 for n in seen)
    assert len({n.score for n in seen}) > 1


def test_input_split_leaves_left_open_reach_the_search_bisected(input_split_proof, monkeypatch):
    """Input splitting: a leaf tier 2 leaves open is bisected from tier 2's own bound (the
    search would bound it again first): the search gets two halves per open leaf, which
    tile it, each with the leaf's layer bounds to intersect; the verdict is scratch's."""
    import verify.reuse.tree as tree
    net, prop, opts, proof = input_split_proof
    leaves = proof.regions[0]
    seen, open_leaves = [], []
    real_search, real_tier2 = tree.search_open, tree.TreeCheck._tier2_open

    def spy_search(search, nodes, *a, **k):
        seen.extend(nodes)
        return real_search(search, nodes, *a, **k)

    def spy_tier2(self, *a, **k):
        cex, items = real_tier2(self, *a, **k)
        open_leaves.extend(items)
        return cex, items
    monkeypatch.setattr(tree, "search_open", spy_search)
    monkeypatch.setattr(tree.TreeCheck, "_tier2_open", spy_tier2)
    for recipe in ("int8", "magnitude:0.3"):
        variant = compress(net, recipe)
        got = reverify(net, variant, prop, opts, proof=proof, reuse_options=ReuseOptions(
            attack=False, bisection_walk_step=0))
        assert got.status == verify_property(variant.network, prop, opts).status
        # every leaf counted once: by the bounds or, bisected, by the search
        assert got.reuse.closed_by_bounds + got.reuse.closed_by_split == len(leaves)
    assert len(open_leaves) >= 2 and len(seen) == 2 * len(open_leaves)
    volume = lambda lo, hi: float(np.prod(hi - lo))  # noqa: E731
    for (leaf, bounds, margin, halves), pair in zip(open_leaves, zip(seen[::2], seen[1::2])):
        assert halves is not None and list(halves) == list(pair)
        for half in pair:
            assert (half.lo >= leaf.lower).all() and (half.hi <= leaf.upper).all()
            assert half.score == margin and half.depth == leaf.depth + 1
            for (l, u), (pl, pu) in zip(bounds, half.parent):
                np.testing.assert_array_equal(l, pl)
                np.testing.assert_array_equal(u, pu)
        a, b = pair  # the lower and the upper half of one dimension
        d = np.flatnonzero((a.lo != b.lo) | (a.hi != b.hi))
        assert len(d) == 1 and a.hi[d[0]] == b.lo[d[0]]
        assert np.isclose(volume(a.lo, a.hi) + volume(b.lo, b.hi), volume(leaf.lower, leaf.upper))
    assert {id(b) for b, *_ in open_leaves} <= {id(b) for b in leaves}


def test_a_near_copys_alpha_tier_starts_from_its_originals_slopes(input_split_proof,
                                                                   monkeypatch):
    """Tier 2 on an input-split tree: a near copy's alpha tier starts from the leaves'
    slopes (NaN rows, the default start, for leaves without), another variant's from
    the default; the warm-started bounds hold on points sampled in each leaf's box."""
    from verify.reuse.tree import LeafSearch, warm_alphas
    net, prop, opts, proof = input_split_proof
    region, leaves = prop.regions[0], proof.regions[0]
    have = [i for i, b in enumerate(leaves) if b.alphas is not None]
    lack = [i for i, b in enumerate(leaves) if b.alphas is None]
    assert have and lack
    near = compress(net, "int16")
    cmap = ChangeMap(net, near.network, near.record)
    idx = have[:5] + lack[:5]
    init = warm_alphas(cmap, leaves, idx, partial=True)
    assert warm_alphas(cmap, leaves, idx) is None
    for k, a in enumerate(init):
        assert torch.isfinite(a[:5]).all() and torch.isnan(a[5:]).all()
        assert np.allclose(a[:5].numpy(), [np.asarray(leaves[i].alphas[k], dtype=np.float64)
                                           for i in idx[:5]])
    # the bounds: every leaf that has slopes, warm-started, against sampled points
    search = LeafSearch(near.network, region, 0, opts, time.monotonic() + 60, Statistics())
    lo = torch.from_numpy(np.stack([leaves[i].lower for i in have]))
    hi = torch.from_numpy(np.stack([leaves[i].upper for i in have]))
    tier_init = [torch.full_like(a, 7.0) if j == 0 else a for j, a in
                 enumerate(warm_alphas(cmap, leaves, have))]  # one layer out of range too
    res, _, _ = search.bound_branches(lo, hi, None, None, tier_init=tier_init)
    rng = np.random.default_rng(4)
    for row, i in enumerate(have):
        xs = rng.uniform(leaves[i].lower, leaves[i].upper, (300, len(region.lower)))
        values = _spec_values(near.network, region, xs)
        assert (values >= res.spec_lower.numpy()[row] - 1e-9).all(), i
    # who gets a warm start
    seen = []
    real = RegionSearch._alpha_tier

    def spy(self, res, lo, hi, refuted, closed, keep=None, known=None, init=None):
        seen.append(init is not None)
        return real(self, res, lo, hi, refuted, closed, keep, known, init)
    monkeypatch.setattr(RegionSearch, "_alpha_tier", spy)
    # (int8 taken for a near copy: int16 leaves only 3 leaves to tier 2 here, none of
    # them with slopes)
    variant = compress(net, "int8")
    scratch = verify_property(variant.network, prop, opts).status
    for skip_below, warm in ((1.0, True), (ReuseOptions().attack_skip_below, False)):
        seen.clear()
        got = reverify(net, variant, prop, opts, proof=proof,
                       reuse_options=ReuseOptions(attack_skip_below=skip_below))
        assert got.status is scratch and not got.reuse.fallback
        assert seen and any(seen) is warm, skip_below
