"""Which unstable ReLU an open branch is split on (ReLU-split branch and bound).

Four scores, chosen by :class:`verify.options.ReluBranchOptions`:

- ``"gap"``: |back-substitution coefficient of the worst open spec row on the
  neuron's output| * relaxation gap ``-u*l/(u-l)``;
- ``"babsr"``: the BaBSR estimate (Bunel et al., JMLR 2020) of how much the
  worst row's bound moves when the neuron is fixed: the upper relaxation's
  intercept it loses, plus the change of its pre-activation bias's share;
- ``"fsb"``: filtered smart branching (De Palma et al., 2021): the top few
  candidates by BaBSR (and the best by gap), across layers, for every branch of
  the batch; both children of every candidate are bounded in one batched call
  (the parent's intermediate bounds with the candidate's phase imposed, spec rows
  only, no slope optimisation); the candidate whose worse child bound is best wins;
- ``"deepsplit"``: a neuron's impact on the worst row's bound, direct and through
  the relaxations of the later layers' unstable neurons (:func:`deepsplit_scores`;
  after DeepSplit, Henriksen and Lomuscio, IJCAI 2021).

:class:`ReluSplitting` is a mixin of :class:`verify.search.RegionSearch`: it reads the
search's network (``net``), options (``opt``), propagator (``prop``), spec rows
(``C``, ``d``, ``owner``, ``n_conj``), statistics and deadline (``time_left``)."""
from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from .network import Network
from .search_types import Node


