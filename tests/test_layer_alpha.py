"""alpha-CROWN on intermediate layers (verify.layer_alpha): the tightened bounds contain
sampled pre-activations on chains and on every kind of graph network, lie within
CROWN's and are tighter somewhere; mutations of the bookkeeping (a neuron given another
neuron's bound, an overclaimed bound) are caught by the same checks; the search uses
them at the root and decides the same."""
import numpy as np
import pytest
import torch

from chain_nets import deep_chain, random_chain_instance
from graph_nets import NETS
from verify import layer_alpha
from verify.bounds import BoundPropagator
from verify.graphbounds import GraphBoundPropagator
from verify.network import Affine, Network
from verify.options import VerifyOptions
from verify.result import Status
from verify.verifier import verify_property

torch.set_num_threads(1)


def _cases():
    yield "chain", lambda seed: deep_chain(seed), BoundPropagator, 0.4
    for name, make in sorted(NETS.items()):
        yield name, lambda seed, make=make: make(np.random.default_rng(seed)), GraphBoundPropagator, 0.3


CASES = {name: (make, prop, eps) for name, make, prop, eps in _cases()}


def _tightened(name, seed):
    make, Prop, eps = CASES[name]
    net = make(seed)
    prop = Prop(net)
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(1, net.n_inputs))
    lo, hi = torch.tensor(c - eps), torch.tensor(c + eps)
    n_out = net.n_outputs
    C = torch.cat([torch.eye(n_out), -torch.eye(n_out)]).double()
    crown = prop.bound(lo, hi, C, torch.zeros(2 * n_out))
    lower, upper = layer_alpha.optimise_layer_bounds(prop, lo, hi, crown.lower, crown.upper, 20)
    return net, crown, lower, upper, lo[0].numpy(), hi[0].numpy()


def _outside(net, lower, upper, lo, hi, seed) -> int:
    rng = np.random.default_rng(seed)
    xs = np.vstack([rng.uniform(lo, hi, size=(3000, lo.size)),
                    np.where(rng.random((3000, lo.size)) < 0.5, lo, hi)])
    pre = net.pre_activations(xs)
    return sum(int(((p < l[0].numpy()) | (p > u[0].numpy())).sum())
               for p, l, u in zip(pre, lower, upper))


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", sorted(CASES))
def test_tightened_bounds_contain_samples_and_lie_within_crowns(name, seed):
    net, crown, lower, upper, lo, hi = _tightened(name, seed)
    assert _outside(net, lower, upper, lo, hi, seed) == 0
    gain = 0.0
    for l, u, cl, cu in zip(lower, upper, crown.lower, crown.upper):
        assert (l >= cl).all() and (u <= cu).all()
        gain += float((l - cl).sum() + (cu - u).sum())
    if name == "chain":  # five hidden layers of 24: the slopes matter
        assert gain > 1e-2


def _shifted_rows(n, idx, dtype):
    """Mutation: each neuron's query row is its neighbour's."""
    return _ORIGINAL_ROWS(n, (idx + 1) % n, dtype)


_ORIGINAL_ROWS = layer_alpha._neuron_rows
_ORIGINAL_BOUND = layer_alpha._rows_lower_bound


@pytest.mark.parametrize("mutation", ["shifted_rows", "overclaim"])
def test_mutated_bookkeeping_is_caught(monkeypatch, mutation):
    if mutation == "shifted_rows":
        monkeypatch.setattr(layer_alpha, "_neuron_rows", _shifted_rows)
    else:
        monkeypatch.setattr(layer_alpha, "_rows_lower_bound",
                            lambda *a, **k: (lambda b, kept: (b + 0.05, kept))(
                                *_ORIGINAL_BOUND(*a, **k)))
    bad = 0
    for name in ("chain", "residual"):
        for seed in (1, 2):
            net, _, lower, upper, lo, hi = _tightened(name, seed)
            bad += _outside(net, lower, upper, lo, hi, seed)
    assert bad > 0


def test_deadline_past_keeps_the_bounds_given():
    make, Prop, eps = CASES["chain"]
    net = make(3)
    prop = Prop(net)
    lo, hi = torch.full((1, 8), -eps, dtype=torch.float64), torch.full((1, 8), eps, dtype=torch.float64)
    crown = prop.bound(lo, hi, torch.eye(3).double(), torch.zeros(3))
    lower, upper = layer_alpha.optimise_layer_bounds(prop, lo, hi, crown.lower, crown.upper, 20,
                                                     deadline=0.0)
    for l, u, cl, cu in zip(lower, upper, crown.lower, crown.upper):
        assert torch.equal(l, cl) and torch.equal(u, cu)


