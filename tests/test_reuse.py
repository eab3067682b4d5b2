"""Proof reuse (issue 4): reverify agrees with scratch verification, cores are
real minimal unsat cores, broken variants are caught, and the CLI commands."""
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from compress import sweep
from verify.api import VerifyOptions, load_network, load_property, local_robustness, verify_property
from verify.cli import main
from verify.encode import Branch, encode, solve
from verify.network import Affine
from verify.reuse import ReuseOptions, build_proof, reverify
from verify.reuse.proof import covers
from verify.verifier import Proof
from conftest import assert_bad_input

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "acasxu"
ACAS = EXAMPLES / "ACASXU_run2a_1_1_batch_2000.onnx"
PROP1 = EXAMPLES / "prop_1.vnnlib"
PROP2 = EXAMPLES / "prop_2.vnnlib"
RECIPES = ["magnitude:0.1", "magnitude:0.3", "magnitude:0.5", "int8", "int4"]
OPTS = VerifyOptions(timeout=5, z3_query_timeout=1)


def _replays(prop, net, cex):
    x = np.array(cex.input)
    y = net.forward(x)
    np.testing.assert_array_equal(y, np.array(cex.output))
    assert prop.regions[cex.region].contains_input(x)
    assert prop.violated_by(x, y)


def _agree(original, variant, prop, proof, options=OPTS):
    """reverify vs verify_property on the variant; returns the pair of statuses."""
    r = reverify(original, variant, prop, options, proof=proof)
    s = verify_property(variant.network, prop, options)
    if r.status.value != "unknown" and s.status.value != "unknown":
        assert r.status == s.status, (variant.record.recipe, prop.name, r.method, r.reason)
    if r.status.value == "violated":
        _replays(prop, variant.network, r.counterexample)
    return r, s


# ---- agreement with scratch verification ------------------------------------------------
# (point, eps) of the digits test set: robust at the root, robust after branching
DIGITS_CASES = [(0, 0.05), (2, 0.05), (9, 0.05), (12, 0.05), (15, 0.03), (0, 0.07)]


def test_digits_family_reverify_agrees_with_scratch(digits_mlp):
    net, X, _ = digits_mlp
    variants = list(sweep(net, RECIPES))
    decided = {"holds": 0, "violated": 0}
    reused, branched = 0, 0
    for i, eps in DIGITS_CASES:
        target = int(np.argmax(net.forward(X[i])))
        prop = local_robustness(X[i], eps, target, 10)
        proof = build_proof(net, prop, OPTS)
        assert proof.status == "holds", (i, eps, proof.status)
        branched += int(proof.n_branches > 1)
        for v in variants:
            r, s = _agree(net, v, prop, proof)
            if r.status.value == s.status.value != "unknown":
                decided[r.status.value] += 1
            reused += int(r.status.value != "unknown" and not r.reuse.fallback)
    # the family must exercise both verdicts (robust and broken variants) and reuse
    assert decided["holds"] >= 15 and decided["violated"] >= 2, decided
    assert reused >= 20 and branched >= 1


def test_acasxu_variants_reverify_agrees_with_scratch():
    net = load_network(ACAS)
    variants = {v.record.recipe: v for v in sweep(net, ["magnitude:0.1", "magnitude:0.3", "int8"])}
    cases = [(PROP1, ["magnitude:0.1", "magnitude:0.3", "int8"]),
             (PROP2, ["magnitude:0.1", "magnitude:0.3"])]
    seen = set()
    for path, recipes in cases:
        prop = load_property(path, net)
        proof = build_proof(net, prop, VerifyOptions(timeout=30))
        assert proof.status == "holds" and proof.n_branches > 1  # the proof needed splitting
        for rec in recipes:
            r, s = _agree(net, variants[rec], prop, proof, VerifyOptions(timeout=30))
            seen.add(r.status.value)
    assert seen >= {"holds", "violated"}, seen


