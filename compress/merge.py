"""Linearity-based compression: neurons active on a whole domain merged into the next layer.

A hidden neuron ``j`` of layer ``k`` whose pre-activation is provably positive on the
domain (lower bound > 0; sound bounds, :func:`verify.bounds.layer_bounds`) computes
``h_j = z_j = W_k[j] . h_{k-1} + b_k[j]`` there: it is linear.  A chain cannot hand
``W_{k+1}[:, j] W_k[j]`` to the next layer directly (that is a skip connection from
layer ``k-1`` to ``k+1``), but it can drop ``j`` exactly when ``j``'s row is a linear
combination of the rows of other active neurons ``B`` of the same layer, over the
inputs that vary on the domain (an input of zero width, or a neuron of layer ``k-1``
proven inactive, contributes a constant): ``W_k[j, live] = c_j . W_k[B, live]``.  On
the domain then ``h_j = c_j . h_B + e_j`` (``e_j`` the constant rest), and

    W'_{k+1}[:, B] = W_{k+1}[:, B] + W_{k+1}[:, j] c_j,    b'_{k+1} = b_{k+1} + W_{k+1}[:, j] e_j

(Serra, Kumar and Ramalingam, *Lossless compression of deep neural networks*, CPAIOR
2020).  The basis ``B`` is chosen by QR with column pivoting among the active neurons,
so at most ``rank(W_k[A, live])`` of them stay; on ACAS Xu's first layer (5 inputs)
that is at most 5.  The coefficients come from a least-squares solve and a neuron is
merged only when its row's residual is below ``1e-9`` of its norm: the variant equals
the original on the domain up to float rounding (``coreproof equiv`` confirms a
certified delta of that order); outside the domain it differs.  When every parameter
of the network is a float32 number (an ONNX model's usually are), the folded layer is
rounded to float32 too, so the deployable file stays float32 (half the bytes of a
float64 one): the change is then float32 rounding of that layer's weights.  The change record
lists the merged neurons (``removed_merged``) and the domain (``exact_on_box``).

The approximate form (``merge-approx:T[:TOL]``) takes the neurons active on at least a
share ``T`` of the calibration inputs and merges one (the same fold) when, on those
inputs, its output is within ``TOL`` (default 0.3; RMS residual over its standard
deviation) of a least-squares combination of the layer's other outputs and a constant.
It is not lossless: verify it like any other variant.  (Use more calibration inputs
than neurons per layer, or the least-squares fit is exact on them by construction.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from verify.errors import OptionError
from verify.network import Affine, Network

from .core import StepOutcome

EXACT_TOL = 1e-9  # relative row residual of an exact merge (float rounding only)


def merge_plan(weight: np.ndarray, bias: np.ndarray, active: np.ndarray, live: np.ndarray,
               const_values: np.ndarray, tol: float):
    """Which active neurons of one layer to merge and how: (basis, merged, C, e) with
    ``z_merged = C @ z_basis + e`` wherever the ``live`` inputs vary and the others
    equal ``const_values``.  ``active``, ``live``: boolean masks (rows, columns)."""
    from scipy.linalg import qr
    A = np.flatnonzero(active)
    if len(A) < 2:
        return None
    cols = np.flatnonzero(live)
    const_cols = np.flatnonzero(~live)
    M = weight[np.ix_(A, cols)]
    if M.shape[1] == 0:
        r, piv = 0, np.arange(len(A))
    else:
        _, R, piv = qr(M.T, mode="economic", pivoting=True)
        d = np.abs(np.diag(R))
        r = int((d > max(tol, 1e-12) * d[0]).sum()) if d.size and d[0] > 0 else 0
    basis, rest = A[piv[:r]], A[piv[r:]]
    if not len(rest):
        return None
    Mb, Mr = M[piv[:r]], M[piv[r:]]
    C = np.linalg.lstsq(Mb.T, Mr.T, rcond=None)[0].T if r else np.zeros((len(rest), 0))
    resid = np.linalg.norm(Mr - C @ Mb, axis=1)
    ok = resid <= tol * np.maximum(np.linalg.norm(Mr, axis=1), 1e-300)
    if not ok.any():
        return None
    merged, C = rest[ok], C[ok]
    const = weight[np.ix_(merged, const_cols)] - C @ weight[np.ix_(basis, const_cols)]
    e = bias[merged] - C @ bias[basis] + const @ const_values
    return basis, merged, C, e


def apply_merge(network: Network, k: int, plan) -> tuple[Network, np.ndarray]:
    """Fold the merged neurons of layer ``k`` into layer ``k+1``; (network, kept rows)."""
    basis, merged, C, e = plan
    a, nxt = network.affines[k], network.affines[k + 1]
    if nxt.is_quantized or a.is_quantized:
        raise OptionError(f"layer {k} or {k + 1} is quantized: merge before quantizing")
    W2 = np.array(nxt.weight)
    out = W2[:, merged]
    W2[:, basis] += out @ C
    b2 = nxt.bias + out @ e
    if all(_float32_exact(x) for f in network.affines for x in (f.weight, f.bias)):
        # a float32 network stays one (a compact deployable file): the folded layer is
        # rounded to float32, a change of float32 rounding (as the file would make)
        W2, b2 = W2.astype(np.float32).astype(np.float64), b2.astype(np.float32).astype(np.float64)
    keep = np.setdiff1d(np.arange(a.out_size), merged)
    affines = list(network.affines)
    affines[k] = Affine(a.weight[keep], a.bias[keep])
    affines[k + 1] = Affine(W2[:, keep], b2)
    return network.with_affines(affines), keep


def _float32_exact(a: np.ndarray) -> bool:
    return bool(np.array_equal(a.astype(np.float32), a))


def _merge_layers(network: Network, masks, tol: float) -> StepOutcome:
    """``masks(net, k)`` -> (active rows, live columns, constant column values) of
    layer ``k`` of the current network; merge layer by layer."""
    kept, counts, current = {}, {}, network
    for k in range(network.n_layers - 1):
        active, live, const_values = masks(current, k)
        plan = merge_plan(current.affines[k].weight, current.affines[k].bias, active, live,
                          const_values, tol)
        if plan is None:
            continue
        current, keep = apply_merge(current, k, plan)
        kept[k] = keep
        counts[str(k)] = int(len(plan[1]))
    return StepOutcome(current, kept=kept, reason="merged",
                       summary={"neurons_merged": counts})


def merge_exact(network: Network, lower, upper, bounds_fn=None) -> StepOutcome:
    """Merge the neurons proven active on the box (see the module doc)."""
    from verify.bounds import layer_bounds
    lo, hi = np.asarray(lower, float), np.asarray(upper, float)
    bound = bounds_fn or layer_bounds
    cache: dict = {}

    def masks(net: Network, k: int):
        key = net.digest()
        if key not in cache:  # sound bounds of the current network (merging moved it)
            cache[key] = bound(net, lo, hi)
        lb, ub = (np.asarray(v, float).reshape(-1) for v in cache[key][k])
        if k == 0:
            live = hi > lo
            return lb > 0.0, live, lo[~live]
        live = np.asarray(cache[key][k - 1][1], float).reshape(-1) > 0.0  # a neuron proven inactive below outputs 0
        return lb > 0.0, live, np.zeros(int((~live).sum()))

    out = _merge_layers(network, masks, EXACT_TOL)
    out.box = (lo, hi)
    out.summary["box"] = [lo.tolist(), hi.tolist()]
    return out


def merge_approx(network: Network, calibration: np.ndarray, share: float, tol: float
                 ) -> StepOutcome:
    """Merge, layer by layer, the neurons active on at least ``share`` of the
    calibration inputs whose output is, on those inputs, within ``tol`` (relative
    RMS residual over the neuron's standard deviation) of a least-squares
    combination of the layer's other outputs plus a constant (not exact)."""
    x = np.asarray(calibration, float).reshape(len(calibration), -1)
    current, kept, counts = network, {}, {}
    for k in range(network.n_layers - 1):
        pre = current.pre_activations(x)[k]
        order = np.argsort(-(pre > 0).mean(axis=0), kind="stable")
        candidates = [int(j) for j in order if (pre[:, j] > 0).mean() >= share]
        idx = np.arange(current.affines[k].out_size)  # current row -> row at the start
        for j0 in candidates:
            if len(idx) <= 1:
                break
            j = int(np.flatnonzero(idx == j0)[0])
            H = np.maximum(current.pre_activations(x)[k], 0.0)
            others = np.delete(np.arange(H.shape[1]), j)
            A = np.hstack([H[:, others], np.ones((len(x), 1))])
            coef = np.linalg.lstsq(A, H[:, j], rcond=None)[0]
            resid = np.sqrt(np.mean((A @ coef - H[:, j]) ** 2))
            if resid > tol * max(float(H[:, j].std()), 1e-12):
                continue
            current, keep = apply_merge(current, k, (others, np.array([j]), coef[None, :-1],
                                                     coef[-1:]))
            idx = idx[keep]
        if len(idx) < network.affines[k].out_size:
            kept[k] = idx
            counts[str(k)] = int(network.affines[k].out_size - len(idx))
    return StepOutcome(current, kept=kept, reason="merged", summary={
        "neurons_merged": counts, "share": share, "tolerance": tol})


@dataclass(frozen=True)
class MergeLinear:
    """The recipe step ``merge-linear`` (exact, on the domain) or
    ``merge-approx:T[:TOL]`` (calibration data; ``approx_share`` set)."""

    approx_share: float | None = None
    tolerance: float = 0.3

    def __post_init__(self):
        if self.approx_share is not None and not 0.0 < self.approx_share <= 1.0:
            raise OptionError(f"merge-approx share must be in (0, 1], got {self.approx_share!r}")
        if not 0.0 < self.tolerance < 1.0:
            raise OptionError(f"merge tolerance must be in (0, 1), got {self.tolerance!r}")

    @property
    def exact(self) -> bool:
        return self.approx_share is None

    def spec(self) -> str:
        if self.exact:
            return "merge-linear"
        s = f"merge-approx:{self.approx_share!r}"
        return s if self.tolerance == 0.3 else f"{s}:{self.tolerance!r}"

    def run(self, network: Network, ctx) -> StepOutcome:
        if self.exact:
            if ctx.box is None:
                raise OptionError("merge-linear needs an input domain (--domain or --box)")
            return merge_exact(network, *ctx.box, bounds_fn=ctx.bounds_fn)
        if ctx.calibration is None:
            raise OptionError("merge-approx needs calibration inputs (--calibration)")
        return merge_approx(network, ctx.calibration, self.approx_share, self.tolerance)


def parse_merge(head: str, opts: list[str], text: str) -> MergeLinear:
    """``merge-linear`` or ``merge-approx:T[:TOL]``."""
    if head == "merge-linear":
        if opts:
            raise OptionError(f"'merge-linear' takes no options, got {text!r}")
        return MergeLinear()
    if not 1 <= len(opts) <= 2:
        raise OptionError(f"{text!r}: expected merge-approx:SHARE[:TOL], e.g. merge-approx:0.99")
    try:
        vals = [float(o[:-1]) / 100.0 if o.endswith("%") else float(o) for o in opts]
    except ValueError:
        raise OptionError(f"{text!r}: the share and tolerance must be numbers") from None
    return MergeLinear(vals[0], *vals[1:])
