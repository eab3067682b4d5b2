"""The proof artifact of the original network: every closed branch of every
region with its unsat cores and warm-start slopes, as versioned JSON in the
proof store.

A branch is an input box plus ReLU phase split facts.  The branches of a
region tile its box exactly (checked by :func:`covers` before any branch is
reused; a variant that one bound of the whole region settles needs none);
``method`` says what closed it on the original: ``bounds`` (the variant
re-derives its own bounds on the branch), ``z3`` or ``infeasible``.
``cores`` maps a conjunction index to a :class:`~verify.reuse.cores.Core`;
bounds-closed branches get one too when Z3 can find it within the budget.
A region settled by one bound of its whole box gets a ``bound_core``
(:mod:`verify.reuse.bound_core`): the neurons whose back-substituted bounds
it needs, the others' intervals sufficing.

Building is cheap by default (``ReuseOptions.cores="lazy"``): a branch keeps
the raw unsat core Z3 answered in the search (not minimised) and the
alpha-CROWN slopes and the beta-CROWN multipliers of its split facts its bound
ended with (``alphas``, ``betas``, stored as float16: any slope in [0, 1] and any
multiplier >= 0 is sound, they only warm-start a variant's optimisation); the bound
core is made when a variant first needs it (:meth:`ProofRecord.bound_core_of`)
and cached.  A record built in this process also keeps, in memory only, each
branch's layer bounds and spec lower bounds on the original (per-branch
differential bounds, :mod:`verify.reuse.tree`); one read from the store has
none (they are never trusted from a file).
"""
from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field

import numpy as np

from ..encode import Branch, encode
from ..errors import InputError
from ..network import Network
from ..options import VerifyOptions
from ..proof_store import ProofStore, options_key
from ..properties import Property, Region
from ..search import Leaf, RegionSearch
from ..constraint_names import fact_dict
from ..verifier import Proof, verify_property
from ..result import Counterexample, Statistics, Status, VerificationResult
from .bisection import BisectionLevel, bisection_levels, bisection_tree_covers, is_bisection_tree
from .bound_core import bound_core, core_gain, core_neurons
from .changes import ParsedNames, parse_names
from .cores import Core, extract_core
from .leaf_arrays import LeafArrays
from .difference import OriginalBounds, original_bounds
from .options import ReuseOptions

SCHEMA = "coreproof.reuse-proof"
SCHEMA_VERSION = 6  # 4: warm-start slopes (alphas), raw cores, lazy bound cores; 5: betas;
# 6: the root's layer slopes (root_slopes)


@dataclass
class ProofBranch:
    lower: np.ndarray
    upper: np.ndarray
    splits: tuple[str, ...]
    method: str
    depth: int = 0
    cores: dict[int, Core] = field(default_factory=dict)
    bound_core: Core | None = None  # neurons to back-substitute (bounds-closed branches)
    # measured on the original: a full bound's time over the bound core's (None: unknown)
    bound_core_gain: float | None = None
    # per hidden layer (n_k,) float16: the alpha-CROWN slopes of the original's bound
    # of the branch (a warm start for the variant's; None: it had no alpha steps)
    alphas: list[np.ndarray] | None = None
    # (m, n_facts) float16: the beta-CROWN multipliers of its split facts (the order of
    # ``splits``) the original's bound ended with (a warm start too; None: none)
    betas: np.ndarray | None = None
    # in memory only, for a record built in this process (never stored): the
    # original's layer bounds and spec-row lower bounds on the branch
    layer_bounds: list | None = field(default=None, repr=False, compare=False)
    spec_lower: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self, region: Region) -> dict:
        same = np.array_equal(self.lower, region.lower) and np.array_equal(self.upper, region.upper)
        return {"lower": None if same else [float(v) for v in self.lower],
                "upper": None if same else [float(v) for v in self.upper],
                "splits": list(self.splits), "method": self.method, "depth": self.depth,
                "cores": {str(j): c.to_dict() for j, c in self.cores.items()},
                "bound_core": None if self.bound_core is None else self.bound_core.to_dict(),
                "bound_core_gain": None if self.bound_core_gain is None
                else round(self.bound_core_gain, 3),
                "alphas": None if self.alphas is None else pack_alphas(self.alphas),
                "betas": None if self.betas is None else pack_betas(self.betas)}

    @classmethod
    def from_dict(cls, d: dict, region: Region, hidden_sizes=None) -> "ProofBranch":
        lo = region.lower if d["lower"] is None else np.array(d["lower"], dtype=np.float64)
        hi = region.upper if d["upper"] is None else np.array(d["upper"], dtype=np.float64)
        return cls(lo, hi, tuple(str(s) for s in d["splits"]), str(d["method"]), int(d["depth"]),
                   {int(j): Core.from_dict(c) for j, c in d["cores"].items()},
                   None if d.get("bound_core") is None else Core.from_dict(d["bound_core"]),
                   None if d.get("bound_core_gain") is None else float(d["bound_core_gain"]),
                   None if d.get("alphas") is None else unpack_alphas(d["alphas"]),
                   None if d.get("betas") is None else unpack_betas(d["betas"], len(d["splits"])))


