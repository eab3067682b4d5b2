"""Soundness and behaviour of the decision procedure on small networks."""
import time

import numpy as np
import pytest
import z3

from verify.attack import Attacker
from verify.bounds import layer_bounds
from verify.encode import Branch, encode, solve
from verify.network import Affine, Network
from verify.options import ReluBranchOptions, VerifyOptions
from verify.properties import Conjunction, Property, Region, local_robustness
from verify.verifier import verify_property


def random_net(rng, sizes):
    return Network(tuple(Affine(rng.normal(size=(sizes[i + 1], sizes[i])) / np.sqrt(sizes[i]),
                                rng.normal(size=sizes[i + 1]) * 0.3)
                         for i in range(len(sizes) - 1)))


def random_property(rng, net):
    lo = rng.uniform(-1, 0.5, net.n_inputs)
    hi = lo + rng.uniform(0.05, 0.6, net.n_inputs)
    c = rng.normal(size=(rng.integers(1, 3), net.n_outputs))
    centre = net.forward((lo + hi) / 2)
    d = c @ centre + rng.normal(scale=0.5, size=c.shape[0])
    return Property((Region(lo, hi, (Conjunction(c, d),)),), net.n_outputs)


def sampled_violation(net, prop, rng, n=20000):
    r = prop.regions[0]
    xs = rng.uniform(r.lower, r.upper, size=(n, net.n_inputs))
    xs = np.vstack([xs, r.lower, r.upper])
    ys = net.forward(xs)
    return any(r.unsafe_output(y) for y in ys[np.any(ys @ r.unsafe[0].coeffs.T - r.unsafe[0].rhs <= 0, axis=1)])


def exact_z3_verdict(net, prop):
    """Independent ground truth: the whole network as one exact Z3 formula
    (written here without the project's encoder; tiny networks only)."""
    r = prop.regions[0]
    s = z3.Solver()
    x = [z3.Real(f"x{i}") for i in range(net.n_inputs)]
    for i, v in enumerate(x):
        s.add(v >= float(r.lower[i]), v <= float(r.upper[i]))
    a = x
    for k, aff in enumerate(net.affines):
        z = [z3.Sum([z3.RealVal(float(aff.weight[i, j])) * a[j] for j in range(len(a))])
             + z3.RealVal(float(aff.bias[i])) for i in range(aff.out_size)]
        a = [z3.If(v > 0, v, 0) for v in z] if k < net.n_layers - 1 else z
    conj = r.unsafe[0]
    for row, rhs in zip(conj.coeffs, conj.rhs):
        s.add(z3.Sum([z3.RealVal(float(c)) * y for c, y in zip(row, a)]) <= float(rhs))
    return "violated" if s.check() == z3.sat else "holds"


SPLITTING = {"input": dict(), "input-backward": dict(intermediate_bounds="backward"),
             "input-forward": dict(intermediate_bounds="forward"), "relu": dict(input_split_max=0),
             "relu-no-z3": dict(input_split_max=0, use_z3=False),
             "relu-z3-early": dict(input_split_max=0, z3_relu_split_max_unstable=6),
             "relu-refine-all": dict(input_split_max=0, refine_unstable_only=False),
             "relu-gap": dict(input_split_max=0, relu_branching=ReluBranchOptions("gap")),
             "relu-fsb": dict(input_split_max=0, use_z3=False,
                              relu_branching=ReluBranchOptions("fsb", fsb_candidates=3))}


def tight_property(rng, net, slack):
    """A unit box and one output row whose sampled minimum is ``slack`` above the
    unsafe threshold: it holds (or nearly), and only deep ReLU splitting decides it."""
    lo = rng.uniform(-1, 0, net.n_inputs)
    hi = lo + 1.0
    c = rng.normal(size=(1, net.n_outputs))
    m = (net.forward(rng.uniform(lo, hi, size=(20000, net.n_inputs))) @ c.T).min()
    return Property((Region(lo, hi, (Conjunction(c, np.array([m - slack])),)),), net.n_outputs)


