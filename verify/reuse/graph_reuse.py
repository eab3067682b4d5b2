"""Two CNN reuse steps that need no proof tree walked (see :mod:`verify.reuse.reverify`).

* :func:`root_candidates` -- a broken variant of a proof tree is looked for first at the
  minimisers of the original's root bound (kept from its proof search): before any change
  map (a channel-pruned variant's expansion) or bound of the variant; then
  :func:`tree_first` takes the variant's own root bound (an easier variant is done).
  An original without a proof (violated, undecided) has its root bound too: its
  minimisers are tried on the variant after the original's counterexample.
* :func:`closed_by_moved_root` -- an original without a proof (violated) still has its
  root bound: moved by the graph change bound (:mod:`verify.reuse.graph_difference`), with
  the variant's spec rows back-substituted over it (tiers 0-1 of
  :class:`verify.reuse.tree.TreeCheck`), it proves a variant that holds.

Soundness: a counterexample is confirmed on the variant itself; ``holds`` needs every
region closed by bounds that hold for the variant (the original's root bounds derived
in this process, moved by a sound bound of the change).
"""
from __future__ import annotations

from ..attack import confirm_batch
from ..errors import ShapeMismatchError
from ..graphbounds import make_propagator
from ..network import Network
from ..properties import Property
from ..result import Statistics
from ..search import RegionSearch
from .expand import graph_change_map
from .proof import ProofRecord
from .tree import LeafSearch, TreeCheck, TreeOpen


def root_candidates(variant, prop: Property, proof: ProofRecord, trees_only: bool = True):
    """A confirmed counterexample of the variant among the minimisers of the original's
    root bound of each region its proof split (``trees_only``; else of every region, for
    an original without a proof), or None."""
    for r, region in enumerate(prop.regions):
        ob = proof.root_bounds.get(r)
        if ob is not None and (not trees_only or len(proof.regions.get(r) or []) > 1):
            cex = confirm_batch(variant, region, r, ob.candidates(region.lower, region.upper))
            if cex is not None:
                return cex
    return None


def tree_first(variant, prop: Property, proof: ProofRecord, options, deadline: float, stats):
    """A CNN proof tree, before any change map: :func:`tree_candidates`, then (a tree in
    every region) the variant's own root bound of each region and its minimisers -- a
    variant easier than its original needs no more.  Returns a confirmed counterexample,
    True when every region's root bound closed it, else the regions whose root bound was
    taken in vain (not to be taken again)."""
    cex = root_candidates(variant, prop, proof)
    if cex is not None:
        return cex
    n = len(prop.regions)
    if not all(len(proof.regions.get(r) or []) > 1 for r in range(n)):
        return set()
    propagator = make_propagator(variant, options.graph_bounds)
    tried = set()
    for r, region in enumerate(prop.regions):
        search = RegionSearch(variant, region, r, options, deadline, Statistics(), propagator)
        got = search.root_check()
        if got is True:
            stats.closed_at_root += 1
            continue
        if got is not None:
            return got
        tried.add(r)
    return tried or True


def closed_by_moved_root(original, variant, record, prop: Property, proof: ProofRecord,
                         ropt, make_reuser) -> bool:
    """Whether the original's root bounds (a record without a proof, built in this
    process) moved by the change close every region on the variant.  ``make_reuser(net,
    cmap)``: the reverify state (budget, statistics) for the network searched."""
    if not ropt.graph_difference or len(proof.root_branches) != len(prop.regions) \
            or isinstance(original, Network) or isinstance(variant, Network):
        return False
    try:
        cmap, searched = graph_change_map(original, variant, record)
    except ShapeMismatchError:
        return False
    reuser = make_reuser(searched, cmap)
    if not reuser.graph_tiers:
        return False
    for r, region in enumerate(prop.regions):
        search = LeafSearch(searched, region, r, reuser.opt, reuser.deadline, Statistics(),
                            reuser.propagator)
        try:  # max_open 0: no leaf may stay open after tiers 0-1
            TreeCheck(reuser, search, [proof.root_branches[r]]).run(region, r, max_open=0.0)
        except TreeOpen:
            return False
    reuser.stats.change_map = cmap.how
    return True
