"""ReLU-split branching (verify.relu_branching): the look-ahead's children bounds are
sound, and verdicts reached with the BaBSR and filtered-smart-branching choices equal
an exact (MILP) verdict."""
import time

import numpy as np
import pytest
import torch

from verify.network import Affine, Network
from verify.options import ReluBranchOptions, VerifyOptions
from verify.properties import Conjunction, Region, local_robustness
from verify.relu_branching import babsr_score, deepsplit_scores
from verify.result import Statistics
from verify.search import Node, RegionSearch
from verify.verifier import verify_property


def random_net(rng, sizes):
    return Network(tuple(Affine(rng.normal(size=(sizes[i + 1], sizes[i])) / np.sqrt(sizes[i]),
                                rng.normal(size=sizes[i + 1]) * 0.3)
                         for i in range(len(sizes) - 1)))


def _search(net, region, lookahead):
    opts = VerifyOptions(input_split_max=0, relu_branching=ReluBranchOptions(
        "fsb", fsb_candidates=5, lookahead=lookahead))
    return RegionSearch(net, region, 0, opts, time.monotonic() + 60, Statistics())


@pytest.mark.parametrize("lookahead", ["spec", "layers"])
def test_lookahead_bounds_contain_sampled_points_of_each_child(lookahead):
    """Three branches (no split; one layer-0 neuron active; inactive), five candidates
    each across layers: every sampled input of a child (the box, the branch's splits
    and the candidate's phase) has spec values at or above the child's look-ahead
    bound -- and the look-ahead is not vacuous (it beats the parent on some child)."""
    rng = np.random.default_rng(3)
    net = random_net(rng, [5, 20, 20, 20, 3])
    lo0 = rng.uniform(-1, 0, 5)
    hi0 = lo0 + 0.6
    C = rng.normal(size=(4, 3))
    region = Region(lo0, hi0, (Conjunction(C[:2], rng.normal(size=2)),
                               Conjunction(C[2:], rng.normal(size=2))))
    search = _search(net, region, lookahead)
    root = search.bound_branches(*search.root_box(), [torch.zeros((1, 20), dtype=torch.int8)] * 3,
                                 None, alpha=0, mode="backward")[0]
    j0 = int(np.flatnonzero((root.lower[0][0] < 0) & (root.upper[0][0] > 0))[0])
    splits = [np.zeros((3, 20), dtype=np.int8) for _ in range(3)]
    splits[0][1, j0], splits[0][2, j0] = 1, -1
    lo, hi = torch.from_numpy(np.tile(lo0, (3, 1))), torch.from_numpy(np.tile(hi0, (3, 1)))
    res, refuted, _ = search.bound_branches(lo, hi, [torch.from_numpy(s) for s in splits], None)
    batch = [Node(lo0, hi0, [s[b] for s in splits]) for b in range(3)]
    idx = np.arange(3)
    worst = np.array([search._worst_row(res.spec_lower[i].numpy(), refuted[i]) for i in idx])
    babsr = torch.cat(search._relu_scores(res, idx, worst, "babsr"), 1)
    cand = search._fsb_candidates(babsr, search._relu_scores(res, idx, worst, "gap"))
    assert len(set(np.searchsorted(np.cumsum([20, 20, 20]), cand.ravel(), side="right"))) >= 2
    spec, infeasible = search._lookahead_bounds(batch, res, idx, cand)
    assert spec.shape == (3 * cand.shape[1] * 2, 4)

    xs = rng.uniform(lo0, hi0, size=(60000, 5))
    zs = net.pre_activations(xs)
    values = zs[-1] @ search.C.numpy().T - search.d.numpy()
    z_flat = np.concatenate(zs[:-1], 1)
    checked, tighter = 0, 0
    for row in range(spec.shape[0]):
        q, c, active = row // (2 * cand.shape[1]), (row // 2) % cand.shape[1], row % 2 == 0
        keep = np.all((splits[0][q] == 0) | ((splits[0][q] > 0) & (zs[0] >= 0))
                      | ((splits[0][q] < 0) & (zs[0] <= 0)), axis=1)
        z = z_flat[:, cand[q, c]]
        keep &= (z >= 0) if active else (z <= 0)
        if not keep.any():
            continue
        assert not infeasible[row]
        assert np.all(values[keep] >= spec[row] - 1e-9), (row, lookahead)
        checked += 1
        tighter += bool((spec[row] > res.spec_lower[q].numpy() + 1e-6).any())
    assert checked >= spec.shape[0] // 2 and tighter > 0


