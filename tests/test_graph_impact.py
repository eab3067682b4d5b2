"""DeepSplit-style branching scores on graph networks (verify.graphbounds.impact): the
shares passed back through Conv, residual Sum, Reshape and Gemm equal a dense reference
worked out path by path, the chain case equals the chain scores (without their clip),
and graph branch and bound with these scores reaches verdicts that sampling confirms."""
import numpy as np
import pytest
import torch

from graph_nets import residual
from verify.graph.model import chain_graph
from verify.graphbounds.impact import INDIRECT_SHARE, GraphImpact
from verify.network import Affine, Network


def _dense(op, in_shape):
    """The linear part of an affine operator as an (out, in) matrix."""
    zero = torch.zeros((1, *in_shape), dtype=torch.float64)
    f = lambda x: (op.forward(x.reshape(1, *in_shape)) - op.forward(zero)).reshape(-1)
    return torch.autograd.functional.jacobian(f, torch.zeros(int(np.prod(in_shape)), dtype=torch.float64))


def _random_bounds(g, sizes, B=3):
    lower = [-torch.rand(B, n, generator=g, dtype=torch.float64) * 2 + 0.3 for n in sizes]
    upper = [lo + torch.rand(lo.shape, generator=g, dtype=torch.float64) * 3 for lo in lower]
    lams = [torch.randn(B, n, generator=g, dtype=torch.float64) for n in sizes]
    return lower, upper, lams


def _gap(l, u):
    unst = (l < 0) & (u > 0)
    return torch.where(unst, -u * l / torch.where(unst, u - l, 1.0), 0.0), unst


def test_residual_graph_scores_equal_a_dense_reference_path_by_path():
    """Residual net: L0 -conv3-> L1 -conv5-> Sum(1, -0.7) <-L0, -> L2 -reshape, gemm-> L3.
    L0 reads L1 through a Conv (its weights' signs) and L2 through the Sum's -0.7 alone:
    a negative weight, so L2's impact comes back over its lower bound only."""
    net = residual(np.random.default_rng(3))
    nodes = net.nodes
    sizes = net.hidden_sizes
    lower, upper, lams = _random_bounds(torch.Generator().manual_seed(1), sizes)
    got = GraphImpact(net).scores(lower, upper, lams)

    relus = net.relu_nodes
    conv3, conv5, gemm9 = (_dense(nodes[i].op, nodes[nodes[i].inputs[0]].shape) for i in (3, 5, 9))
    assert [nodes[i].inputs for i in (3, 5, 6, 9)] == [(relus[0],), (relus[1],), (5, relus[0]), (8,)]
    t, unst = zip(*(_gap(l, u) for l, u in zip(lower, upper)))
    exp = [None] * 4

    def finish(k, passed):
        s = lams[k].clamp(max=0).abs() * t[k] + INDIRECT_SHARE * t[k] * passed
        exp[k] = torch.where(unst[k], s + 1e-9 * t[k], 0.0)

    def v(k):  # impacts over the upper and lower bounds
        return (torch.where(unst[k], exp[k] / torch.where(unst[k], upper[k], 1.0), 0.0),
                torch.where(unst[k], exp[k] / torch.where(unst[k], -lower[k], 1.0), 0.0))

    def through(k, M):
        vp, vn = v(k)
        return vp @ M.clamp(min=0) + vn @ M.clamp(max=0).abs()

    finish(3, 0.0)
    finish(2, through(3, gemm9))
    finish(1, through(2, conv5))
    finish(0, through(1, conv3) + 0.7 * v(2)[1])
    for k in range(4):
        assert torch.allclose(got[k], exp[k], rtol=1e-10, atol=1e-12), k
        assert (got[k][~unst[k]] == 0).all()
    assert got[0].abs().sum() > 0


def test_a_chain_as_a_graph_gets_the_chain_scores_where_no_share_is_clipped():
    """On a chain the graph scores are the chain's deepsplit scores whenever no share of
    a later neuron's bound exceeds 1 (small weights, wide bounds)."""
    from verify.relu_branching import deepsplit_scores
    rng = np.random.default_rng(0)
    sizes = [4, 6, 5, 3, 2]
    net = Network(tuple(Affine(rng.normal(size=(o, i)) * 0.05, rng.normal(size=o))
                        for i, o in zip(sizes[:-1], sizes[1:])))
    lower, upper, lams = _random_bounds(torch.Generator().manual_seed(2), sizes[1:-1])
    upper = [u + 1.0 for u in upper]
    lower = [l - 1.0 for l in lower]
    weights = [torch.tensor(a.weight) for a in net.affines]
    chain = deepsplit_scores(lower, upper, lams, weights)
    graph = GraphImpact(chain_graph(net)).scores(lower, upper, lams)
    for a, b in zip(chain, graph):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)
    assert chain[0].abs().sum() > 0
