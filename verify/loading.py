"""One entry point for every network source: :func:`load_network`."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import InputError
from .network import Network

FORMATS = {".onnx": "ONNX", ".nnet": "NNet, the ACAS Xu text format"}


def _is_torch_module(source) -> bool:
    torch = sys.modules.get("torch")  # a module object implies torch is imported already
    return torch is not None and isinstance(source, torch.nn.Module)


def load_network(source) -> Network:
    """A :class:`Network` from a Network, a ``torch.nn.Module`` or a ``.onnx``/``.nnet`` path."""
    if isinstance(source, Network):
        return source
    if _is_torch_module(source):
        from .torch_io import from_torch
        return from_torch(source)
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"cannot load a network from a {type(source).__name__}",
                         expected="a Network, a torch.nn.Module or a file path")
    path = Path(source)
    if not path.exists():
        raise InputError("no such file", path=str(path))
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from .onnx_io import load_onnx
        return load_onnx(path)
    if suffix == ".nnet":
        from .nnet_io import load_nnet
        return load_nnet(path)
    listed = ", ".join(f"{k} ({v})" for k, v in FORMATS.items())
    raise InputError(f"unknown network format {suffix or '(no suffix)'!r}", path=str(path),
                     expected=f"one of {listed}")