def test_babsr_score_is_zero_exactly_on_stable_neurons():
    l = torch.tensor([[-1.0, 0.5, -2.0, -1.0]])
    u = torch.tensor([[2.0, 1.0, -0.5, 1.0]])
    s = babsr_score(torch.tensor([[-0.3, 1.0, 1.0, 0.0]]), l, u, torch.tensor([0.2, 0.1, 0.4, 0.0]))
    assert s[0, 1] == 0 and s[0, 2] == 0 and s[0, 0] > 0 and s[0, 3] > 0
    # intercept -0.3 * 2/3 * 1 = -0.2; bias shares -0.06 * (2/3 - 1), -0.06 * 2/3: larger 0.02
    assert s[0, 0].item() == pytest.approx(0.18, abs=1e-6)


def test_deepsplit_score_passes_a_later_neurons_impact_back_through_its_weights():
    """Layer 0 has no direct effect on the row (coefficients 0); its two unstable
    neurons feed layer 1's one unstable neuron, whose direct impact is |-0.5| * 4/3.
    Each gets 0.75 x that impact x the share of the later neuron's bound its
    intercept makes: 1 * 0.5 / 2 (a negative weight, against the lower bound -2) and
    2 * 0.75 / 4 (positive, against the upper bound 4); a stable neuron scores 0."""
    lower = [torch.tensor([[-1.0, -1.0, 0.5]]), torch.tensor([[-2.0]])]
    upper = [torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([[4.0]])]
    lams = [torch.zeros(1, 3), torch.tensor([[-0.5]])]
    weights = [torch.zeros(3, 2), torch.tensor([[-1.0, 2.0, 5.0]])]
    s0, s1 = deepsplit_scores(lower, upper, lams, weights)
    assert s1[0, 0].item() == pytest.approx(0.5 * 4 / 3, abs=1e-6)
    direct = 0.5 * 4 / 3
    assert s0[0, 0].item() == pytest.approx(0.75 * direct * 0.25, abs=1e-6)
    assert s0[0, 1].item() == pytest.approx(0.75 * direct * 0.375, abs=1e-6)
    assert s0[0, 2].item() == 0.0
    # a share above 1 is clipped: a huge weight cannot make more than the whole bound
    s0, _ = deepsplit_scores(lower, upper, lams, [weights[0], torch.tensor([[-100.0, 2.0, 5.0]])])
    assert s0[0, 0].item() == pytest.approx(0.75 * direct * 1.0, abs=1e-6)


def test_deepsplit_scores_in_chunks_of_branches_equal_one_pass(monkeypatch):
    """The shares are formed a few branches at a time on wide layers; the scores do not
    depend on the chunking (random bounds, 7 branches, chunks of 2 branches)."""
    import verify.relu_branching as rb
    g = torch.Generator().manual_seed(0)
    sizes = [6, 5, 4]
    lower = [-torch.rand(7, n, generator=g, dtype=torch.float64) for n in sizes]
    upper = [torch.rand(7, n, generator=g, dtype=torch.float64) - 0.2 for n in sizes]
    lams = [torch.randn(7, n, generator=g, dtype=torch.float64) for n in sizes]
    weights = [None] + [torch.randn(sizes[k + 1], sizes[k], generator=g, dtype=torch.float64)
                        for k in range(2)]
    whole = deepsplit_scores(lower, upper, lams, weights)
    monkeypatch.setattr(rb, "SHARE_CHUNK", 2 * 6 * 5)
    parts = deepsplit_scores(lower, upper, lams, weights)
    assert all(torch.equal(a, b) for a, b in zip(whole, parts))
    assert whole[0].abs().sum() > 0


def test_an_unknown_branching_choice_is_a_clear_option_error():
    from verify.errors import OptionError
    with pytest.raises(OptionError, match="deepsplit"):
        ReluBranchOptions("deep-split")
    with pytest.raises(OptionError, match="intercept or babsr"):
        ReluBranchOptions("deepsplit", deepsplit_direct="gap")