def test_search_tightens_the_root_and_needs_fewer_branches():
    """A random 32-48x6-3 chain (ReLU splitting: 32 inputs), local robustness at eps 0.04:
    with the root's intermediate layers tightened both properties hold at the root;
    without, the search branches. The verdicts agree."""
    for seed in (0, 2):
        net, prop = random_chain_instance(seed, 0.04)
        tightened = verify_property(net, prop, VerifyOptions(timeout=20))
        plain = verify_property(net, prop, VerifyOptions(timeout=20, layer_alpha_iterations=0))
        assert tightened.status == plain.status == Status.HOLDS
        assert tightened.statistics.branches == 0 < plain.statistics.branches


def test_an_eran_instance_holds_at_the_tightened_root(data_dir):
    """eran's mnist_relu_9_200, idx 6453 at eps 0.015: CROWN with alpha steps on the spec
    rows leaves it at -3.9 and branch and bound did not finish in 60 s; with the
    intermediate layers tightened the root bound holds it, without branching."""
    from verify.api import load_property
    from verify.loading import load_network
    net = load_network(data_dir / "eran/nets/mnist_relu_9_200.onnx")
    prop = load_property(data_dir / "eran/specs/mnist/mnist_spec_idx_6453_eps_0.01500.vnnlib.gz", net)
    res = verify_property(net, prop, VerifyOptions(timeout=30))
    assert res.status == Status.HOLDS
    assert res.statistics.branches == 0


@pytest.mark.parametrize("seed, eps", [(0, 0.04), (8, 0.03),
                                       pytest.param(1, 0.04, marks=pytest.mark.slow)])
def test_a_proof_that_needs_the_tightened_root_checks_without_z3(seed, eps):
    """The proof's re-check (verify.reuse.check) tightens the root as the search did:
    a proof closed at the tightened root (seed 0), by 20 branches below it (seed 8) or
    by 922 (seed 1: leaves closed by margins of 1e-5, which the re-check missed while it
    bounded the rows of conjunctions the parent had refuted) certifies, every branch by
    bounds."""
    from verify.reuse.check import check_proof, record_of
    from verify.verifier import Proof
    net, prop = random_chain_instance(seed, eps)
    proof = Proof()
    res = verify_property(net, prop, VerifyOptions(timeout=20), proof=proof)
    assert res.status == Status.HOLDS
    outcome = check_proof(net, prop, record_of(net, prop, res, proof), VerifyOptions(timeout=60))
    assert outcome.ok, outcome.reason
    assert outcome.by_z3 == 0


@pytest.mark.parametrize("mutation", [False, True])
def test_a_walked_proof_tree_starts_from_the_variants_tightened_root(split_proof, monkeypatch,
                                                                     mutation):
    """The reuse walk of a ReLU-split proof tree bounds its root over the variant's own
    tightened root bounds, as scratch starts its search (within CROWN's, tighter
    somewhere); the verdict is scratch's. The mutation (the walk's root unbounded, as
    before) is caught."""
    import verify.reuse.tree as tree
    from compress import compress
    from test_reuse_tree import OPTS, _tiers01_closing_nothing
    from verify.reuse import ReuseOptions, reverify

    net, prop, proof = split_proof
    variant = compress(net, "int8")
    scratch = verify_property(variant.network, prop, OPTS).status
    monkeypatch.setattr(tree.TreeCheck, "_tiers01", _tiers01_closing_nothing(net))
    if mutation:
        monkeypatch.setattr(tree.TreeWalk, "_root_bounds", lambda self: [])
    first = []
    bound_nodes = tree.TreeWalk._bound_nodes

    def recorded(self, lo, hi, splits, fixed, *args, **kwargs):
        if not first:
            first.append(fixed)
        return bound_nodes(self, lo, hi, splits, fixed, *args, **kwargs)
    monkeypatch.setattr(tree.TreeWalk, "_bound_nodes", recorded)
    r = reverify(net, variant, prop, OPTS, reuse_options=ReuseOptions(tree_max_open=0.0),
                 proof=proof)
    assert r.status == scratch and not r.reuse.fallback
    if r.reuse.closed_at_root:
        pytest.skip("the variant closes at its plain root bound: no walk")
    assert first, "the tree was not walked"
    region = prop.regions[0]
    lo, hi = (torch.from_numpy(x[None].copy()) for x in (region.lower, region.upper))
    crown = BoundPropagator(variant.network).bound(lo, hi, torch.eye(10).double(), torch.zeros(10))
    fixed = first[0]
    ok = fixed is not None and all(
        bool((f_l[0] >= c_l[0] - 1e-9).all() and (f_u[0] <= c_u[0] + 1e-9).all())
        for (f_l, f_u), c_l, c_u in zip(fixed, crown.lower, crown.upper)) and sum(
        float((f_l[0] - c_l[0]).sum() + (c_u[0] - f_u[0]).sum())
        for (f_l, f_u), c_l, c_u in zip(fixed, crown.lower, crown.upper)) > 1e-6
    assert ok != mutation


