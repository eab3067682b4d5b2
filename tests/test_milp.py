"""The mixed-integer program of a chain (verify.milp) and the stage that decides a
region by it (verify.milp_region, VerifyOptions.milp_*).

The encoding is checked without a solver: every point of the box, with its hidden
outputs and ReLU phases filled in, satisfies the program's rows (a program that cut
off a point of the network would prove false things). The solver's answers are
checked against independent ground truth: sampled points, counterexamples re-run on
the network, and branch and bound without the stage."""
import dataclasses
import time

import numpy as np
import pytest

from chain_nets import deep_chain, random_chain_instance
from verify.api import VerifyOptions, verify_property
from verify.milp import CANDIDATE, REFUTED, solve_conjunction
from verify.milp_region import decide_region, region_program
from verify.properties import local_robustness
from verify.result import Statistics, Status
from verify.search import RegionSearch, milp_start

highspy = pytest.importorskip("highspy")


def _root_bounds(net, region):
    search = RegionSearch(net, region, 0, VerifyOptions(timeout=30), 1e18, Statistics())
    return search.root_layer_bounds(search.root_bound()[0])


def _rows_hold(program, cols, tol=1e-7):
    lhs = np.add.reduceat(program.values * cols[program.indices], program.indptr[:-1]) \
        if len(program.values) else np.zeros(0)
    return np.all(lhs >= program.row_lower - tol) and np.all(lhs <= program.row_upper + tol)


def _columns_of(net, bounds, program, x):
    """The columns for input ``x``, walking the layers as chain_program does."""
    pre = net.pre_activations(x[None, :])
    cols = [x]
    for (lo, hi), z in zip(bounds, pre[:-1]):
        z = z[0]
        for i in range(len(z)):
            if hi[i] + 1e-6 * (1 + abs(hi[i])) <= 0:
                continue
            cols.append([max(z[i], 0.0)])
            if lo[i] - 1e-6 * (1 + abs(lo[i])) < 0:
                cols.append([1.0 if z[i] > 0 else 0.0])
    return np.concatenate([np.ravel(c) for c in cols])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_point_of_the_box_satisfies_the_program(seed, mutate=None):
    net = deep_chain(seed, width=16, depth=3)
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-1, 1, size=8)
    region = local_robustness(centre, 0.3, int(np.argmax(net.forward(centre))), 3).regions[0]
    bounds = _root_bounds(net, region)[0]
    program = region_program(net, region, bounds)
    if mutate is not None:
        program = mutate(program)
    assert program.n_binaries > 0
    xs = rng.uniform(region.lower, region.upper, size=(200, 8))
    for x in xs:
        cols = _columns_of(net, bounds, program, x)
        assert len(cols) == program.n_cols
        assert np.all(cols >= program.col_lower - 1e-9) and np.all(cols <= program.col_upper + 1e-9)
        assert _rows_hold(program, cols)
        # the outputs read off the columns are the network's
        assert np.allclose(program.out_coeffs @ cols + program.out_const, net.forward(x[None, :])[0])


def test_a_wrong_big_m_is_caught():
    """Mutation: the upper big-M row ``h <= u a`` with half of ``u`` cuts off points."""
    def halve_big_m(program):
        values = program.values.copy()
        starts, ends = program.indptr[:-1], program.indptr[1:]
        for s, e in zip(starts, ends):
            if e - s == 2 and program.row_upper[np.searchsorted(program.indptr, s)] == 0.0:
                values[s + 1] *= 0.5
        return dataclasses.replace(program, values=values)
    with pytest.raises(AssertionError):
        test_every_point_of_the_box_satisfies_the_program(0, mutate=halve_big_m)


def _conjunction_rows(region, j):
    conj = region.unsafe[j]
    return conj.coeffs, conj.rhs


