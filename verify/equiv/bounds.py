"""Sound bounds on the difference ``g(x) - f(x)`` of two ReLU chains over a box.

Three bounds, each sound on its own (so their per-row best is too):

* **differential** (:class:`DiffPropagator`, in the style of ReluDiff /
  NeuroDiff): the two networks are aligned neuron by neuron
  (:func:`verify.equiv.align.align`) and the difference is back-substituted
  symbolically through both with the shared input.  Writing ``W'_k = W_k +
  dW_k`` for the variant,

      dz_k = W'_k dh_{k-1} + dW_k h_{k-1} + db_k,    z_k = W_k h_{k-1} + b_k,
      dh_k = relu(z_k + dz_k) - relu(z_k),           dh_{-1} = 0, h_{-1} = x,

  a linear form in ``(dh_k, h_k)`` is relaxed into one in ``(dz_k, z_k)`` and
  rewritten one layer down, until only ``x`` is left.  ``dh`` gets, per
  neuron, the better (by its worst gap) of two linear relaxations: the
  chords of the "bow tie" ``dh`` between 0 and ``dz`` (``relu`` is monotone
  and 1-Lipschitz) over ``[dl, du]`` -- whose gap shrinks with the change,
  not with the neuron's range --, or the two networks' own CROWN
  relaxations ``relu(z') - relu(z)`` (exact where both are stable).  Every
  hidden ``dz_k`` is bounded the same way first (the intermediate bounds).
* **product network**: CROWN on one network running both side by side whose
  output is ``g - f`` (also for networks that cannot be aligned).
* **naive**: the difference of the two networks' separate output bounds
  (what the difference of two verifications gives; reported for comparison),
  from their CROWN bounds (:func:`naive_bound`) or from interval arithmetic
  alone (:func:`interval_naive_bound`, the textbook baseline).

Bounds are widened outward by :data:`verify.bounds.TOLERANCE` for float64
rounding, like every bound in coreproof.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..bounds import BoundPropagator, interval_outputs
from ..diffbounds import (AlignedLayers, DiffRelaxation, backsub_difference,  # noqa: F401
                          diff_relaxation, widen_lower as _widen_lower,
                          widen_upper as _widen_upper)
from ..network import Affine, Network


#: inputs up to which the separate bounds use forward-mode intermediate bounds
FORWARD_MAX_INPUTS = 16


@dataclass(frozen=True)
class Separate:
    """One network's own CROWN bounds on a batch of B boxes."""

    layers: tuple[tuple[np.ndarray, np.ndarray], ...]  # hidden pre-activations (l, u), (B, n_k)
    outputs: tuple[np.ndarray, np.ndarray]  # (l, u) of every output, (B, n_out)
    extra: np.ndarray  # (B, m) lower bounds of the extra rows asked for


@dataclass(frozen=True)
class DiffBound:
    """Bounds of ``g - f`` on a batch of B boxes."""

    lower: np.ndarray  # (B, m) lower bounds of the rows lam @ (g(x) - f(x))
    coeffs: np.ndarray  # (B, m, n_inputs) input coefficients of those linear bounds
    # per hidden layer: the difference of the pre-activations, dl <= z' - z <= du
    changes: tuple[tuple[np.ndarray, np.ndarray], ...] = ()


