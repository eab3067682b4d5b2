"""Example: formal robustness checks of a digits classifier as ordinary pytest tests.

Copy this file into your test suite.  With coreproof installed, its pytest
plugin provides the ``coreproof`` fixture; run ``pytest`` as usual:

    pytest examples/test_example_robustness.py            # verify (and cache proofs)
    pytest examples/test_example_robustness.py            # again: served from the cache
    pytest --coreproof-timeout 10 --coreproof-unknown=skip

A failing check names the point, the counterexample input and output, and
where the full counterexample was saved (``.coreproof/counterexamples/``).
"""
from __future__ import annotations

import importlib
import importlib.util
from importlib.metadata import entry_points

import numpy as np
import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("sklearn.datasets")

# The plugin loads itself once coreproof is installed (pytest11 entry point).
# From a source checkout without installing, register it here instead:
if not any(ep.value.split(":")[0] == "verify.pytest_plugin"
           for ep in entry_points(group="pytest11")):
    pytest_plugins = ["verify.pytest_plugin"]

EPS = 0.005  # L-inf radius in input units (pixels scaled to [0, 1])


@pytest.fixture(scope="module")
def digits_model():
    """A 64-32-10 ReLU MLP trained for a second on sklearn's bundled digits."""
    from torch import nn
    x, y = datasets.load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)  # pixels 0..16 -> [0, 1]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x[:1400]), torch.from_numpy(y[:1400])
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    model.eval()
    return model, x[1400:], y[1400:]


@pytest.fixture(scope="module")
def clear_points(digits_model):
    """A few held-out digits the model gets right with a clear logit margin."""
    model, x, y = digits_model
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    top2 = np.sort(logits, axis=1)[:, -2:]
    good = (logits.argmax(axis=1) == y) & (top2[:, 1] - top2[:, 0] > 2.0)
    idx = np.flatnonzero(good)[:5]
    assert len(idx) == 5, "training went wrong: too few confidently correct points"
    return x[idx], y[idx]


def test_digits_model_is_robust(coreproof, digits_model, clear_points):
    model, _, _ = digits_model
    points, labels = clear_points
    coreproof.assert_robust(model, points, labels, eps=EPS)


RECIPE = "magnitude:0.2,int8"  # prune the 20% smallest weights, then 8-bit weights


def _compress_function():
    """coreproof's ``compress.compress(network, recipe)``, if it is installed."""
    if importlib.util.find_spec("compress") is None:
        return None
    fn = getattr(importlib.import_module("compress"), "compress", None)
    return fn if callable(fn) else None


def test_compressed_variant_is_robust(coreproof, digits_model, clear_points):
    compress = _compress_function()
    if compress is None:
        pytest.skip("the compress package is not available")
    model, _, _ = digits_model
    points, labels = clear_points
    quantized = compress(model, RECIPE)  # a compress.Variant: network + change record
    # as in the README: verifies the original first (usually served from the cache),
    # then the variant, reusing the original's proof where coreproof can
    coreproof.assert_variant_holds(model, quantized, points, labels, eps=EPS)