@pytest.mark.parametrize("sizes,seed", [([3, 6, 6, 2], 5), ([3, 6, 6, 2], 6), ([2, 8, 8, 2], 2),
                                        ([2, 8, 8, 2], 9)])
def test_z3_decides_fully_split_branches_exactly(sizes, seed):
    """With beta-CROWN's extra steps on fully split branches switched off, those
    branches stay open and go to Z3 with their split facts asserted, which makes the
    query an exact linear program: without the inactive facts a model outside the
    branch is a spurious SAT and the verdict stays unknown.  (The "gap" branching
    score: with the BaBSR choice, [3, 6, 6, 2] seed 6 closes by bounds alone before a
    branch is fully split, and Z3 is never asked.)"""
    rng = np.random.default_rng(seed)
    net = random_net(rng, sizes)
    prop = tight_property(rng, net, 0.01)
    # (without the MILP stage beside the search, which decides these small nets first)
    res = verify_property(net, prop, VerifyOptions(timeout=60, seed=seed, input_split_max=0,
                                                   fixed_leaf_iterations=0, milp_workers=0,
                                                   relu_branching=ReluBranchOptions("gap")))
    assert res.status.value == exact_z3_verdict(net, prop) == "holds"
    assert res.method == "z3" and res.statistics.z3_queries > 0
    assert not sampled_violation(net, prop, rng)


# the non-default branching heuristics (verify.relu_branching) on 4 seeds by default,
# 12 with -m slow ("relu" is the default, babsr)
BRANCHING_MODES = ("relu-gap", "relu-fsb")


@pytest.mark.parametrize("seed,mode", [
    pytest.param(seed, mode, marks=[pytest.mark.slow] if mode in BRANCHING_MODES and seed >= 4 else [])
    for mode in sorted(SPLITTING) for seed in range(12)])
def test_verdicts_agree_with_exact_z3_and_sampling(seed, mode):
    rng = np.random.default_rng(seed)
    net = random_net(rng, [3, 8, 8, 2])
    prop = random_property(rng, net)
    res = verify_property(net, prop, VerifyOptions(timeout=30, seed=seed, **SPLITTING[mode]))
    assert res.status.value in ("holds", "violated")
    truth = exact_z3_verdict(net, prop)
    assert res.status.value == truth
    if res.status.value == "holds":
        assert not sampled_violation(net, prop, rng)
        cex, _ = Attacker(net).attack(prop.regions[0], 0, rng, time.monotonic() + 5, restarts=16,
                                      steps=60, samples=0)
        assert cex is None
    else:
        cex = res.counterexample
        x, y = np.array(cex.input), net.forward(np.array(cex.input))
        assert prop.regions[0].contains_input(x) and prop.violated_by(x, y)
        assert np.array_equal(y, np.array(cex.output))


def test_bounds_contain_sampled_activations():
    rng = np.random.default_rng(1)
    net = random_net(rng, [6, 30, 30, 30, 4])
    lo = rng.uniform(-1, 0, 6)
    hi = lo + 0.4
    bounds = layer_bounds(net, lo, hi)
    xs = np.vstack([rng.uniform(lo, hi, size=(20000, 6)), lo, hi])
    for (l, u), z in zip(bounds, net.pre_activations(xs)):
        assert np.all(z >= l) and np.all(z <= u)


