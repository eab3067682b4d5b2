"""The CNN families of the proof reuse benchmark (and the CNN compression table).

Families: ``cnn-digits`` -- a small CNN trained here on sklearn's 8x8 digits (fixed seed,
a few seconds), exported with ``torch.onnx.export`` and read back; ``verivital`` -- the two
VNN-COMP verivital conv nets with their own properties; ``oval21`` -- cifar_base_kw with
its own properties.  Variants per original: coreproof's ``channels:0.1``,
``channels:0.25``, ``magnitude:0.3``, ``int8``, ``int4`` (with change records) and two
variants made by other tools, without a change record:

* ``ort-int8``: ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel int8
  weights, 32 random calibration inputs); coreproof refuses activation
  QuantizeLinear/DequantizeLinear pairs (README), so those pairs are taken out of the
  file (its ReLUs kept: QDQKeepRemovableActivations) and the weights' DequantizeLinear
  (int8 weights, int32 biases) are kept: the
  variant is onnxruntime's weight quantization;
* ``torch-prune``: ``torch.nn.utils.prune.global_unstructured`` (L1, 20 %) on every
  Conv / Linear weight then ``prune.remove``; the digits CNN is its torch model exported
  with ``torch.onnx.export``, the ONNX-only originals get torch modules holding their
  Conv / Gemm weights, written back with coreproof's ONNX writer.
"""
from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CNN_RECIPES = ["channels:0.1", "channels:0.25", "magnitude:0.3", "int8", "int4"]
CNN_FAMILIES = ("cnn-digits", "verivital", "oval21")


@dataclass(frozen=True, eq=False)
class BenchVariant:
    recipe: str
    network: object
    record: dict | None  # None: a variant made by another tool (no change record)


# ---- the digits CNN -------------------------------------------------------------------
def _digits_cnn_model():
    import torch

    class DigitsCNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(1, 10, 3, padding=1)
            self.c2 = torch.nn.Conv2d(10, 10, 3, stride=2, padding=1)
            self.fc = torch.nn.Linear(160, 10)

        def forward(self, x):
            x = torch.relu(self.c2(torch.relu(self.c1(x))))
            return self.fc(x.flatten(1))
    return DigitsCNN()


def digits_cnn(seed: int = 0, epochs: int = 80):
    """(torch model, ONNX bytes, the loaded GraphNetwork, test inputs, test labels):
    Conv 1->10 3x3, Conv 10->10 3x3/2, Linear 160->10 on 8x8 digits (pixels / 16),
    full-batch Adam."""
    import torch
    from sklearn.datasets import load_digits

    from verify.onnx_io import load_onnx_model
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(X))
    train, test = order[:1400], order[1400:]
    model = _digits_cnn_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(X[train]).reshape(-1, 1, 8, 8), torch.from_numpy(y[train])
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    model.eval()
    data = export_onnx(model, (1, 1, 8, 8))
    import onnx
    net = load_onnx_model(onnx.load_from_string(data), "digits-cnn")
    return model, data, net, X[test].astype(np.float64), y[test]


def export_onnx(model, shape) -> bytes:
    import torch
    buf = io.BytesIO()
    torch.onnx.export(model, torch.zeros(*shape), buf, dynamo=False, input_names=["input"],
                      output_names=["output"])
    return buf.getvalue()


# ---- variants by other tools --------------------------------------------------------
def strip_activation_qdq(model):
    """The model without its QuantizeLinear -> DequantizeLinear pairs on computed tensors
    (weights' DequantizeLinear of constants kept)."""
    g = model.graph
    consts = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant"
                                                for o in n.output}
    rename, drop = {}, set()
    for n in g.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in consts:
            continue
        drop.add(n.output[0])
        for m in g.node:
            if m.op_type == "DequantizeLinear" and m.input[0] == n.output[0]:
                rename[m.output[0]] = n.input[0]
                drop.add(m.output[0])
    keep = [n for n in g.node if not set(n.output) & drop]

    def resolve(name):
        while name in rename:
            name = rename[name]
        return name
    for n in keep:
        for k, name in enumerate(n.input):
            n.input[k] = resolve(name)
    from onnx import helper
    for out in g.output:
        src = resolve(out.name)
        if src != out.name:
            keep.append(helper.make_node("Identity", [src], [out.name]))
    del g.node[:]
    g.node.extend(keep)
    return model


