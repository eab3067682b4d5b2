"""The reuse benchmark's CNN variants made by other tools: onnxruntime's static QDQ
quantization (activation pairs taken out, weight QDQ read exactly) and
torch.nn.utils.prune; both are re-verified from the original's proof without a record."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
pytest.importorskip("onnxruntime.quantization")

from cnn_families import cnn_variants, digits_cnn, torch_pruned_graph  # noqa: E402
from verify.graph import Conv, Gemm  # noqa: E402
from verify.options import VerifyOptions  # noqa: E402
from verify.properties import local_robustness  # noqa: E402
from verify.reuse.reverify import reverify  # noqa: E402
from verify.verifier import verify_property  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return digits_cnn(epochs=20)


def test_other_tools_variants_load_and_are_reverified(digits):
    model, data, net, X, _ = digits
    variants = {v.recipe: v for v in cnn_variants(net, data, model, recipes=["channels:0.25"])}
    ort, tp = variants["ort-int8"], variants["torch-prune"]
    assert ort.record is None and tp.record is None
    # onnxruntime's int8 weights read exactly: integer form kept, 8-bit range
    learned = [n.op for n in ort.network.nodes[1:] if isinstance(n.op, (Conv, Gemm))]
    assert learned and all(op.weight_int is not None for op in learned)
    assert all(np.abs(op.weight_int).max() <= 127 for op in learned)
    assert ort.network.hidden_sizes == net.hidden_sizes
    y0 = net.forward(X)
    assert np.abs(ort.network.forward(X) - y0).max() < 0.1 * np.abs(y0).max()
    zeros = [float(np.mean(n.op.weight == 0)) for n in tp.network.nodes[1:]
             if isinstance(n.op, (Conv, Gemm))]
    assert 0.1 < float(np.mean(zeros)) < 0.4  # global 20 % over layers of other sizes
    label = int(net.forward(X[0]).argmax())
    prop = local_robustness(X[0], 0.02, label, 10, domain=(0.0, 1.0))
    opts = VerifyOptions(timeout=20)
    for v in (ort, tp, variants["channels:0.25"]):
        res = reverify(net, v, prop, opts)
        assert not res.reuse.fallback, res.reuse.fallback_reason
        assert res.status == verify_property(v.network, prop, opts).status


def test_torch_pruned_graph_keeps_the_exact_unpruned_weights(digits):
    _, _, net, _, _ = digits
    pruned = torch_pruned_graph(net, 0.2)
    for a, b in zip(net.nodes[1:], pruned.nodes[1:]):
        if isinstance(a.op, (Conv, Gemm)):
            kept = b.op.weight != 0
            assert np.array_equal(a.op.weight[kept], b.op.weight[kept])
