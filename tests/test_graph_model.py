"""The graph network model's operators: forward against torch's own layers, the
transpose rule as the adjoint of the linear part, |L| as a bound of |L x|."""
import numpy as np
import pytest
import torch

from verify.graph import (Conv, Gemm, GraphNetwork, Node, Pad, Relu, Reshape, Scale, Sum,
                          Transpose, chain_graph)

torch.set_num_threads(1)
rng = np.random.default_rng(0)


def _t(a):
    return torch.from_numpy(np.array(a, dtype=np.float64))


CASES = [
    (Gemm(rng.normal(size=(4, 6)), rng.normal(size=4)), [(1, 6)]),
    (Conv(rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4), (2, 2), (1, 1, 1, 1)), [(1, 3, 9, 8)]),
    (Conv(rng.normal(size=(4, 3, 3, 2)), rng.normal(size=4), (1, 2), (0, 1, 2, 0), (2, 1)),
     [(1, 3, 9, 8)]),
    (Conv(rng.normal(size=(6, 1, 3, 3)), rng.normal(size=6), (1, 1), (1, 1, 1, 1), (1, 1), 3),
     [(1, 3, 5, 5)]),
    (Scale(rng.normal(size=(1, 3, 1, 1)), rng.normal(size=(1, 3, 1, 1))), [(1, 3, 4, 4)]),
    (Sum((1.0, -2.0)), [(1, 3, 4), (1, 3, 4)]),
    (Reshape((1, 12)), [(1, 3, 4)]),
    (Transpose((0, 2, 3, 1)), [(1, 3, 4, 5)]),
    (Pad((0, 0, 1, 2, 0, 0, 0, 1), 0.5), [(1, 2, 3, 3)]),
]


@pytest.mark.parametrize("op,shapes", CASES, ids=[c[0].describe() for c in CASES])
def test_transpose_is_the_adjoint_and_abs_bounds(op, shapes):
    out = op.out_shape(*shapes)
    xs = [_t(rng.normal(size=(5,) + s)) for s in shapes]
    zeros = [torch.zeros((5,) + s, dtype=torch.float64) for s in shapes]
    lin = op.forward(*xs) - op.forward(*zeros)  # L x
    assert lin.shape == (5,) + out
    A = _t(rng.normal(size=(5,) + out))
    back = op.transpose(A, *shapes)
    lhs = (A * lin).flatten(1).sum(1)
    rhs = sum((b * x).flatten(1).sum(1) for b, x in zip(back, xs))
    assert torch.allclose(lhs, rhs, atol=1e-9)
    # the constant term is what the operator adds to zero
    c = op.constant(*shapes)
    base = op.forward(*zeros)
    expect = torch.zeros_like(base) if c is None else torch.broadcast_to(c, base.shape)
    assert torch.allclose(base, expect)
    # |L| r bounds |L x| for |x| <= r
    rads = [x.abs() for x in xs]
    assert (lin.abs() <= op.abs_forward(*rads) + 1e-9).all()


def test_conv_matches_torch_module():
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1, groups=1).double()
    op = Conv(conv.weight.detach().numpy(), conv.bias.detach().numpy(), (2, 2), (1, 1, 1, 1))
    x = _t(rng.normal(size=(2, 1, 3, 8, 8)))
    assert torch.allclose(op.forward(x)[:, 0], conv(x[:, 0]))


def test_graph_validates_and_runs_residual():
    w = rng.normal(size=(2, 2, 3, 3))
    nodes = (Node(None, (), (1, 2, 4, 4)),
             Node(Conv(w, np.zeros(2), pads=(1, 1, 1, 1)), (0,), (1, 2, 4, 4)),
             Node(Relu(), (1,), (1, 2, 4, 4)),
             Node(Sum(), (2, 0), (1, 2, 4, 4)),
             Node(Reshape((1, 32)), (3,), (1, 32)),
             Node(Gemm(rng.normal(size=(3, 32)), np.zeros(3)), (4,), (1, 3)))
    g = GraphNetwork(nodes)
    x = rng.normal(size=(3, 32))
    xt = _t(x).reshape(3, 2, 4, 4)
    ref = torch.nn.functional.conv2d(xt, _t(w), padding=1).clamp(min=0) + xt
    ref = ref.reshape(3, 32) @ _t(nodes[5].op.weight).T
    assert np.allclose(g.forward(x), ref.numpy())
    assert g.hidden_sizes == (32,) and g.relu_nodes == (2,)
    assert len(g.pre_activations(x)) == 2
    with pytest.raises(ValueError, match="shape"):
        GraphNetwork(nodes[:3] + (Node(Sum(), (2, 0), (1, 2, 4, 5)),))
    with pytest.raises(ValueError, match="reach the output"):
        GraphNetwork(nodes[:3] + (Node(Relu(), (1,), (1, 2, 4, 4)),))


def test_chain_graph_matches_network(digits_mlp):
    net, X, _ = digits_mlp
    g = chain_graph(net)
    assert np.allclose(g.forward(X[:7]), net.forward(X[:7]), atol=1e-12)
    assert g.is_chain() and g.hidden_sizes == net.hidden_sizes
    for a, b in zip(g.pre_activations(X[:3]), net.pre_activations(X[:3])):
        assert np.allclose(a, b)
    assert g.digest() == chain_graph(net).digest() != net.digest()