@pytest.mark.parametrize("mode", ["backward", "forward", "merged", "refined"])
def test_batched_bounds_hold_on_boxes_splits_and_inherited_bounds(mode, monkeypatch):
    """``BoundPropagator.bound`` (back-substituted or forward-mode intermediate
    bounds, or forward-mode ones merged with a second bound that back-substitutes
    the neurons they leave unstable, or back-substitution of a random subset of
    the neurons): every sampled input of each branch -- a
    sub-box, with ReLU splits taken from one of its samples -- lies inside the
    layer bounds and above the spec lower bound and its linear form, also when
    the bounds of the enclosing box are intersected in (as input-split halves
    inherit them)."""
    import torch
    from verify.bounds import BoundPropagator
    rng = np.random.default_rng(5)
    net = random_net(rng, [5, 20, 20, 20, 3])
    prop = BoundPropagator(net)
    C = torch.tensor(rng.normal(size=(4, 3)))
    d = torch.tensor(rng.normal(size=4))
    outer_lo = rng.uniform(-1, 0, 5)
    outer_hi = outer_lo + 0.6
    B = 8
    lo = outer_lo + rng.uniform(0, 0.3, (B, 5))
    hi = lo + rng.uniform(0.05, 0.3, (B, 5))
    parent = prop.bound(torch.from_numpy(np.tile(outer_lo, (B, 1))),
                        torch.from_numpy(np.tile(outer_hi, (B, 1))), C, d, forward=mode != "backward")
    fixed = list(zip(parent.lower, parent.upper))
    tight_somewhere = False
    dense_differs = False  # the batch's dense neuron queries were taken (mode "refined")
    for use_splits in (False, True):
        samples = [rng.uniform(lo[b], hi[b], size=(20000, 5)) for b in range(B)]
        splits = None
        if use_splits:
            splits = []
            for k in range(3):
                sp = np.zeros((B, 20), dtype=np.int8)
                for b in range(B):
                    z = net.pre_activations(samples[b][:1])[k][0]
                    for i in rng.choice(20, 3, replace=False):
                        sp[b, i] = 1 if z[i] >= 0 else -1
                splits.append(torch.from_numpy(sp))
        for fx in (None, fixed):
            refine = None if mode != "refined" else [torch.from_numpy(rng.random(20) < 0.5)
                                                     for _ in range(3)]
            res = prop.bound(torch.from_numpy(lo), torch.from_numpy(hi), C, d, splits, fx,
                             forward=mode not in ("backward", "refined"), refine=refine)
            if mode == "refined":
                # a single branch takes a dense path over its own queries: the same bounds
                # as one query per (branch, neuron); a batch dense over the neurons any
                # branch queries (the default here) bounds more neurons: both hold
                one = prop.bound(torch.from_numpy(lo[:1]), torch.from_numpy(hi[:1]), C, d,
                                 None if splits is None else [s[:1] for s in splits],
                                 None if fx is None else [(l[:1], u[:1]) for l, u in fx],
                                 refine=refine)
                with monkeypatch.context() as patch:
                    patch.setattr("verify.bounds.DENSE_QUERY_FACTOR", 0.0)
                    per_query = prop.bound(torch.from_numpy(lo), torch.from_numpy(hi), C, d, splits,
                                           fx, refine=refine)
                for k in range(3):
                    np.testing.assert_allclose(one.lower[k][0], per_query.lower[k][0], rtol=1e-9, atol=1e-9)
                    np.testing.assert_allclose(one.upper[k][0], per_query.upper[k][0], rtol=1e-9, atol=1e-9)
                    # (dense, a neuron one branch's tighter interval bounds leave stable is
                    # not back-substituted there, so neither path is always the tighter)
                    dense_differs |= not torch.equal(res.lower[k], per_query.lower[k])
                if splits is None:  # the per-query path's bounds hold too
                    for b in range(B):
                        pre = net.pre_activations(samples[b])
                        for extra in (per_query, one) if b == 0 else (per_query,):
                            for k in range(3):
                                assert (pre[k] >= extra.lower[k][b].numpy() - 1e-7).all()
                                assert (pre[k] <= extra.upper[k][b].numpy() + 1e-7).all()
            if mode == "merged":
                rows = torch.arange(1, B)
                res.merge_rows(rows, prop.bound(torch.from_numpy(lo[1:]), torch.from_numpy(hi[1:]), C, d,
                                                None if splits is None else [s[1:] for s in splits],
                                                None if fx is None else [(l[1:], u[1:]) for l, u in fx],
                                                forward=True, backward=True))
            for b in range(B):
                xs = samples[b]
                pre = net.pre_activations(xs)
                mask = np.ones(len(xs), dtype=bool)
                if splits is not None:
                    for k in range(3):
                        sp = splits[k][b].numpy()
                        mask &= np.all(sp[None, :] * pre[k] >= 0, axis=1) | ~np.any(sp != 0)
                assert mask.sum() > 0
                for k in range(3):
                    z = pre[k][mask]
                    assert np.all(z >= res.lower[k][b].numpy()) and np.all(z <= res.upper[k][b].numpy())
                ys = net.forward(xs[mask]) @ C.numpy().T - d.numpy()
                assert np.all(res.spec_lower[b].numpy() <= ys.min(0) + 1e-9)
                linear = xs[mask] @ res.spec_coeffs[b].numpy().T + res.spec_const[b].numpy()
                assert np.all(linear <= ys + 1e-9)
                gap = ys.min(0) - res.spec_lower[b].numpy()
                tight_somewhere |= bool(np.any(gap < 0.5 * np.abs(ys).mean()))
    assert tight_somewhere  # the bounds are not vacuous
    assert dense_differs or mode != "refined"  # the dense path was taken and checked


