"""Reading ONNX as graph networks (verify.graph.onnx_graph) and writing them back
(verify.graph.onnx_write): every operator and attribute combination against onnxruntime,
the shared benchmark networks against onnxruntime, exact folding, the exact MaxPool rewrite,
gzipped files, unsupported graphs, and graph -> ONNX -> onnxruntime round trips."""
from __future__ import annotations

import csv
import gzip
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_bad_input
from verify.errors import InputError, UnsupportedNetworkError
from verify.graph import Conv, Gemm, GraphNetwork, Node, Pad, Relu, Reshape, Scale, Sum, Transpose
from verify.graph.onnx_graph import graph_from_model, load_graph_onnx
from verify.graph.onnx_write import graph_to_onnx, save_graph_onnx
from verify.loading import load_network
from verify.network import Network
from verify.onnx_io import load_onnx
from verify.vnnlib import load_vnnlib

torch.set_num_threads(1)


# ---------------------------------------------------------------- helpers
def f32(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def i64(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.int64), name)


def make_model(nodes, in_shape, inits=(), opset=13, in_type=TensorProto.FLOAT):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", in_type, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def run_ort(model, x: np.ndarray, shape, dtype=np.float32) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.stack([sess.run(None, {name: xi.reshape(shape).astype(dtype)})[0].reshape(-1)
                     for xi in x])


def assert_float32_close(out, ref):
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * max(1.0, np.abs(ref).max()))


def kinds(g: GraphNetwork) -> list[str]:
    return [n.op.kind for n in g.nodes[1:]]


rng = np.random.default_rng(0)


def rand(*shape, scale=0.5):
    return rng.normal(scale=scale, size=shape).astype(np.float32)


def head(x, c, h, w, name="y", n_out=3):
    """Flatten + Gemm to a small output (so every case ends in a vector)."""
    nodes = [helper.make_node("Flatten", [x], [x + ".flat"], axis=1),
             helper.make_node("Gemm", [x + ".flat", "head.w", "head.b"], [name], transB=1)]
    return nodes, [f32("head.w", rand(n_out, c * h * w)), f32("head.b", rand(n_out))]


def conv(x, out, w, b=None, **attrs):
    inputs = [x, w] + ([b] if b else [])
    return helper.make_node("Conv", inputs, [out], **attrs)


# ---------------------------------------------------------------- synthetic cases
def case_conv_asymmetric_pads_dilation():
    n, i = head("r", 4, 7, 4)
    return make_model([conv("x", "c", "w", "b", pads=[0, 1, 2, 0], strides=[1, 2],
                            dilations=[2, 1]), helper.make_node("Relu", ["c"], ["r"])] + n,
                      [1, 3, 9, 8], [f32("w", rand(4, 3, 3, 2)), f32("b", rand(4))] + i)


def case_conv_groups():
    n, i = head("r", 6, 7, 7)
    return make_model([conv("x", "c", "w", "b", pads=[1, 1, 1, 1], group=2),
                       helper.make_node("Relu", ["c"], ["r"])] + n,
                      [1, 4, 7, 7], [f32("w", rand(6, 2, 3, 3)), f32("b", rand(6))] + i)


@pytest.fixture(params=["SAME_UPPER", "SAME_LOWER", "VALID"])
def case_conv_auto_pad(request):
    out = {"VALID": 2, "SAME_UPPER": 4, "SAME_LOWER": 4}[request.param]
    n, i = head("r", 2, out, out)
    return make_model([conv("x", "c", "w", "b", auto_pad=request.param, strides=[2, 2]),
                       helper.make_node("Relu", ["c"], ["r"])] + n,
                      [1, 2, 7, 7], [f32("w", rand(2, 2, 4, 4)), f32("b", rand(2))] + i)


def _bn_inits(c, tag="bn"):
    return [f32(f"{tag}.g", rng.uniform(0.5, 2, c)), f32(f"{tag}.b", rand(c)),
            f32(f"{tag}.m", rand(c)), f32(f"{tag}.v", rng.uniform(0.5, 2, c))]


def _bn(x, out, tag="bn"):
    return helper.make_node("BatchNormalization", [x] + [f"{tag}.{k}" for k in "gbmv"], [out],
                            epsilon=1e-3)


def case_bn_after_conv():
    n, i = head("r", 4, 5, 5)
    return make_model([conv("x", "c", "w", "b"), _bn("c", "n"),
                       helper.make_node("Relu", ["n"], ["r"])] + n, [1, 2, 7, 7],
                      [f32("w", rand(4, 2, 3, 3)), f32("b", rand(4))] + _bn_inits(4) + i)


