"""Align two ReLU chains neuron by neuron, for differential bounds.

The differential bound (:mod:`verify.equiv.bounds`) pairs hidden neuron ``j``
of the original with hidden neuron ``j`` of the variant and tracks their
difference.  ANY pairing is sound -- ``dh = h' - h`` is only a change of
variables -- but the bound is tight only when paired neurons compute nearly
the same thing.  Quantized and magnitude-pruned variants keep the original's
numbering; a neuron-pruned variant (or one whose layers were permuted) does
not, so the variant's neurons are matched to the original's by the distance
between their incoming weights (in the already aligned numbering of the
layer below) and biases, greedily, closest pairs first.

Unmatched neurons are paired with a padded zero neuron (zero weights, zero
bias, zero outgoing weights): the padded network computes exactly the same
function.  Networks with different numbers of layers cannot be aligned
(:func:`align` returns None; the caller falls back to the product network).
"""
from __future__ import annotations

import numpy as np

from ..network import Affine, Network


def _greedy_match(cost: np.ndarray) -> np.ndarray:
    """``match[i]`` = the column paired with row ``i`` (-1: none), closest
    pairs first; every row and column used at most once."""
    n, m = cost.shape
    match = np.full(n, -1, dtype=np.int64)
    if n == 0 or m == 0:
        return match
    order = np.argsort(cost, axis=None, kind="stable")
    rows, cols = np.unravel_index(order, cost.shape)
    used_r, used_c = np.zeros(n, bool), np.zeros(m, bool)
    left = min(n, m)
    for r, c in zip(rows, cols):
        if not used_r[r] and not used_c[c]:
            match[r], used_r[r], used_c[c] = c, True, True
            left -= 1
            if not left:
                break
    return match


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) squared Euclidean distances between rows."""
    return np.maximum((a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def _identity_fits(d: np.ndarray) -> bool:
    """Same-numbered rows are each other's nearest (a quantized or weight-pruned variant)."""
    if d.shape[0] != d.shape[1]:
        return False
    return bool(np.all(np.diag(d) <= d.min(1) + 1e-9 * (1.0 + d.min(1))))


def align(original: Network, variant: Network) -> tuple[Network, Network] | None:
    """The two networks padded to common hidden widths with the variant's
    neurons renumbered to their best-matching original neurons: (original',
    variant'), computing exactly the functions of (original, variant).  None
    when the layer counts or input/output sizes differ."""
    if (original.n_layers != variant.n_layers or original.n_inputs != variant.n_inputs
            or original.n_outputs != variant.n_outputs):
        return None
    fa, ga = [], []
    prev_f = prev_g = None  # column orders/paddings of the layer below: (index map, width)
    for k, (a, b) in enumerate(zip(original.affines, variant.affines)):
        Wf, bf = np.array(a.weight), np.array(a.bias)
        Wg, bg = np.array(b.weight), np.array(b.bias)
        if prev_f is not None:  # put the columns into the aligned numbering of layer k-1
            Wf, Wg = _columns(Wf, *prev_f), _columns(Wg, *prev_g)
        if k == original.n_layers - 1:  # outputs keep their numbering
            fa.append(Affine(Wf, bf))
            ga.append(Affine(Wg, bg))
            break
        F, G = np.hstack([Wf, bf[:, None]]), np.hstack([Wg, bg[:, None]])
        cost = _sq_distances(F, G)
        match = np.arange(len(F)) if _identity_fits(cost) else _greedy_match(cost)
        # aligned numbering: original neurons 0..nf-1 in place; variant neuron
        # match[i] at position i; unmatched variant neurons after nf
        nf, ng = len(F), len(G)
        g_pos = np.full(ng, -1, dtype=np.int64)
        paired = match >= 0
        g_pos[match[paired]] = np.flatnonzero(paired)
        extra = np.flatnonzero(g_pos < 0)
        g_pos[extra] = nf + np.arange(len(extra))
        width = nf + len(extra)
        f_pos = np.arange(nf)
        fa.append(Affine(_rows(Wf, f_pos, width), _rows(bf[:, None], f_pos, width)[:, 0]))
        ga.append(Affine(_rows(Wg, g_pos, width), _rows(bg[:, None], g_pos, width)[:, 0]))
        prev_f, prev_g = (f_pos, width), (g_pos, width)
    return (Network(tuple(fa), original.input_shape, original.name),
            Network(tuple(ga), variant.input_shape, variant.name))


def _rows(W: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((width, W.shape[1]))
    out[pos] = W
    return out


def _columns(W: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((W.shape[0], width))
    out[:, pos] = W
    return out