@pytest.mark.parametrize("seed,eps", [(3, 0.05), (4, 0.1), (5, 0.2), (6, 0.4)])
def test_refutations_and_candidates_against_sampling_and_the_network(seed, eps):
    """A refuted conjunction has no sampled point inside it; a candidate is an input
    whose rows are within the margin (re-run on the network)."""
    net = deep_chain(seed, width=12, depth=3)
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-1, 1, size=8)
    label = int(np.argmax(net.forward(centre[None, :])[0]))
    region = local_robustness(centre, eps, label, 3).regions[0]
    bounds = _root_bounds(net, region)[0]
    program = region_program(net, region, bounds)
    xs = rng.uniform(region.lower, region.upper, size=(20000, 8))
    ys = net.forward(xs)
    seen = set()
    for j in range(len(region.unsafe)):
        coeffs, rhs = _conjunction_rows(region, j)
        ans = solve_conjunction(program, j, coeffs, rhs, 1e-6, 30.0)
        inside = np.all(ys @ coeffs.T - rhs <= 0, axis=1)
        seen.add(ans.status)
        if ans.status == REFUTED:
            assert not inside.any()
        else:
            assert ans.status == CANDIDATE
            y = net.forward(ans.x[None, :])[0]
            assert np.all(ans.x >= region.lower - 1e-9) and np.all(ans.x <= region.upper + 1e-9)
            assert np.all(coeffs @ y - rhs <= 1e-4)


def test_a_violated_conjunction_is_never_refuted():
    """A conjunction made to hold at one point by a small shift of its threshold
    (the point's margin plus 1e-3) must come back as a candidate."""
    net = deep_chain(7, width=12, depth=3)
    x0 = np.full(8, 0.1)
    label = int(np.argmax(net.forward(x0[None, :])[0]))
    region = local_robustness(x0, 0.05, label, 3).regions[0]
    bounds = _root_bounds(net, region)[0]
    program = region_program(net, region, bounds)
    y0 = net.forward(x0[None, :])[0]
    for j in range(len(region.unsafe)):
        coeffs, rhs = _conjunction_rows(region, j)
        shifted = coeffs @ y0 + 1e-3  # now x0 is inside: coeffs @ y0 - shifted = -1e-3
        ans = solve_conjunction(program, j, coeffs, shifted, 1e-6, 30.0)
        assert ans.status == CANDIDATE


@pytest.mark.parametrize("seed,eps", [(11, 0.04), (15, 0.04), (17, 0.02)])
def test_the_stage_decides_as_branch_and_bound_does(seed, eps):
    """verify_property with the stage taken at once (branch and bound's share almost
    nothing) against branch and bound without it: both hold, the first by the program."""
    net, prop = random_chain_instance(seed, eps)
    plain = verify_property(net, prop, VerifyOptions(timeout=60, milp_workers=0))
    staged = verify_property(net, prop, VerifyOptions(timeout=60, milp_bab_share=1e-4,
                                                      milp_min_seconds=0, milp_workers=2))
    assert plain.status is Status.HOLDS and plain.method != "milp"
    assert (staged.status, staged.method) == (Status.HOLDS, "milp")


def test_the_stage_replays_its_counterexample():
    """A region made violated at one point (a threshold shifted past the point's
    output): the stage's answer is violated, with an input the network confirms."""
    net = deep_chain(8, width=12, depth=3)
    x0 = np.full(8, 0.2)
    label = int(np.argmax(net.forward(x0[None, :])[0]))
    region = local_robustness(x0, 0.02, label, 3).regions[0]
    y0 = net.forward(x0[None, :])[0]
    conj = region.unsafe[0]
    shifted = dataclasses.replace(conj, rhs=conj.coeffs @ y0 + 1e-2)
    region = dataclasses.replace(region, unsafe=(shifted,) + tuple(region.unsafe[1:]))
    bounds = _root_bounds(net, region)[0]
    answers = []
    out = decide_region(net, region, 0, bounds, np.zeros(len(region.unsafe), bool),
                        time.monotonic() + 30, 2, log=answers.append)
    assert out.status is Status.VIOLATED and out.method == "milp"
    y = net.forward(np.asarray(out.counterexample.input)[None, :])[0]
    assert np.all(shifted.coeffs @ y - shifted.rhs <= 0)
    assert any(a.status == CANDIDATE for a in answers)


