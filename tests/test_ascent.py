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
