"""alpha/beta-CROWN steps that stop once a branch is refuted (verify.ascent.Settled):
the bounds still contain sampled outputs, every branch the full steps refute is refuted
too, and the branches left stepping get the same bound as without the stop."""
import numpy as np
import torch

from verify.bounds import BoundPropagator
from verify.network import Affine, Network

torch.set_num_threads(1)


def _chain(seed: int) -> Network:
    rng = np.random.default_rng(seed)
    sizes = [6, 32, 32, 32, 4]
    return Network(tuple(Affine(rng.normal(size=(o, i)) / np.sqrt(i), rng.normal(size=o) * 0.1)
                         for i, o in zip(sizes, sizes[1:])))


def _boxes(net, seed, n=48):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n, net.n_inputs))
    eps = rng.uniform(0.05, 2.0, size=(n, 1))
    return c - eps, c + eps


def _spec(net, lo, hi):
    """Two conjunctions of two rows each, each row's threshold the median of its plain
    CROWN bounds, so that some branches are refuted by CROWN, some only by the alpha
    steps, some never."""
    C = torch.tensor([[1.0, -1.0, 0, 0], [0, 0, 1.0, 0], [0, 1.0, 0, -1.0], [-1.0, 0, 0, 0]],
                     dtype=torch.float64)
    plain = BoundPropagator(net).bound(torch.tensor(lo), torch.tensor(hi), C, torch.zeros(4))
    return C, torch.tensor(np.median(plain.spec_lower.numpy(), axis=0)), np.array([0, 0, 1, 1])


def test_early_stopped_bounds_contain_samples_and_refute_what_full_steps_refute():
    net = _chain(3)
    prop = BoundPropagator(net)
    lo, hi = _boxes(net, 4)
    C, d, owner = _spec(net, lo, hi)
    L, H = torch.tensor(lo), torch.tensor(hi)
    full = prop.bound(L, H, C, d, alpha_iterations=20)
    early = prop.bound(L, H, C, d, alpha_iterations=20, conjunctions=owner)
    plain = prop.bound(L, H, C, d)

    def refuted(res):
        pos = res.spec_lower.numpy() > 0
        return pos[:, owner == 0].any(1) & pos[:, owner == 1].any(1)
    r_full, r_early, r_plain = refuted(full), refuted(early), refuted(plain)
    # a mix: some refuted by plain CROWN, some only by the steps, some never
    assert r_plain.sum() < r_full.sum() < len(lo)
    assert (r_early >= r_full).all()
    # the branches not refuted stepped all the way: the same bound as without the stop
    open_ = ~r_full
    np.testing.assert_allclose(early.spec_lower.numpy()[open_], full.spec_lower.numpy()[open_],
                               rtol=1e-6, atol=1e-6)
    assert early.alphas is not None and all(a.shape[0] == len(lo) for a in early.alphas)
    # sound: sampled outputs of every box satisfy the rows' lower bounds
    rng = np.random.default_rng(5)
    for i in range(len(lo)):
        xs = rng.uniform(lo[i], hi[i], size=(400, net.n_inputs))
        vals = net.forward(xs) @ C.numpy().T - d.numpy()
        assert (vals >= early.spec_lower.numpy()[i] - 1e-9).all()
    # the linear bound kept with it holds on the samples too
    for i in range(len(lo)):
        xs = rng.uniform(lo[i], hi[i], size=(200, net.n_inputs))
        lin = xs @ early.spec_coeffs.numpy()[i].T + early.spec_const.numpy()[i]
        vals = net.forward(xs) @ C.numpy().T - d.numpy()
        assert (vals >= lin - 1e-9).all()


def test_branches_the_steps_refute_keep_their_bound_when_taken_out_of_the_batch():
    """Copies of the boxes that only the alpha steps refute settle at the same step, so
    they leave the batch together (the bookkeeping of a drop is exercised): they stay
    refuted, and the boxes never refuted keep stepping to the same bound."""
    net = _chain(3)
    prop = BoundPropagator(net)
    lo, hi = _boxes(net, 4)
    C, d, owner = _spec(net, lo, hi)

    def refuted(res):
        pos = res.spec_lower.numpy() > 0
        return pos[:, owner == 0].any(1) & pos[:, owner == 1].any(1)
    L, H = torch.tensor(lo), torch.tensor(hi)
    by_steps = refuted(prop.bound(L, H, C, d, alpha_iterations=20)) & ~refuted(prop.bound(L, H, C, d))
    never = ~refuted(prop.bound(L, H, C, d, alpha_iterations=20))
    assert by_steps.sum() >= 3 and never.sum() >= 3
    pick = np.concatenate([np.repeat(np.flatnonzero(by_steps), 4), np.flatnonzero(never)[:3]])
    L, H = L[pick], H[pick]
    full = prop.bound(L, H, C, d, alpha_iterations=20)
    early = prop.bound(L, H, C, d, alpha_iterations=20, conjunctions=owner)
    assert refuted(full)[:-3].all() and refuted(early)[:-3].all()
    np.testing.assert_allclose(early.spec_lower.numpy()[-3:], full.spec_lower.numpy()[-3:],
                               rtol=1e-6, atol=1e-6)


def test_a_branch_settles_on_the_bound_it_returns():
    """A branch stops on the bound of the iterate it keeps, which is not always the last
    one (the kept iterate is the best in total over the rows; here one branch's last
    step refuted it while its kept iterate did not, and it must step on)."""
    net = _chain(3)
    prop = BoundPropagator(net)
    rng = np.random.default_rng(4)
    c = rng.normal(size=(48, net.n_inputs))
    eps = rng.uniform(0.05, 1.0, size=(48, 1))
    L, H = torch.tensor(c - eps), torch.tensor(c + eps)
    C, _, owner = _spec(net, c - eps, c + eps)
    y = net.forward(c)
    d = torch.tensor(np.median(y @ C.numpy().T, axis=0) - 0.5)

    def refuted(res):
        pos = res.spec_lower.numpy() > 0
        return pos[:, owner == 0].any(1) & pos[:, owner == 1].any(1)
    full = refuted(prop.bound(L, H, C, d, alpha_iterations=20))
    early = refuted(prop.bound(L, H, C, d, alpha_iterations=20, conjunctions=owner))
    assert full.sum() > refuted(prop.bound(L, H, C, d)).sum()
    assert (early >= full).all()