def test_the_stage_is_not_taken_without_time_or_while_recording():
    net, prop = random_chain_instance(15, 0.04)
    options = VerifyOptions(timeout=60, milp_bab_share=1e-4, milp_min_seconds=0)
    assert milp_start(net, options, time.monotonic() + 60, record=False) is not None
    assert milp_start(net, options, time.monotonic() + 60, record=True) is None
    assert milp_start(net, dataclasses.replace(options, milp_workers=0),
                      time.monotonic() + 60, record=False) is None
    # an instance that splits its inputs (few inputs) never hands over
    small = deep_chain(0, width=8, depth=2)
    assert milp_start(small, options, time.monotonic() + 60, record=False) is None
    # with more time asked than is left, branch and bound keeps the region
    slow = dataclasses.replace(options, milp_min_seconds=1000)
    out = verify_property(net, prop, slow)
    assert out.status is Status.HOLDS and out.method != "milp"


def test_a_root_with_too_many_unstable_relus_keeps_the_search():
    """Declined (more unstable ReLUs than milp_max_unstable): branch and bound gets
    its whole time back, though its share of it had almost run out."""
    net, prop = random_chain_instance(15, 0.04)
    options = VerifyOptions(timeout=60, milp_bab_share=1e-4, milp_min_seconds=0,
                            milp_max_unstable=0)
    out = verify_property(net, prop, options)
    assert (out.status, out.method) == (Status.HOLDS, "bab")


def test_the_stage_keeps_its_deadline_and_leaves_no_workers():
    """A program far too hard for 3 s: unknown by the deadline (the workers' own time
    limit, then at most a second), and every worker process gone afterwards."""
    import multiprocessing
    net, prop = random_chain_instance(11, 0.08)
    region = prop.regions[0]
    bounds, refuted, _ = _root_bounds(net, region)
    t0 = time.monotonic()
    out = decide_region(net, region, 0, bounds, refuted, t0 + 3.0, 2)
    assert out.status is Status.UNKNOWN and out.method == "timeout"
    assert time.monotonic() - t0 < 6.0
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("sizes,seed,slack", [([3, 6, 6, 2], 5, 0.01), ([3, 6, 6, 2], 6, 0.01),
                                              ([2, 8, 8, 2], 2, 0.01), ([2, 8, 8, 2], 9, -0.01),
                                              ([3, 6, 6, 2], 5, -0.01)])
def test_program_verdicts_agree_with_exact_z3(sizes, seed, slack):
    """Tight single-row properties (the sampled minimum ``slack`` above the threshold;
    below it they are violated): the program's answer on every conjunction, through
    decide_region, against Z3 on the exact encoding of the whole network."""
    from test_verifier import exact_z3_verdict, random_net, tight_property
    rng = np.random.default_rng(seed)
    net = random_net(rng, sizes)
    prop = tight_property(rng, net, slack)
    region = prop.regions[0]
    bounds, refuted, _ = _root_bounds(net, region)
    out = decide_region(net, region, 0, bounds, refuted, time.monotonic() + 30, 2)
    assert out.status.value == exact_z3_verdict(net, prop)


def test_workers_that_cannot_start_leave_the_search_its_time(monkeypatch):
    """A platform without processes to be had (the pool raises): the stage is declined
    and branch and bound keeps its whole time, though its share had almost run out."""
    import verify.milp_region as milp_region

    class NoProcesses:
        def Pool(self, *args, **kwargs):
            raise OSError("no processes here")
    monkeypatch.setattr(milp_region, "_context", lambda: NoProcesses())
    net, prop = random_chain_instance(15, 0.04)
    options = VerifyOptions(timeout=60, milp_bab_share=1e-4, milp_min_seconds=0)
    out = verify_property(net, prop, options)
    assert (out.status, out.method) == (Status.HOLDS, "bab")
