"""Sound bound propagation: interval arithmetic, then linear (CROWN / DeepPoly
style) relaxations with back-substitution to the input box.

Works on a batch of branches at once (torch, float64, CPU; the alpha/beta-CROWN
steps may search in float32, see :class:`BoundPropagator`).  A branch is an
input box plus optional ReLU phase splits.  Every bound is widened by a small
tolerance so that float64 rounding in the propagation cannot make it unsound
(the network is read as exact real arithmetic on its float64 weights).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import time

import numpy as np
import torch

from .ascent import Adam, Settled
from .network import Network

#: relative/absolute widening applied to every concrete bound
TOLERANCE = 1e-9
#: a layer's neuron back-substitution is dense (every branch's queries for the
#: neurons unstable in any branch of the batch) when that is at most this many times
#: the queries themselves.  Dense against one two-row query per (branch, neuron),
#: alternated in one process (2026-12-05): ACAS Xu 4_7 prop 1 plain 1.78 -> 1.45 s and
#: its five variants' reuse 3.68 -> 3.07 s; mnist-net_256x4 image 14 at eps 0.012 plain
#: 9.33 -> 7.3 s; a factor of 1.3, 3 or 8 within noise of 2
DENSE_QUERY_FACTOR = 2.0


def count_unstable(bounds) -> int:
    """ReLUs that pre-activation bounds ((lower, upper) per hidden layer, arrays or
    tensors) leave unstable."""
    return sum(int(((l < 0) & (u > 0)).sum()) for l, u in bounds)


def _widen_lower(x: torch.Tensor) -> torch.Tensor:
    return x - TOLERANCE * (1.0 + x.abs())


def _widen_upper(x: torch.Tensor) -> torch.Tensor:
    return x + TOLERANCE * (1.0 + x.abs())


def _linear_min(const: torch.Tensor, coeffs: torch.Tensor, lo: torch.Tensor,
                hi: torch.Tensor) -> torch.Tensor:
    """Minimum over each box of ``coeffs @ x + const`` (``coeffs`` (B, m, n),
    ``const`` (B, m), boxes ``lo``/``hi`` (B, n)), before outward rounding."""
    if lo.shape[0] > 1 and bool((lo == lo[:1]).all()) and bool((hi == hi[:1]).all()):
        # one box for every branch (ReLU splitting): matrix-vector products, half the
        # time of elementwise products summed (batched matrix-vector products are slower)
        return const + coeffs.clamp(min=0) @ lo[0] + coeffs.clamp(max=0) @ hi[0]
    return (const + (coeffs.clamp(min=0) * lo[:, None, :]).sum(-1)
            + (coeffs.clamp(max=0) * hi[:, None, :]).sum(-1))


@dataclass
class BatchBounds:
    """Bounds for a batch of ``B`` branches.

    ``lower[k]``/``upper[k]``: pre-activation bounds of affine layer ``k``
    (hidden layers only; shape (B, n_k)), already clipped by the splits.
    ``spec_lower``: (B, m) sound lower bound of each spec row ``c @ y - d``.
    ``spec_coeffs``: (B, m, n_inputs) input coefficients of the linear lower
    bound (its minimiser over the box is a natural attack candidate).
    ``infeasible``: (B,) branches whose split constraints contradict the bounds.
    ``layer_coeffs[k]``: (B, m, n_k) back-substitution coefficients on the
    activations of hidden layer ``k``, and ``guide_coeffs`` (B, m, n_inputs) on
    the input, of the bound with adaptive slopes (they choose what to split).
    """

    lower: list[torch.Tensor]
    upper: list[torch.Tensor]
    spec_lower: torch.Tensor
    spec_coeffs: torch.Tensor
    infeasible: torch.Tensor
    layer_coeffs: list[torch.Tensor]
    spec_const: torch.Tensor  # (B, m): spec row r >= spec_coeffs[r] @ x + spec_const[r] on the box
    guide_coeffs: torch.Tensor  # (B, m, n_inputs): input coefficients that guide splitting
    # (B, n_k) per hidden layer: the lower ReLU slopes alpha-CROWN ended with (None
    # without alpha steps): a warm start for bounding the same branch again
    alphas: list[torch.Tensor] | None = None
    # (B, m, n_k) per hidden layer (None where the layer has no split): the beta-CROWN
    # multipliers of the split constraints the alpha steps ended with (a warm start too)
    betas: list | None = None

    def select(self, rows: torch.Tensor) -> "BatchBounds":
        """The bounds of branches ``rows`` only."""
        pick = lambda ts: [None if t is None else t[rows] for t in ts]
        return BatchBounds(pick(self.lower), pick(self.upper), self.spec_lower[rows],
                           self.spec_coeffs[rows], self.infeasible[rows],
                           pick(self.layer_coeffs), self.spec_const[rows], self.guide_coeffs[rows],
                           None if self.alphas is None else pick(self.alphas),
                           None if self.betas is None else pick(self.betas))

    def expand_rows(self, keep: torch.Tensor, known: torch.Tensor) -> "BatchBounds":
        """These bounds, computed for the spec rows ``keep`` ((m,) bool) only, as
        bounds of all ``m`` rows: a dropped row ``r`` of branch ``b`` gets the constant
        linear bound ``known[b, r]`` ((B, m): a lower bound of the row that holds on the
        branch, e.g. its parent's)."""
        B, m = self.spec_lower.shape[0], len(keep)

        def full(t, fill):
            out = (t.new_zeros((B, m) + tuple(t.shape[2:])) if fill is None
                   else fill.to(t.dtype).clone())
            out[:, keep] = t
            return out

        known = known.to(self.spec_lower.dtype)
        return BatchBounds(self.lower, self.upper, full(self.spec_lower, known),
                           full(self.spec_coeffs, None), self.infeasible,
                           [None if c is None else full(c, None) for c in self.layer_coeffs],
                           full(self.spec_const, known), full(self.guide_coeffs, None),
                           self.alphas,
                           None if self.betas is None else
                           [None if b is None else full(b, None) for b in self.betas])

    def merge_rows(self, rows: torch.Tensor, other: "BatchBounds") -> None:
        """Combine branches ``rows`` with ``other`` (the same branches bounded
        again, differently): both are sound, so layer bounds are intersected
        and each spec row keeps the better of its two linear bounds."""
        for k in range(len(self.lower)):
            self.lower[k] = self.lower[k].index_copy(
                0, rows, torch.maximum(self.lower[k][rows], other.lower[k]))
            self.upper[k] = self.upper[k].index_copy(
                0, rows, torch.minimum(self.upper[k][rows], other.upper[k]))
            if self.layer_coeffs[k] is not None and other.layer_coeffs[k] is not None:
                self.layer_coeffs[k] = self.layer_coeffs[k].index_copy(0, rows, other.layer_coeffs[k])
        self.guide_coeffs = self.guide_coeffs.index_copy(0, rows, other.guide_coeffs)
        if self.alphas is not None and other.alphas is not None:
            self.alphas = [a.index_copy(0, rows, b) for a, b in zip(self.alphas, other.alphas)]
        elif other.alphas is not None and len(rows) == self.spec_lower.shape[0]:
            self.alphas = other.alphas
        elif other.alphas is not None:  # the other branches have none: NaN (see alpha_init)
            B = self.spec_lower.shape[0]
            self.alphas = [torch.full((B, a.shape[1]), float("nan"), dtype=a.dtype)
                           .index_copy(0, rows, a) for a in other.alphas]
        if len(rows) == self.spec_lower.shape[0]:
            self.betas = other.betas if other.betas is not None else self.betas
        elif self.betas is not None and other.betas is not None:
            self.betas = [None if a is None or b is None else a.index_copy(0, rows, b)
                          for a, b in zip(self.betas, other.betas)]
        pick = other.spec_lower > self.spec_lower[rows]
        for name in ("spec_lower", "spec_coeffs", "spec_const"):
            mine, theirs = getattr(self, name)[rows], getattr(other, name)
            sel = pick if mine.dim() == 2 else pick[..., None]
            setattr(self, name, getattr(self, name).index_copy(0, rows, torch.where(sel, theirs, mine)))
        self.infeasible = self.infeasible.index_copy(0, rows, self.infeasible[rows] | other.infeasible)

    def merge_linear(self, coeffs: torch.Tensor, const: torch.Tensor, lo: torch.Tensor,
                     hi: torch.Tensor) -> None:
        """Combine with other linear lower bounds of the spec rows that hold on
        these boxes (``coeffs`` (B, m, n), ``const`` (B, m); e.g. a parent
        box's): per row, the better minimum over the box is kept."""
        value = _widen_lower(_linear_min(const, coeffs, lo, hi))
        pick = value > self.spec_lower
        self.spec_lower = torch.where(pick, value, self.spec_lower)
        self.spec_coeffs = torch.where(pick[..., None], coeffs, self.spec_coeffs)
        self.spec_const = torch.where(pick, const, self.spec_const)

    def unstable(self) -> np.ndarray:
        """(B,) number of unstable ReLUs (pre-activation bounds straddling 0)."""
        return sum((((l < 0) & (u > 0)).sum(-1) for l, u in zip(self.lower, self.upper)),
                   torch.zeros(self.spec_lower.shape[0], dtype=torch.int64)).numpy()

    def minimisers(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Box corner minimising each spec row's linear lower bound: (B, m, n)."""
        return torch.where(self.spec_coeffs > 0, lo[:, None, :], hi[:, None, :])

    def candidates(self, lo: torch.Tensor, hi: torch.Tensor, rows=0) -> np.ndarray:
        """Counterexample candidates of branch ``rows`` (an index, or a sequence of
        them): per branch, its spec rows' minimising corners and its box centre, branch
        after branch, ((m + 1) * len(rows), n).  (Until the nineteenth session the
        corners took branch 0's coefficient signs for every branch.)"""
        idx = torch.from_numpy(np.atleast_1d(np.asarray(rows, dtype=np.int64)))
        l, h = lo[idx], hi[idx]
        corners = torch.where(self.spec_coeffs[idx] > 0, l[:, None, :], h[:, None, :])
        return torch.cat([corners, ((l + h) / 2)[:, None, :]], 1).reshape(-1, lo.shape[1]).numpy()


class BoundPropagator:
    """Holds a network's weights as float64 tensors and bounds batches of branches.

    ``search_dtype``: the alpha/beta-CROWN steps run in this precision (float32: half
    the time of float64 on a CPU); the slopes and multipliers they find are then
    evaluated once in float64, and only that bound is returned (any slopes in [0, 1]
    and multipliers >= 0 give a sound bound, so the cheaper search loses nothing of
    soundness). None: every step in float64."""

    def __init__(self, network: Network, search_dtype: torch.dtype | None = torch.float32):
        self.network = network
        self.search_dtype = search_dtype
        self.n_hidden = len(network.affines) - 1
        self._parts: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(network.affines)
        self._cast: dict[torch.dtype, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    # made on first use: a proof that carries over by differential bounds
    # (verify.reuse.difference) bounds nothing on the variant
    @cached_property
    def weights(self) -> list[torch.Tensor]:
        return [torch.from_numpy(np.array(a.weight)) for a in self.network.affines]

    @cached_property
    def biases(self) -> list[torch.Tensor]:
        return [torch.from_numpy(np.array(a.bias)) for a in self.network.affines]

    def _layers(self, dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The weights and biases in ``dtype`` (float64: the exact ones)."""
        if dtype == torch.float64:
            return self.weights, self.biases
        if dtype not in self._cast:
            self._cast[dtype] = ([w.to(dtype) for w in self.weights],
                                 [b.to(dtype) for b in self.biases])
        return self._cast[dtype]

    def weight_parts(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive and negative parts of layer ``k``'s weights, transposed; made
        on first use (interval arithmetic needs them on every bound: clamping them
        each time took ~1 ms a bound on mnist-net_256x2)."""
        if self._parts[k] is None:
            W = self.weights[k]
            self._parts[k] = (W.clamp(min=0).T, W.clamp(max=0).T)
        return self._parts[k]

    # ---- relaxation ----------------------------------------------------------
    @staticmethod
    def _relaxation(l: torch.Tensor, u: torch.Tensor, alpha_free: torch.Tensor | None = None):
        """Slopes/intercepts of the ReLU relaxation: lower ``a >= alpha*z``
        (any alpha in [0, 1] is sound for an unstable neuron), upper ``a <= s*z + t``."""
        parts = BoundPropagator._relaxation_parts(l, u)
        return BoundPropagator._with_slopes(
            parts, (u > -l).to(u.dtype) if alpha_free is None else alpha_free)

    @staticmethod
    def _relaxation_parts(l: torch.Tensor, u: torch.Tensor):
        """What of the relaxation does not depend on the lower slopes: (unstable mask,
        the stable neurons' slope (1 active, 0 inactive), upper slope ``s``, intercept ``t``).
        The alpha steps compute it once, not at every step."""
        unstable = (u > 0) & (l < 0)
        stable = (l >= 0).to(u.dtype)
        denom = torch.where(unstable, u - l, torch.ones_like(u))
        s = torch.where(unstable, u / denom, stable)
        t = torch.where(unstable, -s * l, torch.zeros_like(u))
        return unstable, stable, s, t

    @staticmethod
    def _with_slopes(parts, alpha_free: torch.Tensor):
        """The relaxation (alpha, s, t) of :meth:`_relaxation_parts` with lower slopes
        ``alpha_free`` on the unstable neurons (clipped to [0, 1])."""
        unstable, stable, s, t = parts
        return torch.where(unstable, alpha_free.clamp(0.0, 1.0), stable), s, t

    def _backsub(self, K: int, lam: torch.Tensor | None, lower, upper, lo, hi, record=False,
                 alphas=None, betas=None, signs=None, relax=None, offsets=None, start=None,
                 parts=None, row_alphas=None):
        """Lower bound of ``lam @ z_K`` over the box, given bounds of layers < K.

        ``lam``: (B, m, n_K).  ``alphas``: optional lower slopes per hidden layer.
        ``relax``: optional precomputed default relaxation per hidden layer (then
        ``lower``/``upper`` are not read).
        ``betas`` (B, m, n_k) >= 0 with ``signs`` (B, n_k) in {-1, 0, +1}: beta-CROWN
        multipliers of the split constraints ``sign * z_k >= 0``; the bound
        ``lam @ z_K - sum beta * sign * z_k`` is then a lower bound of
        ``lam @ z_K`` on the branch (where every split constraint holds).
        ``offsets`` (B, n_k) per layer (optional): the split constraints are
        ``sign * z_k + offset >= 0`` instead (a variant's neurons on a domain split
        by its original's: ``z' >= dl`` where ``z >= 0`` and the change is in
        ``[dl, du]``); the bound is then ``lam @ z_K - sum beta * (sign * z_k + offset)``.
        Works in ``lam``'s dtype (float64 for every bound that is returned).
        ``parts``: with ``alphas``, the relaxation's other parts per hidden layer
        (:meth:`_relaxation_parts`; then ``lower``/``upper`` are not read).
        ``start``: instead of ``lam``, ``(A, const)``, ``lam @ W_K`` ((B, m, n_{K-1}), may
        be a broadcast view) and ``lam @ b_K`` ((B, m)) already formed (a query of single
        neurons is rows of ``W_K``: no product).
        ``row_alphas``: optional lower slopes per query row and hidden layer ((B or 1, m,
        n_k), or None), NaN: the relaxation's own; used on the neurons unstable in the
        branch (see :class:`verify.layer_alpha.KeptSlopes`).
        Returns (bound (B,m), input coeffs (B,m,n0), recorded per-layer coefficients)."""
        if start is None:
            weights, biases = self._layers(lam.dtype)
            const = lam @ biases[K]
            A = lam @ weights[K]
        else:
            A, const = start
            weights, biases = self._layers(A.dtype)
        owned = start is None  # A may be written in place (not a view of the weights)
        recorded = [None] * self.n_hidden
        for k in range(K - 1, -1, -1):
            if relax is not None and alphas is None:
                alpha, s, t = relax[k]
            elif parts is not None and alphas is not None:
                alpha, s, t = self._with_slopes(parts[k], alphas[k])
            else:
                alpha, s, t = self._relaxation(lower[k], upper[k], None if alphas is None else alphas[k])
            if record:
                recorded[k] = A
            if row_alphas is not None and row_alphas[k] is not None:
                alpha_a, s_a = _row_slopes(row_alphas[k], alpha, s), s[:, None, :]
            else:
                alpha_a, s_a = alpha[:, None, :], s[:, None, :]
            # a_pos * alpha + a_neg * s as A * alpha + a_neg * (s - alpha), in place where
            # it may be: four passes over A instead of six, one new tensor instead of five
            # (the elementwise passes were 57 % of an ACAS Xu leaf batch's bound)
            a_neg = A.clamp(max=0)
            const = const + (a_neg * t[:, None, :]).sum(-1)
            if record or not owned or torch.is_grad_enabled() and (A.requires_grad
                                                                  or alpha.requires_grad):
                # A is kept (record), or autograd needs it: a new tensor
                A = torch.addcmul(A * alpha_a, a_neg, s_a - alpha_a)
            else:
                A.mul_(alpha_a).addcmul_(a_neg, s_a - alpha_a)
            owned = True
            if betas is not None and betas[k] is not None:
                A = A - betas[k] * signs[k][:, None, :]
                if offsets is not None and offsets[k] is not None:
                    const = const - (betas[k] * offsets[k][:, None, :]).sum(-1)
            const = const + A @ biases[k]
            A = A @ weights[k]
        return _linear_min(const, A, lo, hi), A, recorded

    def _backsub_neurons(self, k, l, u, sp, relax, lo, hi, every: bool, only=None,
                         slopes=None):
        """Tighten layer ``k``'s bounds by back-substitution: of ``every``
        neuron, or only of those that ``l``/``u`` leave unstable (and are in
        the (n_k,) mask ``only``, when given) or that are split -- one query
        per (branch, neuron), with its branch's relaxation.
        (A stable neuron's relaxation is exact however loose its bounds, but
        interval arithmetic through tight bounds of stable neurons sometimes
        beats back-substitution on the next layer: "every" is the tightest.)
        ``slopes``: optional :class:`verify.layer_alpha.KeptSlopes` of the queries."""
        if every:
            return self._backsub_columns(k, l, u, None, relax, lo, hi, slopes)
        todo = (l < 0) & (u > 0)
        if only is not None:
            todo &= only[None, :]
        if sp is not None:
            todo |= sp != 0
        n_q = int(todo.sum())
        if n_q == 0:
            return l, u
        union = todo.any(0).nonzero()[:, 0]
        if l.shape[0] * len(union) <= DENSE_QUERY_FACTOR * n_q:
            # the neurons unstable in any branch, in every branch: one (B, 2m, n_k)
            # product per layer instead of n_q two-row ones, each with its branch's
            # relaxation gathered; the extra neurons' bounds are valid too (a single
            # branch always takes this path: its union is its own queries)
            return self._backsub_columns(k, l, u, union, relax, lo, hi, slopes)
        rows, cols = todo.nonzero(as_tuple=True)
        bnd, _, _ = self._backsub(k, None, None, None, lo[rows], hi[rows],
                                  relax=[tuple(x[rows] for x in r) for r in relax],
                                  start=self._neuron_query_start(k, cols, l.dtype, n_q, True),
                                  row_alphas=None if slopes is None else slopes.queries(k, cols))
        l, u = l.clone(), u.clone()
        l[rows, cols] = torch.maximum(l[rows, cols], _widen_lower(bnd[:, 0]))
        u[rows, cols] = torch.minimum(u[rows, cols], _widen_upper(-bnd[:, 1]))
        return l, u

    def _backsub_columns(self, k, l, u, cols, relax, lo, hi, slopes=None):
        """Back-substitute neurons ``cols`` (None: all) of layer ``k`` in every
        branch (one dense pass) and intersect their bounds (``slopes``: as
        :meth:`_backsub_neurons`)."""
        if cols is not None and len(cols) == 0:
            return l, u
        m = l.shape[1] if cols is None else len(cols)
        bnd, _, _ = self._backsub(k, None, None, None, lo, hi, relax=relax,
                                  start=self._neuron_query_start(k, cols, l.dtype, l.shape[0], False),
                                  row_alphas=None if slopes is None else slopes.columns(k, cols))
        new_l, new_u = _widen_lower(bnd[:, :m]), _widen_upper(-bnd[:, m:])
        if cols is None:
            return torch.maximum(l, new_l), torch.minimum(u, new_u)
        l, u = l.clone(), u.clone()
        l[:, cols] = torch.maximum(l[:, cols], new_l)
        u[:, cols] = torch.minimum(u[:, cols], new_u)
        return l, u

    def _neuron_query_start(self, k: int, cols, dtype, B: int, per_query: bool):
        """The start of a back-substitution of neurons ``cols`` (None: all) of layer
        ``k`` from below and above: ``(A, const)`` for :meth:`_backsub` -- the rows
        ``+W_k[c]`` and ``-W_k[c]`` with their biases, in every one of ``B`` branches
        (a broadcast view: (B, 2m, n_{k-1})), or with ``per_query`` one query per
        neuron ((m, 2, n_{k-1}), ``B == m``).  (The identity rows times ``W_k`` were a
        product per query batch; rows of the weights are the same numbers.)"""
        weights, biases = self._layers(dtype)
        W, b = weights[k], biases[k]
        if cols is not None:
            W, b = W[cols], b[cols]
        if per_query:
            return torch.stack([W, -W], 1), torch.stack([b, -b], 1)
        m = W.shape[0]
        return (torch.cat([W, -W], 0).expand(B, 2 * m, W.shape[1]),
                torch.cat([b, -b], 0).expand(B, 2 * m))

    def _spec_backsub(self, K, lam, relax, lo, hi):
        """Back-substitute the spec rows twice -- with the adaptive lower slopes,
        and with every unstable neuron's lower slope 0 -- and keep the better
        bound per row: the adaptive choice is not monotone in the intermediate
        bounds (tighter ones can flip a slope to 1 and lose a row's sign).
        Returns (bound, its input coefficients, and the adaptive bound's input
        and per-layer coefficients: the better guide for what to split)."""
        bnd, A, rec = self._backsub(K, lam, None, None, lo, hi, record=True, relax=relax)
        if not K:
            return bnd, A, A, rec
        flat = [(torch.where((s > 0) & (s < 1), torch.zeros_like(a), a), s, t)
                for a, s, t in relax]  # 0 < s < 1: exactly the unstable neurons
        bnd0, A0, _ = self._backsub(K, lam, None, None, lo, hi, relax=flat)
        pick = bnd0 > bnd
        return torch.where(pick, bnd0, bnd), torch.where(pick[..., None], A0, A), A, rec

    # ---- a hidden layer's neurons as query rows (verify.layer_alpha) --------------
    def layer_exact(self, k: int) -> bool:
        """Whether interval bounds of hidden layer ``k`` are exact over a box."""
        return k == 0

    def layer_query_rows(self, k: int) -> int:
        """Query rows of layer ``k`` that :meth:`layer_rows_bound` may take at once
        with autograd (each keeps about 16 values per neuron below it)."""
        below = sum(self.network.layer_sizes()[:k + 2])
        return max(1, int((2 << 30) // (8 * 16 * below)))

    def layer_rows_bound(self, k: int, lam, lower, upper, lo, hi, alphas) -> torch.Tensor:
        """Lower bounds (B, m) of ``lam @ z_k`` (``lam`` (B, m, n_k)) over the boxes
        ``lo``/``hi`` (B, n0), with bounds ``lower``/``upper`` and lower slopes
        ``alphas`` ((B, n_j) each) of the layers j < k."""
        return self._backsub(k, lam, lower, upper, lo, hi, alphas=alphas)[0]

    # ---- main entry ------------------------------------------------------------
    def _optimise_alpha(self, K, lam, lower, upper, lo, hi, bnd, iterations, deadline=None,
                        splits=None, alpha_init=None, offsets=None, beta_init=None,
                        settled=None):
        """alpha-CROWN on the spec rows: gradient ascent on the lower slopes of
        unstable neurons, and (beta-CROWN) on multipliers of the branch's ReLU
        split constraints.  Every iterate is a sound bound (alphas are clipped
        to [0, 1], betas projected to >= 0), so the best per row is kept.
        Returns (best bound, and the last iterate's own bound, input
        coefficients and recorded coefficients -- a consistent linear bound --,
        and the slopes it ended with).  ``alpha_init``: optional (B, n_k) starting
        slopes per hidden layer (a warm start, e.g. the slopes that made the
        bound of a similar branch tight; None entries and non-finite values: the
        default); any value is sound: :meth:`_relaxation` clips slopes to
        [0, 1] where they are used.  ``offsets``: of the split constraints (see
        :meth:`_backsub`); ``beta_init``: optional (B, m, n_k) starting multipliers per
        hidden layer (negative and non-finite values start at 0: any value >= 0 is
        sound).  ``settled``: optional :class:`Settled` rule; a branch it calls settled
        stops its steps (its slopes and multipliers are kept as they are).
        Also returns the multipliers it ended with (None without splits)."""
        lower = [l.detach() for l in lower]
        upper = [u.detach() for u in upper]
        work = self.search_dtype or lam.dtype  # the steps' precision (see the class)
        w_lam, w_lo, w_hi = lam.to(work), lo.to(work), hi.to(work)
        w_lower, w_upper = [l.to(work) for l in lower], [u.to(work) for u in upper]
        alphas = [((u > -l).to(work) if alpha_init is None or alpha_init[k] is None
                   else torch.where(torch.isfinite(alpha_init[k]), alpha_init[k].to(work),
                                    (u > -l).to(work))).clone().requires_grad_(True)
                  for k, (l, u) in enumerate(zip(w_lower, w_upper))]
        signs = betas = w_off = None
        params = list(alphas)
        if splits is not None and any(sp is not None and bool((sp != 0).any()) for sp in splits):
            B, m = lam.shape[0], lam.shape[1]
            signs = [None if sp is None else sp.to(work) for sp in splits]
            betas = [None if sg is None or not bool((sg != 0).any())
                     else torch.zeros(B, m, sg.shape[1], dtype=work, requires_grad=True)
                     if beta_init is None or beta_init[k] is None
                     else torch.nan_to_num(beta_init[k].to(work), nan=0.0, posinf=0.0)
                     .clamp(min=0.0).clone().requires_grad_(True)
                     for k, sg in enumerate(signs)]
            params += [b for b in betas if b is not None]
            if offsets is not None:
                w_off = [None if o is None else o.to(work) for o in offsets]
        full_signs = signs
        parts = [self._relaxation_parts(l, u) for l, u in zip(w_lower, w_upper)]
        opt = Adam(params, lr=0.1)
        exact = work == lam.dtype  # then every iterate is a returned (sound) bound
        best = bnd.clone()
        # in lower precision: the iterate with the best total bound per branch is kept
        # (slopes are shared by a branch's rows) and evaluated exactly at the end
        kept_total = torch.full((lam.shape[0],), -torch.inf, dtype=work)
        kept = [p.detach().clone() for p in params]
        kept_cur = torch.full(lam.shape[:2], -torch.inf, dtype=work)  # the kept iterate's bound
        # settled branches leave the batch: ``act`` holds the rows still stepping, and
        # from the first drop on ``full`` (the parameters) and ``kept_full`` (the kept
        # iterate) all rows
        act = torch.arange(lam.shape[0])
        full = kept_full = None
        stepped = True  # whether the parameters moved since the last bound of them
        for _ in range(iterations):
            if deadline is not None and time.monotonic() > deadline:
                break
            cur, _, _ = self._backsub(K, w_lam, w_lower, w_upper, w_lo, w_hi, alphas=alphas,
                                      betas=betas, signs=signs, offsets=w_off, parts=parts)
            if exact:
                best[act] = torch.maximum(best[act], cur.detach())
            else:
                kept_total, kept, kept_cur = _keep_better(cur, params, kept_total, kept, kept_cur)
            # settled on what is returned: every row's best (exact), else the kept iterate
            done = None if settled is None else settled(best[act] if exact else kept_cur)
            if done is not None and bool(done.all()):
                stepped = False
                break
            opt.zero_grad()
            (-cur.sum()).backward()
            opt.step()
            if betas is not None:
                with torch.no_grad():
                    for b in betas:
                        if b is not None:
                            b.clamp_(min=0.0)
            if done is not None and settled.worth_dropping(done):
                # the settled rows' parameters and kept iterate stay as they are
                keep = ~done
                with torch.no_grad():
                    if full is None:  # the first drop: every row is still in the batch
                        full = [p.detach().clone() for p in params]
                        kept_full = None if exact else [k.clone() for k in kept]
                    else:
                        for f, p in zip(full, params):
                            f[act] = p.detach()
                        if not exact:
                            for f, k in zip(kept_full, kept):
                                f[act] = k
                act = act[keep]
                w_lam, w_lo, w_hi = w_lam[keep], w_lo[keep], w_hi[keep]
                w_lower, w_upper = [l[keep] for l in w_lower], [u[keep] for u in w_upper]
                parts = [tuple(x[keep] for x in p) for p in parts]
                if signs is not None:
                    signs = [None if sg is None else sg[keep] for sg in signs]
                if w_off is not None:
                    w_off = [None if o is None else o[keep] for o in w_off]
                params, opt = opt.select(keep)
                alphas, betas = _split_params(params, len(alphas), betas)
                if not exact:
                    kept_total, kept = kept_total[keep], [k[keep] for k in kept]
                    kept_cur = kept_cur[keep]
        with torch.no_grad():
            if not exact and stepped:  # the last step's slopes and multipliers are an iterate too
                cur, _, _ = self._backsub(K, w_lam, w_lower, w_upper, w_lo, w_hi, alphas=alphas,
                                          betas=betas, signs=signs, offsets=w_off, parts=parts)
                kept_total, kept, _ = _keep_better(cur, params, kept_total, kept, kept_cur)
            signs = full_signs  # every row's again
            dropped = len(act) < lam.shape[0]
            if not exact:
                if dropped:
                    for f, k in zip(kept_full, kept):
                        f[act] = k
                    kept = kept_full
                # the kept slopes and multipliers, evaluated in float64
                alphas, betas = _split_params([p.to(lam.dtype) for p in kept], len(alphas), betas)
                signs = None if signs is None else \
                    [None if sg is None else sg.to(lam.dtype) for sg in signs]
            elif dropped:  # every row's last parameters
                for f, p in zip(full, params):
                    f[act] = p.detach()
                alphas, betas = _split_params(full, len(alphas), betas)
            last, A, rec = self._backsub(K, lam, lower, upper, lo, hi, record=True, alphas=alphas,
                                         betas=betas, signs=signs, offsets=offsets)
        return (torch.maximum(best, last), last, A, rec,
                [a.detach().clamp(0.0, 1.0) for a in alphas],
                None if betas is None else [None if b is None else b.detach().clamp(min=0.0)
                                            for b in betas])

    def bound(self, lo, hi, spec_c, spec_d, splits=None, fixed=None,
              alpha_iterations: int = 0, deadline: float | None = None,
              forward: bool = False, backward: bool | None = None,
              refine: list | None = None, alpha_init: list | None = None,
              beta_init: list | None = None, conjunctions=None,
              layer_slopes=None) -> BatchBounds:
        """Bound a batch.

        ``lo``/``hi``: (B, n0) tensors.  ``spec_c``: (m, n_out), ``spec_d``: (m,).
        ``splits``: optional list (per hidden layer) of (B, n_k) int8 tensors with
        +1 (forced active), -1 (forced inactive), 0 (free).
        ``fixed``: optional list of (lower, upper) per hidden layer to intersect
        with (e.g. bounds of a parent branch).
        Intermediate bounds: interval arithmetic, intersected with
        ``forward``: forward-mode linear bounds -- (B, n_k, n_inputs) tensors, an
        order of magnitude cheaper than back-substitution when the input is
        small, and looser on large boxes; and ``backward`` (default: when not
        ``forward``): back-substitution (CROWN) -- with ``forward`` too, only of
        the neurons that the forward bounds leave unstable, and of split neurons.
        ``refine``: optional (n_k,) boolean mask per hidden layer: back-substitute
        only those neurons (where the other bounds leave them unstable) -- the
        bound facts a proof recorded as needed.  ``alpha_init``: warm-start slopes
        for the alpha-CROWN steps (see :meth:`_optimise_alpha`).  With
        ``fixed`` and ``splits`` (``fixed`` taken to be the parent's bounds on the same
        box), a layer is back-substituted only in branches with a split in an earlier
        layer that the parent left unstable (elsewhere it would give the parent's bounds
        again).  ``conjunctions``: optional (m,) unsafe conjunction of each spec row; a
        branch stops its alpha steps once each is refuted (:class:`~verify.ascent.Settled`).
        ``layer_slopes``: optional :class:`verify.layer_alpha.KeptSlopes`: the lower
        slopes of the intermediate neurons' back-substitution (e.g. the root's, for a
        branch of ReLU splitting; the adaptive ones where it has none)."""
        B = lo.shape[0]
        if backward is None:
            backward = not forward
        lower, upper, relax = [], [], []
        infeasible = torch.zeros(B, dtype=torch.bool)
        if forward:
            # the linear bounds are kept transposed, (B, n0, n_k), so that
            # each layer is one (B * n0, n) @ (n, n_k) product (a (n_k, n) @ (B, n, n0)
            # product broadcasts the weights to B copies: twice the time on ACAS Xu)
            mid, rad = (hi + lo)[:, :, None] / 2, (hi - lo)[:, :, None] / 2
        # ReLU splitting passes the parent's bounds as ``fixed`` (on the same box): a
        # layer's back-substitution can only improve on them in a branch with a split of
        # an earlier layer that the parent's bounds leave unstable (one made since)
        fresh = None
        if (fixed is not None and splits is not None
                and all(f is not None for f in fixed)):
            fresh = torch.zeros(B, dtype=torch.bool)
        for k in range(self.n_hidden):
            W, b = self.weights[k], self.biases[k]
            Wp_t, Wn_t = self.weight_parts(k)
            if k == 0:
                l = lo @ Wp_t + hi @ Wn_t + b
                u = hi @ Wp_t + lo @ Wn_t + b
            else:
                pl, pu = lower[k - 1].clamp(min=0), upper[k - 1].clamp(min=0)
                l = pl @ Wp_t + pu @ Wn_t + b
                u = pu @ Wp_t + pl @ Wn_t + b
            if forward and k == 0:  # linear bounds of layer 0: itself (its interval is exact)
                PT = QT = W.T.expand(B, -1, -1)
                p = q = b.expand(B, -1)
            elif forward:
                alpha, s, t = relax[k - 1]
                # relu(z) >= alpha*z >= alpha*L(x);  relu(z) <= s*z + t <= s*U(x) + t
                hPT, hp = PT * alpha[:, None, :], p * alpha
                hQT, hq = QT * s[:, None, :], q * s + t
                PT, p = hPT @ Wp_t + hQT @ Wn_t, hp @ Wp_t + hq @ Wn_t + b
                QT, q = hQT @ Wp_t + hPT @ Wn_t, hq @ Wp_t + hp @ Wn_t + b
                # (elementwise products summed: n0 is small, and batched
                # matrix-vector products are slow)
                l = torch.maximum(l, (PT * mid).sum(1) - (PT.abs() * rad).sum(1) + p)
                u = torch.minimum(u, (QT * mid).sum(1) + (QT.abs() * rad).sum(1) + q)
            l, u = _widen_lower(l), _widen_upper(u)
            if fixed is not None and fixed[k] is not None:
                l = torch.maximum(l, fixed[k][0])
                u = torch.minimum(u, fixed[k][1])
            sp = None if splits is None else splits[k]
            if backward and k > 0:
                rows = None if fresh is None else fresh.nonzero()[:, 0]
                every, only = not forward and refine is None, None if refine is None else refine[k]
                if rows is None or len(rows) == B:
                    l, u = self._backsub_neurons(k, l, u, sp, relax, lo, hi, every, only,
                                                 layer_slopes)
                elif len(rows):
                    l, u = l.clone(), u.clone()
                    l[rows], u[rows] = self._backsub_neurons(
                        k, l[rows], u[rows], None if sp is None else sp[rows],
                        [tuple(x[rows] for x in r) for r in relax], lo[rows], hi[rows], every, only,
                        layer_slopes)
            if fresh is not None and sp is not None:
                fresh |= ((sp != 0) & (fixed[k][0] < 0) & (fixed[k][1] > 0)).any(-1)
            l, u = self._split_layer(l, u, sp, infeasible)
            lower.append(l)
            upper.append(u)
            relax.append(self._relaxation(l, u))
        return self._spec_result(lo, hi, spec_c, spec_d, lower, upper, relax, infeasible,
                                 alpha_iterations, deadline, splits, alpha_init,
                                 beta_init=beta_init, conjunctions=conjunctions)

    @staticmethod
    def _split_layer(l, u, sp, infeasible):
        """A layer's pre-activation bounds under its split facts (+1: lower >= 0,
        -1: upper <= 0); marks a branch whose bounds cross as ``infeasible`` (in place)."""
        if sp is not None:
            l = torch.where(sp > 0, l.clamp(min=0), l)
            u = torch.where(sp < 0, u.clamp(max=0), u)
        infeasible |= (l > u).any(-1)
        return l, u

    def spec_bound(self, lo, hi, spec_c, spec_d, lower, upper, alpha_iterations: int,
                   deadline: float | None = None, alpha_init: list | None = None,
                   splits: list | None = None, split_offsets: list | None = None,
                   beta_init: list | None = None, conjunctions=None) -> BatchBounds:
        """Bound only the spec rows of a batch whose intermediate bounds
        ``lower``/``upper`` are known (e.g. again, with alpha-CROWN steps,
        optionally warm-started from ``alpha_init``).  ``splits`` (with optional
        ``split_offsets``, see :meth:`_backsub`): split constraints that hold on the
        branches, given beta-CROWN multipliers in the alpha steps; the bounds
        ``lower``/``upper`` must already respect them.  ``conjunctions``: as
        :meth:`bound`."""
        relax = [self._relaxation(l, u) for l, u in zip(lower, upper)]
        infeasible = torch.zeros(lo.shape[0], dtype=torch.bool)
        return self._spec_result(lo, hi, spec_c, spec_d, lower, upper, relax, infeasible,
                                 alpha_iterations, deadline, splits, alpha_init, split_offsets,
                                 beta_init, conjunctions)

    def _spec_result(self, lo, hi, spec_c, spec_d, lower, upper, relax, infeasible,
                     alpha_iterations, deadline, splits, alpha_init=None,
                     split_offsets=None, beta_init=None, conjunctions=None) -> BatchBounds:
        K = self.n_hidden
        lam = spec_c.expand(lo.shape[0], *spec_c.shape)
        bnd, A, guide, recorded = self._spec_backsub(K, lam, relax, lo, hi)
        linear_bnd = bnd  # the bound that A (and the constant below) belong to
        alphas = betas = None
        if alpha_iterations and K:
            bnd, linear_bnd, A, recorded, alphas, betas = self._optimise_alpha(
                K, lam, lower, upper, lo, hi, bnd, alpha_iterations, deadline, splits, alpha_init,
                split_offsets, beta_init,
                None if conjunctions is None else Settled(conjunctions, spec_d))
        spec_lower = _widen_lower(bnd - spec_d)
        const = linear_bnd - (A.clamp(min=0) * lo[:, None, :]).sum(-1) - (A.clamp(max=0) * hi[:, None, :]).sum(-1)
        return BatchBounds(lower, upper, spec_lower, A, infeasible, recorded, const - spec_d, guide,
                           alphas, betas)


def _row_slopes(q: torch.Tensor, alpha: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Lower slopes per query row ((R, m, n)): ``q`` ((R or 1, m, n), NaN: none) clipped
    to [0, 1] on the neurons the relaxation leaves unstable (0 < s < 1, exactly those),
    the relaxation's own ``alpha`` ((R, n)) elsewhere -- so a stable neuron keeps its
    exact slope and every slope is sound."""
    q = q.to(alpha.dtype)
    unstable = ((s > 0) & (s < 1))[:, None, :]
    return torch.where(unstable & ~torch.isnan(q), q.clamp(0.0, 1.0), alpha[:, None, :])


def _split_params(params, n_alphas: int, betas):
    """``params`` -- the slopes of ``n_alphas`` layers, then the multipliers of the layers
    ``betas`` has some for -- as (slopes, multipliers per layer: None where ``betas``
    has None, or None throughout when ``betas`` is None)."""
    it = iter(params[n_alphas:])
    return (list(params[:n_alphas]),
            None if betas is None else [None if b is None else next(it) for b in betas])


def _keep_better(cur: torch.Tensor, params, kept_total: torch.Tensor, kept, kept_cur):
    """Per branch, the parameters of iterate ``cur`` (its bound (B, m)) where its total
    beats ``kept_total``, else the ``kept`` ones: (new totals, new kept parameters,
    their bounds (B, m))."""
    with torch.no_grad():
        total = cur.sum(-1)
        better = total > kept_total
        return (torch.where(better, total, kept_total),
                [torch.where(better.view(-1, *[1] * (p.dim() - 1)), p.detach(), q)
                 for p, q in zip(params, kept)],
                torch.where(better[:, None], cur.detach(), kept_cur))


def interval_outputs(network: Network, lower, upper) -> tuple[np.ndarray, np.ndarray]:
    """Sound output bounds over the box ``[lower, upper]`` by interval arithmetic
    alone (IBP: centre and radius through every layer, widened outward), the
    loosest and cheapest bound there is; (lower, upper) numpy arrays."""
    lo, hi = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    for k, a in enumerate(network.affines):
        if k:
            lo, hi = np.maximum(lo, 0.0), np.maximum(hi, 0.0)
        mid, rad = a.weight @ ((lo + hi) / 2) + a.bias, np.abs(a.weight) @ ((hi - lo) / 2)
        rad = rad + TOLERANCE * (1.0 + np.abs(mid) + rad)
        lo, hi = mid - rad, mid + rad
    return lo, hi


def layer_bounds(network: Network, lower, upper) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sound pre-activation bounds of every affine layer (output layer included)
    over the box ``[lower, upper]``, as numpy arrays."""
    prop = BoundPropagator(network)
    lo = torch.as_tensor(np.asarray(lower, dtype=np.float64)).reshape(1, -1)
    hi = torch.as_tensor(np.asarray(upper, dtype=np.float64)).reshape(1, -1)
    n_out = network.n_outputs
    eye = torch.eye(n_out, dtype=torch.float64)
    res = prop.bound(lo, hi, torch.cat([eye, -eye], 0), torch.zeros(2 * n_out))
    out = [(l[0].numpy(), u[0].numpy()) for l, u in zip(res.lower, res.upper)]
    out.append((res.spec_lower[0, :n_out].numpy(), -res.spec_lower[0, n_out:].numpy()))
    return out