def case_bn_after_gemm():
    return make_model([helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1), _bn("g", "n"),
                       helper.make_node("Relu", ["n"], ["r"]),
                       helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)], [1, 6],
                      [f32("w", rand(5, 6)), f32("b", rand(5)), f32("w2", rand(3, 5)),
                       f32("b2", rand(3))] + _bn_inits(5))


def case_bn_after_relu():
    n, i = head("n", 4, 5, 5)
    return make_model([conv("x", "c", "w", "b"), helper.make_node("Relu", ["c"], ["r"]),
                       _bn("r", "n")] + n, [1, 2, 7, 7],
                      [f32("w", rand(4, 2, 3, 3)), f32("b", rand(4))] + _bn_inits(4) + i)


@pytest.fixture(params=[(0, [1, 1, 1, 1]), (1, [1, 1, 1, 1]), (0, [0, 1, 1, 0]),
                        (0, [0, 0, 0, 0])], ids=["exclude-pad", "include-pad", "asym", "no-pad"])
def case_average_pool(request):
    include, pads = request.param
    h = (8 + pads[0] + pads[2] - 3) // 2 + 1
    w = (8 + pads[1] + pads[3] - 3) // 2 + 1
    n, i = head("p", 3, h, w)
    return make_model([conv("x", "c", "w", "b", pads=[1, 1, 1, 1]),
                       helper.make_node("Relu", ["c"], ["r"]),
                       helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[3, 3],
                                        strides=[2, 2], pads=pads, count_include_pad=include)]
                      + n, [1, 2, 8, 8], [f32("w", rand(3, 2, 3, 3)), f32("b", rand(3))] + i)


def case_global_average_pool():
    return make_model([conv("x", "c", "w", "b"), helper.make_node("Relu", ["c"], ["r"]),
                       helper.make_node("GlobalAveragePool", ["r"], ["p"]),
                       helper.make_node("Flatten", ["p"], ["f"]),
                       helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1)],
                      [1, 2, 6, 6], [f32("w", rand(3, 2, 3, 3)), f32("b", rand(3)),
                                     f32("w2", rand(2, 3)), f32("b2", rand(2))])


MAXPOOLS = {"2x2s2": dict(kernel_shape=[2, 2], strides=[2, 2]),
            "3x3s2": dict(kernel_shape=[3, 3], strides=[2, 2]),
            "3x3s2p1": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
            "2x3s1d2": dict(kernel_shape=[2, 3], strides=[1, 1], dilations=[2, 1], pads=[0, 1, 1, 0])}


def _pool_out(size, kernel, stride, pad, dilation=1):
    return (size + pad - dilation * (kernel - 1) - 1) // stride + 1


@pytest.fixture(params=list(MAXPOOLS))
def case_max_pool(request):
    attrs = MAXPOOLS[request.param]
    (kh, kw), (sh, sw) = attrs["kernel_shape"], attrs["strides"]
    t, l, b, r = attrs.get("pads", [0] * 4)
    d = attrs.get("dilations", [1, 1])
    n, i = head("p", 3, _pool_out(9, kh, sh, t + b, d[0]), _pool_out(9, kw, sw, l + r, d[1]))
    return make_model([conv("x", "c", "w", "b", pads=[1, 1, 1, 1]),
                       helper.make_node("MaxPool", ["c"], ["p"], **attrs)] + n,
                      [1, 2, 9, 9], [f32("w", rand(3, 2, 3, 3)), f32("b", rand(3))] + i)


def case_residual_add_and_sub():
    n, i = head("o", 3, 6, 6)
    return make_model([conv("x", "c1", "w1", "b1", pads=[1, 1, 1, 1]),
                       helper.make_node("Relu", ["c1"], ["r1"]),
                       conv("r1", "c2", "w2", "b2", pads=[1, 1, 1, 1]),
                       helper.make_node("Add", ["c2", "r1"], ["s"]),
                       helper.make_node("Relu", ["s"], ["r2"]),
                       helper.make_node("Sub", ["r2", "c1"], ["d"]),
                       helper.make_node("Relu", ["d"], ["o"])] + n, [1, 2, 6, 6],
                      [f32("w1", rand(3, 2, 3, 3)), f32("b1", rand(3)),
                       f32("w2", rand(3, 3, 3, 3)), f32("b2", rand(3))] + i)


def case_pad_opset13():
    n, i = head("c", 2, 9, 8)
    return make_model([helper.make_node("Pad", ["x", "pads", "value"], ["p"], mode="constant"),
                       conv("p", "c", "w", "b")] + n, [1, 2, 6, 5],
                      [i64("pads", [0, 0, 1, 2, 0, 0, 3, 2]), f32("value", 0.5),
                       f32("w", rand(2, 2, 2, 2)), f32("b", rand(2))] + i)


