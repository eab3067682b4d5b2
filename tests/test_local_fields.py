"""The receptive-field bound of one-ReLU-layer networks (verify.graphbounds.local_fields):
below every sampled and attacked value, tighter than alpha-CROWN, and caught when its
vertex enumeration loses the arrangement's vertices."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from graph_nets import NETS, Builder, _conv, one_layer_conv
from verify.graph import Gemm, GraphNetwork, Relu, Reshape, Sum
from verify.graphbounds import GraphBoundOptions, make_propagator
from verify.graphbounds.local_fields import FieldVertices, field_bound, field_vertices, local_fields
from verify.options import VerifyOptions
from verify.properties import local_robustness
from verify.result import Status
from verify.verifier import verify_property

SEEDS = range(5)


def _case(seed):
    rng = np.random.default_rng(seed)
    net = one_layer_conv(rng)
    x0 = rng.uniform(0, 1, 25)
    lo, hi = x0 - 0.15, x0 + 0.15
    return net, lo, hi, rng.normal(size=(3, 3)), rng.normal(size=3) * 0.1


def _attacked_minimum(net, lo, hi, C, d, seed) -> np.ndarray:
    """Per row the least value over samples and PGD from some of them (upper bounds of
    the true minima)."""
    rng = np.random.default_rng(seed + 100)
    X = lo + (hi - lo) * rng.random((5000, lo.size))
    best = (net.forward(X) @ C.T - d).min(0)
    lt, ht = torch.from_numpy(lo), torch.from_numpy(hi)
    for r in range(len(C)):
        x = torch.from_numpy(X[:32].copy()).requires_grad_(True)
        for _ in range(150):
            val = net.evaluate(x) @ torch.from_numpy(C[r]) - d[r]
            g, = torch.autograd.grad(val.sum(), x)
            with torch.no_grad():
                x -= 0.005 * g.sign()
                x.copy_(torch.maximum(torch.minimum(x, ht), lt))
        with torch.no_grad():
            best[r] = min(best[r], float((net.evaluate(x) @ torch.from_numpy(C[r]) - d[r]).min()))
    return best


@pytest.fixture(scope="module")
def cases():
    out = []
    for seed in SEEDS:
        net, lo, hi, C, d = _case(seed)
        fields = local_fields(net, 6)
        verts = field_vertices(fields, lo, hi)
        out.append((net, lo, hi, C, d, fields, verts, _attacked_minimum(net, lo, hi, C, d, seed)))
    return out


def _dense(fields):
    """The pre-activation map ``W x + b`` the fields hold, as a dense matrix."""
    W, b = np.zeros((fields.tail.shape[1], fields.n_inputs)), np.zeros(fields.tail.shape[1])
    for g in range(len(fields.support)):
        cols = fields.support[g][fields.support[g] >= 0]
        for ch, i in enumerate(fields.neurons[g]):
            if i >= 0:
                W[i, cols], b[i] = fields.weights[g, ch, :len(cols)], fields.bias[g, ch]
    b[fields.const_neurons] = fields.const_bias
    return W, b


def test_fields_of_a_padded_convolution(cases):
    net, lo, hi, C, d, fields, verts, _ = cases[0]
    assert fields is not None and fields.support.shape[1] == 4
    assert (fields.support < 0).any(1).sum() > 0  # padded border positions read fewer inputs
    assert fields.neurons.shape == (25, 6)  # 5x5 positions, 6 channels each
    # the fields' functions add up to the network (tail included)
    x = lo + (hi - lo) * np.random.default_rng(0).random((50, lo.size))
    W, b = _dense(fields)
    y = np.maximum(x @ W.T + b, 0) @ fields.tail.T + fields.tail_const
    np.testing.assert_allclose(y, net.forward(x), atol=1e-10)


def test_bound_is_below_the_attacked_minimum_and_tighter_than_alpha_crown(cases):
    prop = None
    for net, lo, hi, C, d, fields, verts, attacked in cases:
        bound = field_bound(fields, verts, lo, hi, C, d, 400)
        assert (bound <= attacked + 1e-9).all(), (bound, attacked)
        if prop is None:
            prop = make_propagator(net, GraphBoundOptions())
        alpha = prop.bound(torch.from_numpy(lo[None]), torch.from_numpy(hi[None]),
                           torch.from_numpy(C), torch.from_numpy(d),
                           alpha_iterations=50).spec_lower[0].numpy()
        # at least half of alpha-CROWN's gap to the attacked minimum closed, every row
        assert (attacked - bound <= 0.5 * (attacked - alpha) + 1e-6).all(), (bound, alpha, attacked)
        prop = None  # one propagator per network


def _milp_minimum(fields, lo, hi, c, d) -> float:
    """The exact minimum of the row ``c @ y - d`` over the box: a big-M MILP of the ReLU
    layer (scipy's HiGHS), independent of the fields' vertex enumeration."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    N, n0 = fields.tail.shape[1], fields.n_inputs
    W, b = _dense(fields)
    l = np.clip(W, 0, None) @ lo + np.clip(W, None, 0) @ hi + b
    u = np.clip(W, 0, None) @ hi + np.clip(W, None, 0) @ lo + b
    a = c @ fields.tail
    # variables: x (n0), h (N), delta (N; fixed where the neuron is stable)
    cost = np.concatenate([np.zeros(n0), a, np.zeros(N)])
    I, Z = np.eye(N), np.zeros((N, N))
    A = np.vstack([np.hstack([W, -I, Z]),                   # W x - h <= -b       (h >= z)
                   np.hstack([np.zeros((N, n0)), I, -np.diag(np.maximum(u, 0))]),  # h <= u delta
                   np.hstack([-W, I, -np.diag(np.minimum(l, 0))])])  # h <= z - l (1 - delta)
    ub = np.concatenate([-b, np.zeros(N), b - np.minimum(l, 0)])
    dlo = np.where(l >= 0, 1.0, 0.0)
    dhi = np.where(u <= 0, 0.0, 1.0)
    res = milp(cost, constraints=LinearConstraint(A, -np.inf, ub),
               bounds=Bounds(np.concatenate([lo, np.zeros(N), dlo]),
                             np.concatenate([hi, np.maximum(u, 0), dhi])),
               integrality=np.concatenate([np.zeros(n0 + N), np.ones(N)]),
               options={"mip_rel_gap": 0.0})
    assert res.status == 0, res.message
    return float(res.fun + c @ fields.tail_const - d)


def test_bound_is_below_the_exact_minimum(cases):
    """Independent ground truth: an exact MILP of each row (the bound may sit below it:
    the fields overlap, so tying their copies is a relaxation; on these cases it is within 0.006)."""
    for net, lo, hi, C, d, fields, verts, attacked in cases[:3]:
        bound = field_bound(fields, verts, lo, hi, C, d, 400)
        for r in range(len(C)):
            exact = _milp_minimum(fields, lo, hi, C[r], d[r])
            assert exact <= attacked[r] + 1e-6  # the MILP finds the attack's minimum or lower
            assert bound[r] <= exact + 1e-7, (bound[r], exact)
            assert exact - bound[r] < 0.02, (bound[r], exact)


def test_any_multipliers_give_a_sound_bound(cases):
    net, lo, hi, C, d, fields, verts, attacked = cases[1]
    # zero Adam steps (the multipliers stay zero) and a few: sound both, more is tighter
    b0 = field_bound(fields, verts, lo, hi, C, d, 0)
    b5 = field_bound(fields, verts, lo, hi, C, d, 5, lr=1.0)  # large steps: a poor iterate
    b400 = field_bound(fields, verts, lo, hi, C, d, 400)
    for b in (b0, b5, b400):
        assert (b <= attacked + 1e-9).all()
    assert (b400 >= b0 - 1e-9).all() and (b400 > b0 + 1e-3).any()


def test_missing_arrangement_vertices_are_caught(cases):
    """The mutation: only the boxes' corners as candidates (the minimum of a field's
    convex part can lie on a neuron's hyperplane inside the box) -- some row's bound
    then exceeds the attacked minimum."""
    caught = 0
    for net, lo, hi, C, d, fields, verts, attacked in cases:
        s = np.maximum(fields.support, 0)
        blo = np.where(fields.support >= 0, lo[s], 0.0)[:, None]
        bhi = np.where(fields.support >= 0, hi[s], 0.0)[:, None]
        corner = ((np.abs(verts.points - blo) < 1e-12) | (np.abs(verts.points - bhi) < 1e-12)).all(-1)
        mutant = FieldVertices(verts.points, verts.valid & corner)
        bound = field_bound(fields, mutant, lo, hi, C, d, 400)
        caught += bool((bound > attacked + 1e-6).any())
    assert caught >= 2


def test_residual_charge_is_needed(cases, monkeypatch):
    """The copies' multipliers sum to zero only up to rounding, which the bound charges
    exactly; with multipliers that do not sum to zero at all the charge is what keeps
    the bound sound."""
    from verify.graphbounds import local_fields as module
    net, lo, hi, C, d, fields, verts, attacked = cases[2]
    fair = field_bound(fields, verts, lo, hi, C, d, 200)
    # every input counted as read 1e12 times: the mean of its copies' multipliers is ~0,
    # so they are never tied and only the charge keeps the bound sound
    monkeypatch.setattr(module.np, "bincount", lambda *a, **k: np.ones(fields.n_inputs + 1) * 1e12)
    untied = field_bound(fields, verts, lo, hi, C, d, 200)
    monkeypatch.undo()
    assert (fair <= attacked + 1e-9).all() and (untied <= attacked + 1e-9).all()


def test_other_networks_have_no_fields():
    rng = np.random.default_rng(0)
    assert local_fields(NETS["conv_stride_pad"](rng), 6) is None  # two ReLU layers
    assert local_fields(one_layer_conv(rng), 3) is None  # 4 inputs a neuron
    # a tail that also reads the convolution (a skip around the ReLU)
    b = Builder((1, 1, 4, 4))
    c = b.add(_conv(rng, 2, 1, 2), (0,))
    r = b.add(Relu(), (c,))
    x = b.add(Sum((1.0, 1.0)), (r, c))
    x = b.add(Reshape((1, 18)), (x,))
    b.add(Gemm(rng.normal(size=(2, 18)), np.zeros(2)), (x,))
    assert local_fields(GraphNetwork(tuple(b.nodes), "skip"), 6) is None
    # a fully-connected layer: every neuron reads every input
    b = Builder((1, 16))
    x = b.add(Gemm(rng.normal(size=(8, 16)), np.zeros(8)), (0,))
    x = b.add(Relu(), (x,))
    b.add(Gemm(rng.normal(size=(2, 8)), np.zeros(2)), (x,))
    assert local_fields(GraphNetwork(tuple(b.nodes), "fc"), 6) is None


def test_verifier_agrees_with_branch_and_bound():
    """Robustness properties of one_layer_conv networks: the receptive-field bound (on by
    default) against ReLU-split branch and bound alone, verdict for verdict; violated
    ones carry a replayed counterexample; some hold by the fields."""
    off = VerifyOptions(timeout=10.0, graph_bounds=GraphBoundOptions(local_fields_max_inputs=0))
    on = VerifyOptions(timeout=10.0)
    methods = []
    # (seed, eps): just inside and outside where each network stays robust
    for seed, eps in ((0, 0.10), (0, 0.12), (1, 0.06), (1, 0.08), (2, 0.12), (3, 0.18), (3, 0.22)):
        rng = np.random.default_rng(seed)
        net = one_layer_conv(rng)
        x0 = rng.uniform(0, 1, 25)
        target = int(np.argmax(net.forward(x0)))
        prop = local_robustness(x0, eps, target, 3, domain=None)
        a, b = verify_property(net, prop, on), verify_property(net, prop, off)
        if Status.UNKNOWN not in (a.status, b.status):
            assert a.status is b.status, (seed, eps, a.method, b.method)
        if a.status is Status.VIOLATED:
            x, y = np.asarray(a.counterexample.input), net.forward(np.asarray(a.counterexample.input))
            assert (np.abs(x - x0) <= eps + 1e-12).all()
            assert np.max(np.delete(y, target)) >= y[target]  # replayed: unsafe
        methods.append(a.method)
    assert methods.count("fields") >= 2 and "attack" in methods


def test_verivital_avgpool_holds_by_fields(data_dir):
    """verivital Convnet_avgpool prop_14 at eps 0.04: alpha-CROWN's root margin is -0.14
    and ReLU-split branch and bound left it open at 300 s; the fields prove it."""
    from verify.api import load_network, load_property
    net = load_network(data_dir / "verivital" / "Convnet_avgpool.onnx")
    prop = load_property(data_dir / "verivital" / "specs" / "avgpool_specs" / "prop_14_0.04.vnnlib.gz", net)
    res = verify_property(net, prop, VerifyOptions(timeout=120.0))
    assert res.status is Status.HOLDS and res.method == "fields"
    assert res.statistics.closed_by_fields == 1
