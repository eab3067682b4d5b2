"""Convert between PyTorch modules and :class:`Network` (never unpickles files).

:func:`from_torch` reads the module's leaf layers in registration order
(``nn.Sequential`` nesting is flattened).  For a general ``nn.Module`` this
assumes ``forward`` applies its layers in that order, one after the other; the
assumption is checked by comparing one forward pass against the result.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .errors import UnsupportedNetworkError
from .network import Affine, Network

SUPPORTED_MODULES = ("Linear", "ReLU", "Flatten", "Identity", "Dropout", "Sequential")
_PLAIN = (nn.Sequential, nn.Linear, nn.ReLU, nn.Flatten, nn.Identity, nn.Dropout)
_EXPECTED = "a module built from nn." + ", nn.".join(SUPPORTED_MODULES)


def _leaves(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if not any(True for _ in m.children())]


def _unsupported(message: str) -> UnsupportedNetworkError:
    return UnsupportedNetworkError(message, expected=_EXPECTED)


def _first_in_features(leaves: list[nn.Module]) -> int:
    for m in leaves:
        if isinstance(m, nn.Linear):
            return m.in_features
    raise _unsupported("the module has no nn.Linear layer; pass input_shape")


def _linear(m: nn.Linear) -> Affine:
    w = m.weight.detach().to(torch.float64).cpu().numpy()
    b = (m.bias.detach().to(torch.float64).cpu().numpy() if m.bias is not None
         else np.zeros(m.out_features))
    return Affine(w, b)


def _compose(first: Affine | None, second: Affine) -> Affine:
    if first is None:
        return second
    return Affine(second.weight @ first.weight, second.weight @ first.bias + second.bias)


def _read_layers(leaves: list[nn.Module], shape: tuple[int, ...]) -> list[Affine]:
    """Canonical affine layers of the leaf sequence applied to one input of ``shape``."""
    layers: list[Affine] = []
    current: Affine | None = None  # pending affine map since the last ReLU
    for m in leaves:
        n = int(np.prod(shape))
        if isinstance(m, nn.Linear):
            if shape[-1] != m.in_features or n != m.in_features:
                raise _unsupported(f"nn.Linear({m.in_features}, {m.out_features}) applied to a "
                                   f"tensor of shape {shape} (only flat vectors are supported)")
            current = _compose(current, _linear(m))
            shape = shape[:-1] + (m.out_features,)
        elif isinstance(m, nn.ReLU):
            if current is not None or not layers:
                layers.append(current or Affine(np.eye(n), np.zeros(n)))
            current = None  # ReLU right after ReLU is a no-op
        elif isinstance(m, nn.Flatten):
            try:
                shape = tuple(torch.empty(shape, device="meta").flatten(m.start_dim,
                                                                        m.end_dim).shape)
            except (IndexError, RuntimeError) as exc:
                raise _unsupported(f"nn.Flatten does not fit shape {shape}: {exc}") from None
        elif not isinstance(m, (nn.Identity, nn.Dropout)):
            raise _unsupported(f"unsupported module {type(m).__name__}")
    n = int(np.prod(shape))
    return layers + [current or Affine(np.eye(n), np.zeros(n))]


def _check_forward(module: nn.Module, network: Network, shape: tuple[int, ...]) -> None:
    """Compare one forward pass of ``module`` with ``network`` (eval mode)."""
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = np.random.default_rng(0).uniform(-1.0, 1.0, network.n_inputs)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            got = module(torch.tensor(x.reshape(shape), dtype=dtype)).double().cpu().numpy()
    except Exception as exc:  # any failure means the structure is not what we read
        raise _unsupported(f"{type(module).__name__}.forward failed on an input of shape "
                           f"{shape} ({type(exc).__name__}: {exc})") from None
    finally:
        module.train(was_training)
    want = network.forward(x)
    tol = 1e-4 * (1.0 + np.abs(want).max())
    if got.size != want.size or np.abs(got.reshape(-1) - want).max() > tol:
        raise _unsupported(f"{type(module).__name__}.forward does not apply its layers in "
                           "registration order")


def from_torch(module: nn.Module, input_shape: tuple[int, ...] | None = None) -> Network:
    """Read a feed-forward ReLU network from a PyTorch module.

    ``input_shape`` is the shape of one input as given to the module (batch
    dimension included if the module expects one); by default the flat input of
    the first ``nn.Linear``.
    """
    if not isinstance(module, nn.Module):
        raise _unsupported(f"{type(module).__name__} is not a torch.nn.Module")
    from .loading import check_parameters
    for pname, param in module.named_parameters():
        check_parameters(f"parameter '{pname}'", param.detach().to(torch.float64).cpu().numpy())
    leaves = _leaves(module)
    for m in leaves:
        if not isinstance(m, _PLAIN):
            raise _unsupported(f"unsupported module {type(m).__name__}")
    if input_shape is None:
        shape: tuple[int, ...] = (1, _first_in_features(leaves))
        net_shape: tuple[int, ...] = shape[1:]
    else:
        shape = net_shape = tuple(int(s) for s in input_shape)
    network = Network(tuple(_read_layers(leaves, shape)), net_shape,
                      type(module).__name__.lower())
    if not all(isinstance(m, _PLAIN) for m in module.modules()):
        _check_forward(module, network, shape)  # forward order is only assumed here
    return network


def to_torch(network: Network) -> nn.Sequential:
    """A float64 ``nn.Sequential`` of Linear/ReLU on flat inputs ``(batch, n_inputs)``.

    Quantization information (``weight_int``/``weight_scale``) is not kept.
    """
    layers: list[nn.Module] = []
    for k, a in enumerate(network.affines):
        lin = nn.Linear(a.in_size, a.out_size, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.array(a.weight)))
            lin.bias.copy_(torch.from_numpy(np.array(a.bias)))
        layers.append(lin)
        if k < network.n_layers - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)