def case_pad_opset9_attribute():
    n, i = head("c", 2, 6, 6)
    return make_model([helper.make_node("Pad", ["x"], ["p"], mode="constant",
                                        pads=[0, 0, 1, 0, 0, 0, 0, 1], value=-1.0),
                       conv("p", "c", "w", "b")] + n, [1, 2, 6, 6],
                      [f32("w", rand(2, 2, 2, 2)), f32("b", rand(2))] + i, opset=9)


def case_nhwc_transpose():
    return make_model([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
                       conv("t", "c", "w", "b", strides=[2, 2]),
                       helper.make_node("Relu", ["c"], ["r"]),
                       helper.make_node("Transpose", ["r"], ["t2"], perm=[0, 2, 3, 1]),
                       helper.make_node("Reshape", ["t2", "shape"], ["f"]),
                       helper.make_node("MatMul", ["f", "w2"], ["m"]),
                       helper.make_node("Add", ["m", "b2"], ["y"])], [1, 7, 7, 3],
                      [f32("w", rand(4, 3, 3, 3)), f32("b", rand(4)), i64("shape", [-1, 36]),
                       f32("w2", rand(36, 5)), f32("b2", rand(5))])


def case_normalisation_sub_div():
    n, i = head("c", 2, 4, 4)
    return make_model([helper.make_node("Sub", ["x", "mean"], ["s"]),
                       helper.make_node("Div", ["s", "std"], ["d"]),
                       conv("d", "c", "w", "b")] + n, [1, 3, 6, 6],
                      [f32("mean", rng.uniform(0.3, 0.6, (1, 3, 1, 1))),
                       f32("std", rng.uniform(0.2, 0.3, (1, 3, 1, 1))),
                       f32("w", rand(2, 3, 3, 3)), f32("b", rand(2))] + i)


def case_constant_first_operands():
    """c - x, c * x, c + x and an ONNX Sum of computed tensors and a constant."""
    n, i = head("s", 2, 4, 4)
    return make_model([helper.make_node("Sub", ["c1", "x"], ["a"]),
                       helper.make_node("Mul", ["c2", "a"], ["m"]),
                       helper.make_node("Add", ["c3", "m"], ["p"]),
                       conv("p", "c", "w", "b"), helper.make_node("Relu", ["c"], ["r"]),
                       helper.make_node("Sum", ["r", "c", "c4"], ["s"])] + n, [1, 3, 6, 6],
                      [f32("c1", rand(3, 1, 1)), f32("c2", rand(1, 6)), f32("c3", rand(6, 6)),
                       f32("c4", rand(2, 1, 1)), f32("w", rand(2, 3, 3, 3)),
                       f32("b", rand(2))] + i)


