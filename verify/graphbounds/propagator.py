"""Sound bounds of a :class:`verify.graph.GraphNetwork` over batches of branches.

Per branch (an input box plus optional ReLU phase splits): interval bounds of every node
in topological order; at each ReLU, the bounds of its input are tightened by
back-substitution (CROWN / DeepPoly) to the input box through every earlier operator --
residual Sums back-substitute into both branches and the coefficients add up at the node
they share -- then the final spec rows are back-substituted, with alpha-CROWN (and
beta-CROWN multipliers of the split constraints) when asked.

The spec machinery (two slopes per unstable neuron, alpha/beta optimisation, the linear
bound kept for refutation and attack candidates) is the chain propagator's
(:class:`verify.bounds.BoundPropagator`); this class supplies the graph's
back-substitution and intermediate bounds and returns the same :class:`BatchBounds`
(hidden layer ``k`` = ReLU node ``k``, flattened in C order), so the search uses either.
Every concrete bound is widened outward for float64 rounding, as in the chain code.
"""
from __future__ import annotations

import time

import torch

from ..bounds import (BatchBounds, BoundPropagator, _linear_min, _row_slopes, _widen_lower,
                      _widen_upper)
from ..graph.model import GraphNetwork
from ..graph.ops import Conv, Gemm, Pad, Relu, Reshape, Scale, Transpose
from ..options import GraphBoundOptions
from .rules import relu_backward, rule_for


class _OutOfTime(Exception):
    """A back-substitution of intermediate bounds passed its deadline (the neurons keep
    the bounds they have: sound, looser)."""


#: operators that map a box onto a box exactly (elementwise or layout)
_BOX_PRESERVING = (Scale, Reshape, Transpose, Pad)