def pack_alphas(alphas) -> dict:
    """Slopes per hidden layer as one base64 string of float16 values (in [0, 1]:
    float16 keeps them to 5e-4, plenty for a starting point) and the layer sizes."""
    flat = np.concatenate([np.asarray(a, dtype=np.float16).ravel() for a in alphas])
    return {"sizes": [int(np.size(a)) for a in alphas],
            "f16": base64.b64encode(flat.astype("<f2").tobytes()).decode("ascii")}


def unpack_alphas(d: dict) -> list[np.ndarray]:
    """The inverse of :func:`pack_alphas` (float16 arrays; ValueError when malformed)."""
    sizes = [int(n) for n in d["sizes"]]
    flat = np.frombuffer(base64.b64decode(d["f16"], validate=True), dtype="<f2")
    if len(flat) != sum(sizes) or min(sizes, default=0) < 0:
        raise ValueError(f"alphas: {len(flat)} values for layer sizes {sizes}")
    return list(np.split(flat.astype(np.float16), np.cumsum(sizes)[:-1]))


def pack_root_slopes(slopes: dict) -> dict:
    """A region's root slopes (:func:`verify.layer_alpha.optimise_layer_bounds`'s
    ``slopes_out``: per hidden layer ``k``, its queried neurons and (2m, n_j) slopes per
    layer j < k) as float16, per layer."""
    return {str(k): {"neurons": [int(i) for i in neurons], **pack_alphas(rows)}
            for k, (neurons, rows) in slopes.items()}


def unpack_root_slopes(d: dict) -> dict:
    """The inverse of :func:`pack_root_slopes` (ValueError when malformed or not finite:
    slopes only start an optimisation, but a NaN would spread through the bounds)."""
    out = {}
    for k, entry in d.items():
        neurons = np.array([int(i) for i in entry["neurons"]], dtype=np.int64)
        rows = unpack_alphas(entry)
        if int(k) < 0 or (neurons < 0).any() or len(rows) != int(k) or not neurons.size:
            raise ValueError(f"root slopes of layer {k}: {len(rows)} layers below, "
                             f"{neurons.size} neurons")
        shaped = []
        for r in rows:
            if r.size % (2 * neurons.size) or not np.isfinite(r).all():
                raise ValueError(f"root slopes of layer {k}: {r.size} values for "
                                 f"{2 * neurons.size} queries, or not finite")
            shaped.append(r.reshape(2 * neurons.size, -1))
        out[int(k)] = (neurons, shaped)
    return out


def pack_betas(betas: np.ndarray) -> dict:
    """Multipliers (m, n_facts) as float16 (any value >= 0 is sound: a starting point)."""
    b = np.asarray(betas, dtype=np.float16)
    return {"rows": int(b.shape[0]), **pack_alphas([b.ravel()])}


