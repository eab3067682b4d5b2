"""BatchNorm folding as its own recorded compression step: a small CNN with BatchNorm built
in torch and exported to ONNX, loaded with its BatchNorms kept apart, folded by the
``bn-fold`` recipe; the record names which BatchNorm went into which Conv / Gemm, and the
variant equals the original up to float rounding (and runs in onnxruntime)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from compress.graph_compress import compress_graph, load_graph_variant
from verify.graph import Scale
from verify.onnx_io import load_onnx, load_onnx_model

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


class _BNNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4)
        self.c2, self.b2 = torch.nn.Conv2d(4, 4, 3, stride=2), torch.nn.BatchNorm2d(4)
        self.fc, self.b3 = torch.nn.Linear(36, 8), torch.nn.BatchNorm1d(8)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x))).flatten(1)
        return self.out(torch.relu(self.b3(self.fc(x))))


@pytest.fixture(scope="module")
def bn_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = _BNNet()
    with torch.no_grad():  # running statistics far from the identity
        for bn in (model.b1, model.b2, model.b3):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.3, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    model.eval()
    path = tmp_path_factory.mktemp("bn") / "bnnet.onnx"
    torch.onnx.export(model, torch.zeros(1, 1, 8, 8), str(path), dynamo=False,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                      input_names=["x"], output_names=["y"])
    return path, model


def test_bn_fold_is_a_recorded_step_equal_up_to_rounding(bn_onnx, tmp_path):
    path, model = bn_onnx
    kept = load_onnx(path, fold_batchnorm=False)
    folded_on_load = load_onnx(path)
    n_bn = sum(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)
    assert n_bn == 3
    assert sum(isinstance(n.op, Scale) for n in kept.nodes) == 3
    variant = compress_graph(kept, "bn-fold")
    step = variant.record["steps"][0]
    assert step["step"] == "bn-fold" and len(step["folded"]) == 3
    for f in step["folded"]:
        assert "BatchNormalization" in f["scale"]
        assert any(k in f["into"] for k in ("Conv", "Gemm"))
    assert not any(isinstance(n.op, Scale) for n in variant.network.nodes)
    assert len(variant.network.nodes) == len(kept.nodes) - 3
    assert variant.network.hidden_sizes == kept.hidden_sizes
    x = np.random.default_rng(0).uniform(0, 1, size=(64, 64))
    y0 = kept.forward(x)
    scale = 1 + np.abs(y0).max()
    assert np.abs(variant.network.forward(x) - y0).max() <= 1e-5 * scale  # float32 weights
    assert np.abs(variant.network.forward(x) - y0).max() > 0  # rounded: not the same numbers
    assert np.abs(folded_on_load.forward(x) - y0).max() <= 1e-12 * scale
    with torch.no_grad():
        ref = model.double()(torch.from_numpy(x).reshape(-1, 1, 8, 8)).numpy()
    assert np.allclose(y0, ref, atol=1e-10)
    # written: the original's signature, runs in onnxruntime, read back digest-checked
    onnx_path, _ = variant.save(tmp_path, "bnnet.bn-fold", like=path)
    assert load_graph_variant(onnx_path).network.digest() == variant.network.digest()
    sess = ort.InferenceSession(str(onnx_path))
    assert [i.name for i in sess.get_inputs()] == ["x"]
    for row in x[:4]:
        out = sess.run(None, {"x": row.reshape(1, 1, 8, 8).astype(np.float32)})[0]
        assert np.allclose(out.reshape(-1), variant.network.forward(row), atol=1e-4 * scale)


def test_bn_fold_without_batchnorm_folds_nothing(bn_onnx):
    path, _ = bn_onnx
    net = load_onnx(path)  # the loader folded them already
    variant = compress_graph(net, "bn-fold")
    assert variant.record["steps"][0]["folded"] == []
    assert variant.network.digest() == net.digest()


def test_bn_fold_variant_reuses_the_proof(bn_onnx):
    from verify.options import VerifyOptions
    from verify.properties import local_robustness
    from verify.reuse.reverify import reverify
    from verify.verifier import verify_property
    path, _ = bn_onnx
    kept = load_onnx_model(onnx.load(str(path)), "bnnet", fold_batchnorm=False)
    variant = compress_graph(kept, "bn-fold")
    x = np.random.default_rng(1).uniform(0, 1, size=64)
    label = int(kept.forward(x).argmax())
    prop = local_robustness(x, 0.01, label, 3)
    opts = VerifyOptions(timeout=20)
    res = reverify(kept, variant, prop, opts)
    assert res.reuse.change_map == "position (graph)" and not res.reuse.fallback
    assert res.status == verify_property(variant.network, prop, opts).status


def test_cli_bn_fold_writes_a_smaller_graph_with_its_record(bn_onnx, tmp_path):
    import json

    from click.testing import CliRunner

    from compress.cli import compress_cmd
    path, _ = bn_onnx
    res = CliRunner().invoke(compress_cmd, [str(path), "-o", str(tmp_path), "--recipe",
                                            "bn-fold", "--samples", "50"])
    assert res.exit_code == 0, res.output
    record = json.loads(next(tmp_path.glob("*.changes.json")).read_text())
    assert len(record["steps"][0]["folded"]) == 3
    assert "bn-fold" in res.output and "100.0%" in res.output