def test_local_robustness_on_acasxu_variants_agrees():
    net = load_network(ACAS)
    rng = np.random.default_rng(1)
    variants = list(sweep(net, ["magnitude:0.1", "int8", "int4"]))
    for _ in range(3):
        x = rng.uniform(-0.4, 0.4, 5)
        prop = local_robustness(x, 0.01, int(np.argmax(net.forward(x))), 5, domain=None)
        proof = build_proof(net, prop, OPTS)
        assert proof.status == "holds"
        for v in variants:
            _agree(net, v, prop, proof)


@pytest.fixture(scope="module")
def acas_prop2_proof():
    """ACAS Xu 1_1 prop 2: its proof needs input splitting (many branches)."""
    net = load_network(ACAS)
    prop = load_property(PROP2, net)
    proof = build_proof(net, prop, VerifyOptions(timeout=30))
    assert proof.status == "holds" and proof.n_branches > 8
    return net, prop, proof


def test_split_proof_branches_must_tile_the_region(acas_prop2_proof):
    net, prop, proof = acas_prop2_proof
    region, branches = prop.regions[0], proof.regions[0]
    assert covers(region, branches)
    assert covers(region, branches[::-1])  # order does not matter
    assert not covers(region, branches[1:])  # a hole
    b = branches[len(branches) // 2]
    d = int(np.argmax(b.upper - b.lower))
    shrunk = b.upper.copy()
    shrunk[d] = (b.lower[d] + b.upper[d]) / 2
    assert not covers(region, [dataclasses.replace(b, upper=shrunk) if x is b else x
                               for x in branches])
    # reverify checks it: a proof with a hole falls back to scratch verification
    holed = dataclasses.replace(proof, regions={0: branches[1:]})
    assert holed.covers(0, region) is False and proof.covers(0, region) is True
    variant = next(iter(sweep(net, ["magnitude:0.1"])))
    r = reverify(net, variant, prop, OPTS, proof=holed)
    assert r.reuse.fallback and "do not cover" in r.reuse.fallback_reason, r.reuse
    scratch = verify_property(variant.network, prop, OPTS).status
    if "unknown" not in (r.status.value, scratch.value):  # a time-out under load decides nothing
        assert r.status == scratch


def test_relu_split_proof_branches_must_tile_the_region(digits_mlp):
    net, X, _ = digits_mlp
    i, eps = DIGITS_CASES[-1]
    prop = local_robustness(X[i], eps, int(np.argmax(net.forward(X[i]))), 10)
    proof = build_proof(net, prop, OPTS)
    branches = proof.regions[0]
    assert proof.status == "holds" and any(b.splits for b in branches), proof.n_branches
    assert covers(prop.regions[0], branches)
    for k in range(len(branches)):  # no branch of a ReLU split tree can be dropped
        assert not covers(prop.regions[0], branches[:k] + branches[k + 1:])
    # a leaf's last phase fact flipped: its side of that split is covered twice and
    # the other side not at all
    k = next(k for k, b in enumerate(branches) if b.splits)
    *rest, last = branches[k].splits
    flipped = last.replace("inactive", "active") if last.endswith("inactive") \
        else last.replace("active", "inactive")
    cut = dataclasses.replace(branches[k], splits=(*rest, flipped))
    assert not covers(prop.regions[0], branches[:k] + [cut] + branches[k + 1:])


def test_variant_easier_than_the_original_is_closed_at_its_root(acas_prop2_proof):
    """prop 2 (unsafe: COC maximal) on a variant whose COC score is pushed far
    down: one bound of the region settles it, before the proof tree is re-checked
    (a record from the store, without the original's leaf bounds); in this
    process the original's leaf bounds moved by the change close every leaf."""
    from verify.reuse.proof import ProofRecord
    net, prop, proof = acas_prop2_proof
    last = net.affines[-1]
    bias = last.bias.copy()
    bias[0] -= 1000.0  # the root bound of this box is loose by hundreds
    easy = net.with_affines(net.affines[:-1] + (Affine(last.weight, bias),), "easy")
    stored = ProofRecord.from_dict(json.loads(json.dumps(proof.to_dict(prop))), prop)
    # (equivalence transfer, tried first by default, would settle it before these tiers;
    # and the variant's root bound is taken first after an original that took longer than
    # attack_first_proof_s: the fixture's measured time, which load moves)
    tiers = ReuseOptions(equivalence_transfer=False, attack_first_proof_s=float("inf"))
    r = reverify(net, easy, prop, OPTS, proof=stored, reuse_options=tiers)
    assert r.status.value == "holds" and r.method == "reuse-root-bound", (r.method, r.reason)
    assert r.reuse.closed_at_root == 1 and r.reuse.closed_by_bounds == 0
    assert not r.reuse.fallback
    r = reverify(net, easy, prop, OPTS, proof=proof, reuse_options=tiers)
    assert r.status.value == "holds" and r.method == "reuse-difference", (r.method, r.reason)
    assert r.reuse.closed_by_difference == proof.n_branches and r.reuse.closed_at_root == 0
    assert verify_property(easy, prop, OPTS).status.value == "holds"
    # on the original itself the root bound does not close it: the proof tree does
    r = reverify(net, net, prop, OPTS, proof=proof, reuse_options=tiers)
    assert r.status.value == "holds" and r.reuse.closed_at_root == 0
    assert r.reuse.closed_by_bounds + r.reuse.closed_by_split >= proof.n_branches


def test_a_long_proofs_easier_variant_is_closed_by_its_root_bound_first(acas_prop2_proof):
    """As scratch begins: a proof at least attack_first_proof_s long gets the variant's
    plain root bound before anything else, so the easy variant above is settled by it
    without one leaf re-checked, even with the original's leaf bounds at hand."""
    net, prop, proof = acas_prop2_proof
    last = net.affines[-1]
    bias = last.bias.copy()
    bias[0] -= 1000.0
    easy = net.with_affines(net.affines[:-1] + (Affine(last.weight, bias),), "easy")
    tiers = ReuseOptions(equivalence_transfer=False, attack_first_proof_s=0.0)
    r = reverify(net, easy, prop, OPTS, proof=proof, reuse_options=tiers)
    assert r.status.value == "holds" and r.method == "reuse-root-bound", (r.method, r.reason)
    assert r.reuse.closed_at_root == 1 and r.reuse.closed_by_bounds == 0
    # the original itself: its root bound does not close the region, the tree does
    r = reverify(net, net, prop, OPTS, proof=proof, reuse_options=tiers)
    assert r.status.value == "holds" and r.reuse.closed_at_root == 0
    assert r.reuse.closed_by_bounds + r.reuse.closed_by_split >= proof.n_branches


# ---- cores ---------------------------------------------------------------------------
def test_every_core_is_unsat_and_minimal():
    """Cores of ACAS Xu prop 1 (bounds-closed branches get Z3 cores with
    core_max_unstable): each core alone is UNSAT in its branch query, and
    for a core flagged minimal dropping any one element makes it SAT."""
    net = load_network(ACAS)
    prop = load_property(PROP1, net)
    # back-substituted layer bounds on every leaf: tighter than forward-mode ones,
    # so Z3 finds cores for several leaves within the test's budget
    options = VerifyOptions(timeout=30, intermediate_bounds="backward")
    # budgets with room for a loaded machine (they only cap the time; an idle run
    # finds its cores in a few seconds)
    ropt = ReuseOptions(cores="eager", core_max_unstable=40, core_budget=40, core_timeout=6,
                        minimise_budget=3)
    proof = build_proof(net, prop, options, ropt)
    assert proof.status == "holds"
    # the same (deterministic) search again, for the layer bounds of every branch
    region = prop.regions[0]
    search = Proof()
    assert verify_property(net, prop, options, proof=search).status.value == "holds"
    leaves = {(l.lo.tobytes(), l.hi.tobytes(), l.splits): l for l in search.leaves[0]}
    checked = minimal = 0
    for b in proof.regions[0]:
        if not b.cores:
            continue
        leaf = leaves[(b.lower.tobytes(), b.upper.tobytes(), b.splits)]
        for j, core in b.cores.items():
            conj = region.unsafe[j]
            query = encode(net, Branch(leaf.lo, leaf.hi, leaf.layer_bounds, conj.coeffs,
                                       conj.rhs), core.digits)
            assert set(core.names) <= set(query.constraints)
            assert len(core.names) < core.total  # a core, not the whole query
            assert solve(query, list(core.names), timeout=10).status == "unsat"
            checked += 1
            if not core.minimal:
                continue
            minimal += 1
            for name in core.names:
                rest = [n for n in core.names if n != name]
                ans = solve(query, rest, timeout=10)
                # minimal: without any one element it is no longer unsat (a Z3 time-out
                # under load decides nothing, so only "unsat" fails the test)
                assert ans.status != "unsat", (name, ans.status, ans.reason)
    assert checked >= 2 and minimal >= 1, (checked, minimal)


# ---- broken variants -------------------------------------------------------------------
def _broken_at_centre(digits_mlp, i=0, eps=0.03):
    """(original, robustness property at test image ``i``, its proof, a variant whose
    small bias change makes another class win at the centre: misclassified)."""
    net, X, _ = digits_mlp
    target = int(np.argmax(net.forward(X[i])))
    prop = local_robustness(X[i], eps, target, 10)
    proof = build_proof(net, prop, OPTS)
    assert proof.status == "holds"
    last = net.affines[-1]
    other = (target + 1) % 10
    y = net.forward(X[i])
    bias = last.bias.copy()
    bias[other] += (y[target] - y[other]) + 0.01
    broken = net.with_affines(net.affines[:-1] + (Affine(last.weight, bias),), "broken")
    return net, prop, proof, broken


def test_broken_digits_variant_is_violated_never_reused_holds(digits_mlp):
    net, prop, proof, broken = _broken_at_centre(digits_mlp)
    r = reverify(net, broken, prop, OPTS, proof=proof)
    assert r.status.value == "violated", (r.method, r.reason)
    _replays(prop, broken, r.counterexample)


def test_broken_acasxu_variant_only_violated_near_a_corner():
    """prop 1 (unsafe: COC output >= 3.99) with the COC bias raised so that the
    property fails on a small part of the box only: reverify must not say holds."""
    net = load_network(ACAS)
    prop = load_property(PROP1, net)
    proof = build_proof(net, prop, VerifyOptions(timeout=30))
    region = prop.regions[0]
    rng = np.random.default_rng(0)
    xs = rng.uniform(region.lower, region.upper, size=(20000, 5))
    conj = region.unsafe[0]
    margins = (net.forward(xs) @ conj.coeffs.T - conj.rhs).max(axis=1)  # > 0: safe
    last = net.affines[-1]
    bias = last.bias.copy()
    col = int(np.flatnonzero(conj.coeffs[0])[0])
    shift = float(np.min(margins)) + 0.02  # now the best sampled point is 0.02 inside
    bias[col] += shift if conj.coeffs[0, col] < 0 else -shift
    broken = net.with_affines(net.affines[:-1] + (Affine(last.weight, bias),), "broken")
    xb = xs[np.argmin(margins)]
    assert prop.violated_by(xb, broken.forward(xb))  # it really is broken
    r = reverify(net, broken, prop, VerifyOptions(timeout=20), proof=proof)
    assert r.status.value != "holds"
    if r.status.value == "violated":
        _replays(prop, broken, r.counterexample)


# ---- command line -----------------------------------------------------------------------
def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def saved_variants(tmp_path_factory):
    out = tmp_path_factory.mktemp("variants")
    net = load_network(ACAS)
    paths = {}
    for v in sweep(net, ["magnitude:0.1", "magnitude:0.3", "int8"]):
        paths[v.record.recipe] = v.save(out, f"acas.{v.record.recipe.replace(':', '-')}")[0]
    return out, paths


def test_cli_reverify_json_compare_scratch_and_report(saved_variants, tmp_path):
    _, paths = saved_variants
    res = run("reverify", ACAS, paths["magnitude:0.1"], paths["int8"], "--property", PROP1,
              "--json", "--compare-scratch", "--timeout", "30", "--quiet")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["status"] == "holds" and row["scratch_status"] == "holds"
        assert row["time_s"] > 0 and row["scratch_time_s"] > 0
        for key in ("core_size", "reused", "refinements", "fallback"):
            assert key in row["reuse"]
        assert row["reuse"]["fallback"] is False
        assert row["property"] == "prop_1.vnnlib"
    assert [r["recipe"] for r in rows] == ["magnitude:0.1", "int8"]
    results = tmp_path / "results.jsonl"
    results.write_text(res.stdout)
    html_path = tmp_path / "report.html"
    rep = run("report", results, "-o", html_path)
    assert rep.exit_code == 0, rep.output
    assert "reuse rate: 100.0%" in rep.stdout
    text = html_path.read_text()
    assert "<table" in text and text.count("<svg") == 2 and "magnitude:0.1" in text


def test_cli_reverify_violated_exit_1_and_human_output(saved_variants):
    _, paths = saved_variants
    res = run("reverify", ACAS, paths["magnitude:0.3"], "--property", PROP2, "--timeout", "30")
    assert res.exit_code == 1, res.output
    assert "VIOLATED" in res.stdout and "counterexample input" in res.stdout


def test_cli_reverify_without_change_record(saved_variants, tmp_path):
    _, paths = saved_variants
    bare = tmp_path / "bare.onnx"
    shutil.copy(paths["magnitude:0.1"], bare)  # no bare.changes.json next to it
    res = run("reverify", ACAS, bare, "--property", PROP1, "--json", "--quiet")
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)
    assert row["recipe"] is None and row["status"] == "holds"
    assert row["reuse"]["fallback"] is False  # same shape: changes inferred from the weights


