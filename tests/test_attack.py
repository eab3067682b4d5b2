"""The falsifier (verify/attack.py): what its PGD finds that sampling and a descent on
the whole unsafe set's margin miss."""
import time

import numpy as np

from verify.attack import Attacker
from verify.network import Affine, Network
from verify.properties import Conjunction, Property, Region


def _decoy_and_corner(n=10, threshold=9.8):
    """h = relu(x) on [0, 1]^n; y_a = 0.1 + 0.05 sum h (never <= 0: a decoy whose
    margin, 0.1 to 0.6, is below the other one's almost everywhere, and whose
    gradient points away from the counterexamples), y_b = threshold - sum h (<= 0
    only in the corner where the inputs sum to >= threshold, about 3e-14 of the box)."""
    hidden = Affine(np.eye(n), np.zeros(n))
    out = Affine(np.vstack([0.05 * np.ones(n), -np.ones(n)]), np.array([0.1, threshold]))
    net = Network((hidden, out))
    decoy = Conjunction(np.array([[1.0, 0.0]]), np.zeros(1))
    corner = Conjunction(np.array([[0.0, 1.0]]), np.zeros(1))
    region = Region(np.zeros(n), np.ones(n), (decoy, corner))
    return net, Property((region,), 2, name="decoy-and-corner")


def test_each_unsafe_conjunction_gets_its_own_descent():
    net, prop = _decoy_and_corner()
    attacker, region = Attacker(net), prop.regions[0]
    far = time.monotonic() + 60
    sampled, _ = attacker.attack(region, 0, np.random.default_rng(0), far, restarts=0, samples=4000)
    assert sampled is None  # sampling misses the corner
    # a descent on min(decoy, corner) follows the decoy (its margin is the smaller)
    # and never reaches the corner; the starts that descend on the corner alone do
    cex, n = attacker.attack(region, 0, np.random.default_rng(0), far, restarts=4, steps=40,
                             samples=0)
    assert n == 4 and cex is not None
    x = np.array(cex.input)
    assert cex.conjunction == 1
    assert prop.violated_by(x, net.forward(x)) and x.sum() >= 9.8


def test_whole_set_margin_alone_follows_the_decoy():
    """The decoy is real: PGD on the whole set's margin from the same starts finds
    nothing (what the attack did before its starts took turns)."""
    import torch
    net, prop = _decoy_and_corner()
    attacker, region = Attacker(net), prop.regions[0]
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 1, size=(4, 10))).requires_grad_(True)
    for step in range(40):
        loss = attacker._loss(attacker.model(x), region)
        (g,) = torch.autograd.grad(loss.sum(), x)
        with torch.no_grad():
            x -= (0.25 * (1 - step / 40) + 0.01) * g.sign()
            x.clamp_(0, 1)
    xs = x.detach().numpy()
    assert not any(prop.violated_by(p, net.forward(p)) for p in xs)


def _wide_region_net(seed=4, n=30, eps=0.07):
    """A random 30-input MLP (ReLU splitting: more than 16 inputs) and the robustness
    of its predicted class in a box its root bound does not prove."""
    from verify.properties import local_robustness
    rng = np.random.default_rng(seed)
    sizes = [n, 40, 40, 5]
    net = Network(tuple(Affine(rng.normal(size=(o, i)), rng.normal(size=o))
                        for i, o in zip(sizes[:-1], sizes[1:])))
    x = rng.uniform(-1, 1, n)
    label = int(net.forward(x).argmax())
    return net, local_robustness(x, eps, label, 5, domain=None)


def test_a_far_root_bound_buys_a_longer_falsification(monkeypatch):
    """On a graph network, when the root bound lies further below zero than the
    attack's best margin lies above it, the verifier falsifies a second time with
    attack_far_share of the timeout; when the attack got closer to zero than the
    bound, it does not; a chain never does (its search interleaves attack rounds)."""
    import verify.verifier as verifier
    from verify.graph import chain_graph
    from verify.options import VerifyOptions

    chain, prop = _wide_region_net()
    net = chain_graph(chain)
    calls = []

    def fake(attacker, region, r, rng, options, stats, starts, until):
        calls.append(until - time.monotonic())
        attacker.best_margin = margin
        return None

    monkeypatch.setattr(verifier, "falsify", fake)
    opts = VerifyOptions(timeout=2.0, attack_far_share=0.5, attack_far_max_s=60.0)
    for margin, second in ((1e-3, True), (1e6, False)):
        calls.clear()
        verifier.verify_property(net, prop, opts)
        assert len(calls) == (2 if second else 1)
        if second:
            assert 0.5 < calls[1] <= 1.0  # half the timeout
    margin = 1e-3
    calls.clear()
    verifier.verify_property(chain, prop, opts)
    assert len(calls) == 1

