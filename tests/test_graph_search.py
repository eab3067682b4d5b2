"""Branch and bound on graph networks: a small residual CNN trained here on sklearn's
digits is verified ``holds`` at a small eps (by bounds and by ReLU splitting) and
``violated`` at a large eps with the counterexample replayed on the float64 graph
forward (and on onnxruntime in float32); verdicts never contradict sampling."""
import numpy as np
import pytest
import torch

from verify.attack import Attacker
from verify.graph import Conv, Gemm, GraphNetwork, Node, Relu, Reshape, Sum
from verify.graphbounds import GraphBoundPropagator
from verify.options import ReluBranchOptions, VerifyOptions
from verify.properties import local_robustness
from verify.verifier import Proof, verify_property

torch.set_num_threads(1)


class _ResidualCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 3, 3, padding=1)
        self.c2 = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.c3 = torch.nn.Conv2d(3, 4, 2, stride=2)
        self.fc = torch.nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = torch.relu(self.c2(a) + a)
        return self.fc(torch.relu(self.c3(b)).flatten(1))


def _graph(model: _ResidualCNN) -> GraphNetwork:
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    conv = lambda name, **kw: Conv(p[name + ".weight"], p[name + ".bias"], **kw)
    nodes = [Node(None, (), (1, 1, 8, 8), "input"),
             Node(conv("c1", pads=(1, 1, 1, 1)), (0,), (1, 3, 8, 8), "c1"),
             Node(Relu(), (1,), (1, 3, 8, 8), "r1"),
             Node(conv("c2", pads=(1, 1, 1, 1)), (2,), (1, 3, 8, 8), "c2"),
             Node(Sum(), (3, 2), (1, 3, 8, 8), "add"),
             Node(Relu(), (4,), (1, 3, 8, 8), "r2"),
             Node(conv("c3", strides=(2, 2)), (5,), (1, 4, 4, 4), "c3"),
             Node(Relu(), (6,), (1, 4, 4, 4), "r3"),
             Node(Reshape((1, 64)), (7,), (1, 64), "flatten"),
             Node(Gemm(p["fc.weight"], p["fc.bias"]), (8,), (1, 10), "fc")]
    return GraphNetwork(tuple(nodes), "digits_resnet")


@pytest.fixture(scope="module")
def digits_cnn():
    from sklearn.datasets import load_digits
    torch.manual_seed(0)
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(X))
    train, test = order[:1400], order[1400:]
    model = _ResidualCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    xt, yt = torch.from_numpy(X[train]).reshape(-1, 1, 8, 8), torch.from_numpy(y[train])
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    model.eval()
    net = _graph(model)
    Xt = X[test].astype(np.float64)
    with torch.no_grad():
        ref = model.double()(torch.from_numpy(Xt).reshape(-1, 1, 8, 8)).numpy()
    assert np.allclose(net.forward(Xt), ref, atol=1e-10)
    assert (ref.argmax(1) == y[test]).mean() > 0.9
    return net, Xt, y[test]


def _replays(net, prop, res):
    x = np.array(res.counterexample.input)
    out = net.forward(x)
    assert prop.violated_by(x, out)
    assert np.array_equal(out, np.array(res.counterexample.output))
    return x


def _root_margin(net, prop) -> float:
    r = prop.regions[0]
    C = torch.tensor(np.vstack([c.coeffs for c in r.unsafe]))
    res = GraphBoundPropagator(net).bound(torch.tensor(r.lower)[None], torch.tensor(r.upper)[None],
                                          C, torch.zeros(len(C)))
    return float(res.spec_lower.min())


def first_unproved_eps(net, x, label: int):
    """The smallest eps on a grid whose robustness property the root bound cannot prove."""
    return next((e for e in np.arange(0.02, 0.12, 0.004)
                 if _root_margin(net, local_robustness(x, e, label, 10)) <= 0), None)


def test_digits_cnn_holds_at_small_eps_and_violated_at_large(digits_cnn):
    net, X, y = digits_cnn
    idx = int(np.flatnonzero(net.forward(X).argmax(1) == y)[0])
    small = local_robustness(X[idx], 0.005, int(y[idx]), 10)
    assert _root_margin(net, small) > 0  # decided by the root bound
    res = verify_property(net, small, VerifyOptions(timeout=30))
    assert res.status.value == "holds" and res.method == "bounds"
    big = local_robustness(X[idx], 0.5, int(y[idx]), 10)
    res = verify_property(net, big, VerifyOptions(timeout=30))
    assert res.status.value == "violated"
    x = _replays(net, big, res)
    # ... and on onnxruntime in float32
    ort = pytest.importorskip("onnxruntime")

    from verify.graph.onnx_write import graph_to_onnx
    sess = ort.InferenceSession(graph_to_onnx(net).SerializeToString())
    name = sess.get_inputs()[0].name
    out = sess.run(None, {name: x.astype(np.float32).reshape(1, 1, 8, 8)})[0].reshape(-1)
    assert out.argmax() != y[idx] or abs(np.sort(out)[-1] - np.sort(out)[-2]) < 1e-4