def case_constants_mul_neg_matmul_left():
    """Mul/Neg/Add by constants, a MatMul with the constant on the left, Identity, Dropout,
    Squeeze/Unsqueeze and a Shape-Gather-Concat flatten (constant-folded)."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m"]),
             helper.make_node("Add", ["m", "b1"], ["a"]),
             helper.make_node("Mul", ["a", "k"], ["mk"]),
             helper.make_node("Relu", ["mk"], ["r"]),
             helper.make_node("Neg", ["r"], ["n"]),
             helper.make_node("Identity", ["n"], ["i"]),
             helper.make_node("Dropout", ["i"], ["d"]),
             helper.make_node("Unsqueeze", ["d", "ax"], ["u"]),  # (1, 1, 4)
             helper.make_node("Squeeze", ["u", "ax"], ["q"]),  # (1, 4)
             helper.make_node("Transpose", ["q"], ["qt"]),  # (4, 1)
             helper.make_node("MatMul", ["w2", "qt"], ["l"]),  # (3, 1)
             helper.make_node("Shape", ["l"], ["sh"]),
             helper.make_node("Gather", ["sh", "zero"], ["g"], axis=0),
             helper.make_node("Unsqueeze", ["g", "ax0"], ["g1"]),
             helper.make_node("Concat", ["g1", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["l", "target"], ["y"])]
    return make_model(nodes, [1, 6], [f32("w1", rand(6, 4)), f32("b1", rand(4)),
                                      f32("k", rand(4)), i64("ax", [1]), i64("ax0", [0]),
                                      f32("w2", rand(3, 4)), i64("zero", 0),
                                      i64("minus1", [-1])])


def case_quantized_weights():
    """Weights given as DequantizeLinear of int8 constants (per channel and per tensor)."""
    q1, s1 = rng.integers(-127, 128, (4, 2, 3, 3)).astype(np.int8), rng.uniform(.01, .05, 4)
    q2 = rng.integers(-127, 128, (3, 4 * 5 * 5)).astype(np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["q1", "s1", "z1"], ["w1"], axis=0),
             conv("x", "c", "w1", "b1"), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("DequantizeLinear", ["q2", "s2"], ["w2"]),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1)]
    return make_model(nodes, [1, 2, 7, 7], [
        numpy_helper.from_array(q1, "q1"), f32("s1", s1),
        numpy_helper.from_array(np.zeros(4, np.int8), "z1"), f32("b1", rand(4)),
        numpy_helper.from_array(q2, "q2"), f32("s2", 0.02), f32("b2", rand(3))])


CASES = [case_conv_asymmetric_pads_dilation, case_conv_groups, case_bn_after_conv,
         case_bn_after_gemm, case_bn_after_relu, case_global_average_pool,
         case_residual_add_and_sub, case_pad_opset13, case_pad_opset9_attribute,
         case_nhwc_transpose, case_normalisation_sub_div, case_constant_first_operands,
         case_constants_mul_neg_matmul_left,
         case_quantized_weights]


def _check_against_ort(model, tmp_path):
    g = graph_from_model(model, "synthetic.onnx", "synthetic")
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).normal(size=(8, g.n_inputs)).astype(np.float32)
    x = x.astype(np.float64)
    assert_float32_close(g.forward(x), run_ort(model, x, shape))
    # and written back: onnxruntime runs the written file and agrees with the graph
    path = tmp_path / "written.onnx"
    save_graph_onnx(g, path, like=model)
    assert_float32_close(g.forward(x), run_ort(path, x, shape))
    return g


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_synthetic_operator_matches_onnxruntime(case, tmp_path):
    _check_against_ort(case(), tmp_path)


def test_conv_auto_pad_matches_onnxruntime(case_conv_auto_pad, tmp_path):
    _check_against_ort(case_conv_auto_pad, tmp_path)


def test_average_pool_matches_onnxruntime(case_average_pool, tmp_path):
    g = _check_against_ort(case_average_pool, tmp_path)
    assert kinds(g).count("Conv") == 2  # the pool is a depthwise Conv (plus a count Scale)


def test_max_pool_matches_onnxruntime(case_max_pool, tmp_path):
    _check_against_ort(case_max_pool, tmp_path)


def test_folding_is_structural():
    """BatchNormalization after a Conv/Gemm and an Add after MatMul fold into the layer;
    after a ReLU the BN stays a Scale; normalisation is one Scale per constant."""
    assert kinds(graph_from_model(case_bn_after_conv(), "p", "n")) == \
        ["Conv", "Relu", "Reshape", "Gemm"]
    assert kinds(graph_from_model(case_bn_after_gemm(), "p", "n")) == ["Gemm", "Relu", "Gemm"]
    assert "Scale" in kinds(graph_from_model(case_bn_after_relu(), "p", "n"))
    g = graph_from_model(case_constants_mul_neg_matmul_left(), "p", "n")
    # MatMul + Add + Mul(float32 constant) fold exactly into one Gemm; Neg too (into nothing
    # before a ReLU output, so it stays a Scale)
    assert kinds(g)[:3] == ["Gemm", "Relu", "Scale"] and np.any(g.nodes[1].op.bias != 0)
    q = graph_from_model(case_quantized_weights(), "p", "n")
    conv_op, gemm_op = q.nodes[1].op, q.nodes[-1].op
    assert conv_op.weight_int is not None and gemm_op.weight_int is not None
    assert np.array_equal(gemm_op.weight_scale, np.full(3, np.float32(0.02), dtype=np.float64))


def test_inexact_bias_fold_keeps_a_scale():
    """An Add whose float64 sum with the bias would round is not folded."""
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1),
             helper.make_node("Add", ["g", "c"], ["y"])]
    model = make_model(nodes, [1, 2], [f32("w", rand(2, 2)), f32("b", [1e30, 1.0]),
                                       f32("c", [1.0, 1e-30])])
    g = graph_from_model(model, "p", "n")
    assert kinds(g) == ["Gemm", "Scale"]
    exact = make_model(nodes, [1, 2], [f32("w", rand(2, 2)), f32("b", [1.5, 1.0]),
                                       f32("c", [0.25, 2.0])])
    assert kinds(graph_from_model(exact, "p", "n")) == ["Gemm"]


@pytest.mark.parametrize("name", list(MAXPOOLS))
def test_max_pool_rewrite_is_exact(name):
    """The ReLU rewrite is the max itself: on inputs where float64 arithmetic is exact
    (multiples of 1/64) it equals torch's max_pool2d to the last bit, padding included,
    and on any input to float64 rounding."""
    attrs = MAXPOOLS[name]
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], **attrs)]
    g = graph_from_model(make_model(nodes, [1, 3, 9, 9]), "p", "n")
    pads = attrs.get("pads", [0, 0, 0, 0])
    r = np.random.default_rng(2)
    for x, exact in ((r.integers(-256, 256, (16, 243)) / 64.0, True),
                     (r.normal(size=(16, 243)), False)):
        xt = torch.nn.functional.pad(torch.from_numpy(x).reshape(16, 3, 9, 9),
                                     (pads[1], pads[3], pads[0], pads[2]), value=-np.inf)
        ref = torch.nn.functional.max_pool2d(xt, tuple(attrs["kernel_shape"]),
                                             tuple(attrs["strides"]), 0,
                                             attrs.get("dilations", 1))
        ref = ref.reshape(16, -1).numpy()
        if exact:
            assert np.array_equal(g.forward(x), ref)
        else:
            np.testing.assert_allclose(g.forward(x), ref, rtol=0, atol=1e-14)
    kh, kw = attrs["kernel_shape"]
    assert g.n_hidden == int(np.ceil(np.log2(kh * kw)))  # one ReLU node per tree level
    assert g.n_relus >= ref.size // 16 * (kh * kw - 1)


# ---------------------------------------------------------------- benchmark networks
BENCHMARK_NETS = [
    ("verivital", "Convnet_avgpool.onnx"), ("verivital", "Convnet_maxpool.onnx"),
    ("oval21", "nets/cifar_base_kw.onnx"), ("oval21", "nets/cifar_deep_kw.onnx"),
    ("oval21", "nets/cifar_wide_kw.onnx"),
    ("cifar10_resnet", "onnx/resnet_2b.onnx"), ("cifar10_resnet", "onnx/resnet_4b.onnx"),
    ("marabou-cifar10", "nets/cifar10_small.onnx"), ("marabou-cifar10", "nets/cifar10_medium.onnx"),
    ("eran", "nets/mnist_relu_9_200.onnx"),
    ("mnistfc", "mnist-net_256x2.onnx"), ("mnistfc", "mnist-net_256x4.onnx"),
    ("mnistfc", "mnist-net_256x6.onnx"),
    ("acasxu", "ACASXU_run2a_1_1_batch_2000.onnx"), ("acasxu", "ACASXU_run2a_3_3_batch_2000.onnx"),
    ("acasxu", "ACASXU_run2a_5_9_batch_2000.onnx"),
]
CHAIN_BENCHMARKS = ("eran", "mnistfc", "acasxu")


def _property_of(data_dir, bench, onnx_name):
    """The first property the benchmark's instances csv pairs with this network."""
    csv_path = next((data_dir / bench).glob("*instances.csv"))
    with open(csv_path, newline="") as fh:
        for row in csv.reader(fh):
            if row and row[0].strip() == onnx_name:
                return data_dir / bench / row[1].strip()
    raise AssertionError(f"{onnx_name} not in {csv_path}")