class DiffPropagator:
    """Differential bounds for an ALIGNED pair (same layer sizes; see :mod:`.align`)."""

    def __init__(self, f: Network, g: Network):
        if f.layer_sizes() != g.layer_sizes():
            raise ValueError("differential bounds need aligned networks (same layer sizes)")
        self.f, self.g = f, g
        self.Wf = [np.array(a.weight) for a in f.affines]
        self.bf = [np.array(a.bias) for a in f.affines]
        self.Wg = [np.array(a.weight) for a in g.affines]
        self.dW = [wg - wf for wg, wf in zip(self.Wg, self.Wf)]
        self.db = [np.array(b.bias) - bf for b, bf in zip(g.affines, self.bf)]
        self.prop_f, self.prop_g = BoundPropagator(f), BoundPropagator(g)

    @property
    def layers(self) -> AlignedLayers:
        return AlignedLayers(tuple(self.Wg), tuple(self.dW), tuple(self.db), tuple(self.Wf),
                             tuple(self.bf))

    @staticmethod
    def separate(prop: BoundPropagator, lo, hi, extra: np.ndarray | None = None,
                 deadline: float | None = None) -> "Separate":
        """CROWN bounds of one network on the boxes (B, n): its hidden layers,
        its outputs, and the lower bounds of the rows ``extra @ y``."""
        n_out = prop.network.n_outputs
        eye = np.eye(n_out)
        rows = np.vstack([eye, -eye] + ([] if extra is None else [extra]))
        # few inputs: forward-mode linear intermediate bounds first (cheap), then
        # back-substitution of only the neurons they leave unstable
        res = prop.bound(torch.from_numpy(lo), torch.from_numpy(hi),
                         torch.from_numpy(rows), torch.zeros(len(rows)),
                         forward=lo.shape[-1] <= FORWARD_MAX_INPUTS, backward=True,
                         deadline=deadline)
        low = res.spec_lower.numpy()
        return Separate(tuple((l.numpy(), u.numpy()) for l, u in zip(res.lower, res.upper)),
                        (low[:, :n_out], -low[:, n_out:2 * n_out]), low[:, 2 * n_out:])

    def _backsub(self, K: int, lam: np.ndarray, relax: list[DiffRelaxation], lo, hi):
        """Lower bound over each box of ``lam @ dz_K`` (K: an affine layer) and
        its input coefficients (B, m, n)."""
        return backsub_difference(self.layers, K, lam, relax, lo, hi)

    def bound(self, lo: np.ndarray, hi: np.ndarray, lam: np.ndarray,
              extra: np.ndarray | None = None) -> tuple[DiffBound, "Separate", "Separate"]:
        """Lower bounds of the rows ``lam @ (g(x) - f(x))`` over each box
        ``[lo[b], hi[b]]`` (``lo``, ``hi``: (B, n)).

        Returns (the bound, f's and g's separate CROWN bounds, with the rows
        ``extra`` of each network's output bounded too)."""
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        bf = self.separate(self.prop_f, lo, hi, extra)
        bg = self.separate(self.prop_g, lo, hi, extra)
        relax, changes = [], []
        for k in range(self.f.n_layers - 1):
            lf, uf = bf.layers[k]
            lg, ug = bg.layers[k]
            dl, du = lg - uf, ug - lf
            n = lf.shape[-1]
            eye = np.eye(n)
            low, _ = self._backsub(k, np.vstack([eye, -eye]), relax, lo, hi)
            dl, du = np.maximum(dl, low[:, :n]), np.minimum(du, -low[:, n:])
            dl, du = _widen_lower(dl), _widen_upper(du)
            lg, ug = np.maximum(lg, lf + dl), np.minimum(ug, uf + du)
            changes.append((dl, du))
            relax.append(diff_relaxation(lf, uf, lg, ug, dl, du))
        low, Q = self._backsub(self.f.n_layers - 1, lam, relax, lo, hi)
        return DiffBound(low, Q, tuple(changes)), bf, bg


def product_network(f: Network, g: Network) -> Network:
    """One network running ``f`` and ``g`` side by side on the shared input,
    whose output is ``g(x) - f(x)``."""
    L = max(f.n_layers, g.n_layers)
    f, g = _deepen(f, L), _deepen(g, L)
    layers = []
    for k, (a, b) in enumerate(zip(f.affines, g.affines)):
        if k == 0 and L == 1:
            W, bias = b.weight - a.weight, b.bias - a.bias
        elif k == 0:
            W, bias = np.vstack([a.weight, b.weight]), np.concatenate([a.bias, b.bias])
        elif k == L - 1:
            W, bias = np.hstack([-a.weight, b.weight]), b.bias - a.bias
        else:
            W = np.block([[a.weight, np.zeros((a.out_size, b.in_size))],
                          [np.zeros((b.out_size, a.in_size)), b.weight]])
            bias = np.concatenate([a.bias, b.bias])
        layers.append(Affine(W, bias))
    return Network(tuple(layers), f.input_shape, f"{f.name}-vs-{g.name}")