@pytest.mark.parametrize("search_dtype", ["float32", None])
def test_beta_crown_bounds_hold_on_split_branches(search_dtype):
    """Bounds of a branch with ReLU splits (alpha/beta optimised) hold for every
    sampled input that respects the splits, and never lose to plain CROWN -- with
    the optimisation steps in float64 and in float32 (then evaluated in float64)."""
    import torch
    from verify.bounds import BoundPropagator
    rng = np.random.default_rng(3)
    net = random_net(rng, [4, 12, 12, 3])
    prop = BoundPropagator(net, search_dtype and getattr(torch, search_dtype))
    C = torch.tensor(rng.normal(size=(5, 3)))
    d = torch.zeros(5)
    checked = 0
    for trial in range(6):
        lo = rng.uniform(-1, 0, 4)
        hi = lo + 0.8
        xs = rng.uniform(lo, hi, size=(50000, 4))
        pre = net.pre_activations(xs)[:-1]
        # the phases of one sample on a few neurons per layer: a non-empty branch
        splits, mask = [], np.ones(len(xs), dtype=bool)
        for z in pre:
            sp = np.zeros(z.shape[1], dtype=np.int8)
            for i in rng.choice(z.shape[1], 4, replace=False):
                sp[i] = 1 if z[trial, i] >= 0 else -1
                mask &= sp[i] * z[:, i] >= 0
            splits.append(torch.from_numpy(sp[None, :]))
        tlo, thi = torch.from_numpy(lo[None, :]), torch.from_numpy(hi[None, :])
        res = prop.bound(tlo, thi, C, d, splits, alpha_iterations=60)
        plain = prop.bound(tlo, thi, C, d, splits)
        ys = net.forward(xs[mask]) @ C.numpy().T
        assert np.all(res.spec_lower.numpy()[0] <= ys.min(0) + 1e-9)
        assert np.all(res.spec_lower.numpy() >= plain.spec_lower.numpy() - 1e-12)
        # the returned linear bound (with the beta terms) holds on the branch too
        lin = xs[mask] @ res.spec_coeffs.numpy()[0].T + res.spec_const.numpy()[0]
        assert np.all(lin <= ys + 1e-9)
        checked += mask.sum()
    assert checked > 1000


def test_z3_encoding_agrees_with_forward_pass():
    rng = np.random.default_rng(2)
    net = random_net(rng, [4, 10, 10, 3])
    for _ in range(5):
        x = rng.uniform(-1, 1, 4)
        lb = [(l, u) for l, u in layer_bounds(net, x, x)[:-1]]
        branch = Branch(x, x, lb, np.eye(3), np.full(3, 1e6))
        q = encode(net, branch, digits=None)
        ans = solve(q)
        assert ans.status == "sat"
        model = q.solver.model()
        ys = [model.eval(z3.Real(f"y{j}", q.ctx)) for j in range(3)]
        got = np.array([float(v.as_fraction()) for v in ys])
        np.testing.assert_allclose(got, net.forward(x), rtol=1e-9, atol=1e-9)