@pytest.mark.parametrize("bench,onnx_name", BENCHMARK_NETS,
                         ids=[f"{b}/{n.split('/')[-1][:-5]}" for b, n in BENCHMARK_NETS])
def test_benchmark_network_matches_onnxruntime(data_dir, bench, onnx_name):
    path = data_dir / bench / onnx_name
    net = load_network(path)
    assert isinstance(net, Network if bench in CHAIN_BENCHMARKS else GraphNetwork)
    assert net.name == path.stem
    region = load_vnnlib(_property_of(data_dir, bench, onnx_name), net.n_inputs,
                         net.n_outputs).regions[0]
    r = np.random.default_rng(3)
    x = region.lower + r.uniform(size=(12, net.n_inputs)) * (region.upper - region.lower)
    x = x.astype(np.float32).astype(np.float64)
    ref = run_ort(path, x, net.input_shape)
    assert_float32_close(net.forward(x), ref)
    if bench in CHAIN_BENCHMARKS:  # the graph loader reads the chains as the chain loader
        g = load_graph_onnx(path)
        np.testing.assert_allclose(g.forward(x), net.forward(x), rtol=1e-12, atol=1e-12)
        assert g.hidden_sizes == net.hidden_sizes


def test_marabou_nhwc_input_is_numbered_as_vnnlib_numbers_it(data_dir):
    """marabou-cifar10's input is NHWC (x:0 of shape [unk, 32, 32, 3]) with a Transpose to
    NCHW; VNN-LIB numbers the NHWC tensor in C order, so the box centre (the image) is
    classified as its label, and read in NCHW order it mostly is not."""
    base = data_dir / "marabou-cifar10"
    net = load_network(base / "nets" / "cifar10_small.onnx")
    assert net.input_shape == (1, 32, 32, 3)
    right = wrong = 0
    props = sorted((base / "specs").glob("networkcifar10_small_*"))[:12]
    for p in props:
        label = int(re.search(r"orig(\d)", p.name).group(1))
        region = load_vnnlib(p, net.n_inputs, net.n_outputs).regions[0]
        image = (region.lower + region.upper) / 2
        right += int(np.argmax(net.forward(image)) == label)
        as_nchw = image.reshape(3, 32, 32).transpose(1, 2, 0).reshape(-1)
        wrong += int(np.argmax(net.forward(as_nchw)) == label)
    assert right == len(props) and wrong < len(props) // 2