def unpack_betas(d: dict, n_facts: int) -> np.ndarray:
    """The inverse of :func:`pack_betas` (ValueError when malformed)."""
    rows, (flat,) = int(d["rows"]), unpack_alphas(d)
    if rows < 0 or len(flat) != rows * n_facts:
        raise ValueError(f"betas: {len(flat)} values for {rows} rows x {n_facts} facts")
    return flat.reshape(rows, n_facts)


@dataclass
class ProofRecord:
    network: str  # digest of the original network
    property: str  # digest of the property
    status: Status  # only holds can be reused
    time_s: float  # branch and bound on the original
    core_time_s: float = 0.0  # core extraction and minimisation (at build and lazily since)
    regions: dict[int, list[ProofBranch]] = field(default_factory=dict)
    network_name: str = ""
    property_name: str = ""
    reason: str | None = None
    counterexample: Counterexample | None = None
    # covers() answers per (region index, box): the structure is checked once per
    # record, however many variants reuse it (the record is not modified after)
    _covered: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    # ... and the levels of an input-bisection tree (bisection_levels), the same way
    _levels: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    # ... and each region's leaves as stacked arrays (leaf_arrays)
    _leaf_arrays: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    # regions whose bound core bound_core_of has tried to make
    _bound_core_tried: set = field(default_factory=set, init=False, repr=False, compare=False)
    # every core's names, parsed on first use (see core_names)
    _core_names: ParsedNames | None = field(default=None, init=False, repr=False, compare=False)
    # per region: the original's bound of the whole region (plain CROWN, or over the
    # intermediate bounds its search tightened; moved to the variant where one bound
    # settled the region or where a variant's search tightens its root; its minimisers
    # are counterexample candidates for any proof), derived from the original network
    # in this process, never stored (see verify.reuse.difference)
    root_bounds: dict[int, OriginalBounds] = field(default_factory=dict, init=False, repr=False,
                                                   compare=False)
    # per region whose search tightened its root: the slopes kept
    # (verify.layer_alpha.optimise_layer_bounds), a variant's warm start (stored as
    # float16; any finite slopes are sound: they are clipped to [0, 1] where used)
    root_slopes: dict[int, dict] = field(default_factory=dict, init=False, repr=False,
                                         compare=False)
    # a record without a proof (violated, unknown), built in this process: per region the
    # original's root bound as a one-box branch (layer and spec-row bounds), which a
    # graph variant's differential tiers start from (never stored)
    root_branches: dict[int, ProofBranch] = field(default_factory=dict, init=False,
                                                  repr=False, compare=False)
    # leaves split further on the original for a variant (verify.reuse.deepen): their
    # children, kept for the next variant (this process only)
    deepened: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.status = Status(self.status)

    def covers(self, r: int, region: Region) -> bool:
        """Whether the branches of region ``r`` tile ``region``'s box (see :func:`covers`)."""
        key = (r, region.lower.tobytes(), region.upper.tobytes())
        if key not in self._covered:
            branches = self.regions.get(r) or []
            self._covered[key] = (self.bisection_levels(r, region) is not None
                                  if is_bisection_tree(branches) else covers(region, branches))
        return self._covered[key]

    def bisection_levels(self, r: int, region: Region) -> list[BisectionLevel] | None:
        """The levels of region ``r``'s tree when it is one of input bisections alone
        (:func:`bisection_levels`; None otherwise), built once per record."""
        key = (r, region.lower.tobytes(), region.upper.tobytes())
        if key not in self._levels:
            self._levels[key] = bisection_levels(region, self.regions.get(r) or [])
        return self._levels[key]

    def leaf_arrays(self, r: int) -> LeafArrays:
        """Region ``r``'s leaves as stacked arrays (:class:`LeafArrays`; every leaf needs
        its layer bounds), built once per record."""
        if r not in self._leaf_arrays:
            self._leaf_arrays[r] = LeafArrays.of(self.regions[r])
        return self._leaf_arrays[r]

    def core_names(self) -> ParsedNames:
        """The names of every core, parsed once (each variant's change statistics
        count them)."""
        if self._core_names is None:
            self._core_names = parse_names([n for c in self.cores() for n in c.names])
        return self._core_names

    def cores(self):
        """Every core of the proof: Z3 cores and bound-fact cores."""
        for branches in self.regions.values():
            for b in branches:
                yield from b.cores.values()
                if b.bound_core is not None:
                    yield b.bound_core

    def bound_core_of(self, r: int, original: Network, region: Region,
                      options: VerifyOptions, budget: float = 2.0) -> Core | None:
        """The bound core of region ``r`` when one bound of its box settled it,
        made now (by deletion, within ``budget`` s, and its gain measured) when the
        record has none yet -- a lazily built record skips it -- and cached; the
        time goes to ``core_time_s``.  None for a split proof or when no core exists."""
        branches = self.regions.get(r) or []
        if len(branches) != 1 or branches[0].splits or branches[0].method != "bounds":
            return None
        b = branches[0]
        if b.bound_core is None and r not in self._bound_core_tried:
            self._bound_core_tried.add(r)
            t0 = time.monotonic()
            search = RegionSearch(original, region, r, options, float("inf"), Statistics(),
                                  full_margin=True)
            b.bound_core = bound_core(search, b.lower, b.upper, budget)
            if b.bound_core is not None:
                b.bound_core_gain = core_gain(search, b.lower, b.upper,
                                              core_neurons(b.bound_core.names))
            self.core_time_s += time.monotonic() - t0
        return b.bound_core

    @property
    def n_branches(self) -> int:
        return sum(len(b) for b in self.regions.values())

    def to_dict(self, prop: Property) -> dict:
        return {"schema": SCHEMA, "version": SCHEMA_VERSION, "network": self.network,
                "property": self.property, "status": self.status.value,
                "time_s": round(self.time_s, 6), "core_time_s": round(self.core_time_s, 6),
                "network_name": self.network_name, "property_name": self.property_name,
                "reason": self.reason,
                "regions": {str(r): [b.to_dict(prop.regions[r]) for b in bs]
                            for r, bs in self.regions.items()},
                "root_slopes": {str(r): pack_root_slopes(sl) for r, sl in self.root_slopes.items()}}

    @classmethod
    def from_dict(cls, d: dict, prop: Property, path: str | None = None) -> "ProofRecord":
        """Raises KeyError/TypeError/ValueError/IndexError on a malformed dict, and
        InputError (naming ``path``, the file it came from) on a status that is not
        a verdict."""
        if d.get("schema") != SCHEMA or d.get("version") != SCHEMA_VERSION:
            raise ValueError(f"not a {SCHEMA} v{SCHEMA_VERSION} record")
        try:
            status = Status(d["status"])
        except ValueError:
            raise InputError(f"proof record status {d['status']!r}", path=path,
                             expected='"holds", "violated" or "unknown"') from None
        regions = {int(r): [ProofBranch.from_dict(b, prop.regions[int(r)]) for b in bs]
                   for r, bs in d["regions"].items()}
        record = cls(str(d["network"]), str(d["property"]), status, float(d["time_s"]),
                     float(d["core_time_s"]), regions, str(d.get("network_name", "")),
                     str(d.get("property_name", "")), d.get("reason"))
        record.root_slopes = {int(r): unpack_root_slopes(sl)
                              for r, sl in (d.get("root_slopes") or {}).items()}
        return record

    def to_result(self) -> VerificationResult:
        return VerificationResult(self.status, self.time_s, "reuse-proof",
                                  self.counterexample, self.reason, self.network_name,
                                  self.property_name)


