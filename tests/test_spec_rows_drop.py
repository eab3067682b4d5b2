"""Branch and bound bounds only the spec rows of conjunctions that a branch's parent
left unrefuted (``VerifyOptions.drop_refuted_rows``): the dropped rows keep their
parents' lower bounds, verdicts still equal an exact (MILP) verdict, and a search that
drops a row its parent did NOT refute is caught by the same check."""
import numpy as np
import pytest
import torch

from verify.bounds import BatchBounds
from verify.options import ReluBranchOptions, VerifyOptions
from verify.properties import local_robustness
from verify.search import RegionSearch
from verify.spec_rows import refuted_conjunctions
from verify.verifier import verify_property

from test_relu_branching import _exact_holds

BALLS = ((9, 0.08), (15, 0.06), (17, 0.08))  # root bound open: two hold, one violated


def _options(drop: bool) -> VerifyOptions:
    # no attack and no Z3: branch and bound alone decides
    return VerifyOptions(timeout=60, input_split_max=0, use_z3=False, attack_max_s=0.0,
                         random_samples=0, attack_far_share=0.0, attack_search_share=0.0,
                         relu_branching=ReluBranchOptions("babsr"), drop_refuted_rows=drop)


def test_expanded_rows_keep_the_known_bounds_and_the_bounded_ones():
    B, m, n = 3, 4, 5
    keep = torch.tensor([True, False, True, False])
    known = torch.tensor([[9.0, 0.5, 9.0, -0.25]] * B, dtype=torch.float64)
    sub = BatchBounds([torch.zeros(B, 2)], [torch.ones(B, 2)], -torch.ones(B, 2, dtype=torch.float64),
                      torch.randn(B, 2, n, dtype=torch.float64), torch.zeros(B, dtype=torch.bool),
                      [torch.randn(B, 2, 2)], -torch.ones(B, 2, dtype=torch.float64),
                      torch.randn(B, 2, n))
    full = sub.expand_rows(keep, known)
    assert full.spec_lower.shape == (B, m) and full.spec_coeffs.shape == (B, m, n)
    assert torch.equal(full.spec_lower[:, keep], sub.spec_lower)
    assert torch.equal(full.spec_coeffs[:, keep], sub.spec_coeffs)
    assert torch.equal(full.spec_lower[:, ~keep], known[:, ~keep])
    assert torch.equal(full.spec_const[:, ~keep], known[:, ~keep])  # a constant linear bound
    assert (full.spec_coeffs[:, ~keep] == 0).all() and (full.layer_coeffs[0][:, ~keep] == 0).all()
    lo, hi = np.zeros((B, n)), np.ones((B, n))
    refuted = refuted_conjunctions(full, np.arange(m), m, lo, hi)
    assert refuted[:, 1].all() and not refuted[:, [0, 2, 3]].any()


def test_dropping_refuted_rows_keeps_exact_verdicts(digits_mlp, monkeypatch):
    net, X, y = digits_mlp
    dropped = []
    real = RegionSearch._open_rows

    def counted(self, batch):
        rows = real(self, batch)
        dropped.append(0 if rows is None else int((~rows[0]).sum()))
        return rows

    monkeypatch.setattr(RegionSearch, "_open_rows", counted)
    for idx, eps in BALLS:
        prop = local_robustness(X[idx], eps, int(y[idx]), 10)
        truth = _exact_holds(net, prop.regions[0])
        assert truth is not None
        for drop in (True, False):
            res = verify_property(net, prop, _options(drop))
            assert res.status.value == ("holds" if truth else "violated"), (idx, eps, drop)
            assert res.statistics.branches > 0
    assert sum(dropped) > 0  # rows were in fact dropped on these searches


def test_a_search_dropping_unrefuted_rows_is_caught(digits_mlp, monkeypatch):
    """Mutation: the batch drops every row but the first open one (as if the parent
    had refuted the others): the violated ball is then wrongly proved, which the
    exact verdict catches."""
    net, X, y = digits_mlp
    real = RegionSearch._open_rows

    def too_many(self, batch):
        rows = real(self, batch)
        keep = np.ones(len(self.owner), dtype=bool) if rows is None else rows[0]
        out = np.zeros_like(keep)
        out[np.flatnonzero(keep)[:1]] = True
        # the dropped rows claim a positive bound, as a refuted single-row conjunction's
        return out, np.full((len(batch), len(self.owner)), 1.0)

    monkeypatch.setattr(RegionSearch, "_open_rows", too_many)
    wrong = 0
    for idx, eps in BALLS:
        prop = local_robustness(X[idx], eps, int(y[idx]), 10)
        truth = _exact_holds(net, prop.regions[0])
        res = verify_property(net, prop, _options(True))
        wrong += res.status.value == ("violated" if truth else "holds")
    assert wrong > 0