def test_written_benchmark_keeps_signature_and_dynamic_batch(data_dir, tmp_path):
    src = data_dir / "marabou-cifar10" / "nets" / "cifar10_small.onnx"
    g = load_network(src)
    out = tmp_path / "copy.onnx"
    save_graph_onnx(g, out, like=src)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    orig = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    for a, b in ((sess.get_inputs()[0], orig.get_inputs()[0]),
                 (sess.get_outputs()[0], orig.get_outputs()[0])):
        assert (a.name, a.shape, a.type) == (b.name, b.shape, b.type)
    x = np.random.default_rng(4).uniform(0, 1, (2, g.n_inputs)).astype(np.float32)
    y = sess.run(None, {"x:0": x.reshape(2, 32, 32, 3)})[0]  # a batch of two
    assert_float32_close(y, g.forward(x.astype(np.float64)))
    assert load_network(out).digest() == g.digest()


# ---------------------------------------------------------------- gzip
def test_gzipped_onnx_loads_like_the_plain_file(tmp_path):
    model = case_residual_add_and_sub()
    plain, packed = tmp_path / "res.onnx", tmp_path / "res.onnx.gz"
    onnx.save(model, str(plain))
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    a, b = load_network(plain), load_network(packed)
    assert isinstance(b, GraphNetwork) and b.name == "res" and a.digest() == b.digest()
    acas = tmp_path / "acas.onnx.gz"
    src = Path(__file__).resolve().parents[1] / "examples" / "acasxu" / \
        "ACASXU_run2a_1_1_batch_2000.onnx"
    acas.write_bytes(gzip.compress(src.read_bytes()))
    chain = load_network(acas)
    assert isinstance(chain, Network) and chain.digest() == load_onnx(src).digest()
    sneaky = tmp_path / "packed-without-suffix.onnx"  # gzip is recognised by its magic
    sneaky.write_bytes(packed.read_bytes())
    assert load_network(sneaky).digest() == a.digest()
    bad = tmp_path / "bad.onnx.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match="bad.onnx.gz"):
        load_network(bad)


def test_written_gzip_round_trip(tmp_path):
    g = graph_from_model(case_conv_groups(), "p", "groups")
    save_graph_onnx(g, tmp_path / "g.onnx.gz")
    assert load_network(tmp_path / "g.onnx.gz").digest() == g.digest()


# ---------------------------------------------------------------- unsupported graphs
def _conv_then(op_type, tmp_path, **attrs):
    nodes = [conv("x", "c", "w", "b"), helper.make_node(op_type, ["c"], ["y"], name="the_node",
                                                        **attrs)]
    path = tmp_path / f"{op_type.lower()}.onnx"
    onnx.save(make_model(nodes, [1, 2, 5, 5], [f32("w", rand(2, 2, 3, 3)), f32("b", rand(2))]),
              str(path))
    return path


@pytest.mark.parametrize("op_type,attrs", [("Sigmoid", {}), ("Softmax", {"axis": 1}),
                                           ("Tanh", {})])
def test_unsupported_operator_names_the_node(op_type, attrs, tmp_path):
    path = _conv_then(op_type, tmp_path, **attrs)
    with pytest.raises(UnsupportedNetworkError) as info:
        load_network(path)
    text = str(info.value)
    assert op_type in text and "the_node" in text and str(path) in text
    assert "MaxPool" in text and "Conv" in text  # the supported set


