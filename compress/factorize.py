"""Low-rank factorization: a layer's weight ``W`` (out x in) replaced by ``U @ V``
with ``U`` (out x r) and ``V`` (r x in), the truncated SVD ``U = U_r diag(s_r)``,
``V = V_r^T``, both rounded to float32.

Two forms of one variant:

* the **deployable** file (:func:`factored_graph`, written by
  :func:`compress.io.deployable_model`) physically holds the two thin factors as two
  Gemm nodes with no ReLU between them (``V`` without a bias, then ``U`` with the
  layer's bias): ``r * (out + in)`` weights instead of ``out * in``;
* the **verified** :class:`~verify.network.Network` is canonical ``Affine (ReLU
  Affine)*``, so the loader composes the two Gemms into one affine map, ``W' =
  U @ V`` in float64.  That composition is exact linear algebra up to float
  rounding (each product of two float32 numbers is exact in float64, the sums
  round to about 1e-16 relative): the network coreproof verifies is, by definition,
  what it reads back from the deployable file (the writer checks that the file reads
  back as exactly this network).  A runtime that evaluates ``U @ (V @ x)`` in
  float32 differs from it by float32 rounding, as any float32 runtime differs from
  the float64 verifier.

Which rank: ``svd:R`` factorises every layer at rank ``min(R, out, in)`` (as asked,
even where that holds more parameters than ``W``; at full rank the variant computes
the original function up to rounding); ``energy:E`` takes per layer the smallest
rank keeping a share ``E`` of the squared singular values, and factorises only the
layers where that saves parameters.  Factorization is the last step of a recipe (a
later pruning or quantization step would rewrite the composed weight and lose the
factors).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from verify.errors import OptionError
from verify.network import Affine, Network

from .core import StepOutcome


@dataclass(frozen=True)
class Factor:
    """One factorised layer: ``weight == compose(u, v)`` and the layer's bias."""

    u: np.ndarray  # (out, r), float32 values
    v: np.ndarray  # (r, in), float32 values
    bias: np.ndarray

    @property
    def rank(self) -> int:
        return self.v.shape[0]

    @property
    def n_weights(self) -> int:
        return self.u.size + self.v.size


def choose_rank(s: np.ndarray, rank: int | None, energy: float | None) -> int:
    """The rank for singular values ``s`` (descending): ``min(rank, len(s))``, or
    the smallest rank whose squared singular values reach the share ``energy``."""
    if rank is not None:
        return max(1, min(int(rank), len(s)))
    e = np.cumsum(s ** 2)
    if e[-1] <= 0:
        return 1
    return int(min(len(s), np.searchsorted(e / e[-1], energy - 1e-12) + 1))