def test_rounded_encoding_is_sound_relaxation():
    """With coefficients rounded to few digits the slack must still contain the true output."""
    rng = np.random.default_rng(3)
    net = random_net(rng, [4, 10, 3])
    x = rng.uniform(-1, 1, 4)
    y = net.forward(x)
    lb = [(l, u) for l, u in layer_bounds(net, x, x)[:-1]]
    # unsafe set = exactly the true output, which must stay reachable (sat) at 2 digits
    coeffs = np.vstack([np.eye(3), -np.eye(3)])
    rhs = np.concatenate([y + 1e-12, -y + 1e-12])
    assert solve(encode(net, Branch(x, x, lb, coeffs, rhs), digits=2)).status == "sat"


def test_digits_mlp_holds_via_z3_and_violated_via_counterexample(digits_mlp):
    net, X, y = digits_mlp
    rng = np.random.default_rng(0)
    z3_holds = 0
    for idx, eps in _points_bounds_cannot_prove(net, X, y):
        prop = local_robustness(X[idx], eps, int(y[idx]), 10)
        res = verify_property(net, prop, VerifyOptions(timeout=30, z3_relu_split_max_unstable=64))
        r = prop.regions[0]
        if res.status.value == "violated":
            _assert_replays(net, prop, res)
            continue
        if res.status.value == "holds" and res.method == "z3":
            assert res.statistics.z3_queries > 0
            xs = rng.uniform(r.lower, r.upper, size=(20000, 64))
            assert np.all(net.forward(xs).argmax(1) == y[idx])
            z3_holds += 1
            break
    assert z3_holds, "no robustness property was decided by Z3"
    # violated: a large ball contains other classes; the counterexample replays
    big = local_robustness(X[idx], 0.5, int(y[idx]), 10)
    res = verify_property(net, big, VerifyOptions(timeout=60))
    assert res.status.value == "violated"
    _assert_replays(net, big, res)


def _assert_replays(net, prop, res):
    x = np.array(res.counterexample.input)
    out = net.forward(x)
    assert prop.violated_by(x, out)
    assert np.array_equal(out, np.array(res.counterexample.output))


def _points_bounds_cannot_prove(net, X, y):
    """Correctly classified points with an eps where the root bounds cannot
    prove robustness and a quick attack finds no violation."""
    import torch

    from verify.bounds import BoundPropagator
    prop_b = BoundPropagator(net)
    preds = net.forward(X).argmax(1)
    for idx in np.flatnonzero(preds == y)[:40]:
        for eps in (0.04, 0.06, 0.08, 0.1):
            p = local_robustness(X[idx], eps, int(y[idx]), 10)
            r = p.regions[0]
            C = np.vstack([c.coeffs for c in r.unsafe])
            res = prop_b.bound(torch.tensor(r.lower)[None], torch.tensor(r.upper)[None],
                               torch.tensor(C), torch.zeros(len(C)))
            if not (res.spec_lower.numpy() <= 0).any():
                continue
            cex, _ = Attacker(net).attack(r, 0, np.random.default_rng(0), time.monotonic() + 5,
                                          restarts=16, steps=60, samples=2000)
            if cex is None:
                yield int(idx), eps
            break


def test_timeout_is_honoured():
    rng = np.random.default_rng(5)
    net = random_net(rng, [20, 200, 200, 200, 200, 10])
    prop = local_robustness(np.full(20, 0.5), 0.5, 0, 10, domain=None)
    # make class 0 win at the centre so the property is hard but not trivially violated
    t0 = time.monotonic()
    res = verify_property(net, prop, VerifyOptions(timeout=1.0))
    elapsed = time.monotonic() - t0
    assert elapsed < 2.5
    if res.status.value == "unknown":
        assert "timeout" in res.reason or res.method == "timeout"


def _planted_corner(n=10, threshold=9.8):
    """y0 = sum relu(x_i), y1 = threshold on [0, 1]^n: unsafe (y0 >= y1) only in the
    corner where the inputs sum to >= threshold, a share of about 3e-14 of the box."""
    hidden = Affine(np.eye(n), np.zeros(n))
    out = Affine(np.vstack([np.ones(n), np.zeros(n)]), np.array([0.0, threshold]))
    net = Network((hidden, out))
    region = Region(np.zeros(n), np.ones(n), (Conjunction(np.array([[-1.0, 1.0]]), np.zeros(1)),))
    return net, Property((region,), 2, name="planted-corner")