def test_cli_bad_input(saved_variants, tmp_path):
    _, paths = saved_variants
    # a variant that cannot be read is an error row (the batch goes on), exit 2
    res = run("reverify", ACAS, tmp_path / "nope.onnx", "--property", PROP1)
    assert res.exit_code == 2 and "nope.onnx: ERROR" in res.stdout and "no such file" in res.stdout
    assert_bad_input(run("reverify", ACAS, paths["int8"], "--property", tmp_path / "x.vnnlib"),
                     "x.vnnlib")
    assert_bad_input(run("reverify", ACAS, paths["int8"], "--property", PROP1, "--timeout", "0"),
                     "timeout")
    # a variant whose change record names another parent network
    other = EXAMPLES.parent.parent.parent / "shared" / "data" / "acasxu"
    other_net = other / "ACASXU_run2a_1_2_batch_2000.onnx"
    if other_net.is_file():
        res = run("reverify", other_net, paths["int8"], "--property", PROP1)
        assert res.exit_code == 2 and "ERROR" in res.stdout, res.output
        assert "changes.json" in res.stdout and "another parent" in res.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"status": "holds", "time_s": 1}\nnot json\n')
    assert_bad_input(run("report", bad), "bad.jsonl:2")
    assert_bad_input(run("report", tmp_path / "missing.jsonl"), "missing.jsonl")