@pytest.mark.parametrize("heuristic", ["deepsplit", "gap"])
def test_digits_cnn_relu_splitting_proves_what_the_root_bound_cannot(digits_cnn, heuristic):
    """Some point and eps the root bound cannot prove but branch and bound does, with
    either branching score; every holds is checked by sampling, every violated replayed."""
    net, X, y = digits_cnn
    rng = np.random.default_rng(0)
    preds = net.forward(X).argmax(1)
    split_holds = 0
    for idx in np.flatnonzero(preds == y)[:10]:
        eps = first_unproved_eps(net, X[idx], int(y[idx]))
        if eps is None:
            continue
        prop = local_robustness(X[idx], eps, int(y[idx]), 10)
        proof = Proof()
        res = verify_property(net, prop, VerifyOptions(
            timeout=20, relu_branching=ReluBranchOptions(heuristic)), proof=proof)
        if res.status.value == "violated":
            _replays(net, prop, res)
        elif res.status.value == "holds":
            r = prop.regions[0]
            xs = rng.uniform(r.lower, r.upper, size=(5000, 64))
            assert (net.forward(xs).argmax(1) == y[idx]).all()
            cex, _ = Attacker(net).attack(r, 0, rng, float("inf"), restarts=16, steps=40, samples=0)
            assert cex is None
            if res.method == "bab":
                assert res.statistics.branches > 0 and len(proof.leaves[0]) > 1
                assert all(leaf.method in ("bounds", "infeasible") for leaf in proof.leaves[0])
                assert all(leaf.splits for leaf in proof.leaves[0])
                split_holds += 1
                break
    assert split_holds, "no property needed (and got) ReLU splitting"


def _robustness_vnnlib(x, eps, target, n_out=10) -> str:
    lines = [f"(declare-const X_{i} Real)" for i in range(len(x))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, v in enumerate(x):
        lines += [f"(assert (>= X_{i} {float(max(0.0, v - eps))!r}))",
                  f"(assert (<= X_{i} {float(min(1.0, v + eps))!r}))"]
    others = " ".join(f"(and (>= Y_{j} Y_{target}))" for j in range(n_out) if j != target)
    return "\n".join(lines + [f"(assert (or {others}))"]) + "\n"


def test_cli_verifies_the_cnn_from_onnx(digits_cnn, tmp_path):
    """``coreproof verify`` on the CNN written as .onnx.gz: exit 0 at a small eps, exit 1
    with a counterexample that replays at a large one."""
    import json

    from click.testing import CliRunner

    from verify.api import load_network
    from verify.cli import main
    from verify.graph.onnx_write import save_graph_onnx
    net, X, y = digits_cnn
    idx = int(np.flatnonzero(net.forward(X).argmax(1) == y)[0])
    path = tmp_path / "cnn.onnx.gz"
    save_graph_onnx(net, path, dtype=np.float64)
    loaded = load_network(path)
    assert np.array_equal(loaded.forward(X[:5]), net.forward(X[:5]))
    for eps, code in ((0.005, 0), (0.5, 1)):
        spec = tmp_path / f"robust_{eps}.vnnlib"
        spec.write_text(_robustness_vnnlib(X[idx], eps, int(y[idx])))
        res = CliRunner().invoke(main, ["verify", str(path), str(spec), "--json", "--quiet",
                                        "--timeout", "30"])
        assert res.exit_code == code, res.output
        out = json.loads(res.stdout)
        if code == 1:
            x = np.array(out["counterexample"]["input"])
            assert loaded.forward(x).argmax() != y[idx] or np.isclose(
                np.sort(loaded.forward(x))[-1], np.sort(loaded.forward(x))[-2])
            assert (np.abs(x - X[idx]) <= 0.5 + 1e-12).all()


def test_small_input_graph_searched_by_input_splitting_agrees_with_sampling():
    """Residual graphs with 3 inputs (input splitting): holds only when no sample
    violates; violated always replays; both verdicts occur."""
    verdicts = {_small_input_verdict(seed, margin) for seed in range(2) for margin in (-0.2, 0.01)}
    assert verdicts == {"holds", "violated"}


def _small_input_verdict(seed: int, margin: float) -> str:
    from graph_nets import Builder

    from verify.properties import Conjunction, Property, Region
    rng = np.random.default_rng(seed)
    b = Builder((1, 3))
    a = b.add(Gemm(rng.normal(size=(8, 3)), rng.normal(size=8) * 0.3), (0,))
    a = b.add(Relu(), (a,))
    x = b.add(Gemm(rng.normal(size=(8, 8)) / 3, rng.normal(size=8) * 0.3), (a,))
    x = b.add(Relu(), (x,))
    x = b.add(Sum((1.0, 0.5)), (x, a))
    net = b.head(x, rng, hidden=6, n_out=2)
    lo, hi = -np.ones(3), np.ones(3)
    xs = rng.uniform(lo, hi, size=(20000, 3))
    ys = net.forward(xs)
    # unsafe: y0 - y1 <= t, with t around the sampled minimum
    t = float((ys[:, 0] - ys[:, 1]).min()) + margin
    prop = Property((Region(lo, hi, (Conjunction(np.array([[1.0, -1.0]]), np.array([t])),)),), 2)
    res = verify_property(net, prop, VerifyOptions(timeout=30))
    assert res.status.value in ("holds", "violated")
    if res.status.value == "holds":
        assert (ys[:, 0] - ys[:, 1] > t).all()
    else:
        _replays(net, prop, res)
    return res.status.value
