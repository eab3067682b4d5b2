"""Pruning steps: unstructured magnitude pruning, structured neuron pruning and
exact dead-neuron removal.  Each function takes a :class:`Network` and returns a
:class:`~compress.core.StepOutcome` (the new network plus what the step did);
the public wrappers in :mod:`compress.api` turn that into a recorded
:class:`~compress.core.Variant`.

Conventions
-----------
* Ratios are fractions in ``[0, 1]``; the number of weights (neurons) pruned is
  ``round(ratio * n)`` (half rounds up).  Ties in the ranking are broken by
  position (lower flat index first), so results are deterministic.
* Magnitude pruning zeroes weights and never touches biases; the output layer
  is pruned too unless ``include_output=False``.  A threshold prunes every
  weight with ``|w| < threshold``.
* Structured pruning deletes hidden neurons: the neuron's row (weights and bias)
  in layer ``k`` and its column in layer ``k+1``.  This removes the neuron's
  contribution, so the function changes unless the neuron was inactive.
  Every hidden layer keeps at least one neuron.
* Dead-neuron removal deletes the hidden neurons whose pre-activation upper
  bound over the input box is ``<= 0``: they output 0 everywhere on the box,
  so the variant computes exactly the same function there.
"""
from __future__ import annotations

import numbers

import numpy as np

from verify.errors import OptionError, ShapeMismatchError
from verify.network import Network

from .core import StepOutcome, make_affine, remove_neurons


def check_ratio(ratio, what: str = "ratio") -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise OptionError(f"{what} must be a number in [0, 1], got {ratio!r}")
    r = float(ratio)
    if not 0.0 <= r <= 1.0:
        raise OptionError(f"{what} must be in [0, 1], got {ratio!r}")
    return r


def check_neuron_ratio(ratio) -> float:
    """A neuron pruning ratio: in [0, 1).  1 is refused rather than quietly
    keeping a neuron per layer (every hidden layer keeps at least one)."""
    r = check_ratio(ratio, "neuron pruning ratio")
    if r >= 1.0:
        raise OptionError(f"neuron pruning ratio must be below 1, got {ratio!r} (neurons:1 would "
                          "remove every neuron of a layer; each hidden layer keeps at least one)")
    return r


def _count(ratio: float, n: int) -> int:
    return min(n, int(np.floor(ratio * n + 0.5)))


def _smallest(values: np.ndarray, count: int) -> np.ndarray:
    """Flat indices of the ``count`` smallest values (stable: ties by position)."""
    order = np.argsort(values, kind="stable")
    return order[:count]