# ---- checking the structure ---------------------------------------------------------
@dataclass(frozen=True)
class TreeNode:
    """A node of a proof tree: a box and ReLU phase facts ({(layer, neuron): +-1});
    a leaf is branch ``leaf`` of the record, an inner node has two children
    (an input bisection at the exact midpoint, or a two-way ReLU phase split)."""

    lower: np.ndarray
    upper: np.ndarray
    facts: dict
    children: tuple = ()
    leaf: int | None = None


def proof_tree(region: Region, branches: list[ProofBranch]) -> TreeNode | None:
    """The tree of input bisections and ReLU phase splits whose leaves are
    exactly ``branches``, rooted at the region's box; None when they do not tile it."""
    if not branches:
        return None
    LO = np.stack([np.asarray(b.lower, dtype=np.float64) for b in branches])
    HI = np.stack([np.asarray(b.upper, dtype=np.float64) for b in branches])
    facts_of = [fact_dict(b.splits) for b in branches]
    # a pure ReLU split tree (every box the region's): no bisection to look for
    one_box = bool((LO == region.lower).all() and (HI == region.upper).all())

    def rec(lo, hi, facts, idx: np.ndarray) -> TreeNode | None:
        if len(idx) == 0:
            return None
        same = idx if one_box else \
            idx[(LO[idx] == lo).all(axis=1) & (HI[idx] == hi).all(axis=1)]
        for i in same:
            if facts_of[i] == facts:
                return TreeNode(lo, hi, facts, leaf=int(i))
        if one_box:
            return relu_split(lo, hi, facts, idx)
        # an input bisection every leaf respects (the first such dimension)
        mid = (lo + hi) / 2
        left, right = HI[idx] <= mid, LO[idx] >= mid
        ok = left.any(axis=0) & right.any(axis=0) & (left.sum(axis=0) + right.sum(axis=0) == len(idx))
        if ok.any():
            d = int(np.argmax(ok))
            a_hi = hi.copy(); a_hi[d] = mid[d]
            b_lo = lo.copy(); b_lo[d] = mid[d]
            a = rec(lo, a_hi, facts, idx[left[:, d]])
            b = rec(b_lo, hi, facts, idx[right[:, d]]) if a is not None else None
            return None if b is None else TreeNode(lo, hi, facts, (a, b))
        return relu_split(lo, hi, facts, idx)

    def relu_split(lo, hi, facts, idx) -> TreeNode | None:
        common = set.intersection(*(set(facts_of[i]) - set(facts) for i in idx))
        for neuron in sorted(common):  # a ReLU split every leaf carries
            sides = []
            for phase in (1, -1):
                sub = np.array([i for i in idx if facts_of[i][neuron] == phase], dtype=np.int64)
                side = rec(lo, hi, {**facts, neuron: phase}, sub)
                if side is None:
                    return None
                sides.append(side)
            return TreeNode(lo, hi, facts, tuple(sides))
        return None

    try:
        import sys
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
        return rec(np.asarray(region.lower, dtype=np.float64),
                   np.asarray(region.upper, dtype=np.float64), {}, np.arange(len(branches)))
    except RecursionError:
        return None


