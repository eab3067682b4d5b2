"""Compression of graph networks: channel pruning (residual groups together), magnitude
pruning and per-channel quantization of Conv/Gemm, written as deployable ONNX files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compress.graph_compress import compress_graph, load_graph_variant
from compress.graph_prune import channel_groups, masked_original, prune_channels
from verify.errors import OptionError
from verify.graph import Conv, Gemm, GraphNetwork, Node, Relu, Reshape, Scale, Sum
from verify.graph.onnx_write import save_graph_onnx
from verify.loading import load_network

ort = pytest.importorskip("onnxruntime")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _f32(rng, *shape, s=0.5):
    return (rng.normal(size=shape) * s).astype(np.float32).astype(np.float64)


def residual_cnn(seed=0) -> GraphNetwork:
    """input (1,2,6,6) -> Conv 2->6 -> Relu -> Conv 6->6 -> Sum(+skip) -> Relu -> per-channel
    Scale -> AvgPool 2x2 (depthwise Conv) -> flatten -> Gemm 54->3."""
    rng = np.random.default_rng(seed)
    n = [Node(None, (), (1, 2, 6, 6), "input")]

    def add(op, inputs, name):
        shape = op.out_shape(*(n[j].shape for j in inputs))
        n.append(Node(op, inputs, tuple(shape), name))
        return len(n) - 1
    c1 = add(Conv(_f32(rng, 6, 2, 3, 3), _f32(rng, 6, s=0.1), pads=(1, 1, 1, 1)), (0,), "c1")
    r1 = add(Relu(), (c1,), "r1")
    c2 = add(Conv(_f32(rng, 6, 6, 3, 3), _f32(rng, 6, s=0.1), pads=(1, 1, 1, 1)), (r1,), "c2")
    s = add(Sum((1.0, 1.0)), (c2, r1), "add")
    r2 = add(Relu(), (s,), "r2")
    sc = add(Scale(_f32(rng, 1, 6, 1, 1) + 1.0, _f32(rng, 1, 6, 1, 1, s=0.1)), (r2,), "bn")
    pool = add(Conv(np.full((6, 1, 2, 2), 0.25), np.zeros(6), strides=(2, 2), groups=6),
               (sc,), "pool")
    flat = add(Reshape((1, 54)), (pool,), "flat")
    add(Gemm(_f32(rng, 3, 54), _f32(rng, 3, s=0.1)), (flat,), "fc")
    return GraphNetwork(tuple(n), "rescnn")


def _points(g, n=16, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, size=(n, g.n_inputs))


def test_groups_follow_residual_pooling_and_flatten():
    g = residual_cnn()
    groups = channel_groups(g)
    by_first = {gr.members[0]: gr for gr in groups}
    assert not by_first[0].prunable and "input" in by_first[0].why_kept
    tied = next(gr for gr in groups if 4 in gr.members)  # the Sum
    assert tied.prunable and set(tied.producers) == {1, 3}  # both convs of the block
    assert {2, 4, 5, 6, 7} <= set(tied.members)  # relu, sum, relu, scale, pooling


@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.9])
@pytest.mark.parametrize("method", ["l1", "l2", "activation"])
def test_channel_pruning_equals_the_original_without_those_channels(ratio, method):
    g = residual_cnn()
    x = _points(g)
    res = prune_channels(g, ratio, method=method, calibration=x)
    assert res.kept, "something must be pruned"
    for k, kept in res.kept.items():
        assert 1 <= len(kept) <= res.groups[k].channels - 1
    y_pruned, y_masked = res.network.forward(x), masked_original(g, res).forward(x)
    assert np.allclose(y_pruned, y_masked, rtol=0, atol=1e-12)
    assert res.network.n_parameters < g.n_parameters
    assert not np.allclose(y_pruned, g.forward(x))  # it is a different function


def test_residual_channels_are_pruned_together():
    g = residual_cnn()
    res = prune_channels(g, 0.5)
    net = res.network
    add = next(i for i, n in enumerate(net.nodes) if isinstance(n.op, Sum))
    a, b = (net.nodes[j].shape for j in net.nodes[add].inputs)
    assert a == b and a[1] == 3  # 6 channels, half removed on both sides of the Sum


def test_activation_importance_needs_calibration_and_bad_recipes_are_errors():
    g = residual_cnn()
    with pytest.raises(OptionError):
        prune_channels(g, 0.3, method="activation")
    with pytest.raises(OptionError):
        compress_graph(g, "channels:1.5")
    with pytest.raises(OptionError, match="unknown graph compression step"):
        compress_graph(g, "neurons:0.3")


def _check_written(original_path, recipe, tmp_path):
    parent = load_network(original_path)
    v = compress_graph(parent, recipe)
    onnx_path, _ = v.save(tmp_path, "v", like=original_path)
    back = load_graph_variant(onnx_path)  # digest-checked against the record
    assert back.network.digest() == v.network.digest()
    orig = ort.InferenceSession(str(original_path)).get_inputs()[0]
    sess = ort.InferenceSession(str(onnx_path))
    inp = sess.get_inputs()[0]
    assert (inp.name, inp.shape, inp.type) == (orig.name, orig.shape, orig.type)
    shape = [s if isinstance(s, int) else 1 for s in inp.shape]
    x = np.random.default_rng(0).uniform(0, 1, size=shape).astype(np.float32)
    y = sess.run(None, {inp.name: x})[0].reshape(-1)
    ref = v.network.forward(x.reshape(-1).astype(np.float64))
    assert np.allclose(y, ref, rtol=1e-4, atol=1e-4 * (1 + np.abs(ref).max()))
    return onnx_path, v


@pytest.mark.parametrize("recipe", ["channels:0.5", "magnitude:0.3", "int8", "int4",
                                    "channels:0.3:l2,int8"])
def test_written_cnn_variants_run_in_onnxruntime(recipe, tmp_path):
    original = tmp_path / "orig.onnx"
    save_graph_onnx(residual_cnn(), original, input_name="image", output_name="logits")
    _check_written(original, recipe, tmp_path)


@pytest.mark.skipif(not (DATA / "oval21").is_dir(), reason="oval21 data not available")
def test_int8_cifar_base_is_under_30_percent_and_runs(tmp_path):
    original = DATA / "oval21" / "nets" / "cifar_base_kw.onnx"
    onnx_path, _ = _check_written(original, "int8", tmp_path)
    assert onnx_path.stat().st_size <= 0.30 * original.stat().st_size


@pytest.mark.skipif(not (DATA / "cifar10_resnet").is_dir(), reason="ResNet data not available")
def test_resnet_channel_pruning_is_exact_on_its_masked_original(tmp_path):
    original = DATA / "cifar10_resnet" / "onnx" / "resnet_2b.onnx"
    g = load_network(original)
    res = prune_channels(g, 0.25)
    x = _points(g, 4)
    assert np.allclose(res.network.forward(x), masked_original(g, res).forward(x), atol=1e-10)
    _check_written(original, "channels:0.25", tmp_path)


def test_pooling_kernels_are_not_compressed():
    g = residual_cnn()
    pool = next(i for i, n in enumerate(g.nodes) if n.name == "pool")
    for recipe in ("magnitude:0.5", "int4"):
        v = compress_graph(g, recipe).network
        assert np.array_equal(v.nodes[pool].op.weight, g.nodes[pool].op.weight)
        assert not np.array_equal(v.nodes[1].op.weight, g.nodes[1].op.weight)
    w = compress_graph(g, "magnitude:0.5").network.nodes[1].op.weight
    assert np.count_nonzero(w == 0) == w.size // 2  # exactly half, whatever the ties


def test_cli_compresses_a_cnn(tmp_path):
    from click.testing import CliRunner

    from compress.cli import compress_cmd
    original = tmp_path / "cnn.onnx"
    save_graph_onnx(residual_cnn(), original)
    res = CliRunner().invoke(compress_cmd, [str(original), "-o", str(tmp_path / "out"),
                                            "--sweep", "--samples", "50"])
    assert res.exit_code == 0, res.output
    files = sorted((tmp_path / "out").glob("*.onnx"))
    assert len(files) == 5 and len(list((tmp_path / "out").glob("*.changes.json"))) == 5
    for f in files:
        assert load_graph_variant(f).record["parent_digest"] == load_network(original).digest()
    assert "top-1 agree" in res.output and "channels:0.25" in res.output
    bad = CliRunner().invoke(compress_cmd, [str(original), "-o", str(tmp_path / "o2"),
                                            "--prune", "neurons:0.3"])
    assert bad.exit_code == 2 and "unknown graph compression step" in bad.output
