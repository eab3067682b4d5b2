"""Written variants are deployable: onnxruntime runs them with the original's float32 input,
their outputs match coreproof's forward of the variant, quantized weights are stored as
int8 (QDQ), and the file reads back as exactly the verified network."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compress import compress, load_variant, save_variant
from verify.graph.onnx_write import save_graph_onnx
from verify.graph import chain_graph
from verify.loading import load_network
from verify.network import Affine, Network

ort = pytest.importorskip("onnxruntime")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ACAS = DATA / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx"
MNIST = DATA / "mnistfc" / "mnist-net_256x2.onnx"
RECIPES = ["magnitude:0.3", "neurons:0.1", "int8", "int8:channel", "int4:channel", "int16",
           "magnitude:0.5,neurons:0.1,int8:channel"]


def float32_net(sizes=(6, 16, 12, 4), seed=0, shape=(1, 1, 6)) -> Network:
    """A random network whose parameters are float32 numbers (as an ONNX file's are)."""
    rng = np.random.default_rng(seed)
    affines = [Affine((rng.normal(size=(o, i)) / np.sqrt(i)).astype(np.float32),
                      (rng.normal(size=o) * 0.1).astype(np.float32))
               for i, o in zip(sizes[:-1], sizes[1:])]
    return Network(tuple(affines), shape, "f32net")


def _signature(path):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (i,), (o,) = sess.get_inputs(), sess.get_outputs()
    return sess, (i.name, tuple(i.shape), i.type), (o.name, tuple(o.shape), o.type)


def _check_deployable(original_path: Path, recipe: str, tmp_path: Path, seed=0):
    parent = load_network(original_path)
    v = compress(parent, recipe)
    stem = recipe.replace(":", "-").replace(",", "_")
    onnx_path, _ = save_variant(v.network, v.record, tmp_path, stem, like=original_path)
    _, in_o, out_o = _signature(original_path)
    sess, in_v, out_v = _signature(onnx_path)
    assert in_v == in_o and out_v == out_o  # names, shapes, element types (float32)
    shape = [d if isinstance(d, int) else 1 for d in in_o[1]]
    x = np.random.default_rng(seed).uniform(-1, 1, size=(8, *shape[1:])).astype(np.float32)
    for row in x:
        y_ort = sess.run(None, {in_o[0]: row[None]})[0].reshape(-1)
        y_ref = v.network.forward(row.reshape(-1).astype(np.float64))
        assert np.allclose(y_ort, y_ref, rtol=1e-4, atol=1e-4 * (1 + np.abs(y_ref).max()))
    back = load_variant(onnx_path)  # checks the digest against the change record
    assert back.network.digest() == v.network.digest()
    for a, b in zip(v.network.affines, back.network.affines):
        assert (a.weight_int is None) == (b.weight_int is None)
    return onnx_path, v


@pytest.mark.parametrize("recipe", RECIPES)
def test_variant_of_a_float32_onnx_is_a_drop_in_replacement(recipe, tmp_path):
    original = tmp_path / "orig.onnx"
    save_graph_onnx(chain_graph(float32_net()), original, input_name="obs",
                    output_name="scores")
    onnx_path, v = _check_deployable(original, recipe, tmp_path)
    if "int8" in recipe or "int4" in recipe:  # one byte per weight
        import onnx
        types = {t.name: t.data_type for t in onnx.load(str(onnx_path)).graph.initializer}
        q = [n for n in types if n.endswith("weight_q")]
        assert q and all(types[n] == onnx.TensorProto.INT8 for n in q)


@pytest.mark.skipif(not ACAS.is_file(), reason="ACAS Xu data not available")
@pytest.mark.parametrize("recipe", RECIPES)
def test_acas_variants_keep_the_original_signature(recipe, tmp_path):
    _check_deployable(ACAS, recipe, tmp_path)


@pytest.mark.skipif(not MNIST.is_file(), reason="MNIST-FC data not available")
def test_int8_file_is_at_most_30_percent_of_the_original(tmp_path):
    onnx_path, _ = _check_deployable(MNIST, "int8:channel", tmp_path)
    assert onnx_path.stat().st_size <= 0.30 * MNIST.stat().st_size


def test_float64_parameters_are_written_exactly_with_a_warning(tmp_path):
    rng = np.random.default_rng(1)  # float64 weights, as read from an .nnet file
    net = Network((Affine(rng.normal(size=(5, 3)), rng.normal(size=5)),
                   Affine(rng.normal(size=(2, 5)), rng.normal(size=2))), name="f64")
    v = compress(net, "magnitude:0.2")
    with pytest.warns(UserWarning, match="float64"):
        onnx_path, _ = save_variant(v.network, v.record, tmp_path, "v")
    assert load_variant(onnx_path).network.digest() == v.network.digest()
    sess, (name, shape, typ), _ = _signature(onnx_path)
    x = rng.uniform(size=(1, 3))
    feed = x.reshape(shape).astype(np.float64 if "double" in typ else np.float32)
    y = sess.run(None, {name: feed})[0]
    assert np.allclose(y.reshape(-1), v.network.forward(x[0]), atol=1e-5)


def test_quantized_float64_variant_keeps_its_integers(tmp_path):
    rng = np.random.default_rng(2)
    net = Network((Affine(rng.normal(size=(5, 3)), rng.normal(size=5)),
                   Affine(rng.normal(size=(2, 5)), rng.normal(size=2))), name="f64")
    v = compress(net, "int4:channel")
    with pytest.warns(UserWarning):  # float64 biases: not float32 numbers
        onnx_path, _ = save_variant(v.network, v.record, tmp_path, "q")
    back = load_variant(onnx_path).network
    assert all(np.array_equal(a.weight_int, b.weight_int)
               for a, b in zip(v.network.affines, back.affines))


def test_the_api_takes_what_compress_returns():
    net = float32_net()
    v = compress(net, "int8")
    assert load_network(v) is v.network
    with pytest.raises(Exception, match="Variant"):
        load_network(object())


def test_onnxruntime_static_quantization_is_refused_with_the_node_named(tmp_path):
    """Activation QuantizeLinear/DequantizeLinear pairs (what quantize_static writes) round
    computed values: coreproof refuses them (exit 2, the node named) rather than verify
    a different function; the weights' QDQ alone is read exactly (tests above)."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    original = tmp_path / "f32.onnx"
    net = float32_net()
    save_graph_onnx(chain_graph(net), original)
    rng = np.random.default_rng(0)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": rng.uniform(0, 1, (1, 1, 6)).astype(np.float32)}
                            for _ in range(16)])

        def get_next(self):
            return next(self.it, None)
    quantized = tmp_path / "q.onnx"
    quantization.quantize_static(str(original), str(quantized), Reader(),
                                 quant_format=quantization.QuantFormat.QDQ, per_channel=True,
                                 weight_type=quantization.QuantType.QInt8)
    from click.testing import CliRunner

    from verify.cli import main
    from verify.errors import UnsupportedNetworkError
    with pytest.raises(UnsupportedNetworkError, match="QuantizeLinear node"):
        load_network(quantized)
    prop = tmp_path / "p.vnnlib"
    prop.write_text("".join(f"(declare-const X_{i} Real)\n(assert (>= X_{i} 0.0))\n"
                            f"(assert (<= X_{i} 1.0))\n" for i in range(6))
                    + "".join(f"(declare-const Y_{j} Real)\n" for j in range(4))
                    + "(assert (>= Y_0 100.0))\n")
    res = CliRunner().invoke(main, ["verify", str(quantized), str(prop)])
    assert res.exit_code == 2 and "QuantizeLinear" in res.stderr and "Traceback" not in res.output
