"""The hand-written Adam of the bound optimisers takes torch.optim.Adam's steps."""
import torch

from verify.ascent import Adam


def _run(make, steps=25):
    torch.manual_seed(0)
    target = torch.randn(3, 4, dtype=torch.float64)
    p = [torch.zeros(3, 4, dtype=torch.float64, requires_grad=True),
         torch.ones(5, dtype=torch.float64, requires_grad=True)]
    opt = make(p)
    for k in range(steps):
        opt.zero_grad()
        loss = ((p[0] - target) ** 4).sum() + (p[1] * k).sin().sum()
        loss.backward()
        opt.step()
    return [x.detach() for x in p]


def test_steps_equal_torch_adam():
    ours = _run(lambda p: Adam(p, lr=0.1))
    ref = _run(lambda p: torch.optim.Adam(p, lr=0.1))
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    # a different learning rate gives different iterates: the comparison can fail
    other = _run(lambda p: Adam(p, lr=0.05))
    assert not torch.allclose(other[0], ref[0])


def test_parameters_without_gradient_are_left_alone():
    a = torch.ones(2, requires_grad=True)
    b = torch.ones(2, requires_grad=True)
    opt = Adam([a, b], lr=0.5)
    opt.zero_grad()
    (a * 3).sum().backward()
    opt.step()
    assert torch.all(a < 1) and torch.equal(b.detach(), torch.ones(2))


def test_a_selected_optimiser_carries_on_as_the_whole_one():
    """Rows taken out of the batch (Adam.select) leave the others' steps unchanged:
    with a loss that sums over rows, the kept rows step exactly as in the whole batch."""
    torch.manual_seed(1)
    target = torch.randn(6, 3, dtype=torch.float64)

    def loss_of(p):
        return ((p - target[:len(p)] if len(p) == 6 else p - target[keep]) ** 4).sum()
    keep = torch.tensor([True, False, True, True, False, True])
    whole = torch.zeros(6, 3, dtype=torch.float64, requires_grad=True)
    opt = Adam([whole], lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        loss_of(whole).backward()
        opt.step()
    (part,), sub = opt.select(keep)
    for _ in range(7):
        for o, p in ((opt, whole), (sub, part)):
            o.zero_grad()
            loss_of(p).backward()
            o.step()
    assert torch.allclose(part.detach(), whole.detach()[keep], rtol=1e-12, atol=1e-12)
    # a fresh optimiser (no moments) steps differently: the comparison can fail
    fresh_part = whole.detach()[keep].clone().requires_grad_(True)
    fresh = Adam([fresh_part], lr=0.1)
    fresh.zero_grad()
    loss_of(fresh_part).backward()
    fresh.step()
    (again,), cont = Adam([whole.detach().clone().requires_grad_(True)], lr=0.1).select(keep)
    assert not torch.allclose(fresh_part.detach(), part.detach())


def test_settled_when_each_conjunction_has_a_refuting_row():
    from verify.ascent import Settled
    # rows 0, 1 belong to conjunction 4, row 2 to conjunction 7 (ids need not be dense)
    rule = Settled([4, 4, 7], torch.tensor([1.0, 0.0, 0.0]))
    cur = torch.tensor([[2.0, -1.0, 0.5],    # row 0 refutes 4, row 2 refutes 7: settled
                        [0.5, -1.0, 0.5],    # row 0 below its d = 1: 4 is open
                        [0.0, 0.3, -0.1],    # 7 open
                        [1.0 + 1e-6, -1.0, 1.0]])  # within the margin of d: open
    assert rule(cur).tolist() == [True, False, False, False]
    assert Settled.worth_dropping(torch.tensor([True, False, False, False]))
    assert not Settled.worth_dropping(torch.tensor([True] + [False] * 4))