def test_the_attack_finds_a_planted_counterexample_that_sampling_misses():
    net, prop = _planted_corner()
    attacker, region = Attacker(net), prop.regions[0]
    far = time.monotonic() + 30
    sampled, _ = attacker.attack(region, 0, np.random.default_rng(0), far, restarts=0,
                                 samples=2000)
    assert sampled is None  # random sampling alone misses the corner
    cex, _ = attacker.attack(region, 0, np.random.default_rng(0), far, restarts=2, samples=2000)
    assert cex is not None
    x = np.array(cex.input)
    assert prop.violated_by(x, net.forward(x)) and x.sum() >= 9.8
    res = verify_property(net, prop, VerifyOptions(timeout=10))
    assert res.status.value == "violated"
    assert prop.violated_by(np.array(res.counterexample.input), net.forward(np.array(res.counterexample.input)))


def test_child_branches_back_substitute_only_after_a_new_split():
    """ReLU-split children bounded with their parent's bounds (``fixed``): a branch
    with a new split (a neuron the parent left unstable) in layer 0 gets layers 1+
    back-substituted, one without keeps its parent's; in one batch, each branch gets
    exactly the bounds it gets alone, and every sampled input of a branch (its box
    under its split facts) lies within them."""
    import torch
    from verify.bounds import BoundPropagator
    rng = np.random.default_rng(11)
    net = random_net(rng, [5, 20, 20, 20, 3])
    prop = BoundPropagator(net)
    C, d = torch.tensor(rng.normal(size=(4, 3))), torch.tensor(rng.normal(size=4))
    lo0 = rng.uniform(-1, 0, 5)
    hi0 = lo0 + 0.6
    B = 6
    lo, hi = torch.from_numpy(np.tile(lo0, (B, 1))), torch.from_numpy(np.tile(hi0, (B, 1)))
    parent = prop.bound(lo, hi, C, d)
    fixed = list(zip(parent.lower, parent.upper))
    l0, u0 = parent.lower[0][0].numpy(), parent.upper[0][0].numpy()
    unstable0 = np.flatnonzero((l0 < 0) & (u0 > 0))
    assert len(unstable0) >= B // 2
    splits = [torch.zeros((B, 20), dtype=torch.int8) for _ in range(3)]
    for b in range(0, B, 2):  # even branches: a new split in layer 0
        splits[0][b, unstable0[b // 2]] = 1 if b % 4 == 0 else -1
    res = prop.bound(lo, hi, C, d, splits, fixed)
    for b in range(B):
        one = prop.bound(lo[b:b + 1], hi[b:b + 1], C, d, [s[b:b + 1] for s in splits],
                         [(l[b:b + 1], u[b:b + 1]) for l, u in fixed])
        for k in range(3):
            np.testing.assert_allclose(one.lower[k][0], res.lower[k][b], rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(one.upper[k][0], res.upper[k][b], rtol=1e-9, atol=1e-9)
    # odd branches (no new split) keep the parent's bounds; even ones are back-substituted:
    # tighter somewhere than the parent's bounds met with interval arithmetic alone
    for k in (1, 2):
        assert torch.equal(res.lower[k][1], parent.lower[k][0])
    interval = prop.bound(lo, hi, C, d, splits, fixed, backward=False)
    for b in range(0, B, 2):
        assert any(bool((res.lower[k][b] > interval.lower[k][b] + 1e-9).any()
                        | (res.upper[k][b] < interval.upper[k][b] - 1e-9).any()) for k in (1, 2))
    xs = rng.uniform(lo0, hi0, size=(40000, 5))
    zs = net.pre_activations(xs)
    for b in range(B):
        keep = np.ones(len(xs), dtype=bool)
        for k in range(3):
            sp = splits[k][b].numpy()
            keep &= np.all((sp == 0) | ((sp > 0) & (zs[k] >= 0)) | ((sp < 0) & (zs[k] <= 0)), axis=1)
        for k in range(3):
            z = zs[k][keep]
            assert np.all(z >= res.lower[k][b].numpy()) and np.all(z <= res.upper[k][b].numpy())
