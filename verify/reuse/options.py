"""Options of proof reuse (the verification options stay :class:`VerifyOptions`)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import OptionError


@dataclass(frozen=True)
class ReuseOptions:
    # building a proof: "lazy" keeps what the search found (raw Z3 cores, alpha slopes,
    # each branch's bounds in memory) at no extra cost -- measured, a deletion pass
    # cost up to 50x the verification itself; "eager" minimises Z3 cores and makes
    # bound cores now (within core_budget)
    cores: str = "lazy"
    # a lazily built single-box proof gets its bound core when a variant first needs
    # one (made on the original, cached in the record).  Off by default: making it
    # costs about log2(candidates) bounds, repaid only over many variants (a core
    # bound saves about half a bound where it carries over, on 46 % of the pairs)
    bound_core_on_demand: bool = False
    # alpha-CROWN steps when a variant's branch bound starts from the original's
    # slopes (the search's own count otherwise)
    warm_alpha_iterations: int = 5
    # a ReLU-split proof tree is re-checked on the original's leaf domains
    # (verify.reuse.tree) when the differential tiers leave at most this share of
    # its leaves open; else on the variant's own phase splits (measured on
    # mnist-net_256x4 image 7, int16: 17 of 40 leaves open, 6.7 s on the leaf
    # domains against 4.9 s walking the tree on the variant; 3 of 40 open after
    # the symbolic tier, 3.0-3.6 s against 3.9-4.6 s, 2 cores under load).  0.35 since
    # the eleventh session (tier 1's split constraints and deepening however few are
    # open close more of them): int16 on image 14 at eps 0.011 0.74-0.78 -> 0.46-0.48 s,
    # image 7 at eps 0.01 0.50-0.53 -> 0.23-0.25 s, at eps 0.011 2.1-2.3 -> 1.9 s; the
    # other 12 pairs of these three originals unchanged (0.2: the same but 2.1 s there)
    tree_max_open: float = 0.35
    # the leaves still open after the variant's own bounds are searched on the
    # original's leaf domains for at most this share of the original's verification
    # time, else the tree is walked (mnist-net_256x4 image 7, int16: at eps 0.01 one
    # open leaf closed in one split, 0.34 s against 1.5 s walking; at eps 0.011 17 open
    # leaves took 37 s to search, against 13 s walking the tree)
    leaf_search_share: float = 0.25
    # ... and only when at most this many leaves are open (more: the tree is walked at
    # once; mnist-net_256x4 image 7 at eps 0.011, int16: 17 open leaves searched in
    # vain for the 25 % share, 3.9-5.5 s, before the walk)
    leaf_search_max_open: int = 4
    # the leaves still open after the variant's own bounds (any number of them: see
    # TreeCheck._deepens) are split further on the ORIGINAL (verify.reuse.deepen: the
    # children tile the leaf's domain, get the original's bounds and go through the
    # tiers again), up to this many levels, within
    # deepen_share of the original's verification time and while at most
    # deepen_max_open leaves are open; what stays open goes on as before.  0: never
    deepen_levels: int = 4
    deepen_share: float = 0.5
    deepen_max_open: int = 256
    # the leaves the interval change bound leaves open get the symbolic one
    # (verify.diffbounds: both networks back-substituted together) when the interval
    # bound lost at most this many times the original's margin there, after tier 1
    # (ReLU-split trees only); its tighter per-layer changes also move the bounds tier
    # 2 starts from.  0: never
    # (mnist-net_256x4 image 7 at eps 0.01, int16: it closes 14-16 of the 17 leaves
    # tiers 0-1 left open, and reuse took 5.7-6.0 s against 9.3-10.9 s without it,
    # alternated, 2 cores under load ~4; on int8 and magnitude 10 % it closes none
    # and is mostly skipped by this gate)
    symbolic_max_loss: float = 10.0
    # tier 0b (before tier 1: the spec's change back-substituted through both networks
    # over the interval changes) on the leaves whose interval change bound lost at most
    # this many times their margin: the leaves it closed had lost at most 1.55x (ACAS Xu 4_7
    # prop 1: 54, 32 and 13 leaves of int16, magnitude 10 % and neurons 5 %; 256x4 image
    # 14 at eps 0.012: 1 leaf of int16), and on the 283 leaves of that image's int8 and
    # magnitude variants, all far off, it closed none in 0.2 s each
    interval_symbolic_max_loss: float = 4.0
    # ReLU-split chain trees: the change bounded symbolically once over the whole
    # region, and each leaf's interval change intersected with it layer by layer
    # (verify.reuse.difference.ChangeCaps).  Interval changes compound with depth:
    # on mnist-net_256x6 image 3 at eps 0.011, int16, tier 0 closed 2 of 57 leaves
    # without them and 44 with them, and reuse took 0.9 s instead of 5.2-6.0 s.  Not
    # on input-split trees (ACAS Xu: the same leaves closed, 5-14 % slower on int16)
    region_caps: bool = True
    # tier 1c: tier 1 again over the bounds the symbolic change bound tightened, on the
    # leaves it left open (warm_alpha_iterations steps), then with this many steps on
    # the leaves still open (0: no tier 1c).  mnist-net_256x4 at eps 0.011, int16: on
    # image 7 the two passes close 1 and then 8 of the 13 leaves left; on image 14, 4
    # and then 0 of 5 (20 steps alone: 3)
    tight_alpha_iterations: int = 20
    # else a ReLU-split tree is walked top-down on the variant (verify.reuse.tree.
    # TreeWalk: a node closed prunes its subtree, parents' bounds are inherited);
    # False: its leaves are bounded again one by one, each from scratch
    tree_walk: bool = True
    # ... with alpha steps on its interior nodes down to this depth only (-1: none;
    # plain CROWN there: the original did not close them, and alpha steps were 7.2 of
    # the 9.7 s of bounds of the walk on mnist-net_256x4 image 7 eps 0.011, int16.
    # Without them: int8 14.1 -> 10.6 s, magnitude 10 % 12.6 -> 8.4 s there; depth 1
    # measured no better on image 2 at eps 0.01, beside another benchmark)
    walk_alpha_depth: int = -1
    # ... and its interior nodes are bounded down to this depth only (0: the root
    # alone; -1: every one, as until the eighteenth session); a leaf below is bounded
    # from its nearest bounded ancestor's bounds.  An interior node of the original's
    # tree was open there, and on a variant its bound mostly served its children's
    # intermediate bounds, at the cost of a leaf's.  -1 against 0 side by side (reuse
    # of the five variants, each twice in one process): mnist-net_256x4 image 14 at eps
    # 0.012 32.6 -> 24.0 s (int8 6.6 -> 4.1 s), image 7 at 0.011 10.1 -> 9.2 s (its
    # magnitude 30 % 1.09 -> 1.21 s, the one loss); against 4 (interior nodes with at
    # most 4 leaves below them skipped) image 2 at 0.012 and mnist-net_256x6 image 9
    # within 4 %; depth 3 no better than 0
    walk_interior_depth: int = 0
    # an input-bisection tree's coarser nodes bounded on the variant before its leaves
    # (verify.reuse.bisection_walk): every bisection_walk_step-th level from
    # bisection_walk_first, a probe (bisection_walk_probe of the nodes above two or more
    # leaves left open by the differential tiers), then the rest of each level whose
    # probe closed at least bisection_walk_min_payoff open leaves per node.  Not on a
    # near copy (attack_skip_below: its nodes are as open as its original's).  0 steps:
    # never.  Off against on, alternated in one process, each variant twice (the hard
    # family's ten ACAS Xu originals, their five variants; two such processes side by
    # side): 112.1 -> 105.2 s; 4_2 prop 2 58.3 -> 52.9 s (int8 6.1 -> 4.6 s, neurons 5 %
    # 6.8 -> 5.6 s), 5_6 6.7 -> 5.4 s, 5_7 6.6 -> 5.9 s; the most lost: 5_8 9.7 -> 10.1 s
    # (int8 0.77 -> 0.89 s), 4_6 5.2 -> 5.5 s.  With the open leaves bisected from tier 2's
    # bound (TreeCheck._split_open): 104.7 -> 97.4 s (4_2 54.4 -> 49.5 s, 2_9 4.1 -> 4.4 s)
    bisection_walk_step: int = 3
    bisection_walk_first: int = 3
    bisection_walk_probe: float = 0.0625
    bisection_walk_min_payoff: float = 2.0
    # the leaves of an input-split proof tree left open by the differential tiers: PGD
    # steps from each leaf's centre, confined to its box, before any bound of the
    # variant (0: never).  The tree is finest where the original came closest to the
    # unsafe set, which is where a variant breaks (see TreeCheck.run)
    leaf_attack_steps: int = 10
    # ReLU-split trees of chains: the variant's root, where its search from the proof's
    # leaves tightens it (verify.search.RegionSearch.tighten_root), is bounded over the
    # original's tightened root moved by the region's change caps, and taken without the
    # variant's own alpha-CROWN steps when those moved bounds leave at most this share
    # more ReLUs unstable than the original's (-1: never moved, always tightened)
    moved_root_max_gain: float = 0.05
    # a CNN variant with its original's architecture (quantized, magnitude-pruned, or a
    # channel-pruned one's expansion): the original's per-leaf (or root) margins plus an
    # interval bound of the change (verify.reuse.graph_difference), then the variant's
    # spec rows over the original's moved bounds, before the variant's own bounds
    # (verify.reuse.tree.TreeCheck); a tree they leave over tree_max_open open is walked
    graph_difference: bool = True
    core_budget: float = 30.0  # seconds for extracting the original's cores (all branches)
    core_timeout: float = 2.0  # per Z3 query while extracting / checking a core
    minimise_budget: float = 2.0  # seconds of deletion checks per core
    # bounds-closed branches get a Z3 core up to this many unstable ReLUs (-1: never;
    # their proof is the branch itself: the variant re-derives its own bounds on it,
    # and a Z3 core of a dense float query costs seconds where the bounds took ms)
    core_max_unstable: int = -1
    core_misses: int = 3  # stop trying bounds-closed branches after this many failures in a row
    refine_rounds: int = 8  # core-guided rounds per branch before the full query
    bounds_first: bool = True  # close branches by the variant's own bounds before any Z3
    # a region the original closed by its one tightened root bound (no split) and the
    # variant's change bounds left open: the variant's own search of the root at once,
    # its layer steps started from the original's slopes, without the plain and alpha
    # bounds of the region and the attacks that the search does anyway (mnist-net_256x6
    # image 3 at eps 0.011, magnitude 10 %: reuse 2.2 s -> 0.7 s, scratch 1.3-1.5 s)
    root_search_first: bool = True
    attack: bool = True  # quick attack on a region when some branch stays open
    # ... and before walking a proof whose original took at least this long (its tree
    # takes seconds to walk: the violated variants of ACAS Xu 3_3 prop 2, a 9,606-leaf
    # tree, took reuse 2.3-3.4 s and scratch's short up-front attack 0.007-0.1 s)
    attack_first_proof_s: float = 1.0
    # ... except for a variant whose weights moved less than this from the original's
    # (ChangeMap.relative_change; int16 moves them by 1e-4 - 2e-4, int8 and pruning by
    # 6e-3 and more): no up-front root bound and attack, and no quick attack before
    # the proof's own bounds (its tiers take the root bound if they need it).  Its
    # original holds, so a counterexample, if any, lies where the original's margin is
    # smallest: the bound minimisers of the proof's tightest leaves (confirmed on the
    # variant by the tree's tiers) and the search's own attack rounds look there, where
    # scratch's round draws random points.  0: never
    attack_skip_below: float = 1e-3
    # ... and a shorter proof with several branches gets scratch's random samples first,
    # for at most this share of its original's time (ACAS Xu 1_1 prop 2, magnitude 30 %:
    # violated by a sample in 2 ms, where re-checking the 159-branch tree first took
    # 0.19 s and scratch 0.007 s; 2000 samples take 33 ms on mnist-net_256x2)
    sample_first_share: float = 0.02
    fallback: bool = True  # verify from scratch when the proof does not carry over
    reuse_share: float = 0.5  # of the timeout for the reuse attempt; the fallback gets the rest
    # ... except for branch and bound on the proof's branches still open: that search
    # covers the region as one from scratch would (from the proof's leaves, not its
    # root), so it keeps the whole timeout instead of restarting from the root with
    # the rest (mnist-net_256x2 int4 prop_0_0.03 needs about 35 s either way)
    continue_open_search: bool = True
    # the original's bound of each region (verify.reuse.difference): where one bound
    # settled the region, moved by the change before anything else, then the variant's
    # spec rows back-substituted over the moved intermediate bounds; for any proof,
    # its minimisers are tried as counterexamples on the variant
    difference: bool = True
    # the back-substitution costs about a third of a full bound; it is tried only when
    # the moved bound lost at most this many times the original's margin (measured:
    # 58 of the 61 digits / mnist boxes it closed had lost at most 20x, 37 it did not
    # close lost more or failed anyway; the ACAS Xu boxes lost over 80x and it never
    # closed one).  0 switches it off
    difference_backsub_max_loss: float = 20.0
    # a single-box proof's bound core is tried on the variant first only when, measured
    # on the original, it bounds the box at least this many times faster than a full
    # bound; else the full bound comes straight away.  A failed check costs a core
    # bound on top, so the gain must beat 1 / (the share of variants the core carries
    # over to): measured 46 % for cores with neurons (55 of 120 benchmark pairs) and
    # 97 % for empty ones (intervals suffice; 167 of 172)
    bound_core_min_gain: float = 2.0
    empty_bound_core_min_gain: float = 1.05
    # equivalence transfer (verify.reuse.transfer; chains and graph networks, within the
    # reuse share of the timeout), when the original's proof has a
    # margin on input boxes (at most transfer_max_boxes per region): first for a variant
    # with no structural map (a distilled student), whose only other way is scratch, with
    # boxes it does not carry bisected up to transfer_refine_rounds times; for a related
    # variant after the proof's own tiers gave up, before scratch (measured, quick
    # families: tried first it cost more than the tiers on the 55 pairs whose original
    # one bound settled -- geo-mean 0.40x against scratch -- and 0.25-2.2 s per ACAS Xu
    # variant where it failed, where the tiers take 0.04-0.65 s)
    equivalence_transfer: bool = True
    transfer_max_boxes: int = 256
    # ... for a related variant only up to this many boxes per region (a transfer that
    # fails costs a differential bound of every box)
    transfer_first_max_boxes: int = 16
    transfer_refine_rounds: int = 3

    def __post_init__(self):
        if self.cores not in ("lazy", "eager"):
            raise OptionError(f"cores must be lazy or eager, got {self.cores!r}")
        if not self.attack_skip_below >= 0:
            raise OptionError(f"attack_skip_below must be >= 0, got {self.attack_skip_below}")
        if self.sample_first_share < 0:
            raise OptionError(f"sample_first_share must be >= 0, got {self.sample_first_share}")
        if not self.interval_symbolic_max_loss >= 0:
            raise OptionError("interval_symbolic_max_loss must be >= 0, got "
                              f"{self.interval_symbolic_max_loss}")
        if (self.bisection_walk_step < 0 or self.bisection_walk_first < 0
                or not 0 <= self.bisection_walk_probe <= 1
                or not self.bisection_walk_min_payoff >= 0):
            raise OptionError("bisection_walk_step and bisection_walk_first must be >= 0, "
                              "bisection_walk_probe in [0, 1] and bisection_walk_min_payoff "
                              f">= 0, got {self.bisection_walk_step}, {self.bisection_walk_first}, "
                              f"{self.bisection_walk_probe}, {self.bisection_walk_min_payoff}")
        if self.leaf_attack_steps < 0:
            raise OptionError(f"leaf_attack_steps must be >= 0, got {self.leaf_attack_steps}")
        if self.walk_interior_depth < -1:
            raise OptionError("walk_interior_depth must be >= -1, got "
                              f"{self.walk_interior_depth}")
        if self.tight_alpha_iterations < 0:
            raise OptionError(f"tight_alpha_iterations must be >= 0, got {self.tight_alpha_iterations}")
        if self.warm_alpha_iterations < 0:
            raise OptionError(f"warm_alpha_iterations must be >= 0, got {self.warm_alpha_iterations}")
        for name in ("core_budget", "core_timeout", "minimise_budget"):
            if getattr(self, name) < 0:
                raise OptionError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("bound_core_min_gain", "empty_bound_core_min_gain",
                     "difference_backsub_max_loss"):
            if getattr(self, name) < 0:
                raise OptionError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("leaf_search_share", "leaf_search_max_open", "deepen_levels",
                     "deepen_share", "deepen_max_open"):
            if getattr(self, name) < 0:
                raise OptionError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.reuse_share <= 1.0:
            raise OptionError(f"reuse_share must be in (0, 1], got {self.reuse_share}")
        if self.refine_rounds < 0 or self.core_max_unstable < -1:
            raise OptionError("refine_rounds must be >= 0 and core_max_unstable >= -1")
