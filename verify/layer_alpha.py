"""alpha-CROWN on the intermediate layers: tighter pre-activation bounds of one box,
for the root of a ReLU-splitting search.

Plain CROWN bounds a hidden neuron with the adaptive lower ReLU slopes (0 or 1). Here
every unstable neuron of a layer gets its own slopes for every earlier layer, and Adam
ascends its lower bound and its negated upper bound, layer by layer, so each layer
reads the tightened bounds of the layers below it. Each query row is its own branch
of a batch (``B`` rows, one spec row each), so the propagators' back-substitution
serves chains and graphs alike (:meth:`BoundPropagator.layer_rows_bound`), in chunks of
rows that fit the memory budget. Any slopes in [0, 1] give a sound bound, so the best
iterate per neuron is kept; the steps run in the propagator's ``search_dtype`` and
the kept slopes are evaluated once in float64, widened and intersected with the
bounds given.

The slopes kept can be handed out (``slopes_out``) and given back as a warm start
(``warm``): a variant's root in proof reuse starts from its original's, and a few steps
from there gave what 20 from the default did (mnist-net_256x6, see the README).

Measured (2026-12-05) on the root of eran's mnist_relu_9_200 at eps 0.015: the spec
bound of idx 6453 went from -3.90 to +1.98 (holds at the root) in 0.9 s, and the
19 instances CROWN left open lost 0.2-32 % of their unstable neurons.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .ascent import Adam
from .bounds import _widen_lower, _widen_upper


def _neuron_rows(n: int, idx: torch.Tensor, dtype) -> torch.Tensor:
    """(2m, 1, n): one query per row, ``+e_i`` (lower bounds) then ``-e_i`` (upper
    bounds) of the neurons ``idx``."""
    m = len(idx)
    lam = torch.zeros(2 * m, 1, n, dtype=dtype)
    lam[torch.arange(m), 0, idx] = 1.0
    lam[m + torch.arange(m), 0, idx] = -1.0
    return lam


def _start_slopes(prop, k, idx, w_lower, w_upper, warm, R):
    """The starting slopes (R, n_j) per layer j < k of the queries of neurons ``idx``:
    the default relaxation's, replaced by ``warm``'s kept slopes where it has that
    neuron's query (``warm``: (neurons, [(2m', n_j) per j]) of layer ``k``)."""
    start = [prop._relaxation(l[:1], u[:1])[0].expand(R, -1).clone()
             for l, u in zip(w_lower, w_upper)]
    if warm is None:
        return start
    neurons, rows = warm
    pos = {int(i): p for p, i in enumerate(neurons)}
    m, mw = len(idx), len(neurons)
    have = [(q, pos[int(i)]) for q, i in enumerate(idx) if int(i) in pos]
    if not have:
        return start
    q = torch.tensor([a for a, _ in have])
    w = torch.tensor([b for _, b in have])
    for s, got in zip(start, rows):
        got = torch.as_tensor(got, dtype=s.dtype)
        # the lower-bound queries, then the upper-bound ones (a non-finite slope: the default)
        s[q] = torch.where(torch.isfinite(got[w]), got[w], s[q])
        s[m + q] = torch.where(torch.isfinite(got[mw + w]), got[mw + w], s[m + q])
    return start


def _rows_lower_bound(prop, k, idx, lower, upper, lo, hi, iterations, deadline, lr,
                      warm=None):
    """Lower bounds (2m,) of the rows of :func:`_neuron_rows` for neurons ``idx`` of
    hidden layer ``k``: the best of the alpha steps' slopes (starting from ``warm``'s,
    see :func:`_start_slopes`), evaluated in float64 (the starting slopes' bound when
    no step runs); and those slopes ((2m, n_j) per layer j < k)."""
    work = prop.search_dtype or torch.float64
    n = lower[k].shape[1]

    def batch(dtype, rows):
        return ([l[0].to(dtype).expand(rows, -1) for l in lower[:k]],
                [u[0].to(dtype).expand(rows, -1) for u in upper[:k]],
                lo.to(dtype).expand(rows, -1), hi.to(dtype).expand(rows, -1))

    lam = _neuron_rows(n, idx, work)
    R = lam.shape[0]
    w_lower, w_upper, w_lo, w_hi = batch(work, R)
    slopes = [s.requires_grad_(True)
              for s in _start_slopes(prop, k, idx, w_lower, w_upper, warm, R)]
    kept = [s.detach().clone() for s in slopes]
    best = torch.full((R,), -torch.inf, dtype=work)
    opt = Adam(slopes, lr=lr)
    for _ in range(iterations):
        if deadline is not None and time.monotonic() > deadline:
            break
        cur = prop.layer_rows_bound(k, lam, w_lower, w_upper, w_lo, w_hi, slopes)[:, 0]
        with torch.no_grad():
            better = cur > best
            best = torch.where(better, cur, best)
            for keep, s in zip(kept, slopes):
                keep[better] = s.detach()[better]
        if not cur.requires_grad:  # no unstable neuron below: no slope to move
            break
        opt.zero_grad()
        (-cur.sum()).backward()
        opt.step()
    with torch.no_grad():
        e_lower, e_upper, e_lo, e_hi = batch(torch.float64, R)
        return prop.layer_rows_bound(k, lam.to(torch.float64), e_lower, e_upper, e_lo, e_hi,
                                     [s.to(torch.float64) for s in kept])[:, 0], kept


def optimise_layer_bounds(prop, lo: torch.Tensor, hi: torch.Tensor, lower: list, upper: list,
                          iterations: int, deadline: float | None = None, lr: float = 0.1,
                          warm: dict | None = None, slopes_out: dict | None = None):
    """Tighter bounds of the hidden layers' pre-activations over one box.

    ``prop``: a chain or graph bound propagator; ``lo``/``hi``: (1, n0); ``lower``/
    ``upper``: (1, n_k) sound bounds per hidden layer (e.g. CROWN's). Returns new
    lists: each layer's bounds intersected with the alpha-CROWN bounds of its
    unstable neurons (layers whose interval bounds are exact are kept). At
    ``deadline`` (a ``time.monotonic()`` value) it stops, the neurons done so far
    tightened (the rest keep the bounds given: sound).

    Warm start: ``slopes_out`` (a dict) receives per layer ``k`` the slopes kept,
    ``(neurons (m,), [(2m, n_j) float32 arrays per layer j < k])`` (row ``i`` the lower
    bound query of ``neurons[i]``, row ``m + i`` its upper bound query); ``warm``, in
    that form (e.g. a similar network's), gives the steps their starting slopes.
    Any slopes are sound: they only decide how tight the bounds get."""
    lower = [l.clone() for l in lower]
    upper = [u.clone() for u in upper]
    for k in range(len(lower)):
        if prop.layer_exact(k):
            continue
        idx = ((lower[k][0] < 0) & (upper[k][0] > 0)).nonzero()[:, 0]
        step = max(1, prop.layer_query_rows(k) // 2)
        for s0 in range(0, len(idx), step):
            if deadline is not None and time.monotonic() > deadline:
                return lower, upper
            part = idx[s0:s0 + step]
            bnd, kept = _rows_lower_bound(prop, k, part, lower, upper, lo, hi, iterations,
                                          deadline, lr, None if warm is None else warm.get(k))
            m = len(part)
            lower[k][0, part] = torch.maximum(lower[k][0, part], _widen_lower(bnd[:m]))
            upper[k][0, part] = torch.minimum(upper[k][0, part], _widen_upper(-bnd[m:]))
            if slopes_out is not None:
                _keep_slopes(slopes_out, k, part, kept)
    return lower, upper


def _keep_slopes(slopes_out: dict, k: int, part: torch.Tensor, kept: list) -> None:
    """Add one chunk's kept slopes of layer ``k`` to ``slopes_out`` (see
    :func:`optimise_layer_bounds`)."""
    m = len(part)
    neurons = part.numpy().astype(np.int64)
    arrays = [s.detach().to(torch.float32).numpy() for s in kept]
    if k not in slopes_out:
        slopes_out[k] = (neurons, arrays)
        return
    had, rows = slopes_out[k]
    mh = len(had)
    # rows: lower queries of every neuron first, then the upper ones
    slopes_out[k] = (np.concatenate([had, neurons]),
                     [np.concatenate([r[:mh], a[:m], r[mh:], a[m:]]) for r, a in zip(rows, arrays)])


class KeptSlopes:
    """The slopes :func:`optimise_layer_bounds` kept (its ``slopes_out``), served to
    the back-substitution of the same neurons in a search's branches.

    A branch of ReLU splitting has the root's box; after a split, the layers past it
    are back-substituted again, and with the root's kept slopes (one set per neuron
    query) instead of the adaptive ones a branch gets nearly what alpha-CROWN steps
    would give it (measured on eran's mnist_relu_9_200 idx 2971: children of the
    tightened root at spec bound -2.18 to -2.27 with the adaptive slopes, -1.57 to
    -2.03 with the kept ones, -1.54 to -2.00 after 5 more steps; see the README).
    Any slopes in [0, 1] are sound; a neuron stable in a branch takes its exact
    relaxation whatever its slope here (:meth:`BoundPropagator._backsub`)."""

    def __init__(self, kept: dict, sizes):
        """``kept``: ``{k: (neurons (m,), [(2m, n_j) per layer j < k])}``, rows the
        lower-bound queries of ``neurons`` then their upper-bound ones; ``sizes``: the
        hidden layers' widths.  float32 arrays are shared, not copied (a CNN's root
        keeps hundreds of MB of them)."""
        self._layers = {}
        for k, (neurons, rows) in kept.items():
            m = len(neurons)
            if m == 0:
                continue
            pos = torch.full((sizes[k],), -1, dtype=torch.long)
            pos[torch.as_tensor(np.asarray(neurons, dtype=np.int64))] = torch.arange(m)
            self._layers[k] = (pos, m, [torch.from_numpy(np.asarray(r, dtype=np.float32))
                                        for r in rows])

    def __contains__(self, k: int) -> bool:
        return k in self._layers

    def _rows(self, k: int, cols):
        """(lower-query rows, upper-query rows) ((q, n_j) each, NaN where none was
        kept) of neurons ``cols`` (None: all) of layer ``k``, per layer j < k."""
        pos, m, rows = self._layers[k]
        p = pos if cols is None else pos[cols]
        missing = p < 0
        p = p.clamp(min=0)
        out = []
        for r in rows:
            lower, upper = r[p], r[m + p]
            if missing.any():
                lower[missing], upper[missing] = torch.nan, torch.nan
            out.append((lower, upper))
        return out

    def columns(self, k: int, cols) -> list[torch.Tensor] | None:
        """The slopes of the queries of neurons ``cols`` (None: all) of layer ``k`` in
        :meth:`BoundPropagator._neuron_query_start`'s order (lower queries, then upper):
        (1, 2m, n_j) per layer j < k, NaN where none was kept; None: none for layer k."""
        if k not in self._layers:
            return None
        return [torch.cat([lw, up])[None] for lw, up in self._rows(k, cols)]

    def queries(self, k: int, cols: torch.Tensor) -> list[torch.Tensor] | None:
        """The same for one query pair per entry of ``cols``: (n_q, 2, n_j) per layer."""
        if k not in self._layers:
            return None
        return [torch.stack([lw, up], 1) for lw, up in self._rows(k, cols)]
