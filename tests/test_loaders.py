"""Tests for the network loaders and writers (onnx_io, nnet_io, torch_io, loading)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from verify.errors import InputError, UnsupportedNetworkError
from verify.graph import GraphNetwork
from verify.loading import load_network
from verify.network import Affine, Network
from verify.nnet_io import (NnetNormalisation, load_nnet, load_nnet_normalisation,
                            save_nnet)
from verify.onnx_io import load_onnx, save_onnx
from verify.torch_io import from_torch, to_torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATA_NETS = sorted(DATA.glob("*/*.onnx")) if DATA.is_dir() else []
ACAS = DATA / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx"


def need_data(path: Path = DATA) -> None:
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")


def run_ort(path, x: np.ndarray, shape, dtype=np.float32) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.stack([sess.run(None, {name: xi.reshape(shape).astype(dtype)})[0].reshape(-1)
                     for xi in x])


def random_network(sizes, seed=0, shape=()) -> Network:
    rng = np.random.default_rng(seed)
    affines = [Affine(rng.normal(size=(o, i)), rng.normal(size=o))
               for i, o in zip(sizes[:-1], sizes[1:])]
    return Network(tuple(affines), shape, "random")


def same_weights(a: Network, b: Network) -> bool:
    return a.layer_sizes() == b.layer_sizes() and all(
        x.weight.tobytes() == y.weight.tobytes() and x.bias.tobytes() == y.bias.tobytes()
        for x, y in zip(a.affines, b.affines))


def make_model(nodes, inputs, output, inits=(), opset=13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, [output], initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def f32(name, array) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


# ---------------------------------------------------------------- shared networks
@pytest.mark.skipif(not DATA_NETS, reason=f"shared data not found at {DATA}")
@pytest.mark.parametrize("path", DATA_NETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shared_network_matches_onnxruntime(path):
    net = load_onnx(path)
    assert net.name == path.stem
    lo = 0.0 if net.n_inputs == 784 else -1.0
    x = np.random.default_rng(1).uniform(lo, 1.0, (20, net.n_inputs))
    ref = run_ort(path, x, net.input_shape)
    out = net.forward(x)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * max(1.0, np.abs(ref).max()))


def test_shared_input_shapes():
    need_data()
    assert load_onnx(ACAS).input_shape == (1, 1, 1, 5)
    assert load_onnx(ACAS).layer_sizes() == (5,) + (50,) * 6 + (5,)
    mnist = load_onnx(DATA / "mnistfc" / "mnist-net_256x2.onnx")
    assert mnist.input_shape == (1, 784, 1) and mnist.layer_sizes() == (784, 256, 256, 10)
    pruned = load_onnx(DATA / "pruned_pairs" / "mnist_relu_3_100.onnx")
    assert pruned.input_shape == (784,) and pruned.n_outputs == 10


# ---------------------------------------------------------------- save_onnx
def test_save_onnx_round_trip_is_exact_and_runnable(tmp_path):
    net = random_network((6, 8, 7, 3), shape=(1, 2, 3))
    w = np.array(net.affines[1].weight)
    w[0, :3] = -0.0  # signed zeros must survive too
    net = net.with_affines([net.affines[0], Affine(w, net.affines[1].bias), net.affines[2]])
    path = tmp_path / "net.onnx"
    save_onnx(net, path)
    back = load_onnx(path)
    assert same_weights(net, back) and back.digest() == net.digest()
    assert back.input_shape == (1, 2, 3) and back.name == "net"
    x = np.random.default_rng(2).uniform(-1, 1, (20, 6))
    np.testing.assert_allclose(run_ort(path, x, (1, 6), np.float64), net.forward(x),
                               rtol=1e-12, atol=1e-12)
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 13
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]


def test_save_onnx_keeps_quantization(tmp_path):
    rng = np.random.default_rng(3)
    wi = rng.integers(-7, 8, size=(4, 5))
    scale = np.array([0.5, 0.25, 0.125, 2.0 ** -5])
    q = Affine(wi * scale[:, None], rng.normal(size=4), wi, scale)
    net = Network((q, Affine(rng.normal(size=(2, 4)), np.zeros(2))), (), "q")
    save_onnx(net, tmp_path / "q.onnx")
    back = load_onnx(tmp_path / "q.onnx")
    assert back.affines[0].is_quantized and not back.affines[1].is_quantized
    assert np.array_equal(back.affines[0].weight_int, wi)
    assert np.array_equal(back.affines[0].weight_scale, scale)


def test_save_shared_network_round_trip(tmp_path):
    need_data(ACAS)
    net = load_onnx(ACAS)
    save_onnx(net, tmp_path / "acas.onnx")
    back = load_onnx(tmp_path / "acas.onnx")
    assert same_weights(net, back) and back.input_shape == net.input_shape


# ---------------------------------------------------------------- other ONNX graphs
def test_constant_nodes_reshape_and_elementwise_ops(tmp_path):
    rng = np.random.default_rng(4)
    w1, b1, w2 = rng.normal(size=(6, 4)), rng.normal(size=4), rng.normal(size=(3, 4))
    nodes = [
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(
            np.array([1, 6], dtype=np.int64))),
        helper.make_node("Constant", [], ["scale"], value_float=2.0),
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Mul", ["r", "scale"], ["m"]),
        helper.make_node("Div", ["m", "four"], ["d"]),
        helper.make_node("Sub", ["one", "d"], ["s"]),
        helper.make_node("MatMul", ["s", "w1"], ["mm"]),
        helper.make_node("Add", ["b1", "mm"], ["a"]),
        helper.make_node("Dropout", ["a"], ["dr"]),
        helper.make_node("Relu", ["dr"], ["h"]),
        helper.make_node("Identity", ["h"], ["i"]),
        helper.make_node("Gemm", ["i", "w2", "b2"], ["y"], alpha=0.5, beta=2.0, transB=1),
    ]
    inits = [f32("w1", w1), f32("b1", b1), f32("w2", w2), f32("b2", [1, 2, 3]),
             f32("four", 4.0), f32("one", np.ones(6))]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                       helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3]), inits)
    path = tmp_path / "ops.onnx"
    onnx.save(model, str(path))
    net = load_onnx(path)
    assert net.layer_sizes() == (6, 4, 3) and net.input_shape == (2, 3)
    x = rng.uniform(-1, 1, (20, 6))
    np.testing.assert_allclose(net.forward(x), run_ort(path, x, (2, 3)), atol=1e-5)


def test_unsupported_operator_is_named(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Sigmoid", ["m"], ["y"], name="squash")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                       helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2]),
                       [f32("w", np.ones((3, 2)))])
    path = tmp_path / "sig.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UnsupportedNetworkError) as info:
        load_onnx(path)
    text = str(info.value)
    assert "Sigmoid" in text and "squash" in text and str(path) in text
    assert "MatMul" in text and "Relu" in text  # the supported operators are listed


def test_branching_graph_loads_as_a_graph(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="left"),
             helper.make_node("Relu", ["a"], ["b"], name="act"),
             helper.make_node("Add", ["a", "b"], ["y"], name="skip")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                       helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3]),
                       [f32("w", np.eye(3))])
    path = tmp_path / "branch.onnx"
    onnx.save(model, str(path))
    net = load_onnx(path)  # the chain walker refuses it; the graph loader reads it
    assert isinstance(net, GraphNetwork) and net.n_relus == 3
    x = np.random.default_rng(0).uniform(-1, 1, (5, 3))
    np.testing.assert_allclose(net.forward(x), run_ort(path, x, (1, 3)), atol=1e-6)


def test_two_inputs_are_rejected(tmp_path):
    nodes = [helper.make_node("Add", ["x", "z"], ["y"], name="sum")]
    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3]) for n in "xz"]
    model = make_model(nodes, info, helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3]))
    onnx.save(model, str(tmp_path / "two.onnx"))
    with pytest.raises(UnsupportedNetworkError, match="2 variable inputs"):
        load_onnx(tmp_path / "two.onnx")


def test_missing_and_garbage_onnx(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_onnx(tmp_path / "absent.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\xff\xfe" * 10)
    with pytest.raises(InputError, match="not a valid ONNX"):
        load_onnx(bad)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(InputError, match="not a valid ONNX"):
        load_onnx(tmp_path / "empty.onnx")


# ---------------------------------------------------------------- nnet
def test_acas_onnx_to_nnet_round_trip(tmp_path):
    need_data(ACAS)
    net = load_onnx(ACAS)
    norm = NnetNormalisation((0.0, -3.14, -3.14, 100.0, 0.0), (60760.0, 3.14, 3.14, 1200.0,
                             1200.0), (1.9791e4, 0.0, 0.0, 650.0, 600.0, 7.5188840201005),
                             (60261.0, 6.28, 6.28, 1100.0, 1200.0, 373.94992))
    path = tmp_path / "acas.nnet"
    save_nnet(net, path, norm)
    back = load_nnet(path)
    assert back.layer_sizes() == net.layer_sizes() and back.input_shape == (5,)
    assert same_weights(net, back)
    x = np.random.default_rng(5).uniform(-1, 1, (20, 5))
    np.testing.assert_array_equal(back.forward(x), net.forward(x))
    assert load_nnet_normalisation(path) == norm
    assert load_network(path).digest() == net.digest()


def test_nnet_default_normalisation(tmp_path):
    net = random_network((3, 4, 2))
    save_nnet(net, tmp_path / "n.nnet")
    assert same_weights(load_nnet(tmp_path / "n.nnet"), net)
    assert load_nnet_normalisation(tmp_path / "n.nnet") == NnetNormalisation.identity(3)


@pytest.mark.parametrize("line, replacement, where", [
    (2, "2,3,2", 2),  # header needs 4 values
    (3, "3,4,x,", 3),  # layer sizes not numeric
    (9, "0.1,0.2,", 9),  # first weight row too short
])
def test_malformed_nnet_names_line(tmp_path, line, replacement, where):
    path = tmp_path / "n.nnet"
    save_nnet(random_network((3, 4, 2)), path)
    lines = path.read_text().splitlines()
    lines[line - 1] = replacement
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as info:
        load_nnet(path)
    assert info.value.line == where and info.value.path == str(path) and info.value.expected


def test_truncated_and_missing_nnet(tmp_path):
    path = tmp_path / "n.nnet"
    save_nnet(random_network((3, 4, 2)), path)
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(InputError, match="end of file"):
        load_nnet(path)
    with pytest.raises(InputError, match="no such file"):
        load_nnet(tmp_path / "absent.nnet")


# ---------------------------------------------------------------- torch
def test_torch_round_trip():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.3),
                           nn.Sequential(nn.Linear(8, 5), nn.Identity(), nn.ReLU()),
                           nn.Linear(5, 3))
    net = from_torch(module, input_shape=(1, 2, 3))
    assert net.layer_sizes() == (6, 8, 5, 3) and net.input_shape == (1, 2, 3)
    x = torch.rand(20, 2, 3) * 2 - 1
    module.eval()
    with torch.no_grad():
        ref = module(x).double().numpy()
    np.testing.assert_allclose(net.forward(x.double().reshape(20, 6).numpy()), ref, atol=1e-5)
    seq = to_torch(net)
    with torch.no_grad():
        out = seq(x.double().reshape(20, 6)).numpy()
    np.testing.assert_allclose(out, net.forward(x.double().reshape(20, 6).numpy()), atol=1e-12)
    assert same_weights(from_torch(seq), net)
    assert load_network(module).layer_sizes() == (6, 8, 5, 3)


def test_torch_composes_linear_layers():
    module = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2)).double()
    net = from_torch(module)
    assert net.layer_sizes() == (4, 2)
    x = torch.rand(5, 4, dtype=torch.float64)
    with torch.no_grad():
        np.testing.assert_allclose(net.forward(x.numpy()), module(x).numpy(), atol=1e-12)


def test_torch_unsupported_module_is_named():
    with pytest.raises(UnsupportedNetworkError) as info:
        from_torch(nn.Sequential(nn.Linear(3, 3), nn.Sigmoid(), nn.Linear(3, 1)))
    assert "Sigmoid" in str(info.value) and "Linear" in str(info.value)


def test_torch_custom_module_forward_is_checked():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3)

        def forward(self, x):
            return x + self.fc2(self.act(self.fc1(x)))

    class Plain(Residual):
        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    assert from_torch(Plain()).layer_sizes() == (3, 3, 3)
    with pytest.raises(UnsupportedNetworkError, match="registration order"):
        from_torch(Residual())


# ---------------------------------------------------------------- load_network
def test_load_network_dispatch(tmp_path):
    net = random_network((3, 4, 2))
    assert load_network(net) is net
    save_onnx(net, tmp_path / "n.onnx")
    save_nnet(net, tmp_path / "n.nnet")
    assert same_weights(load_network(tmp_path / "n.onnx"), net)
    assert same_weights(load_network(str(tmp_path / "n.nnet")), net)
    (tmp_path / "n.h5").write_text("x")
    with pytest.raises(InputError, match=r"\.onnx.*\.nnet"):
        load_network(tmp_path / "n.h5")
    with pytest.raises(InputError, match="no such file"):
        load_network(tmp_path / "absent.onnx")
    with pytest.raises(InputError):
        load_network(42)


# ---- reading ONNX without the onnx package's start-up (verify.onnx_proto) ----------
_DTYPES = [np.float32, np.float64, np.float16, np.int8, np.uint8, np.int16, np.uint16,
           np.int32, np.int64, np.uint32, np.uint64, np.bool_]


@pytest.mark.parametrize("dtype", _DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_tensors_read_as_the_onnx_package_reads_them(dtype, raw):
    from verify.onnx_proto import tensor_to_array
    values = (np.arange(-3, 9).reshape(3, 4) * 1.5).astype(dtype)
    if raw:
        tensor = numpy_helper.from_array(values, "t")
    else:
        kind = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        # (make_tensor stores a typed float16 as the bits of each half in int32_data)
        tensor = helper.make_tensor("t", kind, values.shape, values.flatten().tolist(), raw=False)
    ours, theirs = tensor_to_array(tensor), numpy_helper.to_array(tensor)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert np.array_equal(ours, theirs) and np.array_equal(ours, values)


def test_attributes_read_as_the_onnx_package_reads_them():
    from verify.onnx_proto import attribute_value, tensor_to_array
    sub = helper.make_graph([], "g", [], [])
    node = helper.make_node("Op", [], [], f=0.5, i=3, s="same", t=numpy_helper.from_array(
        np.ones(2, np.float32)), fs=[1.0, 2.5], is_=[1, 2], ss=["a", "b"], g=sub)
    for attr in node.attribute:
        ours, theirs = attribute_value(attr), helper.get_attribute_value(attr)
        if isinstance(theirs, onnx.TensorProto):
            assert np.array_equal(tensor_to_array(ours), numpy_helper.to_array(theirs))
        else:
            assert ours == theirs, attr.name


def test_loading_an_onnx_network_does_not_import_the_onnx_package(tmp_path):
    """The CLI's start-up on an ONNX instance skips ``import onnx`` (about 1 s)."""
    import subprocess
    import sys
    net = Network((Affine(np.ones((3, 2)), np.zeros(3)), Affine(np.ones((1, 3)), np.zeros(1))))
    save_onnx(net, tmp_path / "n.onnx")
    code = ("import sys; from verify.loading import load_network; "
            f"n = load_network({str(tmp_path / 'n.onnx')!r}); "
            "print(n.digest(), 'onnx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert out == [load_network(tmp_path / "n.onnx").digest(), "False"]