def relu_gap(l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The intercept ``-u*l/(u-l)`` of the upper ReLU relaxation of unstable
    neurons (0 elsewhere)."""
    unst = (l < 0) & (u > 0)
    return torch.where(unst, u * -l / torch.where(unst, u - l, torch.ones_like(u)),
                       torch.zeros_like(u))


def gap_score(lam: torch.Tensor, l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """|coefficient| * relaxation gap (a tiny share of the gap alone breaks ties
    among neurons the row does not see)."""
    gap = relu_gap(l, u)
    return lam.abs() * gap + 1e-9 * gap


def babsr_score(lam: torch.Tensor, l: torch.Tensor, u: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
    """BaBSR score of each neuron (0 for stable ones).

    ``lam`` (B, n): a spec row's lower-bound coefficients on the layer's ReLU
    outputs; ``l``/``u`` (B, n) its pre-activation bounds; ``bias`` (n,) the
    pre-activation bias.  With the upper slope ``s = u/(u-l)`` and intercept
    ``t = -s*l``: the intercept term ``min(lam, 0) * t`` (what the relaxation
    costs the bound) plus the larger of the bias share's change in the two
    children, ``lam*b*(s-1)`` (active) and ``lam*b*s`` (inactive); the score is
    its magnitude."""
    unst = (l < 0) & (u > 0)
    s = torch.where(unst, u / torch.where(unst, u - l, torch.ones_like(u)), torch.zeros_like(u))
    intercept = lam.clamp(max=0) * (-s * l)
    lb = lam * bias
    score = (torch.maximum(lb * (s - 1), lb * s) + intercept).abs()
    # ties (e.g. rows that see none of the layer): the relaxation gap decides
    return torch.where(unst, score + 1e-9 * relu_gap(l, u), torch.zeros_like(u))


INDIRECT_SHARE = 0.75  # of a later neuron's impact passed back to the neurons it reads
SHARE_CHUNK = 1 << 22  # (branch, later neuron, neuron) shares formed at once (32 MiB)


def deepsplit_scores(lower, upper, lams, weights, direct=None) -> list[torch.Tensor]:
    """Per hidden layer (B, n_k): each unstable neuron's estimated impact on the worst
    row's lower bound, direct and through the relaxations of the next layer's unstable
    neurons (after DeepSplit, Henriksen and Lomuscio, IJCAI 2021, with the indirect
    effect taken one layer at a time: the next layer reads the neuron through its
    weights, and that layer's impacts already hold what lies beyond it).

    Direct: ``|min(lam, 0)| * t`` with ``t = -u*l/(u-l)`` the upper relaxation's
    intercept.  Indirect, for neuron ``j`` of layer ``k`` and unstable ``s`` of layer
    ``k+1``: the share of ``s``'s lower (upper) bound that ``j``'s intercept makes,
    ``|min(W[s,j], 0) * t_j / l_s|`` (``|max(W[s,j], 0) * t_j / u_s|``), each clipped
    to [0, 1], times ``s``'s impact and :data:`INDIRECT_SHARE`."""
    n = len(lower)
    t = [relu_gap(l, u) for l, u in zip(lower, upper)]
    unst = [(l < 0) & (u > 0) for l, u in zip(lower, upper)]
    impact = [None] * n
    for k in range(n - 1, -1, -1):
        score = lams[k].clamp(max=0).abs() * t[k] if direct is None else direct[k]
        if k + 1 < n:
            score = score + INDIRECT_SHARE * _passed_back(weights[k + 1].to(t[k].dtype), t[k],
                                                          lower[k + 1], upper[k + 1],
                                                          unst[k + 1], impact[k + 1])
        impact[k] = torch.where(unst[k], score + 1e-9 * t[k], torch.zeros_like(score))
    return impact


def _passed_back(W, t, l1, u1, unst1, impact1) -> torch.Tensor:
    """(B, n_k): sum over the next layer's unstable neurons ``s`` of ``s``'s impact times
    the clipped shares of its bounds ``l1``/``u1`` (B, n_{k+1}) that each neuron's
    intercept ``t`` (B, n_k) makes through ``W`` (n_{k+1}, n_k); in chunks of branches
    (the shares are a (branches, n_{k+1}, n_k) tensor)."""
    safe_l = torch.where(unst1, -l1, torch.ones_like(l1)).unsqueeze(2)
    safe_u = torch.where(unst1, u1, torch.ones_like(u1)).unsqueeze(2)
    nxt = torch.where(unst1, impact1, torch.zeros_like(impact1))
    w_neg, w_pos = W.clamp(max=0).abs(), W.clamp(min=0)
    step = max(1, SHARE_CHUNK // max(1, W.numel()))
    out = []
    for a in range(0, t.shape[0], step):
        tj = t[a:a + step].unsqueeze(1)  # (b, 1, n_k)
        rel = (w_neg * tj / safe_l[a:a + step]).clamp(max=1.0) + \
            (w_pos * tj / safe_u[a:a + step]).clamp(max=1.0)
        out.append(torch.einsum("bs,bsj->bj", nxt[a:a + step], rel))
    return torch.cat(out)


class ReluSplitting:
    """The ReLU-splitting half of :class:`verify.search.RegionSearch`."""

    LOOKAHEAD_CHUNK = 512  # look-ahead branches bounded at once (deadline checked between)

    def _split_relus(self, batch, res, to_split, spec_lower, refuted) -> list:
        """Children ``[active, inactive]`` of each branch ``(i, layer bounds)`` in
        ``to_split`` (None for a branch without an unstable ReLU)."""
        if not to_split:
            return []
        idx = np.array([i for i, _ in to_split])
        worst = np.array([self._worst_row(spec_lower[i], refuted[i]) for i in idx])
        heuristic = self.opt.relu_branching.heuristic
        if not isinstance(self.net, Network) and heuristic != "deepsplit":
            heuristic = "gap"  # graph networks: no per-layer biases for BaBSR's score
        scores = self._relu_scores(res, idx, worst, heuristic if heuristic in ("gap", "deepsplit")
                                   else "babsr")
        flat = torch.cat(scores, 1)  # (b, sum n_k)
        choice = flat.argmax(1).numpy()
        has = (flat.max(1).values > 0).numpy()
        if heuristic == "fsb" and has.any() and self.time_left() > 0:
            rows = np.flatnonzero(has)
            cand = self._fsb_candidates(flat[rows], self._relu_scores(res, idx[rows], worst[rows], "gap"))
            best = self._lookahead(batch, res, idx[rows], cand, refuted[idx[rows]])
            if best is not None:
                choice[rows] = cand[np.arange(len(rows)), best]
        offsets = np.cumsum([0] + list(self.net.hidden_sizes))
        out = []
        for b, (i, layer_b) in enumerate(to_split):
            if not has[b]:
                out.append(None)
                continue
            k = int(np.searchsorted(offsets, choice[b], side="right") - 1)
            out.append(self._children(batch[i], layer_b, k, int(choice[b] - offsets[k])))
        return out

    def _relu_scores(self, res, idx, worst, kind: str) -> list[torch.Tensor]:
        """Per hidden layer (b, n_k): each branch's score of its neurons for its worst row."""
        sel, rows = torch.from_numpy(idx), torch.from_numpy(worst)
        layers = range(self.prop.n_hidden)
        lower, upper = [res.lower[k][sel] for k in layers], [res.upper[k][sel] for k in layers]
        lams = [res.layer_coeffs[k][sel, rows] for k in layers]
        if kind == "gap":
            return [gap_score(lam, l, u) for lam, l, u in zip(lams, lower, upper)]
        if not isinstance(self.net, Network):  # graph deepsplit: the intercept as direct term
            return self._graph_impact.scores(lower, upper, lams)
        if kind == "deepsplit" and self.opt.relu_branching.deepsplit_direct == "intercept":
            return deepsplit_scores(lower, upper, lams, self.prop.weights)
        babsr = [babsr_score(lam, l, u, self.prop.biases[k])
                 for k, (lam, l, u) in enumerate(zip(lams, lower, upper))]
        if kind == "deepsplit":  # BaBSR's score as the direct impact
            return deepsplit_scores(lower, upper, lams, self.prop.weights, babsr)
        return babsr

    @cached_property
    def _graph_impact(self):
        from .graphbounds.impact import GraphImpact  # (it imports this module)
        return GraphImpact(self.net)

    def _fsb_candidates(self, babsr: torch.Tensor, gap: list[torch.Tensor]) -> np.ndarray:
        """(b, c) flat neuron indices: the top ``fsb_candidates`` by BaBSR and the best
        by gap (repeated entries where a branch has fewer unstable neurons)."""
        k = min(self.opt.relu_branching.fsb_candidates, babsr.shape[1])
        vals, top = babsr.topk(k, dim=1)
        top = torch.where(vals > 0, top, top[:, :1])  # only unstable neurons
        by_gap = torch.cat(gap, 1).argmax(1, keepdim=True)
        return torch.cat([top, by_gap], 1).numpy()

    def _lookahead(self, batch, res, idx, cand, refuted) -> np.ndarray | None:
        """Per branch, the column of ``cand`` whose worse child bound is best (ties: the
        better sum), or None when out of time."""
        b, c = cand.shape
        bounds = self._lookahead_bounds(batch, res, idx, cand)
        if bounds is None:
            return None
        spec, infeasible = bounds
        child = self._child_margin(spec, np.repeat(refuted, 2 * c, axis=0))
        child = np.minimum(np.where(infeasible, np.inf, child), 1e30).reshape(b, c, 2)
        worse, both = child.min(2), child.sum(2)
        return np.array([np.lexsort((-both[q], -worse[q]))[0] for q in range(b)])

    def _lookahead_bounds(self, batch, res, idx, cand):
        """Spec-row lower bounds (N, m) and infeasibility (N,) of the children of
        splitting, in branch ``idx[q]`` (row of ``res``), each flat neuron ``cand[q]``:
        rows in the order (branch, candidate, active / inactive), all bounded in one
        batched call (chunked; None when out of time).  "spec": the parent's
        intermediate bounds with the phase imposed (sound: a child's pre-activations
        lie within its parent's bounds); "layers": the layers after the split
        back-substituted again from those.  Alpha steps start from the parent's slopes."""
        c = cand.shape[1]
        offsets = np.cumsum([0] + list(self.net.hidden_sizes))
        layer = (np.searchsorted(offsets, cand, side="right") - 1).ravel()  # (b*c,)
        neuron = cand.ravel() - offsets[layer]
        parent = np.repeat(idx, 2 * c)
        sel = torch.from_numpy(parent)
        fixed = [(l[sel], u[sel]) for l, u in zip(res.lower, res.upper)]
        phase = [torch.zeros(l.shape, dtype=torch.int8) for l, _ in fixed]  # the new split only
        for k in range(self.prop.n_hidden):
            at = np.flatnonzero(layer == k)
            if len(at):
                r, j = torch.from_numpy(2 * at), torch.from_numpy(neuron[at])
                phase[k][r, j], phase[k][r + 1, j] = 1, -1  # active: z >= 0; inactive: z <= 0
        lower = [torch.where(p > 0, l.clamp(min=0.0), l) for p, (l, _) in zip(phase, fixed)]
        upper = [torch.where(p < 0, u.clamp(max=0.0), u) for p, (_, u) in zip(phase, fixed)]
        lo = torch.from_numpy(np.stack([batch[i].lo for i in parent]))
        hi = torch.from_numpy(np.stack([batch[i].hi for i in parent]))
        spec, infeasible = [], []
        alpha_init = lambda s, e: None if res.alphas is None else [a[sel[s:e]] for a in res.alphas]
        for s in range(0, len(parent), self.LOOKAHEAD_CHUNK):  # deadline checked per chunk
            if self.time_left() <= 0:
                return None
            e = min(len(parent), s + self.LOOKAHEAD_CHUNK)
            if self.opt.relu_branching.lookahead == "layers":  # the parent's bounds and the
                # phase: bound() back-substitutes the layers after the new split
                r = self.prop.bound(lo[s:e], hi[s:e], self.C, self.d, [p[s:e] for p in phase],
                                    [(l[s:e], u[s:e]) for l, u in fixed], refine=self._refine_all(),
                                    alpha_iterations=self.opt.relu_branching.lookahead_alpha_iterations,
                                    alpha_init=alpha_init(s, e))
            else:
                r = self.prop.spec_bound(lo[s:e], hi[s:e], self.C, self.d,
                                         [l[s:e] for l in lower], [u[s:e] for u in upper],
                                         self.opt.relu_branching.lookahead_alpha_iterations,
                                         alpha_init=alpha_init(s, e))
            self.stats.bound_evaluations += e - s
            spec.append(r.spec_lower.numpy())
            infeasible.append(r.infeasible.numpy())
        return np.concatenate(spec), np.concatenate(infeasible)

    def _refine_all(self) -> list[torch.Tensor]:
        return [torch.ones(n, dtype=torch.bool) for n in self.net.hidden_sizes]

    def _child_margin(self, spec: np.ndarray, refuted: np.ndarray) -> np.ndarray:
        """(N,) the bound of each child's least-refuted open conjunction (+inf when
        its parent refuted them all): ``spec`` (N, m) its rows' bounds, ``refuted``
        (N, n_conj) its parent's refuted conjunctions."""
        per_conj = np.stack([spec[:, self.owner == j].max(axis=1) for j in range(self.n_conj)], 1)
        return np.where(refuted, np.inf, per_conj).min(axis=1)

    def _children(self, node: Node, layer_b, k: int, j: int) -> list[Node]:
        """``node``'s children with neuron ``j`` of layer ``k`` active, and inactive."""
        children = []
        for phase in (1, -1):
            sp = [s.copy() for s in node.splits]
            sp[k][j] = phase
            children.append(Node(node.lo, node.hi, sp, layer_b, node.depth + 1))
        return children

    def _worst_row(self, spec_lower_row: np.ndarray, refuted_row: np.ndarray) -> int:
        """The open conjunction furthest from refuted, and its most promising row."""
        open_conj = np.flatnonzero(~refuted_row)
        best_rows = [self._best_row(spec_lower_row, j) for j in open_conj]
        return best_rows[int(np.argmin([spec_lower_row[r] for r in best_rows]))]

    def _best_row(self, spec_lower_row: np.ndarray, conj: int) -> int:
        rows = np.flatnonzero(self.owner == conj)
        return int(rows[np.argmax(spec_lower_row[rows])])