def covers(region: Region, branches: list[ProofBranch]) -> bool:
    """True when the branches tile the region's box: they form a tree of input
    bisections (at the exact midpoint) and two-way ReLU phase splits whose
    leaves are exactly the branches (:func:`proof_tree`; a tree of input
    bisections alone, level by level: :func:`bisection_tree_covers`)."""
    if is_bisection_tree(branches):
        return bisection_tree_covers(region, branches)
    return proof_tree(region, branches) is not None


# ---- building ---------------------------------------------------------------------
def _leaf_cores(net: Network, region: Region, leaf: Leaf, options: VerifyOptions,
                ropt: ReuseOptions, deadline: float) -> dict[int, Core]:
    """A minimised core per conjunction of a closed leaf (as far as the budget goes)."""
    cores = {}
    if leaf.method == "infeasible" or leaf.layer_bounds is None:
        return cores
    for j, conj in enumerate(region.unsafe):
        if leaf.method == "bounds" and leaf.unstable > ropt.core_max_unstable:
            break
        digits_list = [leaf.digits[j]] if j in leaf.digits else list(options.z3_digits)
        for digits in digits_list:
            left = deadline - time.monotonic()
            if left <= 0.05:
                return cores
            query = encode(net, Branch(leaf.lo, leaf.hi, leaf.layer_bounds, conj.coeffs,
                                       conj.rhs, leaf.splits), digits)
            start = list(leaf.cores[j]) if j in leaf.cores else None  # the search's raw core
            core = extract_core(query, start, timeout=min(ropt.core_timeout, left),
                                budget=min(ropt.minimise_budget, left))
            if core is not None:
                core.total, core.digits = len(query.constraints), digits
                cores[j] = core
                break
    return cores


def _raw_cores(leaf: Leaf) -> dict[int, Core]:
    """The unsat cores Z3 answered in the search (with ``core.minimize``), as they are."""
    return {int(j): Core(tuple(names), False, False, digits=leaf.digits.get(j))
            for j, names in leaf.cores.items()}


def _branch(leaf: Leaf, cores: dict[int, Core]) -> ProofBranch:
    alphas = None if leaf.alphas is None else [np.asarray(a, dtype=np.float16) for a in leaf.alphas]
    betas = None if leaf.betas is None else np.asarray(leaf.betas, dtype=np.float16)
    return ProofBranch(leaf.lo, leaf.hi, leaf.splits, leaf.method, leaf.depth, cores,
                       alphas=alphas, betas=betas, layer_bounds=leaf.layer_bounds,
                       spec_lower=leaf.spec_lower)


def _root_branches(prop: Property, roots: dict) -> dict[int, ProofBranch]:
    """The verifier's root bound of each region it bounded, as a one-box branch."""
    out = {}
    for r, res in roots.items():
        if res is None or bool(res.infeasible[0]):
            continue
        region = prop.regions[r]
        out[r] = ProofBranch(region.lower, region.upper, (), "bounds",
                             layer_bounds=[(l[0].numpy(), u[0].numpy())
                                           for l, u in zip(res.lower, res.upper)],
                             spec_lower=res.spec_lower[0].numpy())
    return out


def build_proof(network: Network, prop: Property, options: VerifyOptions = VerifyOptions(),
                reuse_options: ReuseOptions = ReuseOptions()) -> ProofRecord:
    """Decide ``prop`` on ``network`` (:func:`verify.verifier.verify_property`,
    recording every closed branch).  With ``reuse_options.cores="lazy"`` (the
    default) that is all: each branch keeps the search's raw Z3 cores and its
    warm-start slopes, and bound cores are made on demand
    (:meth:`ProofRecord.bound_core_of`); with ``"eager"`` minimised unsat cores
    and bound cores are extracted now, within ``reuse_options.core_budget``."""
    proof = Proof()
    res = verify_property(network, prop, options, proof=proof)
    record = ProofRecord(network.digest(), prop.digest(), res.status, res.time_s,
                         network_name=network.name, property_name=prop.name,
                         reason=res.reason, counterexample=res.counterexample)
    if res.status is not Status.HOLDS:
        record.root_branches = _root_branches(prop, proof.roots)
        record.root_bounds = {r: original_bounds(None, b, r in proof.root_slopes)
                              for r, b in proof.roots.items() if b is not None}
        return record
    t1 = time.monotonic()
    for r, leaves in proof.leaves.items():
        if reuse_options.cores == "eager":
            _eager_cores(record, network, prop, r, leaves, options, reuse_options,
                         t1 + reuse_options.core_budget)
        else:
            record.regions[r] = [_branch(l, _raw_cores(l)) for l in leaves]
        if proof.roots.get(r) is not None:  # the verifier's own root bound: free
            record.root_bounds[r] = original_bounds(None, proof.roots[r], r in proof.root_slopes)
        if proof.root_slopes.get(r):
            record.root_slopes[r] = proof.root_slopes[r]
    record.core_time_s = time.monotonic() - t1
    return record


def _eager_cores(record: ProofRecord, network: Network, prop: Property, r: int,
                 leaves: list[Leaf], options: VerifyOptions, reuse_options: ReuseOptions,
                 core_deadline: float) -> None:
    """Minimised Z3 cores for the leaves of region ``r`` and, for a region one bound
    settled, its minimal bound core (deletion passes; see ``ReuseOptions.cores``)."""
    # Z3-closed leaves first: their cores are known to exist
    order = sorted(range(len(leaves)), key=lambda i: (leaves[i].method != "z3", leaves[i].unstable))
    cores, misses = {}, 0
    for i in order:
        leaf = leaves[i]
        if leaf.method != "z3" and misses >= reuse_options.core_misses:
            cores[i] = {}  # bounds-closed leaves only get harder (more unstable ReLUs)
            continue
        cores[i] = _leaf_cores(network, prop.regions[r], leaf, options, reuse_options,
                               core_deadline)
        if leaf.method != "z3" and leaf.method != "infeasible":
            misses = 0 if cores[i] else misses + 1
    record.regions[r] = [_branch(l, cores[i]) for i, l in enumerate(leaves)]
    search = RegionSearch(network, prop.regions[r], r, options, core_deadline, Statistics(),
                          full_margin=True)
    record.root_bounds[r] = original_bounds(search)
    root = record.regions[r][0] if len(leaves) == 1 else None
    if root is not None and root.method == "bounds" and not root.splits:
        root.bound_core = bound_core(search, root.lower, root.upper,
                                     min(reuse_options.minimise_budget,
                                         max(core_deadline - time.monotonic(), 0.0)))
        if root.bound_core is not None:
            root.bound_core_gain = core_gain(search, root.lower, root.upper,
                                             core_neurons(root.bound_core.names))


# ---- the store --------------------------------------------------------------------
def store_key(options: VerifyOptions) -> str:
    return f"reuse{SCHEMA_VERSION}-{options_key(options)}"


def save_proof(store: ProofStore, record: ProofRecord, prop: Property,
               options: VerifyOptions) -> None:
    if record.status is not Status.HOLDS:
        return
    store.put_result(record.network, record.property, store_key(options), record.to_result(),
                     proof=record.to_dict(prop))


def load_proof(store: ProofStore, network: Network, prop: Property,
               options: VerifyOptions) -> ProofRecord | None:
    key = (network.digest(), prop.digest(), store_key(options))
    payload = store.get(*key)
    if payload is None or not isinstance(payload.get("proof"), dict):
        return None
    try:
        rec = ProofRecord.from_dict(payload["proof"], prop, path=str(store.path_for(*key)))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError,
            InputError) as exc:
        store._problem(f"reuse proof for {network.name} / {prop.name} ignored: {exc}")
        return None
    if rec.network != network.digest() or rec.property != prop.digest():
        return None
    return rec


def get_proof(original: Network, prop: Property, options: VerifyOptions,
              reuse_options: ReuseOptions, store=None,
              trust: bool = False) -> tuple[ProofRecord, bool]:
    """The original's proof record from ``store`` -- re-checked on the original
    first (:mod:`.check`) unless ``trust`` -- or built now (and stored)."""
    if store is not None:
        rec = load_proof(store, original, prop, options)
        if rec is not None and not trust:
            from .check import check_proof
            outcome = check_proof(original, prop, rec, options)
            if not outcome.ok:
                store._problem(f"stored proof of {original.name} / {prop.name} failed its "
                               f"re-check ({outcome.reason}); proving again")
                rec = None
        if rec is not None:
            return rec, True
    rec = build_proof(original, prop, options, reuse_options)
    if store is not None:
        save_proof(store, rec, prop, options)
    return rec, False