class GraphBoundPropagator(BoundPropagator):
    """Bounds batches of branches of one graph network (see the module docstring)."""

    def __init__(self, network: GraphNetwork, options: GraphBoundOptions = GraphBoundOptions()):
        self.network = network
        # the alpha/beta steps in float32 (CPU convolutions take several times longer in
        # float64), the slopes and multipliers found then evaluated once in float64
        self.search_dtype = torch.float32 if options.optimise_in_float32 else None
        self.options = options
        self.nodes = network.nodes
        self.relus = network.relu_nodes
        self.n_hidden = len(self.relus)
        self._relu_of = {i: k for k, i in enumerate(self.relus)}
        self._in_shapes = [tuple(self.nodes[j].shape for j in n.inputs) for n in self.nodes]
        self._sizes = [n.size for n in self.nodes]
        consumers = network.consumers()
        self._last_use = [max(c, default=len(self.nodes)) for c in consumers]
        self._exact = self._exact_nodes()
        self._peaks: dict[int, int] = {}

    # ---- structure ---------------------------------------------------------------
    def _exact_nodes(self) -> list[bool]:
        """Per node: are interval bounds on it exact over a box?  (Box-preserving
        operators from the input, then at most one Gemm/Conv.)"""
        box = [True] + [False] * (len(self.nodes) - 1)
        exact = [True] + [False] * (len(self.nodes) - 1)
        for i, n in enumerate(self.nodes[1:], 1):
            if n.op.arity != 1 or not box[n.inputs[0]]:
                continue
            if isinstance(n.op, _BOX_PRESERVING):
                box[i] = exact[i] = True
            elif isinstance(n.op, (Gemm, Conv)):
                exact[i] = True
        return exact

    def _peak(self, start: int) -> int:
        """Elements per query row of the coefficient tensors alive at once while
        back-substituting from node ``start`` (the pending ones plus the one being
        transposed), plus the input's."""
        if start not in self._peaks:
            pending, live, peak = {start}, self._sizes[start], 0
            for i in range(start, 0, -1):
                if i not in pending:
                    continue
                pending.discard(i)
                for j in self.nodes[i].inputs:
                    if j not in pending:
                        pending.add(j)
                        live += self._sizes[j]
                peak = max(peak, live)
                live -= self._sizes[i]
            self._peaks[start] = peak + self._sizes[0]
        return self._peaks[start]

    # one element of a query row costs about this many float64s at once (the
    # coefficients, their positive and negative parts and the products)
    _TEMPORARIES = 6
    # ... and with alpha/beta optimisation autograd keeps every step's tensors
    _AUTOGRAD = 16

    def _rows_per_chunk(self, start: int, branches: int) -> int:
        per_row = 8 * self._TEMPORARIES * self._peak(start) * branches
        return max(1, int(self.options.memory_bytes // per_row))

    def max_batch(self, m: int) -> int:
        """Branches one bounding call may take within the memory budget, for ``m``
        spec rows (intermediate queries are chunked to fit, at least one neuron each)."""
        spec = 8 * self._AUTOGRAD * max(1, m) * sum(self._sizes)
        inter = max((8 * self._TEMPORARIES * 2 * self._peak(self.nodes[r].inputs[0])
                     for r in self.relus), default=0)
        return max(1, int(self.options.memory_bytes // max(spec, inter)))

    # ---- back-substitution ------------------------------------------------------------
    def _backsub_from(self, start: int, lam: torch.Tensor, relax, lo, hi, record=False,
                      betas=None, signs=None, deadline: float | None = None, offsets=None,
                      row_alphas=None):
        """Lower bound over the boxes of ``lam @ node[start]``, given the relaxation
        ``(alpha, s, t)`` (flat ``(B, n_k)``) of every ReLU before ``start``.

        ``lam``: (B, m, size) or (B, m, *shape).  ``betas`` (B, m, n_k) >= 0 and
        ``signs`` (B, n_k): beta-CROWN terms of split constraints ``sign*z >= 0``
        (``sign*z + offset >= 0`` with ``offsets`` (B, n_k), as the chain's ``_backsub``).
        ``row_alphas``: optional lower slopes per row, as the chain's ``_backsub``.
        Returns (bound (B, m), input coefficients (B, m, n0), per hidden layer the
        coefficients (B, m, n_k) on its output when ``record``, else Nones).  Raises
        :class:`_OutOfTime` when ``deadline`` passes on the way."""
        B, m = lam.shape[:2]
        acc = {start: lam.reshape(B, m, *self.nodes[start].shape)}
        const = torch.zeros(B, m, dtype=lam.dtype)
        recorded = [None] * self.n_hidden
        for i in range(start, 0, -1):
            A = acc.pop(i, None)
            if A is None:
                continue
            if deadline is not None and time.monotonic() > deadline:
                raise _OutOfTime
            node = self.nodes[i]
            if isinstance(node.op, Relu):
                k = self._relu_of[i]
                if record:
                    recorded[k] = A.reshape(B, m, -1)
                shape = self.nodes[i].shape
                alpha, s, t = relax[k]
                if row_alphas is not None and row_alphas[k] is not None:
                    alpha = _row_slopes(row_alphas[k], alpha, s).reshape(B, m, *shape)
                else:
                    alpha = alpha.reshape(B, *shape)
                s, t = s.reshape(B, *shape), t.reshape(B, *shape)
                beta = sign = None
                if betas is not None and betas[k] is not None:
                    beta, sign = betas[k].reshape(B, m, *shape), signs[k].reshape(B, *shape)
                    if offsets is not None and offsets[k] is not None:
                        const = const - (betas[k] * offsets[k][:, None, :]).sum(-1)
                P, c = relu_backward(A, alpha, s, t, beta, sign)
                parts = [P]
            else:
                parts, c = rule_for(node.op).backward(node.op, A, self._in_shapes[i])
            del A
            if c is not None:
                const = const + c
            for j, P in zip(node.inputs, parts):
                acc[j] = P if j not in acc else acc[j] + P
        A0 = acc.pop(0).reshape(B, m, -1)
        return _linear_min(const, A0, lo, hi), A0, recorded

    def _backsub(self, K, lam, lower, upper, lo, hi, record=False, alphas=None, betas=None,
                 signs=None, relax=None, offsets=None, parts=None):
        """The chain propagator's back-substitution of the spec rows (its signature, so its
        spec and alpha/beta machinery runs on graphs): from the output node."""
        if parts is not None and alphas is not None:
            relax = [self._with_slopes(p, a) for p, a in zip(parts, alphas)]
        elif relax is None or alphas is not None:
            relax = [self._relaxation(lower[k], upper[k], None if alphas is None else alphas[k])
                     for k in range(self.n_hidden)]
        return self._backsub_from(self.network.output, lam, relax, lo, hi, record, betas, signs,
                                  offsets=offsets)

    # ---- a ReLU's input neurons as query rows (verify.layer_alpha) --------------------
    def layer_exact(self, k: int) -> bool:
        return self._exact[self.nodes[self.relus[k]].inputs[0]]

    def layer_query_rows(self, k: int) -> int:
        src = self.nodes[self.relus[k]].inputs[0]
        below = sum(self._sizes[:src + 1])  # autograd keeps every coefficient tensor
        return max(1, int(self.options.memory_bytes // (8 * self._AUTOGRAD * below)))

    def layer_rows_bound(self, k: int, lam, lower, upper, lo, hi, alphas) -> torch.Tensor:
        src = self.nodes[self.relus[k]].inputs[0]
        relax = [self._relaxation(lower[j], upper[j], alphas[j]) for j in range(k)]
        return self._backsub_from(src, lam, relax, lo, hi)[0]

    # ---- intermediate bounds ---------------------------------------------------------
    def _crown_neurons(self, src: int, l, u, sp, relax, lo, hi, only=None, deadline=None,
                       slopes=None, layer: int = -1):
        """Tighten the bounds ``l``/``u`` (B, n) of node ``src`` by back-substitution of
        the neurons unstable in some branch (and in ``only``, when given) or split, in
        chunks of query rows that fit the memory budget.  Past ``deadline`` the rest keep
        their interval bounds (sound, looser).  ``slopes``: optional
        :class:`verify.layer_alpha.KeptSlopes` of the queries, ``src`` the input of
        hidden layer ``layer``."""
        todo = (l < 0) & (u > 0)
        if only is not None:
            todo &= only[None, :]
        if sp is not None:
            todo |= sp != 0
        cols = todo.any(0).nonzero()[:, 0]
        if len(cols) == 0:
            return l, u
        B, n = l.shape
        step = max(1, self._rows_per_chunk(src, B) // 2)
        l, u = l.clone(), u.clone()
        for s0 in range(0, len(cols), step):
            if deadline is not None and time.monotonic() > deadline:
                break
            c = cols[s0:s0 + step]
            q = len(c)
            lam = torch.zeros(B, 2 * q, n, dtype=l.dtype)
            r = torch.arange(q)
            lam[:, r, c] = 1.0
            lam[:, q + r, c] = -1.0
            try:
                bnd, _, _ = self._backsub_from(
                    src, lam, relax, lo, hi, deadline=deadline,
                    row_alphas=None if slopes is None else slopes.columns(layer, c))
            except _OutOfTime:
                break
            l[:, c] = torch.maximum(l[:, c], _widen_lower(bnd[:, :q]))
            u[:, c] = torch.minimum(u[:, c], _widen_upper(-bnd[:, q:]))
        return l, u

    # ---- main entry ------------------------------------------------------------------
    def bound(self, lo, hi, spec_c, spec_d, splits=None, fixed=None,
              alpha_iterations: int = 0, deadline: float | None = None,
              forward: bool = False, backward: bool | None = None,
              refine: list | None = None, alpha_init: list | None = None,
              beta_init: list | None = None, conjunctions=None,
              layer_slopes=None) -> BatchBounds:
        """Bound a batch, as :meth:`BoundPropagator.bound` (same arguments and result;
        ``alpha_init`` and ``beta_init`` warm-start the alpha/beta steps);
        see :meth:`_bound`.  With the options' ``lazy_intermediate`` (and back-substituted
        intermediate bounds asked for), the batch is first bounded with interval
        intermediate bounds and no alpha steps (milliseconds); only the branches where
        that leaves some spec row nonpositive are bounded again in full, and the two
        bounds of those are merged (both are sound: layer bounds intersected, the better
        bound of each spec row kept).  Likewise ``alpha_iterations`` of alpha/beta-CROWN
        are spent only on the branches plain CROWN leaves open."""
        if backward is None:
            backward = self.options.crown_intermediate and not forward
        cheap, rows = None, None
        if backward and self.options.lazy_intermediate:
            cheap = self._bound(lo, hi, spec_c, spec_d, splits, fixed, 0, deadline, False, None)
            rows = _open_rows(cheap)
            if len(rows) == 0:
                return cheap
            lo, hi = lo[rows], hi[rows]
            splits = None if splits is None else [s[rows] for s in splits]
            fixed = None if fixed is None else [None if f is None else (f[0][rows], f[1][rows])
                                                for f in fixed]
            alpha_init, beta_init = _rows_of(alpha_init, rows), _rows_of(beta_init, rows)
        res = self._bound(lo, hi, spec_c, spec_d, splits, fixed, 0, deadline, backward, refine,
                          layer_slopes)
        if alpha_iterations and self.n_hidden:
            r = _open_rows(res)
            if len(r):
                pick = lambda ts: [t[r] for t in ts]
                lower, upper = pick(res.lower), pick(res.upper)
                again = self._spec_result(lo[r], hi[r], spec_c, spec_d, lower, upper,
                                          [self._relaxation(l, u) for l, u in zip(lower, upper)],
                                          res.infeasible[r], alpha_iterations, deadline,
                                          None if splits is None else pick(splits),
                                          _rows_of(alpha_init, r),
                                          beta_init=_rows_of(beta_init, r),
                                          conjunctions=conjunctions)
                res.merge_rows(r, again)
        if cheap is None:
            return res
        cheap.merge_rows(rows, res)
        return cheap

    def _bound(self, lo, hi, spec_c, spec_d, splits, fixed, alpha_iterations, deadline,
               backward: bool, refine, layer_slopes=None) -> BatchBounds:
        """Bound a batch.

        Intermediate bounds: interval arithmetic through every node, intersected with
        ``fixed``; each ReLU's input bounds tightened by back-substitution unless they are
        exact already (a box through one Gemm/Conv), or -- with ``splits`` and ``fixed``
        bounds of every layer, taken to be the parent's on the same box -- the branch has
        no split since the parent's bound in an earlier layer (the parent's bounds are
        as good), or ``backward`` is False (:meth:`bound`'s default: the options'
        ``crown_intermediate``; ``forward`` alone means the cheap bound, interval only --
        a graph has no forward-mode linear bounds).  ``refine``: per hidden layer
        an optional (n_k,) mask of the neurons to back-substitute.  Splits clip the bounds
        (+1: lower >= 0, -1: upper <= 0), which fixes their relaxation; with
        ``alpha_iterations`` beta-CROWN multipliers of the split constraints are
        optimised too.  ``layer_slopes``: as :meth:`BoundPropagator.bound`."""
        B = lo.shape[0]
        values: list = [None] * len(self.nodes)
        values[0] = (lo.reshape(B, *self.nodes[0].shape), hi.reshape(B, *self.nodes[0].shape))
        lower, upper, relax = [], [], []
        infeasible = torch.zeros(B, dtype=torch.bool)
        # ReLU splitting passes the parent's bounds as ``fixed`` with the parent's box:
        # a layer's back-substitution can only improve on them in a branch with a split
        # of an earlier layer that the parent's bounds leave unstable (one made since)
        fresh = None
        if (fixed is not None and splits is not None
                and all(f is not None for f in fixed)):
            fresh = torch.zeros(B, dtype=torch.bool)
        for i, node in enumerate(self.nodes[1:], 1):
            if isinstance(node.op, Relu):
                k = self._relu_of[i]
                src = node.inputs[0]
                l, u = (v.reshape(B, -1) for v in values[src])
                if fixed is not None and fixed[k] is not None:
                    l = torch.maximum(l, fixed[k][0])
                    u = torch.minimum(u, fixed[k][1])
                sp = None if splits is None else splits[k]
                if backward and not self._exact[src]:
                    rows = None if fresh is None else fresh.nonzero()[:, 0]
                    if rows is None or len(rows) == B:
                        l, u = self._crown_neurons(src, l, u, sp, relax, lo, hi,
                                                   None if refine is None else refine[k], deadline,
                                                   layer_slopes, k)
                    elif len(rows):
                        l, u = l.clone(), u.clone()
                        l[rows], u[rows] = self._crown_neurons(
                            src, l[rows], u[rows], None if sp is None else sp[rows],
                            [tuple(x[rows] for x in r) for r in relax], lo[rows], hi[rows],
                            None if refine is None else refine[k], deadline, layer_slopes, k)
                if fresh is not None and sp is not None:
                    fresh |= ((sp != 0) & (fixed[k][0] < 0) & (fixed[k][1] > 0)).any(-1)
                l, u = self._split_layer(l, u, sp, infeasible)
                lower.append(l)
                upper.append(u)
                relax.append(self._relaxation(l, u))
                shape = self.nodes[src].shape
                values[src] = (l.reshape(B, *shape), u.reshape(B, *shape))
                values[i] = rule_for(node.op).interval(node.op, values[src])
            else:
                nl, nu = rule_for(node.op).interval(node.op, *(values[j] for j in node.inputs))
                values[i] = (_widen_lower(nl), _widen_upper(nu))
            for j in node.inputs:  # free what no later node reads
                if self._last_use[j] == i:
                    values[j] = None
        return self._spec_result(lo, hi, spec_c, spec_d, lower, upper, relax, infeasible,
                                 alpha_iterations, deadline, splits)


def _open_rows(res: BatchBounds) -> torch.Tensor:
    """Branches that some spec row's bound leaves open (and that are not infeasible)."""
    return (~(res.spec_lower > 0).all(1) & ~res.infeasible).nonzero()[:, 0]


def make_propagator(network, options: GraphBoundOptions | None = None) -> BoundPropagator:
    """The bound propagator for ``network``: the chain's for a :class:`verify.network.Network`,
    the graph's for a :class:`GraphNetwork`."""
    if isinstance(network, GraphNetwork):
        return GraphBoundPropagator(network, options or GraphBoundOptions())
    fast = (options or GraphBoundOptions()).optimise_in_float32
    return BoundPropagator(network, torch.float32 if fast else None)


def _rows_of(warm, rows):
    """Warm-start slopes or multipliers (per hidden layer a (B, ...) tensor or None) of
    some rows."""
    if warm is None:
        return None
    return [None if a is None else a[rows] for a in warm]
