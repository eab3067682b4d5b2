"""Deepening the original's proof tree where a variant needs it.

A leaf of the original's ReLU-split proof that the differential tiers of
:class:`verify.reuse.tree.TreeCheck` leave open on the variant is split once
more on the ORIGINAL: on its original's ReLU the search's own branching score
(BaBSR on the leaf's worst spec row) picks, into the two children
``S & {z_n >= 0}`` and ``S & {z_n <= 0}`` that tile the leaf's domain ``S``.
Each child is bounded on the original (its layer bounds, spec lower bounds and
slopes: what a leaf of a proof built in this process keeps), and the tiers run
again on the children.  A child has a wider margin on the original and fewer
unstable original ReLUs, so the change bounds (interval and symbolic), which
lose most through the original's unstable ReLUs and are compared against that
margin, close children where they could not close their parent.

Why not the variant's own branch and bound from the leaf: the leaf's domain is
the original's phase domain, known to the variant's search only through the
moved bounds, so that search re-splits it from nothing (measured, 17 open
leaves of mnist-net_256x4 image 7: 37 s against 13 s walking the tree).

Soundness: the children tile the leaf's domain; their bounds are the original's
search bounds on each child (the parent's bounds intersected, the new split as
a phase fact), so the tiers on a child are exactly as sound as on a leaf of the
original proof.  A child the original's bounds show empty needs nothing."""
from __future__ import annotations

import time

import numpy as np
import torch

from ..constraint_names import split_arrays, split_facts
from ..result import Statistics
from ..search import Node, RegionSearch, fact_betas
from .proof import ProofBranch


class Deepening:
    """Splits open leaves of one region's proof on the original, a level at a time."""

    def __init__(self, original, region, r: int, options, deadline: float,
                 kept: dict | None = None):
        # the children's bounds start from their parent's (the leaf's, tight), and
        # only the neurons those leave unstable are back-substituted
        from .tree import LeafSearch
        # (with full margins: the variant's change is measured against them)
        self.search: RegionSearch = LeafSearch(original, region, r, options, deadline,
                                               Statistics(), full_margin=True)
        self.sizes = original.hidden_sizes
        # id(leaf) -> (leaf, its children): the same for every variant (they are the
        # original's), so a proof keeps them for the next variant (ProofRecord.deepened)
        self.kept = {} if kept is None else kept

    def children(self, leaves: list[ProofBranch]) -> list[ProofBranch]:
        """The two children of every leaf in ``leaves`` (one level down), bounded on
        the original; a leaf without an unstable ReLU on the original gets none
        (an empty list for it: the caller sees fewer children than 2 per leaf)."""
        new = [b for b in leaves if self.kept.get(id(b), (None,))[0] is not b]
        if new:
            for b, kids in zip(new, self._children(new)):
                self.kept[id(b)] = (b, kids)
        return [c for b in leaves for c in self.kept[id(b)][1]]

    def _children(self, leaves: list[ProofBranch]) -> list[list[ProofBranch]]:
        """:meth:`children`, per leaf."""
        search = self.search
        nodes = [Node(b.lower, b.upper, split_arrays(b.splits, self.sizes),
                      [(np.asarray(l), np.asarray(u)) for l, u in b.layer_bounds], b.depth)
                 for b in leaves]
        lo, hi, splits, fixed = _batch(nodes, len(self.sizes))
        # plain CROWN: the bound serves only the branching scores of the leaf's worst row
        res, _, _ = search.bound_branches(lo, hi, splits, fixed, alpha=0, mode="backward")
        spec = res.spec_lower.numpy()
        # every conjunction counts as open: the leaf is closed on the original, and
        # the one the variant fails is the least refuted one there
        refuted = np.zeros((len(nodes), search.n_conj), dtype=bool)
        items = [(i, [(res.lower[k][i].numpy(), res.upper[k][i].numpy())
                      for k in range(len(self.sizes))]) for i in range(len(nodes))]
        pairs = search._split_relus(nodes, res, items, spec, refuted)
        kids = [c for pair in pairs if pair is not None for c in pair]
        out = []
        step = max(1, search._batch_size())
        for s in range(0, len(kids), step):
            out += self._bound(kids[s:s + step])
        at, per_leaf = 0, []
        for pair in pairs:
            n = 0 if pair is None else len(pair)
            per_leaf.append(out[at:at + n])
            at += n
        return per_leaf

    def _bound(self, kids: list[Node]) -> list[ProofBranch]:
        """Children bounded on the original, as proof leaves (with the search's
        alpha steps: their slopes and split multipliers warm-start the variant's
        bounds)."""
        lo, hi, splits, fixed = _batch(kids, len(self.sizes))
        res, _, _ = self.search.bound_branches(lo, hi, splits, fixed, mode="backward")
        infeasible = res.infeasible.numpy()
        out = []
        for i, node in enumerate(kids):
            alphas = None if res.alphas is None else [
                a[i].numpy().astype(np.float16) for a in res.alphas]
            betas = fact_betas(res.betas, i, node.splits)
            out.append(ProofBranch(
                node.lo, node.hi, split_facts(node.splits),
                "infeasible" if infeasible[i] else "bounds", node.depth, alphas=alphas,
                betas=None if betas is None else betas.astype(np.float16),
                layer_bounds=[(res.lower[k][i].numpy(), res.upper[k][i].numpy())
                              for k in range(len(self.sizes))],
                spec_lower=res.spec_lower[i].numpy()))
        return out

    def time_left(self) -> float:
        return self.search.deadline - time.monotonic()


def _batch(nodes: list[Node], n_hidden: int):
    lo = torch.from_numpy(np.stack([n.lo for n in nodes]))
    hi = torch.from_numpy(np.stack([n.hi for n in nodes]))
    splits = [torch.from_numpy(np.stack([n.splits[k] for n in nodes])) for k in range(n_hidden)]
    fixed = [(torch.from_numpy(np.stack([n.parent[k][0] for n in nodes])),
              torch.from_numpy(np.stack([n.parent[k][1] for n in nodes])))
             for k in range(n_hidden)]
    return lo, hi, splits, fixed
