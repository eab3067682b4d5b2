"""Explicit, frozen option sets (no global configuration)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import OptionError


def check_timeout(value, what: str = "timeout") -> float:
    """``value`` as seconds when it is a finite number > 0, else an OptionError
    (``inf`` would make every deadline NaN and the run never end)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{what} must be a finite number of seconds > 0, got {value!r}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise OptionError(f"{what} must be a finite number of seconds > 0, got {value!r}")
    return seconds


@dataclass(frozen=True)
class GraphBoundOptions:
    """How the graph bound propagator (:mod:`verify.graphbounds`) spends memory and time."""

    # bytes the back-substitution tensors of one bounding call may take (query rows are
    # chunked, and the search's batch of branches is sized, to stay within it)
    memory_bytes: int = 2 << 30
    # tighten each ReLU layer's input bounds by back-substitution (else interval only)
    crown_intermediate: bool = True
    # ... but first try interval intermediate bounds, and back-substitute only for the
    # branches they do not settle (CROWN of a wide layer can take a minute)
    lazy_intermediate: bool = True
    # alpha/beta-CROWN steps in float32, the slopes and multipliers found then
    # evaluated once in float64 (sound either way; chains: about half the time a step;
    # graphs: CPU convolutions in float64 take several times longer -- resnet_2b
    # prop_1, 60 s: 504 -> 1538 branch evaluations)
    optimise_in_float32: bool = True
    # a network of one ReLU layer between an affine map and a linear tail whose neurons
    # read at most this many inputs each (a small convolution kernel on one channel):
    # before branch and bound each region is bounded exactly per receptive field
    # (verify.graphbounds.local_fields; verivital Convnet_avgpool at eps 0.04: margins
    # -0.47/-0.55/-0.14 by alpha-CROWN, +0.51/+0.42/+0.82 this way). 0: never
    local_fields_max_inputs: int = 6
    local_fields_iterations: int = 500  # Adam steps on the multipliers at most ...
    local_fields_share: float = 0.5  # ... and at most this share of the time left
    # a branch's intermediate neurons back-substituted with the root's kept slopes, as
    # chains do (VerifyOptions.branch_layer_slopes, which must be on too). Off: on
    # resnet_2b at 120 s, side by side (relu_branching_benchmark, deepsplit against
    # deepsplit-adaptive) it took 6 % fewer branches and 3 % more time over props 31,
    # 22, 47, 10 (282.6 s against 274.8 s); the first ReLU layer, exact by interval
    # arithmetic, holds most of a CNN's unstable neurons
    branch_layer_slopes: bool = False

    def __post_init__(self):
        if self.memory_bytes < 1 << 20:
            raise OptionError(f"memory_bytes must be at least 1 MiB, got {self.memory_bytes}")
        if self.local_fields_max_inputs < 0 or self.local_fields_iterations < 0:
            raise OptionError("local_fields_max_inputs and local_fields_iterations must be >= 0")
        if not 0.0 <= self.local_fields_share <= 1.0:
            raise OptionError(f"local_fields_share must be in [0, 1], got {self.local_fields_share}")


@dataclass(frozen=True)
class ReluBranchOptions:
    """How ReLU-split branch and bound picks the neuron to split (see
    :mod:`verify.relu_branching`; graph networks use "deepsplit" with the intercept as
    its direct term, :mod:`verify.graphbounds.impact`, and "gap" for any other choice)."""

    # "gap": |coefficient| * relaxation gap; "babsr": the BaBSR score; "fsb": filtered
    # smart branching, a look-ahead over the best few by BaBSR (and the best by gap);
    # "deepsplit": a neuron's direct impact (its relaxation's intercept through the row's
    # coefficient) plus its impact through later layers' relaxations.  (babsr beat gap
    # and fsb on MNIST-FC; deepsplit by default since 2026-12-05: side by side with
    # babsr at 60 s it decided eran idx 3539, 1385, 3857 that babsr left open, took 5.1 s
    # for mnist-net_256x2 prop_3_0.03 against 50 s, and was slower on 256x4
    # prop_0/13_0.03 (35 / 12 s against 6 / 1.2 s) -- see
    # benchmarks/relu_branching_benchmark.py and the README)
    heuristic: str = "deepsplit"
    # FSB: this many by BaBSR per branch (plus the best by gap); on mnist-net_256x2 int4
    # prop_0_0.03 (with one alpha step): 4: 1374 branches, 8: 492, 12: 238, 16: 286, 24: 262
    fsb_candidates: int = 12
    # FSB's children bounds: "spec": the spec rows over the parent's intermediate bounds
    # with the phase imposed; "layers": the layers after the split back-substituted too
    # (side by side with babsr, load 1-2: 15.3 s / 26.9 s on the int4 instance above,
    # 8.4 / 11.2 s and 24.5 / 10.6 s and 14.7 / 4.9 s on mnist-net_256x4 balls)
    lookahead: str = "spec"
    # alpha-CROWN steps from the parent's slopes (the first iterate is the bound with
    # the parent's slopes; 0: plain CROWN slopes, which rank candidates badly: 8
    # candidates took 2020+ branches on the instance above, 492 with 1 step)
    lookahead_alpha_iterations: int = 1
    # deepsplit: a neuron's direct impact is "intercept" (|min(coefficient, 0)| times the
    # upper relaxation's intercept) or its "babsr" score
    deepsplit_direct: str = "intercept"

    def __post_init__(self):
        if self.heuristic not in ("gap", "babsr", "fsb", "deepsplit"):
            raise OptionError("heuristic must be gap, babsr, fsb or deepsplit, got "
                              f"{self.heuristic!r}")
        if self.deepsplit_direct not in ("intercept", "babsr"):
            raise OptionError("deepsplit_direct must be intercept or babsr, got "
                              f"{self.deepsplit_direct!r}")
        if self.fsb_candidates < 1:
            raise OptionError(f"fsb_candidates must be >= 1, got {self.fsb_candidates}")
        if self.lookahead not in ("spec", "layers"):
            raise OptionError(f"lookahead must be spec or layers, got {self.lookahead!r}")
        if self.lookahead_alpha_iterations < 0:
            raise OptionError("lookahead_alpha_iterations must be >= 0, got "
                              f"{self.lookahead_alpha_iterations}")


