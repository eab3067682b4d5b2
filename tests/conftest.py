from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"benchmark data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def digits_mlp():
    """A 64-16-16-10 MLP trained on sklearn's bundled digits (fixed seed), and
    the test images scaled to [0, 1] with their labels."""
    import torch
    from sklearn.datasets import load_digits

    from verify.torch_io import from_torch

    torch.set_num_threads(1)  # far faster for small layers on these machines
    torch.manual_seed(0)
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))
    train, test = order[:1400], order[1400:]
    model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(X[train]), torch.from_numpy(y[train])
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
    net = from_torch(model.eval())
    return net, X[test].astype(np.float64), y[test]


def assert_bad_input(res, *needles):
    """A CLI result (click CliRunner) that is a clean bad-input error: exit code 2,
    one line on stderr starting with "error: " and naming ``needles``, no traceback."""
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output
    for n in needles:
        assert n in lines[0]


@pytest.fixture(scope="module")  # built again per module: tests may cache in the record
def split_proof(digits_mlp):
    """A ReLU-split proof of the digits MLP (several leaves split on ReLUs, with the
    alpha-CROWN slopes of their bounds): (network, property, proof record)."""
    from verify.api import VerifyOptions, local_robustness
    from verify.reuse import build_proof
    net, X, _ = digits_mlp
    prop = local_robustness(X[0], 0.07, int(np.argmax(net.forward(X[0]))), 10)
    proof = build_proof(net, prop, VerifyOptions(timeout=5, z3_query_timeout=1))
    assert proof.status == "holds" and proof.n_branches > 1
    assert sum(bool(b.splits) for b in proof.regions[0]) >= 2
    assert any(b.alphas is not None for b in proof.regions[0])
    return net, prop, proof


@pytest.fixture
def tree_walks(monkeypatch):
    """The regions ``verify.reuse.tree.TreeWalk.run`` is called on (each call counted,
    then run as usual)."""
    import verify.reuse.tree as tree
    walks = []
    walk = tree.TreeWalk.run

    def counted(self, region, r):
        walks.append(r)
        return walk(self, region, r)
    monkeypatch.setattr(tree.TreeWalk, "run", counted)
    return walks


@pytest.fixture(scope="module")
def input_split_proof():
    """A 5-input chain whose robustness proof splits its inputs: (net, prop, options,
    proof)."""
    from verify.api import VerifyOptions, local_robustness
    from verify.network import Affine, Network
    from verify.reuse import build_proof
    rng = np.random.default_rng(1)
    sizes = [5, 24, 24, 24, 3]
    net = Network(tuple(Affine(rng.normal(size=(o, i)) / np.sqrt(i), rng.normal(size=o) * 0.1)
                        for i, o in zip(sizes, sizes[1:])))
    centre = rng.uniform(-1, 1, 5)
    prop = local_robustness(centre, 0.8, int(np.argmax(net.forward(centre))), 3)
    opts = VerifyOptions(timeout=20)
    return net, prop, opts, build_proof(net, prop, opts)