# --------------------------------------------------------------------------------------
# unstructured magnitude pruning
# --------------------------------------------------------------------------------------
def magnitude(network: Network, ratio=None, *, threshold=None, scope: str = "layer",
              include_output: bool = True) -> StepOutcome:
    """Zero the smallest-magnitude weights (per layer or globally, by ratio or threshold)."""
    if (ratio is None) == (threshold is None):
        raise OptionError("magnitude pruning needs exactly one of a ratio or a threshold")
    if scope not in ("layer", "global"):
        raise OptionError(f"unknown pruning scope {scope!r} (expected 'layer' or 'global')")
    n_layers = network.n_layers
    targets = list(range(n_layers if include_output else n_layers - 1))
    masks: dict[int, np.ndarray] = {}
    if threshold is not None:
        if np.ndim(threshold) == 0:
            ths = [threshold] * n_layers
        else:
            ths = list(threshold)
            if len(ths) != n_layers:
                raise OptionError(f"{len(ths)} per-layer thresholds for {n_layers} layers")
        for t in ths:
            if isinstance(t, bool) or not isinstance(t, numbers.Real) or not np.isfinite(t) \
                    or t < 0:
                raise OptionError(f"pruning threshold must be a finite number >= 0, got {t!r}")
        for k in targets:
            masks[k] = np.abs(network.affines[k].weight) < float(ths[k])
        spec = {"threshold": [float(t) for t in ths] if np.ndim(threshold) else float(ths[0])}
    else:
        r = check_ratio(ratio, "pruning ratio")
        spec = {"ratio": r}
        if scope == "layer":
            for k in targets:
                w = network.affines[k].weight
                m = np.zeros(w.size, dtype=bool)
                m[_smallest(np.abs(w).ravel(), _count(r, w.size))] = True
                masks[k] = m.reshape(w.shape)
        elif targets:
            flat = np.concatenate([np.abs(network.affines[k].weight).ravel() for k in targets])
            m = np.zeros(flat.size, dtype=bool)
            m[_smallest(flat, _count(r, flat.size))] = True
            start = 0
            for k in targets:
                shape = network.affines[k].weight.shape
                n = network.affines[k].weight.size
                masks[k] = m[start:start + n].reshape(shape)
                start += n
    newly = 0
    affines = list(network.affines)
    for k, mask in masks.items():
        a = affines[k]
        hit = mask & (a.weight != 0)
        if not hit.any():
            continue
        newly += int(hit.sum())
        w = np.where(mask, 0.0, a.weight)
        if a.is_quantized:
            affines[k] = make_affine(w, a.bias, np.where(mask, 0, a.weight_int), a.weight_scale)
        else:
            affines[k] = make_affine(w, a.bias)
    out = network if newly == 0 else network.with_affines(affines)
    total = sum(network.affines[k].weight.size for k in targets)
    zeros = sum(int((out.affines[k].weight == 0).sum()) for k in targets)
    return StepOutcome(out, summary={
        **spec, "scope": scope, "include_output": include_output,
        "weights_zeroed": newly,
        "sparsity": zeros / total if total else 0.0})


# --------------------------------------------------------------------------------------
# structured neuron pruning
# --------------------------------------------------------------------------------------
def neuron_scores(network: Network, method: str = "norm", calibration=None) -> list[np.ndarray]:
    """Importance of every hidden neuron, one array per hidden layer.

    ``norm``: ``||incoming weights||_2 * ||outgoing weights||_2``.
    ``activation``: mean post-ReLU activation over the calibration inputs.
    """
    hidden = range(network.n_layers - 1)
    if method == "norm":
        return [np.linalg.norm(network.affines[k].weight, axis=1)
                * np.linalg.norm(network.affines[k + 1].weight, axis=0) for k in hidden]
    if method == "activation":
        if calibration is None:
            raise OptionError("neuron pruning by activation needs calibration data")
        x = np.asarray(calibration, dtype=np.float64)
        if x.ndim == 0 or x.size == 0:
            raise OptionError("calibration data is empty")
        x = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)
        if x.shape[1] != network.n_inputs:
            raise ShapeMismatchError(f"calibration inputs have {x.shape[1]} values per "
                                     f"sample, the network takes {network.n_inputs}")
        pre = network.pre_activations(x)
        return [np.maximum(pre[k], 0.0).mean(axis=0) for k in hidden]
    raise OptionError(f"unknown neuron-scoring method {method!r} "
                      "(expected 'norm' or 'activation')")