@dataclass(frozen=True)
class VerifyOptions:
    timeout: float = 60.0  # wall-clock seconds for the whole property (hard)
    attack_restarts: int = 8  # gradient-attack random restarts per round
    attack_steps: int = 40
    random_samples: int = 2000  # random points tried before attacking
    attack_time_share: float = 0.03  # of the timeout, for falsification before the search ...
    attack_max_s: float = 0.1  # ... but at most this long (one round)
    # then, on graph networks (CNNs, residual nets), when the root bound is further
    # below zero than attack_far_ratio times the attack's best margin is above it
    # (branch and bound has far to go, a counterexample may be near), this share of
    # the timeout more, at most attack_far_max_s (chains: see verifier.py)
    attack_far_share: float = 0.1
    attack_far_max_s: float = 60.0
    attack_far_ratio: float = 2.0
    # during branch and bound: PGD rounds started from the open branches' bound
    # minimisers, on about this share of the search's time (0: none)
    attack_search_share: float = 0.1
    batch_size: int = 256  # branches bounded at once
    z3_max_unstable: int = 6  # input splitting: leaves with at most this many unstable ReLUs go to Z3
    # ReLU splitting: the same for a branch that still has unstable ReLUs.  0: splitting
    # them is cheaper (2^k branches, bounded in one batch: 10 branches and 0.1 s against
    # one 20 s Z3 query with 5 unstable ReLUs on a digits MLP); Z3 then decides only the
    # fully split branches that beta-CROWN could not close (a linear program)
    z3_relu_split_max_unstable: int = 0
    z3_max_terms: int = 60000  # larger leaf encodings are not sent to Z3 (too slow to build)
    z3_min_depth: int = 12  # input splitting: Z3 only below this depth (0 unstable: always)
    z3_max_failures: int = 2  # per region: stop sending leaves to Z3 after this many time-outs
    fixed_leaf_iterations: int = 200  # beta-CROWN steps for a branch with every ReLU fixed
    z3_query_timeout: float = 20.0  # seconds per Z3 query (also cut by the deadline)
    # ... per leaf query when splitting the input: bounds close those leaves in
    # milliseconds once split further, and a long Z3 query on dense float weights
    # only eats the budget (measured on ACAS Xu: Z3 decided no leaf in 180 instances)
    z3_input_query_timeout: float = 2.0
    z3_digits: tuple = (4, 8, None)  # coefficient rounding tried in turn (None: exact)
    lookahead_max_inputs: int = 8  # input splitting: try every dimension when this few
    lookahead_dims: int = 2  # ... among this many dimensions ranked by coefficients (0: all)
    portfolio_share: float = 0.25  # time for that, before a restart looking at every dimension
    input_split_max: int = 16  # split the input box when it has at most this many dims
    alpha_iterations: int = 20  # ReLU splitting: alpha-CROWN steps per bounding
    alpha_iterations_input: int = 0  # input splitting: alpha-CROWN steps per bounding
    # ReLU splitting on a chain, when the root bound leaves the region open: alpha-CROWN
    # steps on the intermediate layers' bounds of the root (verify.layer_alpha), which
    # every branch inherits (0: none). eran's mnist_relu_9_200: about 1 s; 20 steps
    # gave nearly what 80 did
    layer_alpha_iterations: int = 20
    layer_alpha_time_share: float = 0.25  # ... within this share of the time left
    # ... and this many when they start from a similar network's slopes (a variant's
    # root from its original's, verify.reuse)
    layer_alpha_warm_iterations: int = 2
    # ReLU splitting: a branch's intermediate neurons are back-substituted with the
    # slopes those steps kept for them at the root (verify.layer_alpha.KeptSlopes), not
    # the adaptive ones (False: the adaptive ones). Graph networks: only with
    # graph_bounds.branch_layer_slopes too
    branch_layer_slopes: bool = True
    # input splitting, hybrid bounds: branches still open with at most this many
    # unstable ReLUs get alpha-CROWN steps on their spec rows (near a plateau of
    # small margin that closes most of them instead of splitting them further)
    alpha_tier_iterations: int = 20
    alpha_tier_max_unstable: int = 24
    # ReLU splitting: a child branch back-substitutes only the neurons that its
    # parent's bounds (intersected with interval bounds) leave unstable, and its split
    # ones; the stable ones keep the parent's back-substituted bounds
    refine_unstable_only: bool = True
    # a batch of branches bounds only the spec rows of the conjunctions some branch's
    # parent left unrefuted (local robustness: 1-2 of 9 rows below the root)
    drop_refuted_rows: bool = True
    inherit_bounds: bool = True  # input splitting: halves intersect their parent's layer bounds
    # input splitting: intermediate bounds by "backward" substitution (CROWN), by
    # "forward" linear bounds (10x cheaper, looser on large boxes), or "hybrid":
    # forward first, then for the branches that stay open both, back-substituting
    # the neurons forward leaves unstable (look-ahead: forward)
    intermediate_bounds: str = "hybrid"
    # ReLU splitting on a chain, not while a proof is recorded: the region's
    # mixed-integer program (verify.milp; the ``milp`` extra, highspy), one unsafe
    # conjunction per worker process. One worker solves it beside branch and bound from
    # the search's root on; once milp_bab_share of the time has gone without a verdict
    # the search stops and milp_workers work on the program (0: never). Only when that
    # leaves the program at least milp_min_seconds. mnist-net_256x2 prop_1_0.03: its 9
    # conjunctions refuted in 10-28 s each, where branch and bound is open at 120 s
    milp_workers: int = 2
    milp_bab_share: float = 0.4
    milp_min_seconds: float = 20.0
    # ... and only when the tightened root leaves at most this many unstable ReLUs (the
    # program's binaries); else the search keeps the whole time, without a worker beside
    # it. Per conjunction: 10-28 s at 142 (mnist-net_256x2 prop_1_0.03), 52-96 s at 169
    # (256x4 prop_3_0.03: 9 of them do not fit 300 s on 2 cores), not closed in 150 s
    # at 361-738; 256x4 prop_4_0.05, which the search alone holds in 105 s, stayed
    # unknown at 300 s with the stage taken
    milp_max_unstable: int = 160
    seed: int = 0
    use_z3: bool = True
    graph_bounds: GraphBoundOptions = GraphBoundOptions()  # graph networks (CNNs) only
    relu_branching: ReluBranchOptions = ReluBranchOptions()  # ReLU splitting: which neuron

    def __post_init__(self):
        check_timeout(self.timeout)
        check_timeout(self.z3_query_timeout, "z3_query_timeout")
        check_timeout(self.z3_input_query_timeout, "z3_input_query_timeout")
        if self.intermediate_bounds not in ("backward", "forward", "hybrid"):
            raise OptionError("intermediate_bounds must be backward, forward or hybrid, got "
                              f"{self.intermediate_bounds!r}")
        for name in ("alpha_tier_iterations", "alpha_tier_max_unstable", "layer_alpha_iterations",
                     "layer_alpha_warm_iterations"):
            if getattr(self, name) < 0:
                raise OptionError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.layer_alpha_time_share <= 1.0:
            raise OptionError("layer_alpha_time_share must be in [0, 1], got "
                              f"{self.layer_alpha_time_share}")
        if (min(self.milp_workers, self.milp_min_seconds, self.milp_max_unstable) < 0
                or not 0.0 < self.milp_bab_share <= 1.0):
            raise OptionError("milp_workers, milp_min_seconds and milp_max_unstable must be >= 0 "
                              f"and milp_bab_share in (0, 1], got {self.milp_workers}, "
                              f"{self.milp_min_seconds}, {self.milp_max_unstable}, "
                              f"{self.milp_bab_share}")
        if not 0.0 < self.portfolio_share <= 1.0:
            raise OptionError(f"portfolio_share must be in (0, 1], got {self.portfolio_share}")
        if not 0.0 <= self.attack_search_share < 1.0:
            raise OptionError("attack_search_share must be in [0, 1), got "
                              f"{self.attack_search_share}")
        if (not 0.0 <= self.attack_far_share <= 1.0 or self.attack_far_max_s < 0
                or self.attack_far_ratio < 0):
            raise OptionError("attack_far_share must be in [0, 1], attack_far_max_s and "
                              f"attack_far_ratio >= 0, got {self.attack_far_share}, "
                              f"{self.attack_far_max_s}, {self.attack_far_ratio}")
        if not 0.0 <= self.attack_time_share <= 1.0 or self.attack_max_s < 0:
            raise OptionError("attack_time_share must be in [0, 1] and attack_max_s >= 0, got "
                              f"{self.attack_time_share}, {self.attack_max_s}")
        for name in ("attack_restarts", "attack_steps", "random_samples", "batch_size"):
            if getattr(self, name) < 0:
                raise OptionError(f"{name} must be >= 0, got {getattr(self, name)}")
