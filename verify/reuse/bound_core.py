"""Bound-fact cores: which neurons' back-substituted bounds a branch closed by
bound propagation needs.

Such a branch has no Z3 query: its proof is the bound computation.  Its facts
are, per hidden neuron, a pre-activation bound derived either by interval
arithmetic (cheap) or by back-substitution to the input box (CROWN: one
linear pass per neuron, the costly part on wide layers).  The core is a
minimal set of neurons whose back-substituted bounds -- intervals for all the
others -- still refute every unsafe conjunction of the branch.  It is named
like the Z3 encoding's bound constraints (``L{k}.N{i}.bounds``), so it maps
onto a compressed variant through the same change record, where the
variant's own bounds of the mapped neurons are derived again (never the
original's).

Minimisation is by deletion, in chunks that halve down to single neurons;
each check is one bound evaluation (milliseconds).  Bounds are not monotone
in the intermediate bounds, so the single-neuron pass repeats until nothing
can be dropped; ``minimal`` says it got there within the budget.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..constraint_names import neuron_name, parse_neuron
from ..search import RegionSearch
from .cores import Core


def refine_masks(neurons, hidden_sizes) -> list[torch.Tensor]:
    """(n_k,) boolean masks per hidden layer from (layer, index) pairs."""
    masks = [torch.zeros(n, dtype=torch.bool) for n in hidden_sizes]
    for k, i in neurons:
        masks[k][i] = True
    return masks


def core_neurons(names) -> list[tuple[int, int]]:
    """The (layer, index) pairs of ``L{k}.N{i}.bounds`` names."""
    return [parse_neuron(n)[:2] for n in names]


def box_tensors(lower, upper) -> tuple[torch.Tensor, torch.Tensor]:
    """One box as a batch of one: (1, n) float64 tensors."""
    return tuple(torch.from_numpy(np.asarray(x, dtype=np.float64)[None, :].copy())
                 for x in (lower, upper))


def bound_with(search: RegionSearch, lower, upper, neurons):
    """Bound the box ``[lower, upper]`` of ``search``'s region, back-substituting
    only ``neurons`` ((layer, index) pairs; intervals for the rest): (bounds,
    whether they close the box)."""
    lo, hi = box_tensors(lower, upper)
    res, _, closed = search.bound_branches(lo, hi, None, None, 0, "backward",
                                           refine=refine_masks(neurons, search.net.hidden_sizes))
    return res, bool(closed.all())


def core_gain(search: RegionSearch, lower, upper, neurons, repeats: int = 3) -> float:
    """Measured: the time of a full bound of the box (every neuron
    back-substituted: what verifying the box again costs) over the time of
    bounding it back-substituting only ``neurons`` (best of ``repeats`` each).
    On narrow layers the two cost about the same -- per-layer overhead, not
    the neuron count, dominates -- and a core check that fails is then pure
    extra cost."""
    lo, hi = box_tensors(lower, upper)

    def best(f) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return min(times)

    full = best(lambda: search.bound_branches(lo, hi, None, None, 0, "backward"))
    core = best(lambda: bound_with(search, lower, upper, neurons))
    return full / max(core, 1e-9)


def bound_core(search: RegionSearch, lower, upper, budget: float) -> Core | None:
    """A minimal (within ``budget`` seconds) set of neurons to back-substitute
    for the box ``[lower, upper]`` of ``search``'s region to be closed by
    bounds; None when even refining every candidate does not close it."""
    calls = 0

    def closes(neurons) -> bool:
        nonlocal calls
        calls += 1
        return bound_with(search, lower, upper, neurons)[1]

    t0 = time.monotonic()
    plain, plain_closes = bound_with(search, lower, upper, [])
    calls += 1
    # candidates: what interval bounds leave unstable (layer 0's interval is exact);
    # a neuron they show stable is never back-substituted anyway
    candidates = [(k, int(i)) for k in range(1, len(search.net.hidden_sizes))
                  for i in np.flatnonzero(((plain.lower[k][0] < 0) & (plain.upper[k][0] > 0)).numpy())]
    if plain_closes:
        return Core((), True, True, len(candidates), time.monotonic() - t0, 0.0, 0.0, calls)
    if not closes(candidates):
        return None
    t1 = time.monotonic()
    deadline = t1 + budget
    core, size, minimal = list(candidates), max(1, len(candidates) // 2), False
    while time.monotonic() < deadline:
        dropped, i = False, 0
        while i < len(core) and time.monotonic() < deadline:
            trial = core[:i] + core[i + size:]
            if closes(trial):
                core, dropped = trial, True
            else:
                i += size
        if i < len(core):
            break  # out of budget mid-pass
        if size == 1 and not dropped:
            minimal = True
            break
        size = max(1, size // 2)
    t2 = time.monotonic()
    checked = closes(core)
    if not checked:  # cannot happen (every kept set was checked); keep all candidates
        core, minimal, checked = list(candidates), False, True
    names = tuple(neuron_name(k, i, "bounds") for k, i in core)
    return Core(names, minimal, checked, len(candidates), t1 - t0, t2 - t1,
                time.monotonic() - t2, calls)