def test_report_functions():
    from verify.reuse.report import aggregate, bar_chart, recipe_of, render_html, speedup
    rows = [
        {"variant": "a.magnitude-0.1.onnx", "property": "p", "status": "holds", "time_s": 0.1,
         "scratch_status": "holds", "scratch_time_s": 0.4,
         "reuse": {"fallback": False, "original_status": "holds", "branches": 7}},
        {"variant": "a.int8.onnx", "property": "p", "status": "holds", "time_s": 1.0,
         "scratch_status": "holds", "scratch_time_s": 1.0,
         "reuse": {"fallback": True, "original_status": "holds", "branches": 1}},
        {"variant": "a.int4.onnx", "property": "p", "status": "unknown", "time_s": 2.0,
         "scratch_status": "holds", "scratch_time_s": 1.0, "reuse": {"fallback": True}},
    ]
    assert [recipe_of(r) for r in rows] == ["magnitude:0.1", "int8", "int4"]
    assert speedup(rows[0]) == pytest.approx(4.0) and speedup(rows[2]) is None
    agg = aggregate(rows)
    assert agg["total"].reuse_rate == pytest.approx(1 / 3)
    assert agg["total"].speedup == pytest.approx(2.0)  # geometric mean of 4 and 1
    assert [g.label for g in agg["by_recipe"]] == ["magnitude:0.1", "int8", "int4"]
    kinds = {g.label: (g.pairs, g.speedup) for g in agg["by_original"]}
    assert kinds == {"original settled by its root bound": (1, pytest.approx(1.0)),
                     "original needed branch and bound": (1, pytest.approx(4.0)),
                     "original undecided": (1, None)}
    assert "<svg" in bar_chart("t", ["a", "b"], [1.0, None]) and "n/a" in bar_chart("t", ["a"], [None])
    assert "<table" in render_html(rows, agg)


