"""Write a :class:`GraphNetwork` as a standard ONNX model that onnxruntime runs.

:func:`save_graph_onnx` writes opset 13, float32 by default (``dtype=np.float64`` writes the
parameters exactly, but onnxruntime's CPU provider has no float64 Conv), and can keep the input and output of an original model (``like``):
names, shapes (a symbolic batch axis too: leading size-1 axes of reshapes are written as
``0``, "copy", so any batch size runs) and element type (a Cast is added where the element
type differs from ``dtype``).

A Gemm or Conv that carries ``weight_int`` / ``weight_scale`` (a quantized layer) is written
as QDQ when its integers fit int8 and ``dtype`` is float32: an int8 initializer, a float32
scale per output channel and a zero point of 0 feeding ``DequantizeLinear(axis=0)``, so the
file holds one byte per weight.  onnxruntime dequantizes in float32; the loader
(:mod:`verify.graph.onnx_graph`) reads such weights back exactly as ``q * scale`` in float64,
so ``load(save(g))`` equals ``g`` when the scales are float32 numbers.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..onnx_io import OPSET
from .model import GraphNetwork
from .ops import Conv, Gemm, Pad, Relu, Reshape, Scale, Sum, Transpose


def save_graph_onnx(graph: GraphNetwork, path, *, like=None, input_name: str = "input",
                    output_name: str = "output", dtype=np.float32) -> None:
    """Write ``graph`` to ``path`` (gzipped when it ends in ``.gz``).

    ``like``: an original model (path or ``ModelProto``) whose input and output names,
    shapes and element types the file keeps (they must hold as many values as the graph's)."""
    model = graph_to_onnx(graph, like=like, input_name=input_name, output_name=output_name,
                          dtype=dtype)
    from ..atomic import atomic_write
    data = model.SerializeToString()
    path = Path(path)
    try:  # a temporary file renamed into place: never a partial model
        atomic_write(path, gzip.compress(data) if path.suffix.lower() == ".gz" else data)
    except OSError as exc:
        raise InputError(f"cannot write: {exc.strerror or exc}", path=str(path)) from None


def graph_to_onnx(graph: GraphNetwork, *, like=None, input_name: str = "input",
                  output_name: str = "output", dtype=np.float32):
    """The ``ModelProto`` of ``graph`` (see :func:`save_graph_onnx`)."""
    import onnx
    from onnx import helper
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, not {dtype}")
    work_type = helper.np_dtype_to_tensor_dtype(dtype)
    in_info, out_info = _signature(graph, like, input_name, output_name, work_type)
    writer = _Writer(graph, dtype)
    first = in_info.name
    if in_info.type.tensor_type.elem_type != work_type:
        writer.nodes.append(helper.make_node("Cast", [first], ["input.cast"], to=work_type))
        first = "input.cast"
    writer.names[0] = first
    for i, node in enumerate(graph.nodes[1:], 1):
        writer.write(i, node)
    last = writer.names[graph.output]
    out_type = out_info.type.tensor_type.elem_type
    if out_type != work_type:
        writer.nodes.append(helper.make_node("Cast", [last], [out_info.name], to=out_type))
    else:
        writer.rename(last, out_info.name)
    g = helper.make_graph(writer.nodes, graph.name, [in_info], [out_info],
                          initializer=writer.inits)
    model = helper.make_model(g, producer_name="coreproof",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # opset 13 needs IR >= 7; older runtimes read 8
    onnx.checker.check_model(model)
    return model


def _signature(graph: GraphNetwork, like, input_name, output_name, work_type):
    """Input and output ValueInfos: the original's when ``like`` is given."""
    from onnx import helper
    if like is None:
        return (helper.make_tensor_value_info(input_name, work_type, list(graph.input_shape)),
                helper.make_tensor_value_info(output_name, work_type,
                                              list(graph.nodes[-1].shape)))
    if isinstance(like, (str, Path)):
        from ..loading import read_onnx_model
        like = read_onnx_model(like)
    inits = {i.name for i in like.graph.initializer}
    ins = [i for i in like.graph.input if i.name not in inits]
    if len(ins) != 1 or len(like.graph.output) != 1:
        raise InputError("the model to copy the signature from needs one input and one output")
    out = []
    for info, size, shape in ((ins[0], graph.n_inputs, graph.input_shape),
                              (like.graph.output[0], graph.n_outputs, graph.nodes[-1].shape)):
        tensor_type = info.type.tensor_type
        if not tensor_type.HasField("shape"):  # keep the name and type, give the shape
            out.append(helper.make_tensor_value_info(info.name, tensor_type.elem_type or
                                                     work_type, list(shape)))
            continue
        dims = tensor_type.shape.dim
        static = int(np.prod([d.dim_value if d.HasField("dim_value") else 1 for d in dims]))
        if static != size:
            raise InputError(f"'{info.name}' of the original holds {static} values, the graph "
                             f"{size}", expected="a graph of the original's input and output sizes")
        copy = type(info)()
        copy.CopyFrom(info)
        out.append(copy)
    return out[0], out[1]


class _Writer:
    def __init__(self, graph: GraphNetwork, dtype):
        self.graph = graph
        self.dtype = dtype
        self.nodes: list = []
        self.inits: list = []
        self.names: dict[int, str] = {}

    def const(self, name: str, value, dtype=None) -> str:
        from onnx import numpy_helper
        array = np.asarray(value, dtype=dtype or self.dtype)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op_type: str, inputs, output: str, **attrs) -> str:
        from onnx import helper
        self.nodes.append(helper.make_node(op_type, list(inputs), [output],
                                           name=f"{output}.{op_type}", **attrs))
        return output

    def rename(self, old: str, new: str) -> None:
        for n in self.nodes:
            for k, o in enumerate(n.output):
                if o == old:
                    n.output[k] = new
            for k, x in enumerate(n.input):
                if x == old:
                    n.input[k] = new

    def weight(self, tag: str, op) -> str:
        """The weight tensor: an initializer, or QDQ for a quantized layer: int8 when its
        integers fit (int4 codes too), else int32 (int16 codes: exact where a float32
        ``q * scale`` would round)."""
        wi = op.weight_int
        if wi is None or self.dtype != np.float32 or np.abs(wi).max(initial=0) >= 2 ** 31:
            return self.const(f"{tag}.weight", op.weight)
        itype = np.int8 if wi.min() >= -128 and wi.max() <= 127 else np.int32
        q = self.const(f"{tag}.weight_q", wi, itype)
        scale = self.const(f"{tag}.weight_scale", op.weight_scale, np.float32)
        zero = self.const(f"{tag}.weight_zero", np.zeros(len(op.weight_scale)), itype)
        return self.node("DequantizeLinear", [q, scale, zero], f"{tag}.weight", axis=0)

    def write(self, i: int, node) -> None:
        op, tag = node.op, f"/{i}/{node.op.kind}"  # apart from any name of the original
        xs = [self.names[j] for j in node.inputs]
        in_shape = self.graph.nodes[node.inputs[0]].shape
        if isinstance(op, Gemm):
            w, b = self.weight(tag, op), self.const(f"{tag}.bias", op.bias)
            if len(in_shape) == 2:
                out = self.node("Gemm", [xs[0], w, b], tag, transB=1)
            else:
                wt = self.node("Transpose", [w], f"{tag}.weight_t", perm=[1, 0])
                out = self.node("Add", [self.node("MatMul", [xs[0], wt], f"{tag}.mm"), b], tag)
        elif isinstance(op, Conv):
            w, b = self.weight(tag, op), self.const(f"{tag}.bias", op.bias)
            out = self.node("Conv", [xs[0], w, b], tag, kernel_shape=list(op.weight.shape[2:]),
                            strides=list(op.strides), pads=list(op.pads),
                            dilations=list(op.dilations), group=op.groups)
        elif isinstance(op, Scale):
            mul, add = not np.all(op.scale == 1.0), not np.all(op.shift == 0.0)
            out = xs[0]
            if mul:
                out = self.node("Mul", [out, self.const(f"{tag}.scale", op.scale)],
                                f"{tag}.mul" if add else tag)
            if add:
                out = self.node("Add", [out, self.const(f"{tag}.shift", op.shift)], tag)
            if not (mul or add):
                out = self.node("Identity", [out], tag)
        elif isinstance(op, Sum):
            out = self.sum(tag, xs, op.weights)
        elif isinstance(op, Reshape):
            target = list(op.shape)
            if target and target[0] == 1 and in_shape and in_shape[0] == 1:
                target[0] = 0  # copy the (batch) axis
            out = self.node("Reshape", [xs[0], self.const(f"{tag}.shape", target, np.int64)], tag)
        elif isinstance(op, Transpose):
            out = self.node("Transpose", xs, tag, perm=list(op.perm))
        elif isinstance(op, Pad):
            pads = self.const(f"{tag}.pads", op.pads, np.int64)
            out = self.node("Pad", [xs[0], pads, self.const(f"{tag}.value", op.value)], tag,
                            mode="constant")
        elif isinstance(op, Relu):
            out = self.node("Relu", xs, tag)
        else:  # pragma: no cover - every operator of the model is listed above
            raise TypeError(f"no ONNX form for {op.kind}")
        self.names[i] = out

    def sum(self, tag: str, xs, weights) -> str:
        if len(xs) == 2 and weights == (1.0, -1.0):
            return self.node("Sub", xs, tag)
        terms = [x if w == 1.0 else self.node("Mul", [x, self.const(f"{tag}.w{k}", w)],
                                                f"{tag}.term{k}")
                 for k, (x, w) in enumerate(zip(xs, weights))]
        return self.node("Add" if len(terms) == 2 else "Sum", terms, tag)
