"""The graph differential bound (verify.reuse.graph_difference): sound against sampled
points on every operator kind of the graph model, for a perturbed variant."""
import dataclasses

import numpy as np
import pytest
import torch

from graph_nets import NETS
from verify.errors import ShapeMismatchError
from verify.graph import Conv, Gemm, GraphNetwork, Node, Scale
from verify.graphbounds import GraphBoundPropagator
from verify.reuse.graph_difference import GraphDiff


def perturbed(net: GraphNetwork, rng, size: float) -> GraphNetwork:
    """Every Conv / Gemm / Scale parameter moved by up to ``size`` (relative)."""
    nodes = list(net.nodes)
    for i, n in enumerate(nodes[1:], 1):
        names = {Conv: ("weight", "bias"), Gemm: ("weight", "bias"),
                 Scale: ("scale", "shift")}.get(type(n.op))
        if names is None:
            continue
        new = {k: getattr(n.op, k) * (1 + rng.uniform(-size, size, getattr(n.op, k).shape))
               for k in names}
        nodes[i] = Node(dataclasses.replace(n.op, **new), n.inputs, n.shape, n.name)
    return GraphNetwork(tuple(nodes), net.name + "~perturbed")


def _case(name, seed=0, size=0.05, eps=0.05):
    rng = np.random.default_rng(seed)
    f = NETS[name](rng)
    g = perturbed(f, rng, size)
    n0 = f.n_inputs
    centre = rng.uniform(-1, 1, n0)
    lo, hi = centre - eps, centre + eps
    C = rng.normal(size=(4, f.n_outputs))
    prop = GraphBoundPropagator(f)
    res = prop.bound(torch.from_numpy(lo[None]), torch.from_numpy(hi[None]),
                     torch.from_numpy(C), torch.zeros(len(C)))
    lowers = [l.numpy() for l in res.lower]
    uppers = [u.numpy() for u in res.upper]
    return f, g, lo, hi, C, lowers, uppers, rng


def _samples(rng, lo, hi, n=3000):
    x = rng.uniform(lo, hi, size=(n, len(lo)))
    x[: n // 10] = np.where(rng.random((n // 10, len(lo))) < 0.5, lo, hi)  # corners
    return x


@pytest.mark.parametrize("name", sorted(NETS))
def test_graph_deviation_bounds_the_change_on_samples(name):
    f, g, lo, hi, C, lowers, uppers, rng = _case(name)
    changes, spec = GraphDiff(f, g).deviation(lowers, uppers, lo[None], hi[None], C)
    x = _samples(rng, lo, hi)
    gap = (g.forward(x) - f.forward(x)) @ C.T  # (n, m)
    assert (gap >= spec[0] - 1e-12).all(), (gap.min(0), spec[0])
    # not vacuous: finite, within 100 times the sampled range
    assert (spec[0] > gap.min(0) - 100 * (gap.max(0) - gap.min(0)) - 1.0).all()
    zf, zg = f.pre_activations(x), g.pre_activations(x)
    for k, (dl, du) in enumerate(changes):
        dz = zg[k] - zf[k]
        assert (dz >= dl[0] - 1e-12).all() and (dz <= du[0] + 1e-12).all(), k


def test_a_mutated_deviation_is_caught_by_the_samples(monkeypatch):
    """The test above can fail: a ReLU change taken as the pre-activation change
    everywhere (wrong where the phases differ) is unsound and the samples show it."""
    from verify.reuse import graph_difference as gd
    real = gd.GraphDiff._relu

    def wrong(d, l, u, shape, B):
        dv, ch = real(d, l, u, shape, B)
        return (dv[0], dv[1] * 0.0), ch  # the change collapsed to its centre
    monkeypatch.setattr(gd.GraphDiff, "_relu", staticmethod(wrong))
    caught = 0
    for name in sorted(NETS):
        f, g, lo, hi, C, lowers, uppers, rng = _case(name, size=0.2)
        _, spec = GraphDiff(f, g).deviation(lowers, uppers, lo[None], hi[None], C)
        gap = (g.forward(_samples(rng, lo, hi)) - f.forward(_samples(rng, lo, hi))) @ C.T
        caught += int((gap < spec[0] - 1e-12).any())
    assert caught > 0


def test_a_variant_with_another_operator_is_refused():
    rng = np.random.default_rng(0)
    f = NETS["conv_stride_pad"](rng)
    nodes = list(f.nodes)
    conv = nodes[1].op
    nodes[1] = Node(dataclasses.replace(conv, strides=(1, 1), pads=(0, 0, 0, 0)), (0,),
                    nodes[1].shape, "other")
    with pytest.raises((ShapeMismatchError, ValueError)):
        GraphDiff(f, GraphNetwork(tuple(nodes), "other"))


# ---- in reverify: the root margin plus the change closes a CNN variant ---------------
from test_graph_search import digits_cnn, first_unproved_eps  # noqa: E402,F401 - fixture


def _broken(net: GraphNetwork) -> GraphNetwork:
    """The output layer's weights negated: the same architecture, a different class."""
    nodes = list(net.nodes)
    last = nodes[-1]
    op = dataclasses.replace(last.op, weight=-last.op.weight, bias=-last.op.bias)
    nodes[-1] = Node(op, last.inputs, last.shape, last.name)
    return GraphNetwork(tuple(nodes), net.name + "~broken")


@pytest.fixture(scope="module")
def root_case(digits_cnn):  # noqa: F811
    from verify.options import VerifyOptions
    from verify.properties import local_robustness
    from verify.reuse.proof import build_proof
    net, X, y = digits_cnn
    idx = int(np.flatnonzero(net.forward(X).argmax(1) == y)[0])
    eps = (first_unproved_eps(net, X[idx], int(y[idx])) or 0.04) / 2
    prop = local_robustness(X[idx], eps, int(y[idx]), 10)
    opts = VerifyOptions(timeout=30)
    proof = build_proof(net, prop, opts)
    assert proof.status == "holds" and proof.n_branches == 1
    return net, prop, proof, opts


def test_cnn_root_proof_carries_over_by_the_change_bound_and_a_broken_variant_does_not(
        root_case):
    from compress.graph_compress import compress_graph
    from verify.reuse.reverify import reverify
    from verify.verifier import verify_property
    net, prop, proof, opts = root_case
    int8 = compress_graph(net, "int8").network
    res = reverify(net, int8, prop, opts, proof=proof)
    assert res.status.value == "holds" and res.method == "reuse-difference", res.method
    assert res.reuse.closed_by_difference == 1 and not res.reuse.fallback
    assert verify_property(int8, prop, opts).status.value == "holds"
    broken = _broken(net)
    res = reverify(net, broken, prop, opts, proof=proof)
    assert res.status.value == "violated"
    x = np.array(res.counterexample.input)
    assert prop.violated_by(x, broken.forward(x))


def test_a_change_bound_taken_as_zero_would_prove_the_broken_variant(root_case, monkeypatch):
    """The test above can fail: with the change bound mutated to zero, tier 0 closes the
    broken variant with the original's margin (an unsound holds)."""
    from verify.reuse import graph_difference as gd
    from verify.reuse.reverify import reverify
    net, prop, proof, opts = root_case
    real = gd.GraphDiff.deviation

    def zero(self, *args):
        changes, spec = real(self, *args)
        return [(0 * dl, 0 * du) for dl, du in changes], 0 * spec
    monkeypatch.setattr(gd.GraphDiff, "deviation", zero)
    res = reverify(net, _broken(net), prop, opts, proof=proof)
    assert res.status.value == "holds"


def test_a_violated_cnn_originals_root_bound_moved_by_the_change_proves_a_fixed_variant(
        digits_cnn):  # noqa: F811
    """No proof to reuse, but the original's root bound: the variant whose true class gets
    a bias of +20 holds, shown by the original's root bounds moved by the change (and the
    verdict agrees with scratch); one with -20 is violated (its counterexample replays)."""
    from verify.options import VerifyOptions
    from verify.properties import local_robustness
    from verify.reuse.proof import build_proof
    from verify.reuse.reverify import reverify
    from verify.verifier import verify_property
    net, X, y = digits_cnn
    idx = int(np.flatnonzero(net.forward(X).argmax(1) == y)[0])
    label, opts = int(y[idx]), VerifyOptions(timeout=30)
    prop = local_robustness(X[idx], 0.15, label, 10)
    proof = build_proof(net, prop, opts)
    assert proof.status == "violated" and len(proof.root_branches) == 1

    def biased(delta):
        nodes = list(net.nodes)
        last = nodes[-1]
        b = last.op.bias.copy()
        b[label] += delta
        nodes[-1] = Node(dataclasses.replace(last.op, bias=b), last.inputs, last.shape, last.name)
        return GraphNetwork(tuple(nodes), f"biased{delta}")
    fixed = biased(20.0)
    res = reverify(net, fixed, prop, opts, proof=proof)
    assert res.status.value == "holds" and res.method == "reuse-difference-root", res.method
    assert not res.reuse.fallback
    assert verify_property(fixed, prop, opts).status.value == "holds"
    worse = biased(-20.0)
    res = reverify(net, worse, prop, opts, proof=proof)
    assert res.status.value == "violated"
    x = np.array(res.counterexample.input)
    assert prop.violated_by(x, worse.forward(x))
    # the original's root bound is kept without a proof: its minimisers, confirmed on
    # the variant, are counterexamples of a broken one and none of the fixed one
    from verify.reuse.graph_reuse import root_candidates
    assert proof.root_bounds
    cex = root_candidates(worse, prop, proof, trees_only=False)
    assert cex is not None and prop.violated_by(np.array(cex.input),
                                                worse.forward(np.array(cex.input)))
    assert root_candidates(fixed, prop, proof, trees_only=False) is None
