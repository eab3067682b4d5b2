"""Graph bounds (verify.graphbounds): sound on sampled points through every operator kind
(Conv with stride/padding/dilation/groups, pooling, residual Sum, normalisation Scale,
layout ops), interval >= CROWN >= samples, the chain propagator's bounds on chain graphs,
split branches, chunking under a memory budget; and a mutation of each transfer rule is
caught by these checks."""
import numpy as np
import pytest
import torch

from graph_nets import NETS
from verify.bounds import BoundPropagator
from verify.errors import OptionError
from verify.graph import Conv, Gemm, Pad, Scale, Sum, Transpose, chain_graph
from verify.graphbounds import GraphBoundOptions, GraphBoundPropagator, make_propagator
from verify.graphbounds import propagator as propagator_module
from verify.graphbounds import rules
from verify.network import Affine, Network
from verify.options import VerifyOptions
from verify.properties import local_robustness
from verify.result import Statistics
from verify.search import RegionSearch

torch.set_num_threads(1)


def _box(net, seed, eps=0.3, B=1):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(B, net.n_inputs))
    return c - eps, c + eps


def _spec(m):
    return torch.cat([torch.eye(m), -torch.eye(m)]).double(), torch.zeros(2 * m)


def _samples(lo, hi, rng, n=3000):
    xs = rng.uniform(lo, hi, size=(n, lo.size))
    corners = np.where(rng.random((n // 2, lo.size)) < 0.5, lo, hi)
    return np.vstack([xs, corners, (lo + hi)[None] / 2])


def _violations(net, res, b, xs, keep=None) -> int:
    """Sampled points of branch ``b`` outside its layer or spec bounds (``keep``: the
    points that lie in the branch, for split branches)."""
    pre = net.pre_activations(xs)
    if keep is not None:
        pre = [p[keep] for p in pre]
    bad = 0
    for k in range(net.n_hidden):
        l, u = res.lower[k][b].numpy(), res.upper[k][b].numpy()
        bad += int(((pre[k] < l) | (pre[k] > u)).sum())
    y = pre[-1]
    bad += int((np.hstack([y, -y]) < res.spec_lower[b].numpy()).sum())
    return bad


def _all_violations(seed=1) -> int:
    """Violations over every test network, plain, alpha-optimised and interval-only."""
    bad = 0
    for name, make in NETS.items():
        net = make(np.random.default_rng(seed))
        prop = GraphBoundPropagator(net)
        lo, hi = _box(net, seed)
        C, d = _spec(net.n_outputs)
        xs = _samples(lo[0], hi[0], np.random.default_rng(seed))
        for kw in ({}, {"alpha_iterations": 10}, {"backward": False}):
            res = prop.bound(torch.tensor(lo), torch.tensor(hi), C, d, **kw)
            bad += _violations(net, res, 0, xs)
    return bad


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", sorted(NETS))
def test_bounds_contain_samples_and_crown_within_interval(name, seed):
    net = NETS[name](np.random.default_rng(seed))
    prop = GraphBoundPropagator(net)
    lo, hi = _box(net, seed)
    C, d = _spec(net.n_outputs)
    xs = _samples(lo[0], hi[0], np.random.default_rng(seed))
    tlo, thi = torch.tensor(lo), torch.tensor(hi)
    crown = prop.bound(tlo, thi, C, d)
    interval = prop.bound(tlo, thi, C, d, backward=False)
    alpha = prop.bound(tlo, thi, C, d, alpha_iterations=20)
    for res in (crown, interval, alpha):
        assert _violations(net, res, 0, xs) == 0
    tighter = 0.0
    for k in range(net.n_hidden):  # interval >= CROWN (up to rounding of the two runs)
        assert (crown.lower[k] >= interval.lower[k] - 1e-9).all()
        assert (crown.upper[k] <= interval.upper[k] + 1e-9).all()
        tighter += float((crown.lower[k] - interval.lower[k]).sum()
                         + (interval.upper[k] - crown.upper[k]).sum())
    if name != "conv_stride_pad" or seed != 2:
        assert tighter > 1e-3  # back-substitution did something
    # alpha optimisation keeps the best iterate: never worse than plain CROWN's bound
    assert (alpha.spec_lower >= crown.spec_lower - 1e-9).all()
    # the linear bound is a lower bound too: its value at every sample
    y = net.forward(xs)
    lin = xs @ crown.spec_coeffs[0].numpy().T + crown.spec_const[0].numpy()
    assert (np.hstack([y, -y]) >= lin - 1e-9).all()


def test_chain_graph_gets_the_chain_propagators_bounds():
    rng = np.random.default_rng(3)
    sizes = [5, 12, 12, 4]
    net = Network(tuple(Affine(rng.normal(size=(sizes[i + 1], sizes[i])) / np.sqrt(sizes[i]),
                               rng.normal(size=sizes[i + 1]) * 0.3) for i in range(3)))
    lo, hi = _box(net, 3, eps=0.5)
    C, d = _spec(4)
    # the graph propagator back-substitutes the unstable neurons only: so does the
    # chain's when asked to refine every neuron
    every = [torch.ones(12, dtype=torch.bool)] * 2
    a = BoundPropagator(net).bound(torch.tensor(lo), torch.tensor(hi), C, d, refine=every)
    g = GraphBoundPropagator(chain_graph(net)).bound(torch.tensor(lo), torch.tensor(hi), C, d)
    for k in range(2):
        assert torch.allclose(a.lower[k], g.lower[k], atol=1e-8)
        assert torch.allclose(a.upper[k], g.upper[k], atol=1e-8)
    assert torch.allclose(a.spec_lower, g.spec_lower, atol=1e-8)
    assert isinstance(make_propagator(net), BoundPropagator)
    assert isinstance(make_propagator(chain_graph(net)), GraphBoundPropagator)
    # beta-CROWN with split constraints moved by offsets (sign*z + offset >= 0) and warm
    # multipliers: the same bound through both propagators' back-substitutions
    rng = np.random.default_rng(4)
    lower = [torch.minimum(a.lower[k], a.lower[k].clamp(max=-0.05)) for k in range(2)]
    upper = [torch.maximum(a.upper[k], a.upper[k].clamp(min=0.05)) for k in range(2)]
    signs = [torch.from_numpy(rng.choice([-1, 0, 1], size=(1, 12)).astype(np.int8))
             for _ in range(2)]
    offsets = [torch.from_numpy(rng.uniform(0.0, 0.1, (1, 12))) for _ in range(2)]
    betas = [torch.from_numpy(rng.uniform(0.0, 2.0, (1, len(C), 12))) for _ in range(2)]
    graph64 = GraphBoundPropagator(chain_graph(net), GraphBoundOptions(optimise_in_float32=False))
    got = [p.spec_bound(torch.tensor(lo), torch.tensor(hi), C, d, lower, upper, 4,
                        splits=signs, split_offsets=offsets, beta_init=betas)
           for p in (BoundPropagator(net), graph64)]
    assert torch.allclose(got[0].spec_lower, got[1].spec_lower, atol=1e-8)
    assert all(torch.allclose(x, y, atol=1e-8) for x, y in zip(got[0].betas, got[1].betas))
    # a whole bound takes the warm multipliers too (as a search's branch passes them)
    full = [p.bound(torch.tensor(lo), torch.tensor(hi), C, d, splits=signs,
                    alpha_iterations=2, beta_init=betas) for p in (BoundPropagator(net), graph64)]
    assert all(torch.isfinite(r.spec_lower).all() for r in full)
    # the offsets count: without them the bound differs
    plain = BoundPropagator(net).spec_bound(torch.tensor(lo), torch.tensor(hi), C, d, lower,
                                            upper, 4, splits=signs, beta_init=betas)
    assert not torch.allclose(plain.spec_lower, got[0].spec_lower, atol=1e-6)


@pytest.mark.parametrize("name", ["residual", "pooling"])
def test_batches_splits_and_memory_budget(name):
    """A batch of branches bounds each at least as tightly as alone; a tiny memory budget (many chunks) gives
    the same bounds; split branches are sound on the points that satisfy their splits and
    an inactive split is honoured (upper <= 0), with beta-CROWN too."""
    net = NETS[name](np.random.default_rng(4))
    lo, hi = _box(net, 4, eps=0.25, B=3)
    C, d = _spec(net.n_outputs)
    tlo, thi = torch.tensor(lo), torch.tensor(hi)
    prop = GraphBoundPropagator(net)
    small = GraphBoundPropagator(net, GraphBoundOptions(memory_bytes=1 << 20))
    assert small._rows_per_chunk(net.relu_nodes[-2] - 1, 3) < max(net.hidden_sizes)
    batch = prop.bound(tlo, thi, C, d)
    chunked = small.bound(tlo, thi, C, d)
    one = prop.bound(tlo[1:2], thi[1:2], C, d)
    for k in range(net.n_hidden):
        assert torch.allclose(batch.lower[k], chunked.lower[k], atol=1e-9)
        # in a batch, a neuron unstable in any branch is back-substituted in all of them
        assert (batch.upper[k][1:2] <= one.upper[k] + 1e-9).all()
        assert (batch.lower[k][1:2] >= one.lower[k] - 1e-9).all()
    assert torch.allclose(batch.spec_lower, chunked.spec_lower, atol=1e-9)
    # splits: branch 0 fixes two unstable neurons of layer 1 inactive/active
    k = 1
    unstable = np.flatnonzero(((batch.lower[k][0] < 0) & (batch.upper[k][0] > 0)).numpy())
    assert len(unstable) >= 2
    splits = [torch.zeros((3, n), dtype=torch.int8) for n in net.hidden_sizes]
    splits[k][0, unstable[0]] = -1
    splits[k][0, unstable[1]] = 1
    rng = np.random.default_rng(4)
    xs = _samples(lo[0], hi[0], rng, n=20000)
    z = net.pre_activations(xs)[k]
    keep = (z[:, unstable[0]] <= 0) & (z[:, unstable[1]] >= 0)
    assert keep.sum() > 10
    parent = [(l, u) for l, u in zip(batch.lower, batch.upper)]
    for alpha, fixed in ((0, None), (30, None), (0, parent)):
        res = prop.bound(tlo, thi, C, d, splits, fixed, alpha_iterations=alpha)
        assert res.upper[k][0, unstable[0]] <= 0 and res.lower[k][0, unstable[1]] >= 0
        assert _violations(net, res, 0, xs[keep]) == 0
        assert (res.spec_lower[0] >= batch.spec_lower[0] - 1e-9).all() or alpha == 0
        if fixed is not None:  # the parent's bounds kept; later layers of branch 0 redone
            for j in range(net.n_hidden):
                assert (res.upper[j] <= parent[j][1] + 1e-12).all()
            assert any(bool((res.upper[j][0] < parent[j][1][0] - 1e-9).any()
                            or (res.lower[j][0] > parent[j][0][0] + 1e-9).any())
                       for j in range(k + 1, net.n_hidden))
            assert torch.equal(res.upper[k + 1][1:], parent[k + 1][1][1:])


def test_options_are_checked():
    with pytest.raises(OptionError, match="memory_bytes"):
        GraphBoundOptions(memory_bytes=10)


def _scaled(method, factor):
    def patched(self, *args):
        out = method(self, *args)
        return [factor * o for o in out] if isinstance(out, list) else factor * out
    return patched


MUTATIONS = {
    "conv transpose halved": (Conv, "transpose", lambda m: _scaled(m, 0.5)),
    "conv radius halved": (Conv, "abs_forward", lambda m: _scaled(m, 0.5)),
    "gemm transpose halved": (Gemm, "transpose", lambda m: _scaled(m, 0.5)),
    "gemm radius halved": (Gemm, "abs_forward", lambda m: _scaled(m, 0.5)),
    "scale transpose ignores the scale": (Scale, "transpose", lambda m: lambda self, A, s: [A]),
    "sum transpose drops a branch": (Sum, "transpose",
                                     lambda m: lambda self, A, *s: [A * self.weights[0]] +
                                     [0 * A for _ in self.weights[1:]]),
    "sum radius drops a branch": (Sum, "abs_forward", lambda m: lambda self, *r: abs(self.weights[0]) * r[0]),
    "pad constant dropped": (Pad, "constant", lambda m: lambda self, s=None: None),
    "transpose rule uses the forward permutation": (Transpose, "transpose",
                                                    lambda m: lambda self, A, s: [self.forward(A)]),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_mutated_operator_rule_is_caught(monkeypatch, mutation):
    cls, name, make = MUTATIONS[mutation]
    monkeypatch.setattr(cls, name, make(getattr(cls, name)))
    try:
        caught = _all_violations() > 0
    except (RuntimeError, ValueError):
        caught = True  # a shape error is a caught mutation too
    assert caught


def _relu_no_intercept(A, alpha, s, t, beta=None, sign=None):
    return rules.relu_backward(A, alpha, s, 0 * t, beta, sign)


def _conv_no_bias(op, A, in_shapes):
    parts, const = rules.AffineRule.backward(op, A, in_shapes)
    return parts, 0 * const


def _relu_interval_shrunk(op, bounds):
    l, u = bounds
    return l.clamp(min=0), 0.8 * u.clamp(min=0)


BOUND_MUTATIONS = {
    "relu upper intercept dropped": (propagator_module, "relu_backward", _relu_no_intercept),
    "conv bias dropped from the constant": (rules.ConvRule, "backward", staticmethod(_conv_no_bias)),
    "relu interval shrunk": (rules.ReluRule, "interval", staticmethod(_relu_interval_shrunk)),
}


@pytest.mark.parametrize("mutation", sorted(BOUND_MUTATIONS))
def test_mutated_relu_and_conv_rule_is_caught(monkeypatch, mutation):
    owner, name, value = BOUND_MUTATIONS[mutation]
    monkeypatch.setattr(owner, name, value)
    assert _all_violations() > 0


def test_lazy_intermediate_bounds_back_substitute_only_unsettled_branches():
    """A branch whose spec rows the cheap (interval-intermediate) bound settles keeps that
    bound; the others get back-substituted intermediate bounds (as without laziness)."""
    net = NETS["residual"](np.random.default_rng(5))
    lo, hi = _box(net, 5, B=2)
    C, _ = _spec(net.n_outputs)
    d = torch.zeros(2 * net.n_outputs)
    easy = torch.full_like(d, -1e3)  # every row settled by any bound
    tlo, thi = torch.tensor(lo), torch.tensor(hi)
    prop = GraphBoundPropagator(net)
    strict = GraphBoundPropagator(net, GraphBoundOptions(lazy_intermediate=False))
    interval = prop.bound(tlo, thi, C, d, backward=False)
    settled = prop.bound(tlo, thi, C, easy)
    full = prop.bound(tlo, thi, C, d)
    ref = strict.bound(tlo, thi, C, d)
    for k in range(net.n_hidden):
        assert torch.equal(settled.upper[k], interval.upper[k])
        assert torch.allclose(full.upper[k], ref.upper[k], atol=1e-12)
    assert (settled.spec_lower > 0).all()
    assert not torch.equal(full.upper[-2], interval.upper[-2])
    assert (full.spec_lower >= ref.spec_lower - 1e-12).all()
    # the verifier's options carry them to the search's propagator
    net = NETS["residual"](np.random.default_rng(0))
    opts = VerifyOptions(graph_bounds=GraphBoundOptions(memory_bytes=3 << 20))
    prop = local_robustness(np.zeros(net.n_inputs), 0.1, 0, net.n_outputs, domain=None)
    search = RegionSearch(net, prop.regions[0], 0, opts, float("inf"), Statistics())
    assert search.prop.options.memory_bytes == 3 << 20 and not search.use_z3


@pytest.mark.parametrize("strides,pads,dilations,mult", [
    ((4, 4), (0, 0, 0, 0), (1, 1), 1), ((2, 1), (1, 0, 2, 1), (1, 2), 2), ((1, 1), (1, 1, 1, 1), (1, 1), 3)])
def test_depthwise_transpose_equals_the_conv_transpose(strides, pads, dilations, mult):
    rng = np.random.default_rng(0)
    op = Conv(rng.normal(size=(3 * mult, 1, 3, 2)), rng.normal(size=3 * mult), strides, pads,
              dilations, groups=3)
    shape = (1, 3, 11, 9)
    A = torch.from_numpy(rng.normal(size=(2, 4) + op.out_shape(shape)))
    fast = rules.depthwise_transpose(op, A, shape)
    assert torch.allclose(fast, op.transpose(A, shape)[0], atol=1e-12)
    parts, _ = rules.ConvRule.backward(op, A, (shape,))
    assert parts[0] is not None and torch.allclose(parts[0], fast)


@pytest.mark.parametrize("name", sorted(NETS))
def test_alpha_steps_run_in_float32_and_the_bound_is_evaluated_in_float64(name, monkeypatch):
    """With ``optimise_in_float32`` the alpha/beta steps back-substitute in float32 (the
    CPU's fast convolutions); the bound returned is the float64 evaluation of the slopes
    found, and contains every sampled point; without it no float32 step runs."""
    seen = []
    real = propagator_module.relu_backward

    def recording(A, *args, **kw):
        seen.append(A.dtype)
        return real(A, *args, **kw)

    monkeypatch.setattr(propagator_module, "relu_backward", recording)
    net = NETS[name](np.random.default_rng(3))
    lo, hi = _box(net, 3)
    C, d = _spec(net.n_outputs)
    xs = _samples(lo[0], hi[0], np.random.default_rng(3))
    for float32 in (True, False):
        seen.clear()
        prop = GraphBoundPropagator(net, GraphBoundOptions(optimise_in_float32=float32))
        res = prop.bound(torch.tensor(lo), torch.tensor(hi), C, d, alpha_iterations=10)
        assert res.spec_lower.dtype == torch.float64
        assert _violations(net, res, 0, xs) == 0
        if net.n_hidden:
            assert (torch.float32 in seen) == float32
