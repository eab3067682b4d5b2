"""Proof transfer by equivalence on CNNs: a CNN student distilled from the digits CNN
(another architecture, so no neuron map) is re-verified from the original's proof margin
with the graph bounds of ``equiv`` and says so, agrees with scratch verification, and is
never transferred where it violates the property."""
from __future__ import annotations

import numpy as np
import pytest

from test_graph_search import digits_cnn  # noqa: F401 - the fixture
from test_transfer import _no_sampled_violation
from verify.graph import Conv, Gemm, GraphNetwork, Node, Relu, Reshape
from verify.options import VerifyOptions
from verify.properties import local_robustness
from verify.reuse import build_proof, reverify
from verify.verifier import verify_property

OPTS = VerifyOptions(timeout=20)


@pytest.fixture(scope="module")
def cnn_student(digits_cnn):  # noqa: F811
    """Conv 1->4 (3x3, stride 2) -> ReLU -> Gemm 64->10, distilled from the digits CNN's
    logits on all digits images (MSE, Adam, fixed seed, about a second)."""
    import torch
    from sklearn.datasets import load_digits
    f, _, _ = digits_cnn
    X, _ = load_digits(return_X_y=True)
    x = (X / 16.0).astype(np.float64)
    target = torch.from_numpy(f.forward(x)).float()
    torch.manual_seed(2)
    conv, fc = torch.nn.Conv2d(1, 4, 3, stride=2, padding=1), torch.nn.Linear(64, 10)
    opt = torch.optim.Adam([*conv.parameters(), *fc.parameters()], lr=1e-2)
    xt = torch.from_numpy(x).float().reshape(-1, 1, 8, 8)
    for _ in range(300):
        opt.zero_grad()
        loss = ((fc(torch.relu(conv(xt)).flatten(1)) - target) ** 2).mean()
        loss.backward()
        opt.step()
    p = lambda t: t.detach().double().numpy()  # noqa: E731
    nodes = (Node(None, (), (1, 1, 8, 8), "input"),
             Node(Conv(p(conv.weight), p(conv.bias), strides=(2, 2), pads=(1, 1, 1, 1)),
                  (0,), (1, 4, 4, 4), "conv"),
             Node(Relu(), (1,), (1, 4, 4, 4), "relu"),
             Node(Reshape((1, 64)), (2,), (1, 64), "flat"),
             Node(Gemm(p(fc.weight), p(fc.bias)), (3,), (1, 10), "fc"))
    g = GraphNetwork(nodes, "student")
    with torch.no_grad():
        assert np.allclose(g.forward(x[:5]), fc(torch.relu(conv(xt[:5])).flatten(1)).numpy(),
                           atol=1e-4)
    return g


def test_a_cnn_student_is_reverified_by_transfer_and_agrees_with_scratch(digits_cnn,  # noqa: F811
                                                                         cnn_student):
    f, X, _ = digits_cnn
    g = cnn_student
    assert np.mean(f.forward(X).argmax(1) == g.forward(X).argmax(1)) > 0.8
    methods = []
    for i in range(5):
        for eps in (0.002, 0.01, 0.05):
            prop = local_robustness(X[i], eps, int(f.forward(X[i]).argmax()), 10)
            proof = build_proof(f, prop, OPTS)
            r = reverify(f, g, prop, OPTS, proof=proof)
            s = verify_property(g, prop, OPTS)
            assert r.status == s.status or "unknown" in (r.status.value, s.status.value), \
                (i, eps, r.method, s.status)
            methods.append(r.method)
            if r.method == "equivalence-transfer":
                assert r.status.value == "holds" and _no_sampled_violation(g, prop)
                assert r.reuse.transfer_tried and r.reuse.transfer_margin > 0
            elif r.status.value == "holds":  # said how it was decided instead
                assert r.method.startswith("scratch-") and r.reuse.fallback, r.method
    assert "equivalence-transfer" in methods, methods
    assert any(m.startswith("scratch-") for m in methods), methods


def test_a_broken_cnn_student_is_not_transferred(digits_cnn, cnn_student):  # noqa: F811
    """The student with its target class pushed below another one at the box centre: the
    original still holds with a margin, and the transfer must not carry it over."""
    f, X, _ = digits_cnn
    prop = local_robustness(X[0], 0.01, int(f.forward(X[0]).argmax()), 10)
    proof = build_proof(f, prop, OPTS)
    assert proof.status == "holds"
    y = cnn_student.forward(X[0])
    t = int(f.forward(X[0]).argmax())
    fc = cnn_student.nodes[-1]
    bias = np.array(fc.op.bias)
    bias[t] -= y[t] - np.sort(np.delete(y, t))[-1] + 0.5
    broken = GraphNetwork(cnn_student.nodes[:-1] + (
        Node(Gemm(fc.op.weight, bias), fc.inputs, fc.shape, fc.name),), "broken")
    r = reverify(f, broken, prop, OPTS, proof=proof)
    assert r.status.value == "violated" and r.method != "equivalence-transfer", r.method
    assert verify_property(broken, prop, OPTS).status.value == "violated"