def _perturbed(net: Network, seed: int, scale: float = 0.05) -> Network:
    """The chain with every weight and bias moved by up to ``scale`` of itself."""
    rng = np.random.default_rng(seed + 100)
    return Network(tuple(Affine(a.weight * (1 + scale * rng.uniform(-1, 1, a.weight.shape)),
                                a.bias * (1 + scale * rng.uniform(-1, 1, a.bias.shape)))
                         for a in net.affines))


def _unclipped_relaxation(l, u, alpha_free=None):
    """Mutation: lower slopes used as given, not clipped to [0, 1]."""
    active = l >= 0
    unstable = (u > 0) & (l < 0)
    denom = torch.where(unstable, u - l, torch.ones_like(u))
    s = torch.where(unstable, u / denom, active.to(u.dtype))
    t = torch.where(unstable, -s * l, torch.zeros_like(u))
    free = (u > -l).to(u.dtype) if alpha_free is None else alpha_free
    return torch.where(unstable, free, active.to(u.dtype)), s, t


def _widths(lower, upper) -> float:
    return sum(float((u - l).sum()) for l, u in zip(lower, upper))


@pytest.mark.parametrize("mutation", [False, True])
def test_warm_started_layer_bounds_contain_samples(monkeypatch, mutation):
    """A perturbed chain's layer bounds started from the original's kept slopes, and
    from slopes outside [0, 1] or not finite, are finite and contain its sampled
    pre-activations with 0 and 2 steps;
    two warm steps are tighter than two cold ones. The mutation (slopes not clipped to
    [0, 1] where used) is caught."""
    make, Prop, eps = CASES["chain"]
    if mutation:
        monkeypatch.setattr(BoundPropagator, "_relaxation", staticmethod(_unclipped_relaxation))
    bad = 0
    for seed in (1, 2):
        net = make(seed)
        variant = _perturbed(net, seed)
        c = np.random.default_rng(seed).normal(size=(1, net.n_inputs))
        lo, hi = torch.tensor(c - eps), torch.tensor(c + eps)
        C, d = torch.eye(3).double(), torch.zeros(3)
        prop, vprop = Prop(net), Prop(variant)
        crown, vcrown = prop.bound(lo, hi, C, d), vprop.bound(lo, hi, C, d)
        slopes = {}
        layer_alpha.optimise_layer_bounds(prop, lo, hi, crown.lower, crown.upper, 20,
                                          slopes_out=slopes)
        assert sorted(slopes) == [1, 2, 3, 4]  # layer 0 is exact by intervals
        neurons, rows = slopes[3]
        assert len(rows) == 3 and all(r.shape == (2 * len(neurons), 24) for r in rows)
        # outside [0, 1], and not finite (a NaN start is the default slope)
        garbage = {k: (n, [np.choose(np.arange(r.size).reshape(r.shape) % 3, [5.0, -3.0, np.nan])
                           for r in rs]) for k, (n, rs) in slopes.items()}
        for warm in (slopes, garbage):
            for steps in (0, 2):
                lower, upper = layer_alpha.optimise_layer_bounds(
                    vprop, lo, hi, vcrown.lower, vcrown.upper, steps, warm=warm)
                assert all(bool(torch.isfinite(b).all()) for b in lower + upper)
                bad += _outside(variant, lower, upper, lo[0].numpy(), hi[0].numpy(), seed)
        if not mutation:
            warm2 = layer_alpha.optimise_layer_bounds(vprop, lo, hi, vcrown.lower, vcrown.upper,
                                                      2, warm=slopes)
            cold2 = layer_alpha.optimise_layer_bounds(vprop, lo, hi, vcrown.lower, vcrown.upper, 2)
            assert _widths(*warm2) < _widths(*cold2)
    assert (bad > 0) == mutation
