"""Certified functional equivalence of two ReLU networks (chains or graphs) over an input box.

    from verify.equiv.api import certify_equivalence, EquivOptions
    res = certify_equivalence(original, variant, lower, upper, EquivOptions(timeout=10))
    res.delta          # per output: max |variant(x) - original(x)| <= delta on the box
    res.status         # holds: top-1 agreement certified (and delta <= target when given)

``delta`` is sound (see :mod:`verify.equiv.bounds`); ``deviation_found`` is
the largest deviation a search found (a lower bound of the true maximum),
so the true maximum lies between the two.  ``violated`` always carries an
input re-run on both float64 networks: their predicted classes differ, or
(with a target) their outputs differ by more than the target.  Splitting: input
bisection or aligned ReLU phases for chains; for graph networks (CNNs) the target and
top-1 agreement are asked to the verifier (:mod:`verify.equiv.graph_target`).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from ..errors import OptionError, ShapeMismatchError
from ..network import Network
from ..result import Status
from .attack import Disagreement, find_disagreement, max_deviation, replay
from .graph_target import tighten_graph
from .relusplit import ReluSplitter, relu_branch_and_bound
from .search import PairBounder, branch_and_bound

#: ``split_by="auto"``: ReLU phase splitting above this many inputs (bisecting one of
#: many inputs barely changes the bound), input bisection up to it
RELU_SPLIT_MIN_INPUTS = 64


@dataclass(frozen=True)
class EquivOptions:
    timeout: float = 10.0  # wall-clock seconds (attack and branch and bound)
    target_delta: float | None = None  # split the input box until delta <= target
    argmin: bool = False  # the predicted class is the smallest output (ACAS Xu)
    split: bool = True  # split to prove top-1 agreement / reach the target
    # what to split: "input" (bisect the box), "relu" (phases of hidden neurons of
    # aligned networks, verify.equiv.relusplit) or "auto" (relu above RELU_SPLIT_MIN_INPUTS)
    split_by: str = "auto"
    product: bool = True  # also bound the product network (a second sound bound)
    max_leaves: int = 20000
    # ReLU splitting: projected-gradient steps on each branch's relaxation slopes and
    # split multipliers (verify.diffbounds.optimise_difference); 0: the fixed relaxation
    slope_steps: int = 0
    attack_samples: int = 2000
    attack_restarts: int = 4
    attack_steps: int = 60
    attack_time_share: float = 0.25  # of the timeout, at most, for the searches
    seed: int = 0

    def __post_init__(self):
        if not (self.timeout > 0 and np.isfinite(self.timeout)):
            raise OptionError(f"timeout must be a finite number of seconds > 0, got {self.timeout!r}")
        if self.target_delta is not None and not (self.target_delta >= 0):
            raise OptionError(f"target delta must be >= 0, got {self.target_delta!r}")
        if self.split_by not in ("auto", "input", "relu"):
            raise OptionError(f"split_by must be auto, input or relu, got {self.split_by!r}")
        if self.slope_steps < 0:
            raise OptionError(f"slope_steps must be >= 0, got {self.slope_steps!r}")
        if self.max_leaves < 1:
            raise OptionError("max_leaves must be at least 1")


@dataclass(frozen=True)
class EquivResult:
    """The outcome of :func:`certify_equivalence` (JSON-serialisable: :meth:`to_dict`)."""

    status: Status
    original: str
    variant: str
    n_inputs: int
    delta: tuple[float, ...]  # certified: max |g - f| <= delta[i] on the region, per output
    deviation_found: tuple[float, ...]  # the largest |g - f| per output found by search
    naive_delta: tuple[float, ...]  # difference of the two networks' separate bounds
    root_differential: tuple[float, ...] | None  # the differential bound before splitting
    root_product: tuple[float, ...] | None  # the product-network bound before splitting
    top1: str  # "certified", "disagreement" or "unknown"
    agreement_share: float  # share of the region's volume with top-1 agreement certified
    classes_certified: tuple[int, ...]  # classes c: where the original provably says c, the variant does
    target_delta: float | None
    leaves: int
    bounded: int
    # "differential" (aligned networks: chains neuron by neuron, graphs of one
    # architecture node by node; the product bound may be computed too) or "product"
    method: str
    # "input" (box bisection), "relu" (phase splits), "verify" (graphs: the target and the
    # classes verified by the search, verify.equiv.graph_target) or "none"
    splitting: str
    time_s: float
    disagreement: dict | None = None  # replayed: inputs where the classes differ
    deviation_witness: dict | None = None  # replayed: |g - f| above the target
    reason: str = ""

    @property
    def max_delta(self) -> float:
        return max(self.delta)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status.value
        d["max_delta"] = self.max_delta
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def _volume_share(leaves, lo, hi) -> float:
    """Share of the box's volume covered by agreeing leaves (log-space per leaf;
    zero-width dimensions count as width 1)."""
    w = np.where(hi > lo, hi - lo, 1.0)
    total = 0.0
    for leaf in leaves:
        if leaf.agree:
            lw = np.where(hi > lo, leaf.hi - leaf.lo, 1.0)
            total += float(np.exp(np.sum(np.log(lw) - np.log(w))))
    return min(total, 1.0)


def certify_equivalence(original: Network, variant: Network, lower, upper,
                        options: EquivOptions = EquivOptions()) -> EquivResult:
    """Bound ``max |variant(x) - original(x)|`` per output over the box
    ``[lower, upper]`` and decide top-1 agreement there (see the module doc)."""
    from ..threads import single_threaded
    single_threaded()  # see verify.threads
    start = time.monotonic()
    deadline = start + options.timeout
    lo = np.asarray(lower, dtype=np.float64).reshape(-1)
    hi = np.asarray(upper, dtype=np.float64).reshape(-1)
    if original.n_inputs != variant.n_inputs or original.n_outputs != variant.n_outputs:
        raise ShapeMismatchError(
            f"the networks differ in size: {original.describe()} vs {variant.describe()}",
            expected="the same numbers of inputs and outputs")
    if lo.shape != (original.n_inputs,) or hi.shape != lo.shape:
        raise ShapeMismatchError(f"the region has {lo.size} inputs, the networks "
                                 f"{original.n_inputs}")
    if np.any(lo > hi) or not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ShapeMismatchError("the region is empty or not finite",
                                 expected="finite bounds with lower <= upper")
    sign = -1.0 if options.argmin else 1.0
    graph = not (isinstance(original, Network) and isinstance(variant, Network))
    rng = np.random.default_rng(options.seed)
    bounder = PairBounder(original, variant, sign=sign, product=options.product)
    # the root bound gets half the budget (a large CNN's CROWN bound can take minutes)
    root = bounder.bound(lo, hi, deadline=start + 0.5 * options.timeout)
    attack_deadline = min(deadline, start + options.attack_time_share * options.timeout)
    starts = root.corners
    dev = max_deviation(original, variant, lo, hi, rng=rng, samples=options.attack_samples,
                        restarts=options.attack_restarts, steps=options.attack_steps,
                        starts=starts, deadline=attack_deadline)
    cex = replay(original, variant, dev.inputs, lo, hi, sign) or find_disagreement(
        original, variant, lo, hi, rng=rng, sign=sign, samples=options.attack_samples,
        restarts=options.attack_restarts * 4, steps=options.attack_steps, starts=dev.inputs,
        deadline=attack_deadline)
    found: list[Disagreement] = [] if cex is None else [cex]

    def look(leaf) -> bool:  # a cheap look for a disagreement in an open leaf
        if leaf.original_constant and not leaf.agree:
            hit = find_disagreement(original, variant, leaf.lo, leaf.hi, rng=rng, sign=sign,
                                    samples=64, restarts=0, steps=0)
            if hit is not None:
                found.append(hit)
                return True
        return False

    target = options.target_delta
    # a disagreement found settles top-1; the bound is still tightened to the target
    agreement = not found
    relu = options.split_by == "relu" or (options.split_by == "auto"
                                          and len(lo) > RELU_SPLIT_MIN_INPUTS)
    splitting = "none"
    unsafe: list = []  # inputs the verifier found unsafe (graphs), replayed below
    if options.split and (agreement or target is not None) and relu and bounder.diff is not None:
        splitting = "relu"
        splitter = ReluSplitter(bounder.diff, lo, hi, bounder.top_rows(root.top_class),
                                slope_steps=options.slope_steps)
        outcome = relu_branch_and_bound(splitter, splitter.root(), target=target,
                                        agreement=agreement, deadline=deadline,
                                        max_leaves=options.max_leaves, cap=root.delta)
        # the leaves cover the box: one bound of the box from all of them
        leaves = [replace(root, delta=outcome.delta, agree=root.agree or outcome.agree)]
        n_leaves, bounded = outcome.leaves, outcome.bounded
    elif options.split and (agreement or target is not None) and graph:
        splitting = "verify"  # the product graph / each class asked to the search
        leaf, unsafe = tighten_graph(original, variant, lo, hi, root, target, agreement,
                                     sign, deadline)
        for x in unsafe:  # replayed: a disagreement, or a deviation above the target
            hit = replay(original, variant, x[None, :], lo, hi, sign)
            if hit is not None:
                found.append(hit)
        leaves, bounded, n_leaves = [leaf], 1, 1
    elif options.split and (agreement or target is not None):
        splitting = "input"
        outcome = branch_and_bound(bounder, root, target=target, agreement=agreement,
                                   deadline=deadline, max_leaves=options.max_leaves,
                                   on_leaf=look if agreement else None)
        leaves, bounded = outcome.leaves, outcome.bounded
        n_leaves = len(leaves)
    else:
        leaves, bounded, n_leaves = [root], 1, 1
    delta = np.max([leaf.delta for leaf in leaves], axis=0)
    agree_all = all(leaf.agree for leaf in leaves)
    witness = None
    if target is not None:
        candidates = list(dev.inputs[np.argsort(-dev.value)[:1]]) + list(unsafe)
        witness = next(filter(None, (_witness(original, variant, x, lo, hi, target)
                                     for x in candidates)), None)
    if found:
        status, top1, reason = Status.VIOLATED, "disagreement", "the predicted classes differ"
    elif witness is not None:
        status, top1 = Status.VIOLATED, ("certified" if agree_all else "unknown")
        reason = f"|g - f| exceeds the target {target:g} at a replayed input"
    elif agree_all and (target is None or float(delta.max()) <= target):
        status, top1, reason = Status.HOLDS, "certified", ""
    else:
        status, top1 = Status.UNKNOWN, ("certified" if agree_all else "unknown")
        reason = ("top-1 agreement not proven on the whole region" if not agree_all
                  else f"certified delta {delta.max():.4g} above the target {target:g}")
    classes = sorted({leaf.top_class for leaf in leaves if leaf.agree})
    return EquivResult(
        status=status, original=original.name, variant=variant.name, n_inputs=len(lo),
        delta=tuple(float(v) for v in delta),
        deviation_found=tuple(float(v) for v in dev.value),
        naive_delta=tuple(float(v) for v in root.naive),
        root_differential=None if root.differential is None else tuple(
            float(v) for v in root.differential),
        root_product=None if root.product is None else tuple(float(v) for v in root.product),
        top1=top1, agreement_share=_volume_share(leaves, lo, hi),
        classes_certified=tuple(classes), target_delta=target, leaves=n_leaves,
        bounded=bounded, method="differential" if bounder.aligned else "product",
        splitting=splitting,
        time_s=time.monotonic() - start,
        disagreement=found[0].to_dict() if found else None, deviation_witness=witness,
        reason=reason)


def _witness(f, g, x, lo, hi, target: float) -> dict | None:
    """An input of the box where some output moved by more than ``target``, replayed on
    both float64 networks, or None."""
    x = np.clip(x, lo, hi)
    y_f, y_g = f.forward(x), g.forward(x)
    d = np.abs(y_g - y_f)
    i = int(d.argmax())
    if not float(d[i]) > target:
        return None
    return {"input": [float(v) for v in x], "output": i,
            "original_output": [float(v) for v in y_f],
            "variant_output": [float(v) for v in y_g], "deviation": float(d[i])}


def property_box(prop) -> tuple[np.ndarray, np.ndarray]:
    """The hull of a property's input boxes."""
    lo = np.min([r.lower for r in prop.regions], axis=0)
    hi = np.max([r.upper for r in prop.regions], axis=0)
    return lo, hi
