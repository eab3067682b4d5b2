"""The graph network model: a small, typed DAG of operators with one input and one output.

``nodes[0]`` is the input; every other node applies an operator (:mod:`verify.graph.ops`)
to earlier nodes, so the tuple is in topological order; the last node is the output.
Shapes are static per-sample shapes (the ONNX shapes, whose leading batch axis is 1); the
verifier sees the input as the flat vector of its shape in C order, as VNN-LIB numbers it.

The ReLU nodes, in node order, are the network's *hidden layers*: ReLU ``k`` holds the
neurons ``L{k}.N{i}`` (``i`` indexes its input tensor flattened in C order), the same names
the fully-connected :class:`verify.network.Network` gives its hidden layers.  This module
depends on nothing else in the project (numpy; torch for evaluation).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from .ops import Gemm, Op, Relu, Reshape


@dataclass(frozen=True, eq=False)
class Node:
    op: Op | None  # None: the network input
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    name: str = ""  # the source's node name, for messages

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class GraphNetwork:
    nodes: tuple[Node, ...]
    name: str = "network"
    _digest: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self):
        nodes = tuple(self.nodes)
        if len(nodes) < 2 or nodes[0].op is not None or nodes[0].inputs:
            raise ValueError("a graph network starts with its input node and has an operator")
        for i, n in enumerate(nodes[1:], 1):
            if n.op is None:
                raise ValueError(f"node {i} ({n.name}) has no operator")
            if len(n.inputs) != n.op.arity or any(not 0 <= j < i for j in n.inputs):
                raise ValueError(f"node {i} ({n.name}): inputs {n.inputs} are not "
                                 f"{n.op.arity} earlier nodes")
            shape = n.op.out_shape(*(nodes[j].shape for j in n.inputs))
            if tuple(shape) != tuple(n.shape):
                raise ValueError(f"node {i} ({n.name}): shape {n.shape}, its operator gives {shape}")
        used = {j for n in nodes for j in n.inputs}
        dead = [i for i in range(len(nodes) - 1) if i not in used]
        if dead:
            raise ValueError(f"nodes {dead} do not reach the output")
        object.__setattr__(self, "nodes", nodes)

    # ---- structure -----------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.nodes[0].shape

    @property
    def output(self) -> int:
        return len(self.nodes) - 1

    @property
    def n_inputs(self) -> int:
        return self.nodes[0].size

    @property
    def n_outputs(self) -> int:
        return self.nodes[-1].size

    @property
    def relu_nodes(self) -> tuple[int, ...]:
        """Indices of the ReLU nodes: hidden layer ``k`` is ``nodes[relu_nodes[k]]``."""
        return tuple(i for i, n in enumerate(self.nodes) if isinstance(n.op, Relu))

    @property
    def n_hidden(self) -> int:
        return len(self.relu_nodes)

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return tuple(self.nodes[i].size for i in self.relu_nodes)

    @property
    def n_relus(self) -> int:
        return sum(self.hidden_sizes)

    @property
    def n_parameters(self) -> int:
        return sum(n.op.n_parameters() for n in self.nodes[1:])

    def layer_sizes(self) -> tuple[int, ...]:
        """Input size, every hidden layer's size, output size."""
        return (self.n_inputs,) + self.hidden_sizes + (self.n_outputs,)

    def consumers(self) -> list[list[int]]:
        """Per node, the nodes that read it."""
        out: list[list[int]] = [[] for _ in self.nodes]
        for i, n in enumerate(self.nodes):
            for j in n.inputs:
                out[j].append(i)
        return out

    def is_chain(self) -> bool:
        """Gemm (Relu Gemm)* on flat vectors: what :class:`verify.network.Network` holds."""
        start = 1
        if isinstance(self.nodes[1].op, Reshape) and self.nodes[1].shape == (1, self.n_inputs):
            start = 2
        nodes = self.nodes[start:]
        if any(n.inputs != (start + i - 1,) for i, n in enumerate(nodes)):
            return False
        ops = [n.op for n in nodes]
        return len(ops) % 2 == 1 and all(isinstance(op, Gemm if k % 2 == 0 else Relu)
                                         for k, op in enumerate(ops))

    # ---- evaluation ------------------------------------------------------------
    def evaluate(self, x, keep: bool = False):
        """Run the graph on a torch float64 batch ``x`` (B, n_inputs); returns the output
        (B, n_outputs), or with ``keep`` the list of every node's value (B, *shape)."""
        values = [x.reshape(x.shape[0], *self.input_shape)]
        for n in self.nodes[1:]:
            values.append(n.op.forward(*(values[j] for j in n.inputs)))
        if keep:
            return values
        return values[-1].reshape(x.shape[0], -1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Exact float64 evaluation; ``x`` is (n_inputs,) or (batch, n_inputs)."""
        import torch
        z = np.asarray(x, dtype=np.float64)
        single = z.ndim == 1
        z = z.reshape(1 if single else -1, self.n_inputs)
        with torch.no_grad():
            y = self.evaluate(torch.from_numpy(np.ascontiguousarray(z))).numpy()
        return y[0] if single else y

    def pre_activations(self, x: np.ndarray) -> list[np.ndarray]:
        """Per hidden layer the ReLU's input values, then the output: (batch, size) each."""
        import torch
        z = np.atleast_2d(np.asarray(x, dtype=np.float64)).reshape(-1, self.n_inputs)
        with torch.no_grad():
            values = self.evaluate(torch.from_numpy(np.ascontiguousarray(z)), keep=True)
        B = z.shape[0]
        out = [values[self.nodes[i].inputs[0]].reshape(B, -1).numpy() for i in self.relu_nodes]
        return out + [values[-1].reshape(B, -1).numpy()]

    # ---- identity --------------------------------------------------------------
    def digest(self) -> str:
        """SHA-256 of the structure and exact parameters (stable across runs)."""
        if not self._digest:
            h = hashlib.sha256()
            for n in self.nodes:
                h.update(repr((None if n.op is None else n.op.describe(), n.inputs, n.shape,
                               _attributes(n.op))).encode())
                if n.op is not None:
                    for key, a in sorted(n.op.arrays().items()):
                        h.update(key.encode())
                        h.update(np.ascontiguousarray(a).tobytes())
            self._digest.append(h.hexdigest())
        return self._digest[0]

    def describe(self) -> str:
        kinds: dict[str, int] = {}
        for n in self.nodes[1:]:
            kinds[n.op.kind] = kinds.get(n.op.kind, 0) + 1
        ops = ", ".join(f"{v} {k}" for k, v in kinds.items())
        return f"{self.name} (graph: {ops}; {self.n_inputs} inputs, {self.n_relus} ReLUs)"


def _attributes(op) -> tuple:
    """The non-array attributes of an operator, for the digest."""
    if op is None:
        return ()
    out = []
    for key, value in sorted(vars(op).items()):
        if key.startswith("_") or isinstance(value, np.ndarray):
            continue
        out.append((key, value))
    return tuple(out)


def chain_graph(network) -> GraphNetwork:
    """The graph of a fully-connected :class:`verify.network.Network` (Gemm, Relu, ...)."""
    n0 = network.n_inputs
    nodes = [Node(None, (), tuple(network.input_shape), "input")]
    if tuple(network.input_shape) != (1, n0):
        nodes.append(Node(Reshape((1, n0)), (0,), (1, n0), "flatten"))
    for k, a in enumerate(network.affines):
        nodes.append(Node(Gemm(a.weight, a.bias, a.weight_int, a.weight_scale), (len(nodes) - 1,),
                          (1, a.out_size), f"gemm{k}"))
        if k < network.n_layers - 1:
            nodes.append(Node(Relu(), (len(nodes) - 1,), (1, a.out_size), f"relu{k}"))
    return GraphNetwork(tuple(nodes), network.name)


def as_chain(graph: GraphNetwork):
    """The fully-connected :class:`verify.network.Network` of ``graph`` when it is one
    (input, an optional flattening Reshape, then ``Gemm (Relu Gemm)*`` each feeding the
    next), else None.  Quantized Gemms keep their integer form.  Inverse of
    :func:`chain_graph`."""
    from ..network import Affine, Network
    nodes = graph.nodes
    i = 1
    if isinstance(nodes[1].op, Reshape) and nodes[1].shape == (1, graph.n_inputs):
        i = 2
    affines, expect_gemm = [], True
    for j in range(i, len(nodes)):
        node = nodes[j]
        if node.inputs != (j - 1,):
            return None
        if expect_gemm and isinstance(node.op, Gemm) and len(node.shape) == 2 \
                and nodes[j - 1].shape == (1, node.op.in_size):
            op = node.op
            affines.append(Affine(op.weight, op.bias, op.weight_int, op.weight_scale))
        elif not expect_gemm and isinstance(node.op, Relu):
            pass
        else:
            return None
        expect_gemm = not expect_gemm
    if expect_gemm or not affines:  # ends with a Relu (or has no layer)
        return None
    return Network(tuple(affines), graph.input_shape, graph.name)