def product_graph(f, g):
    """:func:`product_network` for graph networks (CNNs, residual nets): one graph
    holding both, fed the same input, whose output is ``g(x) - f(x)`` (a ``Sum``
    with weights (1, -1) of the two flattened outputs)."""
    from ..graph import GraphNetwork
    from ..graph.model import Node
    from ..graph.ops import Reshape, Sum
    f, g = _as_graph(f), _as_graph(g)
    if f.input_shape != g.input_shape and f.n_inputs == g.n_inputs:
        raise ValueError("the two networks read their inputs in different shapes "
                         f"({f.input_shape} and {g.input_shape})")
    nodes = list(f.nodes)
    base = len(nodes) - 1  # g's node j (j >= 1) goes to base + j; its input stays node 0
    for n in g.nodes[1:]:
        nodes.append(Node(n.op, tuple(0 if j == 0 else base + j for j in n.inputs), n.shape,
                          f"variant/{n.name}"))
    outs = []
    for out in (len(nodes) - 1, base):  # g's output, then f's
        if nodes[out].shape != (f.n_outputs,):
            nodes.append(Node(Reshape((f.n_outputs,)), (out,), (f.n_outputs,), "flatten"))
            out = len(nodes) - 1
        outs.append(out)
    nodes.append(Node(Sum((1.0, -1.0)), tuple(outs), (f.n_outputs,), "variant-original"))
    return GraphNetwork(tuple(nodes), f"{f.name}-vs-{g.name}")


def _as_graph(net):
    from ..graph import GraphNetwork
    from ..graph.model import chain_graph
    return net if isinstance(net, GraphNetwork) else chain_graph(net)


def _deepen(net: Network, L: int) -> Network:
    """``net`` with ``L`` affine layers and the same function: identity hidden
    layers inserted before the output layer (after a ReLU, ``relu(h) = h``; with
    no hidden layer, the input passes as ``relu(x) - relu(-x)``)."""
    if net.n_layers >= L:
        return net
    affines = list(net.affines)
    last = affines.pop()
    if not affines:
        n = net.n_inputs
        affines.append(Affine(np.vstack([np.eye(n), -np.eye(n)]), np.zeros(2 * n)))
        last = Affine(np.hstack([last.weight, -last.weight]), last.bias)
    while len(affines) < L - 1:
        n = affines[-1].out_size
        affines.append(Affine(np.eye(n), np.zeros(n)))
    return Network(tuple(affines) + (last,), net.input_shape, net.name)


def product_bound(prod: BoundPropagator, lo, hi, lam: np.ndarray,
                  deadline: float | None = None) -> np.ndarray:
    """CROWN lower bounds (B, m) of the rows ``lam @ (g - f)`` on the product network."""
    res = prod.bound(torch.from_numpy(np.asarray(lo, float)), torch.from_numpy(np.asarray(hi, float)),
                     torch.from_numpy(np.asarray(lam, float)), torch.zeros(lam.shape[0]),
                     deadline=deadline)
    return res.spec_lower.numpy()


def interval_naive_bound(f: Network, g: Network, lower, upper) -> np.ndarray:
    """Per output, ``max |g - f|`` over the box from the two networks' separate
    interval (IBP) output bounds."""
    lf, uf = interval_outputs(f, lower, upper)
    lg, ug = interval_outputs(g, lower, upper)
    return _widen_upper(np.maximum(ug - lf, uf - lg))


def naive_bound(bf: Separate, bg: Separate) -> np.ndarray:
    """Per output, ``max |g - f|`` from the two networks' separate output bounds."""
    (lf, uf), (lg, ug) = bf.outputs, bg.outputs
    return _widen_upper(np.maximum(ug - lf, uf - lg))