def ort_quantized(onnx_bytes: bytes, name: str, seed: int = 0):
    """onnxruntime's static QDQ int8 quantization of a float32 model (see the module
    docstring), loaded as a network."""
    import tempfile

    import onnx
    from onnxruntime import quantization as q

    from verify.onnx_io import load_onnx_model
    model = onnx.load_from_string(onnx_bytes)
    inp = model.graph.input[0]
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{inp.name: rng.uniform(0, 1, shape).astype(np.float32)}
                            for _ in range(32)])

        def get_next(self):
            return next(self.it, None)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f32.onnx", Path(tmp) / "q.onnx"
        src.write_bytes(onnx_bytes)
        q.quantize_static(str(src), str(dst), Reader(), quant_format=q.QuantFormat.QDQ,
                          per_channel=True, weight_type=q.QuantType.QInt8,
                          activation_type=q.QuantType.QUInt8,
                          extra_options={"QDQKeepRemovableActivations": True})
        quantized = strip_activation_qdq(onnx.load(str(dst)))
    return load_onnx_model(quantized, f"{name}~ort-int8")


def torch_pruned_model(model, amount: float = 0.2):
    """A copy of ``model`` pruned by torch.nn.utils.prune (global L1, every Conv/Linear)."""
    import torch
    import torch.nn.utils.prune as prune
    m = copy.deepcopy(model)
    params = [(mod, "weight") for mod in m.modules()
              if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    for mod, p in params:
        prune.remove(mod, p)
    return m


def torch_pruned_graph(net, amount: float = 0.2):
    """torch.nn.utils.prune on torch modules holding the graph's learned Conv / Gemm
    weights; the pruned weights written back (a GraphNetwork of the same architecture)."""
    import torch

    from compress.graph_compress import structural
    from verify.graph import Conv, Gemm, GraphNetwork, Node
    holder = torch.nn.Module()
    mods = {}
    for i, n in enumerate(net.nodes[1:], 1):
        if isinstance(n.op, (Conv, Gemm)) and not structural(n.op):
            w = torch.from_numpy(np.array(n.op.weight, dtype=np.float32))
            mod = torch.nn.Linear(w.shape[1], w.shape[0]) if isinstance(n.op, Gemm) else \
                torch.nn.Conv2d(w.shape[1] * n.op.groups, w.shape[0], w.shape[2:],
                                groups=n.op.groups)
            with torch.no_grad():
                mod.weight.copy_(w)
            holder.add_module(f"n{i}", mod)
            mods[i] = mod
    pruned = torch_pruned_model(holder, amount)
    nodes = list(net.nodes)
    for i in mods:
        w = getattr(pruned, f"n{i}").weight.detach().double().numpy()
        w = np.where(w == 0, 0.0, np.asarray(net.nodes[i].op.weight))  # the exact originals
        op = net.nodes[i].op
        op = Gemm(w, op.bias) if isinstance(op, Gemm) else \
            Conv(w, op.bias, op.strides, op.pads, op.dilations, op.groups)
        nodes[i] = Node(op, nodes[i].inputs, nodes[i].shape, nodes[i].name)
    return GraphNetwork(tuple(nodes), f"{net.name}~torch-prune")


def _reloaded(net, like=None):
    """``net`` written with coreproof's ONNX writer and read back (a plain file)."""
    import tempfile

    from verify.graph.onnx_write import save_graph_onnx
    from verify.onnx_io import load_onnx
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{net.name}.onnx"
        save_graph_onnx(net, path, like=like)
        back = load_onnx(path)
    from verify.graph import GraphNetwork
    return GraphNetwork(back.nodes, net.name)


def cnn_variants(net, onnx_bytes: bytes, torch_model=None, recipes=CNN_RECIPES):
    """coreproof's recipes (with records) plus ``ort-int8`` and ``torch-prune``."""
    import onnx

    from compress.graph_compress import compress_graph
    from verify.onnx_io import load_onnx_model
    out = []
    for r in recipes:
        v = compress_graph(net, r)
        out.append(BenchVariant(r, v.network, v.record))
    out.append(BenchVariant("ort-int8", ort_quantized(onnx_bytes, net.name), None))
    if torch_model is not None:
        data = export_onnx(torch_pruned_model(torch_model), net.input_shape)
        tp = load_onnx_model(onnx.load_from_string(data), f"{net.name}~torch-prune")
    else:
        tp = _reloaded(torch_pruned_graph(net), like=onnx.load_from_string(onnx_bytes))
    out.append(BenchVariant("torch-prune", tp, None))
    return out


# ---- families -------------------------------------------------------------------------
def first_unproved_eps(net, x, label: int, grid=np.arange(0.01, 0.2, 0.005)):
    """The smallest eps on ``grid`` whose robustness box the root bound leaves open."""
    import torch

    from verify.graphbounds import GraphBoundPropagator
    from verify.properties import local_robustness
    prop = GraphBoundPropagator(net)
    for eps in grid:
        r = local_robustness(x, eps, label, net.n_outputs, domain=(0.0, 1.0)).regions[0]
        C = torch.tensor(np.vstack([c.coeffs for c in r.unsafe]))
        res = prop.bound(torch.tensor(r.lower)[None], torch.tensor(r.upper)[None], C,
                         torch.zeros(len(C)))
        if float(res.spec_lower.min()) <= 0:
            return float(eps)
    return None


def split_eps(net, x, label: int, timeout: float = 5.0, steps: int = 8):
    """From the first eps the root bound leaves open, grown by 5 % a step: the first
    whose proof needs ReLU splitting (a proof tree of several branches), or None."""
    from verify.options import VerifyOptions
    from verify.properties import local_robustness
    from verify.reuse.proof import build_proof
    eps = first_unproved_eps(net, x, label)
    for _ in range(steps if eps is not None else 0):
        proof = build_proof(net, local_robustness(x, eps, label, net.n_outputs,
                                                  domain=(0.0, 1.0)),
                            VerifyOptions(timeout=timeout))
        if proof.status != "holds":
            return None
        if proof.n_branches > 1:
            return eps
        eps *= 1.05
    return None


def cnn_digits_family(quick: bool):
    """Robustness around correctly classified test images at the eps of
    :func:`split_eps` (the original needs branch and bound) and at 1.1 times it."""
    from verify.properties import local_robustness
    model, data, net, X, y = digits_cnn()
    pred = net.forward(X).argmax(1)
    props = []
    for i in np.flatnonzero(pred == y)[:4 if quick else 10]:
        eps0 = split_eps(net, X[i], int(pred[i]))
        for eps in ([] if eps0 is None else [eps0, 1.1 * eps0]):
            props.append(local_robustness(X[i], eps, int(pred[i]), 10, domain=(0.0, 1.0),
                                          name=f"digits_{i}_eps{eps:.3g}"))
    return [("cnn-digits", net, props, cnn_variants(net, data, model))]


def _vnncomp_family(family: str, folder: Path, csv: str, nets, per_net: int):
    from verify.api import load_network, load_property
    from verify.cli import read_instances
    rows = read_instances(str(folder / csv))
    out = []
    for name in nets:
        path = folder / name if (folder / name).exists() else folder / "nets" / name
        net = load_network(path)
        props = [load_property(r[1], net) for r in rows if r[0].name == name][:per_net]
        out.append((family, net, props, cnn_variants(net, path.read_bytes())))
    return out


def verivital_family(quick: bool):
    return _vnncomp_family("verivital", DATA / "verivital", "verivital_instances.csv",
                           ["Convnet_avgpool.onnx", "Convnet_maxpool.onnx"], 3 if quick else 6)


def oval21_family(quick: bool):
    return _vnncomp_family("oval21", DATA / "oval21", "oval21_instances.csv",
                           ["cifar_base_kw.onnx"], 2 if quick else 4)


FAMILY_BUILDERS = {"cnn-digits": cnn_digits_family, "verivital": verivital_family,
                   "oval21": oval21_family}