def test_violated_original_counterexample_is_replayed_on_variant(digits_mlp):
    net, X, _ = digits_mlp
    target = int(np.argmax(net.forward(X[1])))
    prop = local_robustness(X[1], 0.05, target, 10)
    proof = build_proof(net, prop, OPTS)
    assert proof.status == "violated"
    variant = next(iter(sweep(net, ["int8"])))
    r = reverify(net, variant, prop, OPTS, proof=proof)
    assert r.status.value == "violated" and not r.reuse.fallback, (r.method, r.reason)
    _replays(prop, variant.network, r.counterexample)


# ---- change classification ------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["neurons:0.25", "magnitude:0.3", "int4", "one-weight"])
def test_change_map_classifies_neurons_and_affected_region(digits_mlp, recipe):
    """Removed neurons are those the change record drops, revalued those whose
    incoming weights or bias differ; the affected region is exactly the
    descendants of the changed neurons in the networkx graph, and every neuron
    whose value differs between the two networks on sampled inputs lies in it."""
    import networkx as nx
    from verify.reuse.changes import REMOVED, REVALUED, UNCHANGED, ChangeMap
    net = digits_mlp[0]
    if recipe == "one-weight":  # one changed neuron: the affected region is its cone
        first = net.affines[0]
        w = first.weight.copy()
        w[3, 5] += 0.5
        changed_net = net.with_affines((Affine(w, first.bias),) + net.affines[1:], "one-weight")
        variant = type("V", (), {"network": changed_net, "record": None})()
    else:
        variant = next(iter(sweep(net, [recipe])))
    cmap = ChangeMap(net, variant.network, variant.record)
    kinds = {s: sum(1 for v in cmap.status.values() if v == s) for s in (UNCHANGED, REVALUED, REMOVED)}
    removed = {(k, int(i)) for k, m in enumerate(cmap.maps) for i in np.flatnonzero(m < 0)}
    assert {n for n, s in cmap.status.items() if s == REMOVED} == removed
    assert kinds[REVALUED] > 0 and (bool(removed) == recipe.startswith("neurons"))
    if recipe == "one-weight":
        assert [n for n, s in cmap.status.items() if s == REVALUED] == [(0, 3)]
        assert (0, 4) not in cmap.affected and (1, 0) in cmap.affected
    graph = cmap.graph
    changed = [n for n, s in cmap.status.items() if s == REVALUED]
    expected = set(changed).union(*(nx.descendants(graph, n) for n in changed))
    assert cmap.affected == expected
    # semantics: values that differ belong to affected neurons
    xs = np.random.default_rng(0).uniform(0, 1, (200, net.n_inputs))
    pre_o, pre_v = net.pre_activations(xs), variant.network.pre_activations(xs)
    for k, m in enumerate(cmap.maps):
        for i in np.flatnonzero(m >= 0):
            if not np.array_equal(pre_o[k][:, i], pre_v[k][:, m[i]]):
                assert (k, int(i)) in cmap.affected
    # and the core-name classification follows it
    some = next(iter(sorted(cmap.affected)))
    assert cmap.classify(f"L{some[0]}.N{some[1]}.bounds") == (
        REMOVED if some in removed else REVALUED)
    # every kind of name, against the per-neuron status and affected region
    for (k, i), status in cmap.status.items():
        for kind in ("affine", "relu", "bounds"):
            name = f"out.{i}.affine" if k == len(cmap.maps) - 1 else f"L{k}.N{i}.{kind}"
            want = (REMOVED if status == REMOVED
                    else UNCHANGED if name.endswith(".relu")
                    else (REVALUED if (k, i) in cmap.affected else UNCHANGED)
                    if name.endswith(".bounds") else status)
            assert cmap.classify(name) == want, (name, status)
    names = [f"L{k}.N{i}.{kind}" for k, i in cmap.status if k < len(cmap.maps) - 1
             for kind in ("affine", "relu", "bounds")] + ["in.0.box", "spec.0"]
    tally = {s: sum(1 for n in names if cmap.classify(n) == s) for s in (UNCHANGED, REVALUED, REMOVED)}
    assert cmap.counts(names) == tally and tally[REVALUED] > 0