def test_unsupported_in_a_fully_connected_graph_is_named_too(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Sigmoid", ["m"], ["y"], name="squash")]
    path = tmp_path / "sig.onnx"
    onnx.save(make_model(nodes, [1, 3], [f32("w", np.ones((3, 2)))]), str(path))
    with pytest.raises(UnsupportedNetworkError, match="Sigmoid node 'squash'"):
        load_network(path)


def test_two_inputs_and_non_constant_reshape_are_rejected(tmp_path):
    x, z = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, 4, 4]) for n in "xz")
    nodes = [conv("x", "c", "w"), helper.make_node("Add", ["c", "z"], ["y"], name="join")]
    graph = helper.make_graph(nodes, "g", [x, z], [helper.make_tensor_value_info(
        "y", TensorProto.FLOAT, None)], [f32("w", rand(2, 2, 1, 1))])
    with pytest.raises(UnsupportedNetworkError, match="2 variable inputs.*'x', 'z'"):
        graph_from_model(helper.make_model(graph), "two.onnx", "two")
    # a Reshape whose target shape is computed from the input's values
    nodes = [conv("x", "c", "w"), helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Cast", ["f"], ["s"], to=TensorProto.INT64, name="to_shape"),
             helper.make_node("Reshape", ["c", "s"], ["y"], name="reshape")]
    with pytest.raises(UnsupportedNetworkError, match="Cast node 'to_shape'.*non-float"):
        graph_from_model(make_model(nodes, [1, 2, 4, 4], [f32("w", rand(2, 2, 1, 1))]), "p", "n")
    nodes = [conv("x", "c", "w"), helper.make_node("Reshape", ["c", "x"], ["y"], name="rs")]
    with pytest.raises(UnsupportedNetworkError, match="Reshape node 'rs'.*constant"):
        graph_from_model(make_model(nodes, [1, 2, 4, 4], [f32("w", rand(2, 2, 1, 1))]), "p", "n")


def test_activation_quantization_and_maxpool_ceil_mode_are_rejected():
    nodes = [conv("x", "c", "w"), helper.make_node("QuantizeLinear", ["c", "s"], ["q"], name="qa"),
             helper.make_node("DequantizeLinear", ["q", "s"], ["y"])]
    with pytest.raises(UnsupportedNetworkError, match="QuantizeLinear node 'qa'.*activation"):
        graph_from_model(make_model(nodes, [1, 2, 4, 4], [f32("w", rand(2, 2, 1, 1)),
                                                          f32("s", 0.1)]), "p", "n")
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2],
                              ceil_mode=1, name="mp")]
    with pytest.raises(UnsupportedNetworkError, match="MaxPool node 'mp'.*ceil_mode"):
        graph_from_model(make_model(nodes, [1, 2, 5, 5]), "p", "n")


def test_non_finite_parameters_name_the_tensor(tmp_path):
    w = rand(2, 2, 3, 3)
    w[1, 0, 2, 2] = np.nan
    nodes = [conv("x", "c", "weights.bad", "b"), helper.make_node("Relu", ["c"], ["y"])]
    with pytest.raises(InputError, match="weights.bad.*NaN or Inf"):
        graph_from_model(make_model(nodes, [1, 2, 5, 5], [f32("weights.bad", w),
                                                          f32("b", rand(2))]), "p", "n")


def test_cli_reports_an_unsupported_graph_in_one_line(tmp_path):
    from verify.cli import main
    path = _conv_then("Sigmoid", tmp_path)
    prop = tmp_path / "p.vnnlib"
    prop.write_text("".join(f"(declare-const X_{i} Real)\n" for i in range(50))
                    + "".join(f"(declare-const Y_{i} Real)\n" for i in range(18))
                    + "(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= Y_0 0))\n")
    res = CliRunner().invoke(main, ["verify", str(path), str(prop)])
    assert_bad_input(res, "Sigmoid", "the_node", "sigmoid.onnx")


# ---------------------------------------------------------------- writing
def _model_graph() -> GraphNetwork:
    """A graph using every operator of the model, including weighted Sums and a Pad value."""
    r = np.random.default_rng(5)
    nodes = [Node(None, (), (1, 2, 6, 6)),
             Node(Scale(r.normal(size=(2, 1, 1)), r.normal(size=(2, 1, 1))), (0,), (1, 2, 6, 6)),
             Node(Pad((0, 0, 1, 0, 0, 0, 0, 2), 0.25), (1,), (1, 2, 7, 8)),
             Node(Conv(r.normal(size=(4, 1, 2, 3)), r.normal(size=4), (1, 2), (1, 0, 0, 1),
                       (1, 1), 2), (2,), (1, 4, 7, 4)),
             Node(Relu(), (3,), (1, 4, 7, 4)),
             Node(Sum((0.5, -2.0)), (4, 3), (1, 4, 7, 4)),
             Node(Transpose((0, 2, 3, 1)), (5,), (1, 7, 4, 4)),
             Node(Reshape((1, 112)), (6,), (1, 112)),
             Node(Gemm(r.normal(size=(9, 112)), r.normal(size=9)), (7,), (1, 9)),
             Node(Relu(), (8,), (1, 9)),
             Node(Reshape((1, 3, 3)), (9,), (1, 3, 3)),
             Node(Gemm(r.normal(size=(2, 3)), r.normal(size=2)), (10,), (1, 3, 2)),
             Node(Gemm(r.normal(size=(2, 3)), r.normal(size=2)), (10,), (1, 3, 2)),
             Node(Sum((1.0, -1.0)), (11, 12), (1, 3, 2)),
             Node(Sum((0.5, 1.0, 2.0)), (13, 11, 12), (1, 3, 2))]
    return GraphNetwork(tuple(nodes), "every-op")


