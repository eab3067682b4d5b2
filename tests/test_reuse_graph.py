"""Proof reuse on convolutional networks: the original's ReLU-split proof tree re-checked on
same-architecture variants (quantized, magnitude-pruned) with bounds, and on channel-pruned variants expanded
back to the original's architecture; verdicts agree with scratch."""
import numpy as np
import pytest

from compress.graph_compress import compress_graph
from test_graph_search import digits_cnn, first_unproved_eps  # noqa: F401 - the fixture
from verify.options import VerifyOptions
from verify.properties import local_robustness
from verify.reuse.options import ReuseOptions
from verify.reuse.proof import build_proof
from verify.reuse.reverify import reverify
from verify.verifier import verify_property

OPTS = VerifyOptions(timeout=30)


@pytest.fixture(scope="module")
def split_case(digits_cnn):  # noqa: F811
    """A point and eps of the digits CNN whose proof needs ReLU splitting."""
    net, X, y = digits_cnn
    preds = net.forward(X).argmax(1)
    for idx in np.flatnonzero(preds == y)[:10]:
        eps = first_unproved_eps(net, X[idx], int(y[idx]))
        if eps is None:
            continue
        prop = local_robustness(X[idx], eps, int(y[idx]), 10)
        proof = build_proof(net, prop, OPTS)
        if proof.status == "holds" and proof.n_branches > 1:
            return net, prop, proof
    pytest.fail("no digits-CNN property needed ReLU splitting")


@pytest.mark.parametrize("recipe", ["int16", "int8", "magnitude:0.1"])
def test_cnn_variant_reuses_the_proof_tree_and_agrees_with_scratch(split_case, recipe):
    net, prop, proof = split_case
    variant = compress_graph(net, recipe).network
    res = reverify(net, variant, prop, OPTS, proof=proof)
    scratch = verify_property(variant, prop, OPTS)
    # (an easier or broken variant is decided at its root before any change map)
    assert res.reuse.change_map == "position (graph)" or res.method in ("reuse-root-bound",
                                                                         "reuse")
    if res.status.value != "unknown" and scratch.status.value != "unknown":
        assert res.status == scratch.status
    if res.status.value == "violated":
        x = np.array(res.counterexample.input)
        assert prop.violated_by(x, variant.forward(x))
    if recipe == "int16":  # nearly the original: the tree carries over, no fallback
        assert res.status.value == "holds" and not res.reuse.fallback, res.reuse
        assert res.method.startswith("reuse"), res.method
        assert res.reuse.branches == proof.n_branches > 1


@pytest.mark.parametrize("with_record", [True, False])
def test_channel_pruned_cnn_is_reverified_on_its_expansion(split_case, with_record):
    """A channel-pruned variant (fewer ReLUs) is walked as its expansion to the original's
    architecture; its channel map comes from the change record or is matched by weights."""
    net, prop, proof = split_case
    gv = compress_graph(net, "channels:0.34")
    assert gv.network.hidden_sizes != net.hidden_sizes
    scratch = verify_property(gv.network, prop, OPTS)
    # with the graph tiers (a broken variant may be found at the original's root
    # minimisers before any change map) and without (the expansion is walked)
    res = reverify(net, gv if with_record else gv.network, prop, OPTS, proof=proof)
    assert res.status == scratch.status and not res.reuse.fallback
    # (no random samples up front: a broken variant is to be found by the walk)
    res = reverify(net, gv if with_record else gv.network, prop, OPTS, proof=proof,
                   reuse_options=ReuseOptions(graph_difference=False, sample_first_share=0))
    assert res.reuse.change_map.startswith("channels expanded"), res.reuse
    assert ("record" in res.reuse.change_map) == with_record
    assert not res.reuse.fallback, res.reuse.fallback_reason
    assert res.method.startswith("reuse"), res.method
    assert res.status == scratch.status
    if res.status.value == "violated":
        x = np.array(res.counterexample.input)
        assert prop.violated_by(x, gv.network.forward(x))


def test_a_pure_pruning_expands_to_the_masked_original(split_case):
    from compress.graph_prune import masked_original, prune_channels
    from verify.reuse.expand import expand_variant
    net, _, _ = split_case
    pruning = prune_channels(net, 0.34)
    gv = compress_graph(net, "channels:0.34")
    expanded, _ = expand_variant(net, gv.network, gv.record)
    assert expanded.digest() == masked_original(net, pruning).digest()
    assert expanded.hidden_sizes == net.hidden_sizes


def test_a_wrong_expansion_is_refused_and_falls_back(split_case, monkeypatch):
    """Mutations of the expansion (a removed channel still read; the kept channels put
    in the wrong place) are caught by its check: reverify verifies from scratch."""
    import verify.reuse.expand as ex
    net, prop, proof = split_case
    gv = compress_graph(net, "channels:0.34")
    keep = ex.keep_from_record(net, gv.record)
    good = ex.expand(net, gv.network, keep)
    ex.check(good, gv.network, keep)
    shuffled = {i: np.roll(k, 1) for i, k in keep.items()}
    wrong_map = ex.expand(net, gv.network, shuffled)  # consistent: still the same function
    ex.check(wrong_map, gv.network, shuffled)
    unmasked = {i: np.arange(net.nodes[i].shape[1]) for i in keep}  # nothing removed
    with pytest.raises(ex.ShapeMismatchError):
        ex.check(good, gv.network, unmasked)
    real_expand = ex.expand

    def leaky(original, variant, keep):  # forgets to zero the removed channels' readers
        e = real_expand(original, variant, keep)
        nodes = list(e.nodes)
        for i, (n, o) in enumerate(zip(nodes, original.nodes)):
            if isinstance(n.op, (ex.Conv, ex.Gemm)) and n.op.weight.shape == o.op.weight.shape:
                w = np.where(n.op.weight == 0, o.op.weight, n.op.weight)
                op = ex.Gemm(w, n.op.bias) if isinstance(n.op, ex.Gemm) else ex.Conv(
                    w, n.op.bias, n.op.strides, n.op.pads, n.op.dilations, n.op.groups)
                nodes[i] = ex.Node(op, n.inputs, n.shape, n.name)
        return ex.GraphNetwork(tuple(nodes), e.name)
    monkeypatch.setattr(ex, "expand", leaky)
    # (without the graph tiers, whose root-minimiser check may find a broken variant
    # before any expansion)
    res = reverify(net, gv, prop, OPTS, proof=proof,
                   reuse_options=ReuseOptions(graph_difference=False))
    assert res.reuse.fallback and "non-zero weights" in res.reuse.fallback_reason
    assert res.status == verify_property(gv.network, prop, OPTS).status


def test_expansion_of_a_residual_cnn_with_pooling_and_scale():
    """Residual groups, a per-channel Scale and pooling: the expansion (from the record
    or matched by weights) computes the variant's function, has the original's ReLUs,
    and a tampered record is refused."""
    import copy

    from test_graph_compress import residual_cnn
    from verify.errors import ShapeMismatchError
    from verify.reuse.expand import expand_variant
    net = residual_cnn()
    gv = compress_graph(net, "channels:0.5,int8")
    assert gv.network.hidden_sizes != net.hidden_sizes
    x = np.random.default_rng(0).uniform(0, 1, size=(32, net.n_inputs))
    for record in (gv.record, None):
        expanded, how = expand_variant(net, gv.network, record)
        assert expanded.hidden_sizes == net.hidden_sizes
        assert np.allclose(expanded.forward(x), gv.network.forward(x), atol=1e-12)
        assert ("record" in how) == (record is not None)
    bad = copy.deepcopy(gv.record)
    group = next(g for s in bad["steps"] for g in s.get("groups", [])
                 if len(g["kept"]) < g["channels"])
    group["kept"] = [99] * len(group["kept"])
    with pytest.raises(ShapeMismatchError):
        expand_variant(net, gv.network, bad)