def _milp_minimum(net, region, row: np.ndarray) -> float:
    """Exact minimum of ``row @ y`` over the region's box (written here without the
    project's bounds or encoder): a mixed-integer program with one binary per unstable
    ReLU, big-M constants from plain interval arithmetic, solved by HiGHS."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    lo, hi = np.asarray(region.lower, float), np.asarray(region.upper, float)
    sizes = [a.out_size for a in net.affines[:-1]]
    n0, nh = net.n_inputs, sum(sizes)
    nv = n0 + 2 * nh  # x, then per hidden neuron its output a and phase d
    rows, lb, ub = [], [], []

    def add(coef, low, high):
        rows.append(coef), lb.append(low), ub.append(high)
    var_lo, var_hi = np.concatenate([lo, np.zeros(2 * nh)]), np.concatenate([hi, np.full(2 * nh, np.inf)])
    var_hi[n0 + nh:] = 1.0
    prev, prev_lo, prev_hi, off = list(range(n0)), lo, hi, n0
    for k, n in enumerate(sizes):
        W, b = net.affines[k].weight, net.affines[k].bias
        zl = np.clip(W, 0, None) @ prev_lo + np.clip(W, None, 0) @ prev_hi + b
        zu = np.clip(W, 0, None) @ prev_hi + np.clip(W, None, 0) @ prev_lo + b
        for i in range(n):
            a, d = off + i, n0 + nh + (off - n0) + i
            z = np.zeros(nv)
            z[prev] = W[i]
            za = z.copy()
            za[a] -= 1.0
            add(za, -np.inf, -b[i])  # a >= z
            if zu[i] <= 0:
                var_hi[a] = 0.0
            elif zl[i] >= 0:
                add(za, -b[i], -b[i])  # a == z
            else:
                zd = za.copy()
                zd[d] = zl[i]
                add(zd, zl[i] - b[i], np.inf)  # a <= z - l (1 - d)
                ad = np.zeros(nv)
                ad[a], ad[d] = 1.0, -zu[i]
                add(ad, -np.inf, 0.0)  # a <= u d
        prev, prev_lo, prev_hi = list(range(off, off + n)), np.clip(zl, 0, None), np.clip(zu, 0, None)
        off += n
    Wo, bo = net.affines[-1].weight, net.affines[-1].bias
    c = np.zeros(nv)
    c[prev] = row @ Wo
    integrality = np.concatenate([np.zeros(n0 + nh), np.ones(nh)])
    res = milp(c, constraints=LinearConstraint(np.array(rows), lb, ub), bounds=Bounds(var_lo, var_hi),
               integrality=integrality, options={"mip_rel_gap": 1e-9})
    assert res.success, res.message
    return float(res.fun + row @ bo)


def _exact_holds(net, region) -> bool | None:
    """Every single-row unsafe conjunction refuted (its row's exact minimum above the
    threshold); None when a minimum lies within 1e-6 of it (too close to call)."""
    margins = [_milp_minimum(net, region, conj.coeffs[0]) - conj.rhs[0] for conj in region.unsafe]
    if min(abs(m) for m in margins) < 1e-6:
        return None
    return min(margins) > 0


def test_digits_verdicts_agree_with_exact_milp(digits_mlp):
    """Robustness balls on a digits MLP that the root bound leaves open (two hold, one
    is violated): the verdict with each branching choice equals the exact verdict of a
    MILP (no attack and no Z3 before or inside the search: branch and bound decides)."""
    net, X, y = digits_mlp
    verdicts = set()
    for idx, eps in ((9, 0.08), (15, 0.06), (17, 0.08)):
        prop = local_robustness(X[idx], eps, int(y[idx]), 10)
        truth = _exact_holds(net, prop.regions[0])
        assert truth is not None
        verdicts.add(truth)
        for heuristic in ("babsr", "fsb", "deepsplit"):
            opts = VerifyOptions(timeout=60, input_split_max=0, use_z3=False, attack_max_s=0.0,
                                 random_samples=0, attack_far_share=0.0,
                                 attack_search_share=0.0, relu_branching=ReluBranchOptions(
                                     heuristic, fsb_candidates=3))
            res = verify_property(net, prop, opts)
            assert res.status.value == ("holds" if truth else "violated"), (idx, eps, heuristic)
            assert res.statistics.branches > 0
    assert verdicts == {True, False}