# ---- bound-fact cores -----------------------------------------------------------------
def test_bound_core_closes_the_box_and_no_neuron_can_be_dropped(digits_mlp):
    """A region settled by one bound gets a bound core: back-substituting only
    its neurons (intervals for the rest) closes the box, intervals alone do
    not, and dropping any one neuron does not either.  The proof carries it
    (through JSON), and reverify closes variants with it, agreeing with scratch."""
    from verify.result import Statistics
    from verify.reuse.bound_core import bound_core, bound_with, core_neurons
    from verify.reuse.proof import ProofRecord
    from verify.search import RegionSearch
    net, X, _ = digits_mlp
    i, eps = 2, 0.05  # its root bound needs a few back-substituted neurons
    prop = local_robustness(X[i], eps, int(np.argmax(net.forward(X[i]))), 10)
    region = prop.regions[0]
    search = RegionSearch(net, region, 0, OPTS, float("inf"), Statistics())
    core = bound_core(search, region.lower, region.upper, budget=5.0)
    assert core is not None and core.minimal and core.checked
    assert 0 < len(core.names) < core.total
    def check(neurons):
        return bound_with(search, region.lower, region.upper, neurons)[1]

    neurons = core_neurons(core.names)
    assert check(neurons) and not check([])
    for j in range(len(neurons)):
        assert not check(neurons[:j] + neurons[j + 1:])
    # a lazily built proof has none until a variant asks; an eager one has it now
    proof = build_proof(net, prop, OPTS)
    assert proof.regions[0][0].bound_core is None
    assert proof.bound_core_of(0, net, region, OPTS, budget=5.0).names == core.names
    assert proof.core_time_s > 0
    assert build_proof(net, prop, OPTS, ReuseOptions(cores="eager")).regions[0][0] \
        .bound_core.names == core.names
    again = ProofRecord.from_dict(json.loads(json.dumps(proof.to_dict(prop))), prop)
    assert again.regions[0][0].bound_core.names == core.names
    gain = again.regions[0][0].bound_core_gain
    assert gain is not None and gain > 0
    # always try the core first (the moved original bounds would come before it)
    eager = ReuseOptions(bound_core_min_gain=0.0, difference=False, equivalence_transfer=False)
    methods = []
    for variant in sweep(net, RECIPES):
        r = reverify(net, variant, prop, OPTS, proof=again, reuse_options=eager)
        s = verify_property(variant.network, prop, OPTS)
        assert r.status == s.status or "unknown" in (r.status.value, s.status.value)
        methods.append(r.method)
        # with the measured gain below the threshold, the core is not even tried
        lazy = reverify(net, variant, prop, OPTS, proof=again,
                        reuse_options=ReuseOptions(bound_core_min_gain=gain * 1.01,
                                                   difference=False,
                                                   equivalence_transfer=False))
        assert lazy.reuse.closed_by_bound_core == 0 and lazy.status == r.status
    assert "reuse-bound-core" in methods


def test_a_long_proof_gets_a_quick_attack_before_its_walk(digits_mlp):
    """A variant broken at the centre: with attack_first_proof_s below the proof's time
    the quick attack decides it before any leaf is re-checked (method "attack"); with
    it above, the walk runs first (another method); both replay the counterexample."""
    net, prop, proof, broken = _broken_at_centre(digits_mlp)
    methods = {}
    for first in (0.0, float("inf")):
        ropt = dataclasses.replace(ReuseOptions(), attack_first_proof_s=first)
        r = reverify(net, broken, prop, OPTS, reuse_options=ropt, proof=proof)
        assert r.status.value == "violated", (r.method, r.reason)
        _replays(prop, broken, r.counterexample)
        methods[first] = r.method
    assert methods[0.0] == "attack" and methods[float("inf")] != "attack", methods