def test_a_recorded_proofs_leaves_keep_sound_bounds_of_dropped_rows(digits_mlp, monkeypatch):
    """Recording a proof drops rows too: every leaf's spec lower bounds (the dropped rows
    hold their parents') lie below the original's spec values at sampled points of the
    leaf's domain (its box with its phase facts)."""
    import time

    from verify.constraint_names import split_arrays
    from verify.result import Statistics
    from verify.spec_rows import region_rows

    net, X, y = digits_mlp
    dropped = []
    real = RegionSearch._open_rows
    monkeypatch.setattr(RegionSearch, "_open_rows", lambda self, batch: dropped.append(
        real(self, batch)) or dropped[-1])
    idx, eps = BALLS[0]
    region = local_robustness(X[idx], eps, int(y[idx]), 10).regions[0]
    search = RegionSearch(net, region, 0, _options(True), time.monotonic() + 60, Statistics(),
                          record=True)
    assert search.run().status.value == "holds"
    assert any(r is not None and not r[0].all() for r in dropped)
    rng = np.random.default_rng(0)
    xs = rng.uniform(region.lower, region.upper, size=(20000, len(region.lower)))
    pre = net.pre_activations(xs)
    C, d, _ = region_rows(region, net.n_outputs)
    values = net.forward(xs) @ C.numpy().T - d.numpy()
    checked = 0
    for leaf in search.leaves:
        inside = np.ones(len(xs), dtype=bool)
        for k, ph in enumerate(split_arrays(leaf.splits, net.hidden_sizes)):
            for i in np.flatnonzero(ph):
                inside &= (pre[k][:, i] >= 0) if ph[i] > 0 else (pre[k][:, i] <= 0)
        if leaf.spec_lower is None or not inside.any():
            continue
        assert (values[inside] >= leaf.spec_lower - 1e-9).all(), leaf.splits
        checked += 1
    assert checked >= 2


def _recorded_unrefuted(search) -> int:
    """The bounds-closed leaves whose recorded spec lower bounds do not refute every
    conjunction (a variant's differential tiers could not close them from the record)."""
    from verify.spec_rows import rows_refute_all
    return sum(1 for leaf in search.leaves if leaf.method == "bounds" and
               not rows_refute_all(leaf.spec_lower[None], search.owner, search.n_conj)[0])


@pytest.mark.parametrize("keep_ancestors", [True, False])
def test_a_recorded_leaf_keeps_its_ancestors_refutations(digits_mlp, monkeypatch, keep_ancestors):
    """A branch's own bound of a row can be looser than an ancestor's (here forced: every
    dropped row gets its parent's bound minus 1, still a sound lower bound).  The leaf is
    closed by the conjunctions its ancestors refuted, and its recorded spec lower bounds
    must say so (each row at least its ancestors' best, ``verify.search.path_lower``):
    the proof's variants close it from the record.  Mutation (``keep_ancestors`` False:
    the leaf's own bounds recorded): some leaf is recorded unrefuted."""
    import time

    import verify.search as search_module
    from verify.result import Statistics

    net, X, y = digits_mlp
    real = BatchBounds.expand_rows
    monkeypatch.setattr(BatchBounds, "expand_rows",
                        lambda self, keep, known: real(self, keep, known - 1.0))
    if not keep_ancestors:
        monkeypatch.setattr(search_module, "path_lower", lambda own, ancestors: own)
    idx, eps = BALLS[0]
    region = local_robustness(X[idx], eps, int(y[idx]), 10).regions[0]
    search = RegionSearch(net, region, 0, _options(True), time.monotonic() + 60, Statistics(),
                          record=True)
    assert search.run().status.value == "holds"
    assert len(search.leaves) > 1
    if keep_ancestors:
        assert _recorded_unrefuted(search) == 0
    else:
        assert _recorded_unrefuted(search) > 0