def neurons(network: Network, ratio=None, *, method: str = "norm", scope: str = "layer",
            calibration=None, remove: dict | None = None) -> StepOutcome:
    """Remove the least important hidden neurons (or exactly the ones in ``remove``)."""
    if scope not in ("layer", "global"):
        raise OptionError(f"unknown pruning scope {scope!r} (expected 'layer' or 'global')")
    sizes = network.hidden_sizes
    drop: dict[int, set] = {k: set() for k in range(len(sizes))}
    if remove is not None:
        if ratio is not None:
            raise OptionError("give either a ratio or explicit neurons to remove, not both")
        for k, idx in remove.items():
            if not isinstance(k, (int, np.integer)) or not 0 <= k < len(sizes):
                raise OptionError(f"layer {k} is not a hidden layer "
                                  f"(hidden layers are 0..{len(sizes) - 1})")
            for i in idx:
                if not isinstance(i, (int, np.integer)) or not 0 <= i < sizes[k]:
                    raise OptionError(f"neuron {i} out of range for layer {k} "
                                      f"({sizes[k]} neurons)")
                drop[k].add(int(i))
            if len(drop[k]) >= sizes[k]:
                raise OptionError(f"cannot remove every neuron of layer {k}")
        spec = {"neurons": {str(k): sorted(v) for k, v in drop.items() if v}}
    else:
        r = check_neuron_ratio(ratio)
        scores = neuron_scores(network, method, calibration) if r > 0 else []
        spec = {"ratio": r, "method": method, "scope": scope}
        if r > 0 and scope == "layer":
            for k, s in enumerate(scores):
                drop[k].update(int(i) for i in _smallest(s, min(_count(r, s.size), s.size - 1)))
        elif r > 0:
            flat = np.concatenate(scores)
            owner = np.concatenate([np.full(s.size, k) for k, s in enumerate(scores)])
            local = np.concatenate([np.arange(s.size) for s in scores])
            budget = _count(r, flat.size)
            for j in np.argsort(flat, kind="stable"):
                if budget == 0:
                    break
                k = int(owner[j])
                if len(drop[k]) < sizes[k] - 1:
                    drop[k].add(int(local[j]))
                    budget -= 1
    keep = {k: np.array([i for i in range(sizes[k]) if i not in d], dtype=np.int64)
            for k, d in drop.items() if d}
    out = remove_neurons(network, keep) if keep else network
    return StepOutcome(out, kept=keep, reason="pruned", summary={
        **spec, "neurons_removed": {str(k): len(d) for k, d in drop.items() if d}})


# --------------------------------------------------------------------------------------
# dead-neuron removal (exact on the box)
# --------------------------------------------------------------------------------------
def as_box(network: Network, lower, upper) -> tuple[np.ndarray, np.ndarray]:
    n = network.n_inputs
    try:
        lo = np.broadcast_to(np.asarray(lower, dtype=np.float64).reshape(-1)
                             if np.ndim(lower) else np.float64(lower), (n,)).copy()
        hi = np.broadcast_to(np.asarray(upper, dtype=np.float64).reshape(-1)
                             if np.ndim(upper) else np.float64(upper), (n,)).copy()
    except (ValueError, TypeError):
        raise ShapeMismatchError(f"the input box does not fit the network's {n} inputs") from None
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise OptionError("the input box must be finite")
    if np.any(lo > hi):
        raise OptionError("empty input box (a lower bound is above its upper bound)")
    return lo, hi


def dead(network: Network, lower, upper, *, bounds=None) -> StepOutcome:
    """Remove hidden neurons whose pre-activation upper bound on the box is ``<= 0``.

    ``bounds`` (one ``(lower, upper)`` pair per affine layer) defaults to
    :func:`verify.bounds.layer_bounds` over the box; it must be sound.
    """
    lo, hi = as_box(network, lower, upper)
    if bounds is None:
        from verify.bounds import layer_bounds
        bounds = layer_bounds(network, lo, hi)
    if len(bounds) < network.n_layers - 1:
        raise OptionError(f"bounds for {len(bounds)} layers, the network has "
                          f"{network.n_layers - 1} hidden layers")
    keep = {}
    n_dead = {}
    n_active = 0
    for k, size in enumerate(network.hidden_sizes):
        lb = np.asarray(bounds[k][0], dtype=np.float64).reshape(-1)
        ub = np.asarray(bounds[k][1], dtype=np.float64).reshape(-1)
        if ub.shape != (size,) or lb.shape != (size,):
            raise ShapeMismatchError(f"bounds of layer {k} have {ub.size} entries for "
                                     f"{size} neurons")
        is_dead = ub <= 0.0
        n_active += int((lb >= 0.0).sum())
        if is_dead.all():
            # keep one (dead) neuron so the layer is not empty; still exact
            is_dead[int(np.argmax(ub))] = False
        if is_dead.any():
            keep[k] = np.flatnonzero(~is_dead)
            n_dead[str(k)] = int(is_dead.sum())
    out = remove_neurons(network, keep) if keep else network
    return StepOutcome(out, kept=keep, reason="dead", box=(lo, hi), summary={
        "box": [lo.tolist(), hi.tolist()], "neurons_removed": n_dead,
        "always_active_kept": n_active})
