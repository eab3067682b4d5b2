"""Core-guided verification of a compressed variant from the original's proof.

A region the original settled with one bound of its box is first re-checked
with the original's bound moved by a bound of the variant's change
(:mod:`verify.reuse.difference`), then by back-substituting the variant's spec
rows over the moved intermediate bounds.  For every branch of the original
proof (the branches tile each region's box, checked first) the VARIANT's own
bounds are derived on the branch box and the split facts mapped through the
change record.  A branch they do not close is
encoded for the variant and only the constraints named by the original's
core for that branch are asserted (removed neurons' constraints dropped):
UNSAT closes it; a SAT model is replayed on the variant (a confirmed
counterexample means ``violated``) or else the variant constraints the model
violates are added and the check repeats.  After ``refine_rounds`` (or with
no core) comes the full query, then branch and bound on just that branch,
and if even that fails, verification from scratch.

A CNN (graph) variant with its original's architecture (or a channel-pruned one's
expansion) gets the graph change bound instead (:mod:`verify.reuse.graph_difference`,
in :class:`verify.reuse.tree.TreeCheck`), for a region one bound settled and for a proof
tree (after the original's root minimisers and the variant's root bound), then the tree
walk; a violated original's root bound is moved to the variant
(:mod:`verify.reuse.graph_reuse`).

Soundness: only the variant's constraints are ever asserted, and ``holds``
needs every branch of every region closed on the variant (by its bounds, the
original's bounds -- derived in this process -- plus a proven bound of the
change, or an UNSAT answer); ``violated`` needs a counterexample re-run on
the variant.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from ..attack import confirm_batch
from ..errors import ShapeMismatchError
from ..network import Network
from ..threads import single_threaded
from ..options import VerifyOptions
from ..properties import Property
from ..result import Counterexample, Statistics, Status
from ..search import RegionSearch
from ..verifier import verify_property
from ..vnnlib import check_fits
from .changes import ChangeMap
from .options import ReuseOptions
from .proof import ProofRecord, get_proof  # noqa: F401 - get_proof re-exported
from .results import ReuseResult, ReuseStats
from .expand import graph_change_map
from .graph_reuse import closed_by_moved_root, root_candidates, tree_first
from .transfer import try_transfer
from .reuser import NoFit, Reuser, proof_stats


def _unwrap(variant, record):
    if hasattr(variant, "network") and hasattr(variant, "record"):  # a compress.Variant
        return variant.network, record if record is not None else variant.record
    return variant, record


def reverify(original: Network, variant, prop: Property,
             options: VerifyOptions = VerifyOptions(), record=None, store=None,
             reuse_options: ReuseOptions = ReuseOptions(),
             proof: ProofRecord | None = None) -> ReuseResult:
    """Verify ``prop`` on ``variant`` (a Network or a compress.Variant) reusing the
    original's proof (from ``proof``, the ``store`` or built now; building it is
    not counted in ``time_s`` but reported as ``reuse.original_time_s``)."""
    single_threaded()
    variant, record = _unwrap(variant, record)
    check_fits(original, prop)
    check_fits(variant, prop)
    stats = ReuseStats()
    if proof is None:
        proof, stats.proof_from_store = get_proof(original, prop, options, reuse_options, store)
    stats.original_status, stats.original_time_s = proof.status, proof.time_s
    stats.branches = proof.n_branches  # (also for a variant decided before any change map)
    stats.original_core_time_s = proof.core_time_s
    stats.original_proof_s = proof.time_s + proof.core_time_s
    stats.original_name = proof.network_name or original.name
    t0 = time.monotonic()

    def done(status, method, cex=None, reason=None):
        return ReuseResult(status, time.monotonic() - t0, method, cex, reason, variant.name,
                           prop.name, stats)

    transfer_later = False  # an equivalence transfer once the proof's tiers gave up

    def graph_candidates():  # a CNN original without a proof: its root bound's minimisers
        if not reuse_options.graph_difference or isinstance(variant, Network):
            return None
        return root_candidates(variant, prop, proof, trees_only=False)

    def quick_attack(start_of=lambda r: None, as_scratch=False, sample_for=None, skip=()):
        """A quick attack on the variant itself, region by region (``start_of(r)``:
        extra PGD starts or None; ``as_scratch``: the restarts, steps and samples of
        scratch's up-front round, within its attack_max_s; ``sample_for``: scratch's
        random samples only, for this many seconds per region at most; ``skip``: regions
        not attacked); the first counterexample, or None."""
        quick = Reuser(variant, None, options, reuse_options, stats, t0 + options.timeout)
        for r, region in enumerate(prop.regions):
            if r in skip:
                continue
            if sample_for is not None:
                cex = quick.sample(region, r, sample_for)
            else:
                cex = quick.attack(region, r, quick=not as_scratch, starts=start_of(r),
                                   budget=options.attack_max_s if as_scratch else None)
            if cex is not None:
                return cex
        return None
    try:
        if proof.status is Status.VIOLATED and proof.counterexample is not None:
            # the original's counterexample, re-run on the variant (a witness is only
            # reused after the variant itself is shown to violate the property)
            c = proof.counterexample
            if 0 <= c.region < len(prop.regions):
                cex = confirm_batch(variant, prop.regions[c.region], c.region,
                                    np.array(c.input, dtype=np.float64)[None, :])
                if cex is not None:
                    return done(Status.VIOLATED, "reuse-counterexample", cex)
            cex = graph_candidates()
            if cex is not None:
                return done(Status.VIOLATED, "reuse", cex)
            if closed_by_moved_root(
                    original, variant, record, prop, proof, reuse_options,
                    lambda net, cmap: Reuser(net, cmap, options, reuse_options, stats,
                                              t0 + reuse_options.reuse_share * options.timeout)):
                return done(Status.HOLDS, "reuse-difference-root")
            if reuse_options.attack:  # the variant is likely broken too: a quick attack,
                # PGD from the original's counterexample first (it usually sits next to
                # the variant's)
                cex = quick_attack(lambda r: np.array(c.input, dtype=np.float64)[None, :]
                                   if r == c.region else None)
                if cex is not None:
                    return done(Status.VIOLATED, "attack", cex)
        if proof.status is not Status.HOLDS:
            cex = graph_candidates() if proof.status is not Status.VIOLATED else None
            if cex is not None:
                return done(Status.VIOLATED, "reuse", cex)
            raise NoFit(f"the original has no proof ({proof.status})")
        if proof.network != original.digest() or proof.property != prop.digest():
            raise NoFit("the proof record belongs to another network or property")
        graph = not isinstance(original, Network) or not isinstance(variant, Network)
        root_tried = set()  # regions whose variant root bound was taken in vain
        if graph and reuse_options.graph_difference:
            got = tree_first(variant, prop, proof, options,
                             t0 + reuse_options.reuse_share * options.timeout, stats)
            if got is True:
                return done(Status.HOLDS, "reuse-root-bound")
            if isinstance(got, Counterexample):
                return done(Status.VIOLATED, "reuse", got)
            root_tried = got
        transfer = reuse_options.equivalence_transfer
        transfer_by = t0 + reuse_options.reuse_share * options.timeout  # its deadline
        no_map = None
        try:  # searched: the network the proof is re-checked on (the expansion, if pruned)
            cmap, searched = graph_change_map(original, variant, record) if graph else \
                (ChangeMap(original, variant, record), variant)
        except ShapeMismatchError as exc:
            no_map = str(exc)
        if no_map is not None:  # e.g. a distilled student: the transfer, else scratch
            if transfer and try_transfer(original, variant, prop, proof, reuse_options, stats,
                                         True, transfer_by):
                return done(Status.HOLDS, "equivalence-transfer")
            raise NoFit(no_map)
        # a related variant: its proof's tiers first, the transfer once they give up
        # (see ReuseOptions)
        transfer_later = transfer
        if graph:  # CNNs: the proof tree re-checked with bounds (no chain-only tiers, no Z3)
            reuse_options = dataclasses.replace(
                reuse_options, difference=False, bound_core_on_demand=False, tree_walk=True)
        stats.change_map = cmap.how
        proof_stats(stats, proof, cmap)
        # the reuse attempt gets a share of the budget; the fallback the rest
        reuser = Reuser(searched, cmap, options, reuse_options, stats,
                         t0 + reuse_options.reuse_share * options.timeout)
        reuser.root_tried = root_tried
        if reuse_options.continue_open_search:
            reuser.open_search_until = t0 + options.timeout
        # no attack up front for a quick proof: the branches' own candidates and an
        # attack on any region with a branch left open find a counterexample (a proof
        # that carries over needs neither); a long one gets a quick attack first, and a
        # quick tree random samples within a small share of its original's time
        closed_root = set()  # regions the variant's root bound closed
        if reuse_options.attack and proof.time_s >= reuse_options.attack_first_proof_s:
            # as scratch begins (a chain): the variant's plain root bound, milliseconds
            # (it may close a region; its minimisers are candidates and PGD starts),
            # then one round of scratch's up-front attack.  (Scratch's further rounds,
            # until attack_max_s: ACAS Xu 4_2 prop 2, magnitude 30 %, violated in 0.04 s
            # instead of 1.7 s, but every variant that holds paid the whole 0.1 s: int16
            # pairs of 0.1-0.2 s took 0.08-0.1 s longer, their geo-mean 9.0x -> 6.8x)
            # A near copy of its original skips both (ReuseOptions.attack_skip_below):
            # the proof's tiers take the root bound when they need it
            near = reuser.near_copy
            stats.attack_skipped = near
            starts = {}
            if not graph and not near:
                for r, region in enumerate(prop.regions):
                    search = RegionSearch(variant, region, r, options, t0 + options.timeout,
                                          Statistics())
                    got = search.root_check()
                    if got is True:
                        closed_root.add(r)
                    elif got is not None:
                        return done(Status.VIOLATED, "attack", got)
                    else:
                        starts[r] = search.root_candidates
                        root_tried.add(r)  # the reuser need not take it again
                stats.closed_at_root += len(closed_root)
                if len(closed_root) == len(prop.regions):
                    return done(Status.HOLDS, "reuse-root-bound")
            if not near:
                cex = quick_attack(starts.get, as_scratch=True, skip=closed_root)
                if cex is not None:
                    return done(Status.VIOLATED, "attack", cex)
            reuser.attacked = set(range(len(prop.regions)))
        elif reuse_options.attack and proof.n_branches > 1 and reuse_options.sample_first_share:
            cex = quick_attack(sample_for=reuse_options.sample_first_share * proof.time_s)
            if cex is not None:
                return done(Status.VIOLATED, "attack", cex)
        for r, region in enumerate(prop.regions):
            if r in closed_root:
                continue
            cex = reuser.region(region, r, proof)
            if cex is not None and searched is not variant:  # replayed on the variant itself
                cex = confirm_batch(variant, region, r, np.array(cex.input)[None, :])
                if cex is None:
                    raise NoFit("a counterexample of the expanded variant is none of the "
                                 "variant's")
            if cex is not None:
                return done(Status.VIOLATED, "reuse", cex)
        method = ("bab" if stats.closed_by_split else "core" if stats.closed_by_core
                  else "z3" if stats.closed_by_full
                  else "root-bound" if stats.closed_at_root and not stats.closed_by_bounds
                  else "difference" if stats.closed_by_difference == stats.closed_by_bounds > 0
                  else "bound-core" if stats.closed_by_bound_core == stats.closed_by_bounds
                  else "bounds")
        return done(Status.HOLDS, f"reuse-{method}")
    except NoFit as exc:
        stats.fallback_reason = str(exc)
        if transfer_later and try_transfer(original, variant, prop, proof, reuse_options, stats,
                                           False, transfer_by):
            return done(Status.HOLDS, "equivalence-transfer")
    if not reuse_options.fallback:
        return done(Status.UNKNOWN, "reuse", reason=stats.fallback_reason)
    stats.fallback = True
    left = options.timeout - (time.monotonic() - t0)
    if left <= 0.05:
        return done(Status.UNKNOWN, "timeout", reason=f"timeout after {options.timeout:g} s "
                    f"({stats.fallback_reason})")
    res = verify_property(variant, prop, dataclasses.replace(options, timeout=left))
    stats.z3_queries += res.statistics.z3_queries
    return done(res.status, f"scratch-{res.method}", res.counterexample,
                res.reason or stats.fallback_reason)


def compare_scratch(result: ReuseResult, variant, prop: Property,
                    options: VerifyOptions = VerifyOptions()) -> ReuseResult:
    """Fill ``scratch_status`` / ``scratch_time_s`` by verifying the variant from scratch."""
    variant, _ = _unwrap(variant, None)
    res = verify_property(variant, prop, options)
    result.scratch_status, result.scratch_time_s = res.status, res.time_s
    return result
