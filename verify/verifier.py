"""The decision procedure for a whole property: bounds -> attack -> branch
and bound with Z3 leaves, under one hard deadline."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .attack import Attacker, falsify
from .graph import GraphNetwork
from .threads import single_threaded
from .graphbounds import make_propagator
from .graphbounds.local_fields import field_bound, field_vertices, local_fields
from .loading import check_network_values
from .network import Network
from .options import VerifyOptions
from .properties import Property
from .result import Statistics, Status, VerificationResult
from .search import RegionSearch, search_region
from .search_types import Leaf
from .spec_rows import region_rows, rows_refute_all
from .vnnlib import check_fits


@dataclass
class Proof:
    """What closed every branch of a ``holds`` verdict, per region: each leaf
    with its box, ReLU splits, layer bounds and (Z3 leaves) raw unsat cores."""

    leaves: dict[int, list[Leaf]] = field(default_factory=dict)
    roots: dict = field(default_factory=dict)  # per region: its root bound (BatchBounds)
    # per region whose root bound is tightened (roots[r] is then that bound): the slopes
    # that tightened it
    root_slopes: dict = field(default_factory=dict)


def verify_property(network: Network | GraphNetwork, prop: Property,
                    options: VerifyOptions = VerifyOptions(), progress=None,
                    proof: Proof | None = None) -> VerificationResult:
    """Decide ``prop`` on ``network``: ``holds`` (sound), ``violated`` (with a
    counterexample re-run on the network) or ``unknown`` (with the reason).
    A fully-connected :class:`Network` or a :class:`GraphNetwork` (CNNs, residual
    networks: bounded by the graph propagator, no Z3 leaves; see :mod:`verify.search`).

    ``progress``: optional callable taking a one-line message (for long runs).
    ``proof``: optional :class:`Proof` filled with the closed branches."""
    check_fits(network, prop)
    check_network_values(network)  # NaN/Inf or huge weights: a clean InputError
    single_threaded()  # see verify.threads
    t0 = time.monotonic()
    # leave room for the last batch or Z3 interrupt to finish inside the budget
    # (and, on long runs, to free a frontier of millions of branches: a 900 s run
    # of ACAS Xu 4_2 prop 2 with 4.1M bounded branches came back 0.6 s late)
    deadline = t0 + options.timeout - min(1.5 + 0.005 * options.timeout, 0.05 * options.timeout)
    stats = Statistics(n_relus=network.n_relus)
    rng = np.random.default_rng(options.seed)
    propagator = make_propagator(network, options.graph_bounds)
    say = progress or (lambda msg: None)

    def done(status, method, cex=None, reason=None):
        return VerificationResult(status, time.monotonic() - t0, method, cex, reason,
                                  network.name, prop.name, stats)

    # the root bound first: it settles easy properties in milliseconds
    settled, starts, gaps = set(), {}, {}
    for r, region in enumerate(prop.regions):
        search = RegionSearch(network, region, r, options, deadline, stats, propagator,
                              record=proof is not None)
        closed = search.closed_at_root()
        if proof is not None:
            proof.roots[r] = search.root_result
        if closed:
            settled.add(r)
            if proof is not None:
                proof.leaves[r] = search.leaves
        else:
            cex = search.root_counterexample()
            if cex is not None:
                return done(Status.VIOLATED, "attack", cex)
            starts[r] = search.root_candidates  # the bound's minimisers: PGD starts too
            # the far attack: graph networks only (chains: input splitting is complete
            # and fast, and on ReLU splitting the interleaved rounds of the search
            # cover it -- a digits MLP variant that holds took 3.2 s with it, 0.2 s
            # without)
            if not search.input_split and not isinstance(network, Network):
                gaps[r] = search.root_margin()
    if len(settled) == len(prop.regions):
        return done(Status.HOLDS, "bounds")
    attacker = Attacker(network)
    # then cheap falsification: a counterexample ends everything
    for r, region in enumerate(prop.regions):
        if r in settled:
            continue
        cex = falsify(attacker, region, r, rng, options, stats, starts.get(r),
                      min(deadline, time.monotonic() + min(options.attack_max_s, options.attack_time_share
                                                               * options.timeout) / len(prop.regions)))
        if cex is not None:
            return done(Status.VIOLATED, "attack", cex)
    # a root bound further below zero than the attack got above it (times
    # attack_far_ratio): longer falsification (also when no PGD step ran: nothing known)
    far = [r for r in gaps if attacker.best_margin == float("inf")
           or -gaps[r] > options.attack_far_ratio * attacker.best_margin]
    for r in far:
        budget = min(options.attack_far_max_s, options.attack_far_share * options.timeout) / len(far)
        cex = falsify(attacker, prop.regions[r], r, rng, options, stats, None,
                      min(deadline, time.monotonic() + budget))
        if cex is not None:
            return done(Status.VIOLATED, "attack", cex)
    methods, unknown_reasons, core_sizes = [], [], []
    fields = _fields_of(network, options) if proof is None else None
    for r, region in enumerate(prop.regions):
        if r in settled:
            methods.append("bounds")
            continue
        if time.monotonic() >= deadline:
            return done(Status.UNKNOWN, "timeout", reason=f"timeout after {options.timeout:g} s")
        if fields is not None and _closed_by_fields(fields, network, region, options, deadline):
            say(f"region {r + 1}/{len(prop.regions)}: holds by the receptive-field bound")
            stats.closed_by_fields += 1
            methods.append("fields")
            continue
        say(f"region {r + 1}/{len(prop.regions)}: branch and bound")
        outcome = search_region(network, region, r, options, deadline, stats, propagator,
                                record=proof is not None)
        if proof is not None:
            proof.leaves[r] = outcome.leaves
            if outcome.root is not None:  # tighter than the plain root bound kept above
                proof.roots[r] = outcome.root
                proof.root_slopes[r] = outcome.root_slopes
        core_sizes += [len(c) for leaf in outcome.leaves for c in leaf.cores.values()]
        if outcome.status is Status.VIOLATED:
            return done(Status.VIOLATED, outcome.method, outcome.counterexample)
        if outcome.status is Status.UNKNOWN:
            unknown_reasons.append(f"region {r}: {outcome.reason}")
            if outcome.method == "timeout":
                return done(Status.UNKNOWN, "timeout", reason=f"timeout after {options.timeout:g} s")
        methods.append(outcome.method)
    if unknown_reasons:
        return done(Status.UNKNOWN, "bab", reason="; ".join(unknown_reasons))
    order = ["z3", "milp", "bab", "fields", "bounds"]
    method = next(m for m in order if m in methods)
    if core_sizes:
        stats.core_size = max(core_sizes)
    return done(Status.HOLDS, method)


def _fields_of(network, options: VerifyOptions):
    """``network`` split into receptive fields (:mod:`verify.graphbounds.local_fields`),
    or None (not a one-ReLU-layer graph with small fields, or the option is off)."""
    if isinstance(network, Network) or not options.graph_bounds.local_fields_max_inputs:
        return None
    return local_fields(network, options.graph_bounds.local_fields_max_inputs)


def _closed_by_fields(fields, network, region, options: VerifyOptions, deadline: float) -> bool:
    """Whether the receptive-field bound refutes every unsafe conjunction of ``region``
    (within ``local_fields_share`` of the time left). Not used when a proof is recorded:
    its leaves are ReLU-split branches."""
    gb = options.graph_bounds
    until = time.monotonic() + gb.local_fields_share * (deadline - time.monotonic())
    verts = field_vertices(fields, region.lower, region.upper)
    if verts is None:
        return False
    C, d, owner = region_rows(region, network.n_outputs)

    def refuted(bounds: np.ndarray) -> bool:
        return bool(rows_refute_all(bounds, owner, len(region.unsafe))[0])

    bounds = field_bound(fields, verts, region.lower, region.upper, C.numpy(), d.numpy(),
                         gb.local_fields_iterations, until, enough=refuted)
    return refuted(bounds)