def svd_factors(weight: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """``(U, V)`` of the rank-``r`` truncated SVD, rounded to float32 values (float64 arrays)."""
    u, s, vt = np.linalg.svd(np.asarray(weight, dtype=np.float64), full_matrices=False)
    U = (u[:, :r] * s[:r]).astype(np.float32).astype(np.float64)
    V = vt[:r].astype(np.float32).astype(np.float64)
    return U, V


def compose(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``u @ v`` exactly as the ONNX loader composes ``Gemm(v)`` then ``Gemm(u)``
    (it defines the verified network; see the module doc)."""
    from verify.graph import Node
    from verify.graph.model import GraphNetwork
    from verify.graph.onnx_write import graph_to_onnx
    from verify.graph.ops import Gemm
    from verify.onnx_io import load_onnx_model
    n_in, r, n_out = v.shape[1], v.shape[0], u.shape[0]
    nodes = (Node(None, (), (1, n_in), "input"),
             Node(Gemm(v, np.zeros(r)), (0,), (1, r), "v"),
             Node(Gemm(u, np.zeros(n_out)), (1,), (1, n_out), "u"))
    dtype = np.float32 if _float32_exact(u) and _float32_exact(v) else np.float64
    net = load_onnx_model(graph_to_onnx(GraphNetwork(nodes, "factor"), dtype=dtype), "factor")
    return np.array(net.affines[0].weight)


def _float32_exact(a: np.ndarray) -> bool:
    return bool(np.array_equal(np.asarray(a, np.float64).astype(np.float32), a))


def factorize(network: Network, rank: int | None = None, energy: float | None = None
              ) -> StepOutcome:
    """Factorise the affine layers (see the module doc): the step outcome holds the
    composed network and the factors by layer."""
    if (rank is None) == (energy is None):
        raise OptionError("factorization needs exactly one of a rank or an energy share")
    affines, factors, ranks = list(network.affines), {}, {}
    for k, a in enumerate(network.affines):
        if a.is_quantized:
            raise OptionError(f"layer {k} is quantized: factorise before quantizing "
                              "(or not at all)")
        s = np.linalg.svd(a.weight, compute_uv=False)
        r = choose_rank(s, rank, energy)
        if energy is not None and r * (a.out_size + a.in_size) >= a.weight.size:
            continue  # no saving at this rank: the layer stays dense
        U, V = svd_factors(a.weight, r)
        factors[k] = Factor(U, V, np.array(a.bias))
        affines[k] = Affine(compose(U, V), a.bias)
        ranks[str(k)] = r
    return StepOutcome(network.with_affines(affines), summary={"ranks": ranks},
                       factors=factors)


@dataclass(frozen=True)
class Factorize:
    """The recipe step ``svd:R`` / ``energy:E`` (see the module doc)."""

    rank: int | None = None
    energy: float | None = None

    def __post_init__(self):
        if (self.rank is None) == (self.energy is None):
            raise OptionError("factorization needs exactly one of svd:RANK or energy:SHARE")
        if self.rank is not None and (isinstance(self.rank, bool) or int(self.rank) != self.rank
                                      or self.rank < 1):
            raise OptionError(f"factorization rank must be an integer >= 1, got {self.rank!r}")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise OptionError(f"energy share must be in (0, 1], got {self.energy!r}")

    def spec(self) -> str:
        return f"svd:{int(self.rank)}" if self.rank is not None else f"energy:{self.energy!r}"

    def run(self, network: Network, ctx) -> StepOutcome:
        return factorize(network, self.rank, self.energy)


def parse_factorize(head: str, opts: list[str], text: str) -> Factorize:
    """``svd:R`` or ``energy:E`` (``E`` a share or a percentage)."""
    if len(opts) != 1:
        raise OptionError(f"{text!r}: expected svd:RANK or energy:SHARE, e.g. svd:16 or "
                          "energy:0.9")
    o = opts[0]
    try:
        if head == "svd":
            return Factorize(rank=int(o))
        v = float(o[:-1]) / 100.0 if o.endswith("%") else float(o)
    except ValueError:
        raise OptionError(f"{text!r}: {'rank' if head == 'svd' else 'energy share'} must be "
                          "a number") from None
    return Factorize(energy=v)


def factored_graph(network: Network, factors: dict[int, Factor]):
    """The graph of ``network`` with each factorised layer written as two Gemms
    (``V`` with a zero bias, then ``U`` with the layer's bias): what the
    deployable file holds."""
    from verify.graph import Node, Relu, Reshape, chain_graph
    from verify.graph.model import GraphNetwork
    from verify.graph.ops import Gemm
    if not factors:
        return chain_graph(network)
    n0 = network.n_inputs
    nodes = [Node(None, (), tuple(network.input_shape), "input")]
    if tuple(network.input_shape) != (1, n0):
        nodes.append(Node(Reshape((1, n0)), (0,), (1, n0), "flatten"))
    for k, a in enumerate(network.affines):
        f = factors.get(k)
        if f is None:
            nodes.append(Node(Gemm(a.weight, a.bias, a.weight_int, a.weight_scale),
                              (len(nodes) - 1,), (1, a.out_size), f"gemm{k}"))
        else:
            if not np.array_equal(compose(f.u, f.v), a.weight):
                raise OptionError(f"layer {k}: the factors do not compose to its weight")
            nodes.append(Node(Gemm(f.v, np.zeros(f.rank)), (len(nodes) - 1,), (1, f.rank),
                              f"gemm{k}.v"))
            nodes.append(Node(Gemm(f.u, a.bias), (len(nodes) - 1,), (1, a.out_size),
                              f"gemm{k}.u"))
        if k < network.n_layers - 1:
            nodes.append(Node(Relu(), (len(nodes) - 1,), (1, a.out_size), f"relu{k}"))
    return GraphNetwork(tuple(nodes), network.name)