def test_round_trip_graph_to_onnxruntime(tmp_path):
    g = _model_graph()
    path = tmp_path / "g.onnx"
    save_graph_onnx(g, path)
    x = np.random.default_rng(6).normal(size=(6, g.n_inputs)).astype(np.float32)
    x = x.astype(np.float64)
    assert_float32_close(g.forward(x), run_ort(path, x, g.input_shape))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "input" and sess.get_inputs()[0].type == "tensor(float)"
    assert sess.get_outputs()[0].shape == [1, 3, 2]
    # float64 files are exact: reading one back gives the same forward pass to the bit
    save_graph_onnx(g, tmp_path / "g64.onnx", dtype=np.float64)
    assert np.array_equal(load_network(tmp_path / "g64.onnx").forward(x), g.forward(x))


def _quantized_graph(quantized: bool) -> GraphNetwork:
    r = np.random.default_rng(7)
    wc = r.integers(-127, 128, (16, 3, 3, 3))
    sc = r.uniform(0.01, 0.02, 16).astype(np.float32).astype(np.float64)
    wg = r.integers(-127, 128, (10, 16 * 14 * 14))
    sg = r.uniform(0.001, 0.002, 10).astype(np.float32).astype(np.float64)
    q = (lambda wi, s: dict(weight_int=wi, weight_scale=s)) if quantized else \
        (lambda wi, s: {})
    nodes = [Node(None, (), (1, 3, 16, 16)),
             Node(Conv(wc * sc[:, None, None, None], r.normal(size=16).astype(np.float32),
                       **q(wc, sc)), (0,), (1, 16, 14, 14)),
             Node(Relu(), (1,), (1, 16, 14, 14)),
             Node(Reshape((1, 16 * 14 * 14)), (2,), (1, 3136)),
             Node(Gemm(wg * sg[:, None], r.normal(size=10).astype(np.float32), **q(wg, sg)),
                  (3,), (1, 10))]
    return GraphNetwork(tuple(nodes), "q")


def test_quantized_layers_are_written_as_int8_qdq(tmp_path):
    g, plain = _quantized_graph(True), _quantized_graph(False)
    save_graph_onnx(g, tmp_path / "q.onnx")
    save_graph_onnx(plain, tmp_path / "f.onnx")
    size_q, size_f = (tmp_path / "q.onnx").stat().st_size, (tmp_path / "f.onnx").stat().st_size
    assert size_q <= 0.3 * size_f
    model = onnx.load(str(tmp_path / "q.onnx"))
    assert [n.op_type for n in model.graph.node].count("DequantizeLinear") == 2
    assert {i.data_type for i in model.graph.initializer} >= {TensorProto.INT8}
    x = np.random.default_rng(8).uniform(0, 1, (4, g.n_inputs))
    assert_float32_close(g.forward(x), run_ort(tmp_path / "q.onnx", x, g.input_shape))
    back = load_network(tmp_path / "q.onnx")  # integers and scales come back exactly
    assert back.digest() == g.digest()
    assert np.array_equal(back.nodes[1].op.weight_int, g.nodes[1].op.weight_int)
    assert np.array_equal(back.nodes[-1].op.weight_scale, g.nodes[-1].op.weight_scale)


def test_writing_checks_the_signature_it_keeps(tmp_path):
    g = _model_graph()
    other = graph_to_onnx(graph_from_model(case_conv_groups(), "p", "n"))
    with pytest.raises(InputError, match="holds 196 values"):
        save_graph_onnx(g, tmp_path / "x.onnx", like=other)
    m = graph_to_onnx(g, input_name="image", output_name="logits", dtype=np.float64)
    assert m.graph.input[0].name == "image" and m.graph.output[0].name == "logits"
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE
