"""Proof reuse on convolutional networks: the original's ReLU-split proof tree re-checked on
same-architecture variants (quantized, magnitude-pruned) with bounds; channel-pruned
variants fall back to scratch, and say why; verdicts agree with scratch."""
import numpy as np
import pytest

from compress.graph_compress import compress_graph
from test_graph_search import digits_cnn, first_unproved_eps  # noqa: F401 - the fixture
from verify.options import VerifyOptions
from verify.properties import local_robustness
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
    assert res.reuse.change_map == "position (graph)"
    if res.status.value != "unknown" and scratch.status.value != "unknown":
        assert res.status == scratch.status
    if res.status.value == "violated":
        x = np.array(res.counterexample.input)
        assert prop.violated_by(x, variant.forward(x))
    if recipe == "int16":  # nearly the original: the tree carries over, no fallback
        assert res.status.value == "holds" and not res.reuse.fallback, res.reuse
        assert res.method.startswith("reuse"), res.method
        assert res.reuse.branches == proof.n_branches > 1


def test_channel_pruned_cnn_falls_back_to_scratch_and_says_why(split_case):
    net, prop, proof = split_case
    variant = compress_graph(net, "channels:0.34").network
    assert variant.hidden_sizes != net.hidden_sizes
    res = reverify(net, variant, prop, OPTS, proof=proof)
    assert res.reuse.fallback and "channel pruning" in res.reuse.fallback_reason
    assert res.status == verify_property(variant, prop, OPTS).status
