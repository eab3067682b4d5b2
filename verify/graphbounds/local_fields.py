"""Bounds of a one-ReLU-layer network exact per receptive field (Lagrangian decomposition).

For a network ``y = A relu(W x + b) + y0`` -- an affine map (a convolution, any of the
graph's linear operators), one ReLU layer, a linear tail (pooling, Gemm) -- whose neurons
each read a few inputs (a 2x2 convolution: 4 pixels), a spec row ``c @ y - d`` is

    sum_g G_g(x_S(g)) + k,    G_g(v) = sum_{i in g} a_i relu(W_i v + b_i),  a = c A,

with one term per *receptive field* ``S(g)`` (the neurons of a group read the same
inputs: the channels at one position).  Each ``G_g`` is piecewise linear in a few
variables, so its minimum over the field's box -- plus any linear term -- lies at a vertex
of the arrangement of its unstable neurons' hyperplanes and the box's faces, all of which
are enumerated once (:func:`field_vertices`).  Fields overlap (an input is read by several
fields), so each field gets its own copy of its inputs and multipliers ``lambda`` tie the
copies: for multipliers whose copies sum to zero per input,

    min_x row(x) >= sum_g min_{v in box_g} (G_g(v) + lambda_g @ v) + k,

the Lagrangian dual, maximised over ``lambda`` by Adam (any ``lambda`` gives a sound
bound; the copies' rounding residual is charged exactly).  The fields' exact minima make
this the linear program over the convex hulls of the fields' functions -- much tighter
than one triangle relaxation per neuron (what CROWN/alpha-CROWN reach on one layer): on
verivital ``Convnet_avgpool`` at eps 0.04, where alpha-CROWN's margins are -0.47, -0.55
and -0.14, it proves all three (0.51, 0.42, 0.82; PGD's minima 0.56, 0.56, 0.91).

A vertex is computed from a 4x4 (at most ``max_inputs``) linear system; a system close to
singular whose solution lies near the box makes the bound decline (None) rather than risk
missing a vertex.  Any network that is not of this form gives None (see
:func:`local_fields`)."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..graph import GraphNetwork

# a vertex's linear system with |det| / prod(row norms) at most this is close to singular
NEAR_SINGULAR = 1e-7
# candidate systems enumerated at most (fields x combinations), else the bound declines
MAX_SYSTEMS = 4e7


@dataclass(frozen=True)
class LocalFields:
    """A one-ReLU-layer network split into receptive fields (see the module docstring)."""

    support: np.ndarray  # (G, n) int64: the inputs each field reads (-1: padding)
    neurons: np.ndarray  # (G, c) int64: the neurons of each field (-1: padding)
    weights: np.ndarray  # (G, c, n): each neuron's weights on its field's inputs
    bias: np.ndarray  # (G, c)
    const_neurons: np.ndarray  # neurons reading no input (constant relu(b))
    const_bias: np.ndarray
    tail: np.ndarray  # (n_outputs, N): y = tail @ relu(z) + tail_const
    tail_const: np.ndarray  # (n_outputs,)
    n_inputs: int


def local_fields(net: GraphNetwork, max_inputs: int) -> LocalFields | None:
    """``net`` as :class:`LocalFields`, or None when it is not an affine map, one ReLU
    layer and a linear tail reading only the ReLU layer, or a neuron reads more than
    ``max_inputs`` inputs."""
    if max_inputs < 1 or len(net.relu_nodes) != 1:
        return None
    r = net.relu_nodes[0]
    if any(j < r for n in net.nodes[r + 1:] for j in n.inputs):
        return None  # the tail reads something besides the ReLU layer (a skip)
    src = net.nodes[r].inputs[0]
    n0, N = net.n_inputs, net.nodes[r].size

    def pre(x: torch.Tensor) -> torch.Tensor:
        values = _run(net, {0: x.reshape(x.shape[0], *net.input_shape)}, range(1, src + 1))
        return values[src].reshape(x.shape[0], -1)

    with torch.no_grad():
        b = pre(torch.zeros(1, n0, dtype=torch.float64))[0]
        rows, cols, vals = [], [], []
        counts = np.zeros(N, dtype=np.int64)
        step = max(1, int(2e7 // max(N, 1)))
        for s in range(0, n0, step):
            eye = torch.eye(n0, dtype=torch.float64)[s:s + step]
            z = (pre(eye) - b).numpy()  # (k, N): column s+k of W
            k_idx, i_idx = np.nonzero(z)
            counts += np.bincount(i_idx, minlength=N)
            if counts.max() > max_inputs:
                return None
            rows.append(i_idx)
            cols.append(k_idx + s)
            vals.append(z[k_idx, i_idx])
        rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
        b = b.numpy()
        # an affine pre-activation map: W x + b at a random point
        x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (1, n0)))
        Wx = np.zeros(N)
        np.add.at(Wx, rows, vals * x.numpy()[0, cols])
        got = pre(x).numpy()[0]
        if not np.allclose(got, Wx + b, rtol=1e-9, atol=1e-9 * (1 + np.abs(got).max())):
            return None
    tail, tail_const = _linear_tail(net, r)
    if tail is None:
        return None
    # fields: the neurons reading the same inputs
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    n = int(max(1, counts.max()))
    supp = np.full((N, n), -1, dtype=np.int64)
    wts = np.zeros((N, n))
    pos = np.arange(len(rows)) - np.searchsorted(rows, rows)
    supp[rows, pos], wts[rows, pos] = cols, vals
    live = counts > 0
    keys, group = np.unique(supp[live], axis=0, return_inverse=True)
    group = group.reshape(-1)
    ids = np.flatnonzero(live)
    by = np.argsort(group, kind="stable")
    sizes = np.bincount(group, minlength=len(keys))
    c = int(sizes.max())
    neurons = np.full((len(keys), c), -1, dtype=np.int64)
    slot = np.arange(len(by)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    neurons[group[by], slot] = ids[by]
    weights = np.where((neurons >= 0)[..., None], wts[np.maximum(neurons, 0)], 0.0)
    bias = np.where(neurons >= 0, b[np.maximum(neurons, 0)], 0.0)
    dead = np.flatnonzero(~live)
    return LocalFields(keys, neurons, weights, bias, dead, b[dead], tail, tail_const, n0)


def _run(net: GraphNetwork, values: dict, nodes: range) -> dict:
    """``values`` (node -> batch) extended by evaluating ``nodes`` in order."""
    for i in nodes:
        node = net.nodes[i]
        values[i] = node.op.forward(*(values[j] for j in node.inputs))
    return values


def _linear_tail(net: GraphNetwork, r: int):
    """The map from the ReLU layer's output to the network's output as (A, y0), or
    (None, None) when it is not linear."""
    shape = net.nodes[r].shape
    N = net.nodes[r].size
    last = len(net.nodes) - 1

    def tail(h: torch.Tensor) -> torch.Tensor:
        values = _run(net, {r: h.reshape(h.shape[0], *shape)}, range(r + 1, last + 1))
        return values[last].reshape(h.shape[0], -1)

    if r == len(net.nodes) - 1:
        return None, None  # the output is the ReLU layer itself
    h = torch.zeros(1, N, dtype=torch.float64, requires_grad=True)
    y = tail(h)
    A = np.stack([torch.autograd.grad(y[0, j], h, retain_graph=True)[0][0].numpy()
                  for j in range(y.shape[1])])
    y0 = y.detach().numpy()[0]
    probe = np.random.default_rng(1).uniform(0, 1, (2, N))
    with torch.no_grad():
        got = tail(torch.from_numpy(probe)).numpy()
    want = probe @ A.T + y0
    if not np.allclose(got, want, rtol=1e-9, atol=1e-9 * (1 + np.abs(want).max())):
        return None, None
    return A, y0


@dataclass(frozen=True)
class FieldVertices:
    """Per field the candidate minimisers: (G, K, n) points (padding: +inf values)."""

    points: np.ndarray
    valid: np.ndarray  # (G, K) bool


def field_vertices(f: LocalFields, lo: np.ndarray, hi: np.ndarray) -> FieldVertices | None:
    """Every vertex, inside the box ``[lo, hi]``, of each field's arrangement of its
    unstable neurons' hyperplanes and its box's faces; None when a near-singular system
    lands near a box or the enumeration would exceed :data:`MAX_SYSTEMS` systems."""
    G, n = f.support.shape
    used = f.support >= 0
    s = np.maximum(f.support, 0)
    blo = np.where(used, lo[s], 0.0)  # an unused coordinate: fixed at 0
    bhi = np.where(used, hi[s], 0.0)
    Wp, Wn = np.clip(f.weights, 0, None), np.clip(f.weights, None, 0)
    l = np.einsum("gcn,gn->gc", Wp, blo) + np.einsum("gcn,gn->gc", Wn, bhi) + f.bias
    u = np.einsum("gcn,gn->gc", Wp, bhi) + np.einsum("gcn,gn->gc", Wn, blo) + f.bias
    unstable = (l < 0) & (u > 0) & (f.neurons >= 0)
    k = int(unstable.sum(1).max()) if G else 0
    # each field's unstable hyperplanes first (padded: invalid)
    order = np.argsort(~unstable, axis=1, kind="stable")[:, :max(k, 1)]
    pw = np.take_along_axis(f.weights, order[..., None], 1)[:, :k]
    pb = np.take_along_axis(f.bias, order, 1)[:, :k]
    pok = np.take_along_axis(unstable, order, 1)[:, :k]
    combos = []
    for m in range(0, min(n, k) + 1):
        for planes in itertools.combinations(range(k), m):
            for coords in itertools.combinations(range(n), n - m):
                for side in itertools.product((0, 1), repeat=n - m):
                    combos.append((planes, coords, side))
    if G * len(combos) > MAX_SYSTEMS:
        return None
    width = bhi - blo
    points, valids = [], []
    chunk = max(1, int(2e5 // max(G, 1)))
    for c0 in range(0, len(combos), chunk):
        part = combos[c0:c0 + chunk]
        Q = len(part)
        M = np.zeros((Q, G, n, n))
        rhs = np.zeros((Q, G, n))
        ok = np.ones((Q, G), dtype=bool)
        for q, (planes, coords, side) in enumerate(part):
            for row, p in enumerate(planes):
                M[q, :, row] = pw[:, p]
                rhs[q, :, row] = -pb[:, p]
                ok[q] &= pok[:, p]
            for j, (ci, sd) in enumerate(zip(coords, side)):
                M[q, :, len(planes) + j, ci] = 1.0
                rhs[q, :, len(planes) + j] = bhi[:, ci] if sd else blo[:, ci]
        # one LU factorisation each: the solution and |det| (its pivots' product)
        LU, piv, info = torch.linalg.lu_factor_ex(torch.from_numpy(M.reshape(-1, n, n)))
        sol = torch.linalg.lu_solve(LU, piv, torch.from_numpy(rhs.reshape(-1, n, 1)))
        sol = sol[..., 0].numpy().reshape(Q, G, n)
        info = info.numpy().reshape(Q, G)
        det = LU.diagonal(dim1=-2, dim2=-1).abs().prod(-1).numpy().reshape(Q, G)
        scale = np.prod(np.linalg.norm(M, axis=-1), axis=-1)
        ratio = np.where(scale > 0, det / np.where(scale > 0, scale, 1.0), 0.0)
        solved = ok & (info == 0) & np.isfinite(sol).all(-1)
        slack = 1e-9 * (1.0 + width)
        inside = solved & (sol >= blo - slack).all(-1) & (sol <= bhi + slack).all(-1)
        near = solved & (sol >= blo - 0.1 * width - 1e-6).all(-1) \
            & (sol <= bhi + 0.1 * width + 1e-6).all(-1)
        if (near & (ratio <= NEAR_SINGULAR)).any():
            return None
        # keep each field's candidates inside its box (padded to the largest count)
        sol = np.where(inside[..., None], sol, blo)  # (failed systems: NaN or far away)
        P, V = np.clip(sol, blo, bhi).transpose(1, 0, 2), inside.T
        idx = np.argsort(~V, axis=1, kind="stable")[:, :max(1, int(V.sum(1).max()))]
        points.append(np.take_along_axis(P, idx[..., None], 1))
        valids.append(np.take_along_axis(V, idx, 1))
    return FieldVertices(np.concatenate(points, axis=1), np.concatenate(valids, axis=1))


def field_bound(f: LocalFields, verts: FieldVertices, lo: np.ndarray, hi: np.ndarray,
                spec_c: np.ndarray, spec_d: np.ndarray, iterations: int,
                deadline: float | None = None, lr: float = 0.01,
                enough=None) -> np.ndarray:
    """(m,) sound lower bounds of the spec rows ``spec_c @ y - spec_d`` over the box
    (see the module docstring), the multipliers optimised for ``iterations`` Adam steps,
    until ``deadline``, or until ``enough`` (a callable) says True of the rows' best
    bounds so far (without the final rounding charges, a few ulps)."""
    G, n = f.support.shape
    a = spec_c @ f.tail  # (m, N)
    k0 = spec_c @ f.tail_const - spec_d + a[:, f.const_neurons] @ np.maximum(f.const_bias, 0.0)
    m = len(spec_c)
    P = verts.points
    Z = np.maximum(np.einsum("gkn,gcn->gkc", P, f.weights) + f.bias[:, None, :], 0.0)
    an = np.where(f.neurons >= 0, a[:, np.maximum(f.neurons, 0)], 0.0)  # (m, G, c)
    vals = np.einsum("gkc,rgc->rgk", Z, an)
    vals = np.where(verts.valid[None], vals, np.inf)
    used = f.support >= 0
    flat = np.where(used, f.support, f.n_inputs).reshape(-1)
    copies = np.bincount(flat, minlength=f.n_inputs + 1)[:f.n_inputs].astype(np.float64)
    Pt, Vt = torch.from_numpy(P), torch.from_numpy(vals)
    used_t, flat_t = torch.from_numpy(used), torch.from_numpy(flat)
    copies_t = torch.from_numpy(np.maximum(copies, 1.0))
    gather = torch.from_numpy(np.where(used, f.support, 0))

    def multipliers(mu: torch.Tensor) -> torch.Tensor:
        """Copies' multipliers summing to zero per input (up to rounding)."""
        mu = mu * used_t
        tot = torch.zeros(m, f.n_inputs + 1, dtype=mu.dtype).index_add_(
            1, flat_t, mu.reshape(m, -1))[:, :f.n_inputs]
        return (mu - (tot / copies_t)[:, gather]) * used_t

    def dual(lam: torch.Tensor) -> torch.Tensor:
        return (Vt + torch.einsum("rgn,gkn->rgk", lam, Pt)).min(-1).values.sum(-1)

    mu = torch.zeros(m, G, n, dtype=torch.float64, requires_grad=True)
    best_val = dual(multipliers(mu)).detach().clone()
    best_mu = mu.detach().clone()
    opt = torch.optim.Adam([mu], lr=lr)
    for _ in range(iterations):
        if deadline is not None and time.monotonic() >= deadline:
            break
        opt.zero_grad()
        val = dual(multipliers(mu))
        (-val.sum()).backward()
        better = val.detach() > best_val
        best_val = torch.where(better, val.detach(), best_val)
        best_mu[better] = mu.detach()[better]
        if enough is not None and enough(best_val.numpy() + k0):
            break
        opt.step()
    with torch.no_grad():
        lam = multipliers(best_mu)
        value = dual(lam).numpy()
        # the copies' sums are zero only up to rounding: charge what is left exactly
        resid = torch.zeros(m, f.n_inputs + 1, dtype=torch.float64).index_add_(
            1, flat_t, lam.reshape(m, -1))[:, :f.n_inputs].numpy()
    value = value - np.maximum(resid * lo, resid * hi).sum(1)
    # vertices are solved in floating point: a margin for their rounding
    finite = np.where(np.isfinite(vals), np.abs(vals), 0.0).max(-1).sum(-1)
    return value + k0 - 1e-9 * (1.0 + finite + np.abs(k0))
