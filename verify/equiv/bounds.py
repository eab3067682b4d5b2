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
  (what the difference of two verifications gives; reported for comparison).

Bounds are widened outward by :data:`verify.bounds.TOLERANCE` for float64
rounding, like every bound in coreproof.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..bounds import TOLERANCE, BoundPropagator
from ..network import Affine, Network


def _widen_lower(x):
    return x - TOLERANCE * (1.0 + np.abs(x))


def _widen_upper(x):
    return x + TOLERANCE * (1.0 + np.abs(x))


#: inputs up to which the separate bounds use forward-mode intermediate bounds
FORWARD_MAX_INPUTS = 16


def _mv(A: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``A @ v`` per box: A (m, n) or (B, m, n), v (B, n) -> (B, m)."""
    return np.einsum("...mn,...n->...m", A, v)


def _box_min(A: np.ndarray, c: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Minimum over each box of each row of ``A @ x + c`` (boxes (B, n), rows
    (B, m)), widened outward."""
    v = c + _mv(np.clip(A, 0, None), lo) + _mv(np.clip(A, None, 0), hi)
    scale = np.abs(c) + _mv(np.abs(A), np.maximum(np.abs(lo), np.abs(hi)))
    return v - TOLERANCE * (1.0 + np.abs(v) + scale)


def _crown_relax(l: np.ndarray, u: np.ndarray):
    """CROWN relaxation of relu on [l, u]: ``alpha z <= relu(z) <= s z + t``."""
    unstable = (l < 0) & (u > 0)
    denom = np.where(unstable, u - l, 1.0)
    s = np.where(unstable, u / denom, (l >= 0).astype(float))
    t = np.where(unstable, -s * l, 0.0)
    alpha = np.where(unstable, (u > -l).astype(float), (l >= 0).astype(float))
    return alpha, s, t


@dataclass(frozen=True)
class DiffRelaxation:
    """Per neuron of one hidden layer: ``aL dz + bL z + cL <= dh <= aU dz + bU z + cU``
    and ``alpha z <= h <= s z + t``."""

    aL: np.ndarray
    bL: np.ndarray
    cL: np.ndarray
    aU: np.ndarray
    bU: np.ndarray
    cU: np.ndarray
    alpha: np.ndarray
    s: np.ndarray
    t: np.ndarray


def diff_relaxation(lf, uf, lg, ug, dl, du) -> DiffRelaxation:
    """The relaxation of ``dh = relu(z + dz) - relu(z)`` for ``z`` in ``[lf, uf]``,
    ``z + dz`` in ``[lg, ug]``, ``dz`` in ``[dl, du]`` (see the module doc)."""
    alpha, s, t = _crown_relax(lf, uf)
    ag, sg, tg = _crown_relax(lg, ug)
    # A: relu(z') - relu(z) with both CROWN relaxations, z' = z + dz
    A = (ag, ag - s, -t, sg, sg - alpha, tg)
    gap_g = np.maximum((sg - ag) * lg, (sg - ag) * ug) + tg
    gap_f = np.maximum((s - alpha) * lf, (s - alpha) * uf) + t
    err_a = gap_g + gap_f
    # B: the chords of the bow tie (dh between 0 and dz) over [dl, du]
    pos, neg = dl >= 0, du <= 0
    width = np.where(pos | neg, 1.0, du - dl)
    up_slope = np.where(pos, 1.0, np.where(neg, 0.0, du / width))
    up_const = np.where(pos | neg, 0.0, -du * dl / width)
    lo_slope = np.where(neg, 1.0, np.where(pos, 0.0, -dl / width))
    lo_const = np.where(pos | neg, 0.0, dl * du / width)
    gap_b = np.maximum((up_slope - lo_slope) * dl, (up_slope - lo_slope) * du) + up_const - lo_const
    zero = np.zeros_like(dl)
    B = (lo_slope, zero, lo_const, up_slope, zero, up_const)
    pick = gap_b < err_a
    aL, bL, cL, aU, bU, cU = (np.where(pick, b, a) for a, b in zip(A, B))
    return DiffRelaxation(aL, bL, cL, aU, bU, cU, alpha, s, t)


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

    @staticmethod
    def separate(prop: BoundPropagator, lo, hi, extra: np.ndarray | None = None) -> "Separate":
        """CROWN bounds of one network on the boxes (B, n): its hidden layers,
        its outputs, and the lower bounds of the rows ``extra @ y``."""
        n_out = prop.network.n_outputs
        eye = np.eye(n_out)
        rows = np.vstack([eye, -eye] + ([] if extra is None else [extra]))
        # few inputs: forward-mode linear intermediate bounds first (cheap), then
        # back-substitution of only the neurons they leave unstable
        res = prop.bound(torch.from_numpy(lo), torch.from_numpy(hi),
                         torch.from_numpy(rows), torch.zeros(len(rows)),
                         forward=lo.shape[-1] <= FORWARD_MAX_INPUTS, backward=True)
        low = res.spec_lower.numpy()
        return Separate(tuple((l.numpy(), u.numpy()) for l, u in zip(res.lower, res.upper)),
                        (low[:, :n_out], -low[:, n_out:2 * n_out]), low[:, 2 * n_out:])

    def _backsub(self, K: int, lam: np.ndarray, relax: list[DiffRelaxation], lo, hi):
        """Lower bound over each box of ``lam @ dz_K`` (K: an affine layer) and
        its input coefficients (B, m, n)."""
        P = lam @ self.Wg[K]
        Q = lam @ self.dW[K]
        c = lam @ self.db[K]
        for j in range(K - 1, -1, -1):
            r = relax[j]
            e = lambda v: v[..., None, :]  # noqa: E731 - per box, shared by the rows
            Pp, Pn = np.clip(P, 0, None), np.clip(P, None, 0)
            Qp, Qn = np.clip(Q, 0, None), np.clip(Q, None, 0)
            Cdz = Pp * e(r.aL) + Pn * e(r.aU)
            Cz = Pp * e(r.bL) + Pn * e(r.bU) + Qp * e(r.alpha) + Qn * e(r.s)
            c = c + _mv(Pp, r.cL) + _mv(Pn, r.cU) + _mv(Qn, r.t)
            P = Cdz @ self.Wg[j]
            Q = Cdz @ self.dW[j] + Cz @ self.Wf[j]
            c = c + Cdz @ self.db[j] + Cz @ self.bf[j]
        if Q.ndim == 2:  # K = 0: the same for every box
            Q = np.broadcast_to(Q, (lo.shape[0],) + Q.shape)
        return _box_min(Q, c, lo, hi), Q

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


def product_bound(prod: BoundPropagator, lo, hi, lam: np.ndarray) -> np.ndarray:
    """CROWN lower bounds (B, m) of the rows ``lam @ (g - f)`` on the product network."""
    res = prod.bound(torch.from_numpy(np.asarray(lo, float)), torch.from_numpy(np.asarray(hi, float)),
                     torch.from_numpy(np.asarray(lam, float)), torch.zeros(lam.shape[0]))
    return res.spec_lower.numpy()


def naive_bound(bf: Separate, bg: Separate) -> np.ndarray:
    """Per output, ``max |g - f|`` from the two networks' separate output bounds."""
    (lf, uf), (lg, ug) = bf.outputs, bg.outputs
    return _widen_upper(np.maximum(ug - lf, uf - lg))
