"""One entry point for every network source: :func:`load_network`.

ONNX files may be gzipped (``.onnx.gz``, as VNN-COMP ships them); :func:`read_onnx_model`
reads both forms for every ONNX loader.  Nothing is ever unpickled.
"""
from __future__ import annotations

import gzip
import os
import sys
import zlib
from pathlib import Path

from .errors import InputError
from .graph import GraphNetwork
from .network import Network

_GZIP_MAGIC = b"\x1f\x8b"
#: largest parameter magnitude accepted: beyond it float64 bounds overflow to
#: inf/NaN over a few layers and the Z3 encoder's rounding overflows
MAX_PARAMETER = 1e30


def check_parameters(what: str, values, path=None) -> None:
    """InputError naming ``what`` (a tensor, layer or parameter) unless every
    value is finite with magnitude at most :data:`MAX_PARAMETER`."""
    import numpy as np
    a = np.asarray(values)
    if a.dtype.kind not in "fc" or a.size == 0:
        return
    if not np.all(np.isfinite(a)):
        raise InputError(f"{what} holds NaN or Inf", path=None if path is None else str(path),
                         expected="finite parameters")
    big = float(np.max(np.abs(a)))
    if big > MAX_PARAMETER:
        raise InputError(f"{what} holds a value of magnitude {big:.3g}, too large for sound "
                         "bounds and the Z3 encoder", path=None if path is None else str(path),
                         expected=f"parameters of magnitude <= {MAX_PARAMETER:g}")


def tensor_array(tensor, path=None):
    """The numpy value of an ONNX ``TensorProto`` (InputError naming it when the
    file's tensor is malformed: an unknown data type, a wrong byte count, ...)."""
    from .onnx_proto import tensor_to_array
    try:
        return tensor_to_array(tensor)
    except Exception as exc:  # noqa: BLE001 - onnx raises assorted errors on garbage
        raise InputError(f"tensor '{tensor.name}' cannot be read ({type(exc).__name__}: {exc})",
                         path=None if path is None else str(path),
                         expected="a well-formed ONNX tensor") from None


def check_network_values(network, path=None) -> None:
    """:func:`check_parameters` on every layer of a fully-connected network (a
    composition of in-range layers can still overflow)."""
    for k, a in enumerate(getattr(network, "affines", ())):
        check_parameters(f"layer {k} weight", a.weight, path)
        check_parameters(f"layer {k} bias", a.bias, path)
FORMATS = {".onnx": "ONNX", ".onnx.gz": "gzipped ONNX", ".nnet": "NNet, the ACAS Xu text format"}


def _is_torch_module(source) -> bool:
    torch = sys.modules.get("torch")  # a module object implies torch is imported already
    return torch is not None and isinstance(source, torch.nn.Module)


def _format(path: Path) -> str:
    """The format suffix of ``path``: ``.onnx``, ``.onnx.gz``, ``.nnet``, ... (lower case)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".gz"] and len(suffixes) > 1:
        return "".join(suffixes[-2:])
    return path.suffix.lower()


def network_name(path) -> str:
    """The file name without its format suffix (``net.onnx.gz`` -> ``net``)."""
    path = Path(path)
    name = path.name
    fmt = _format(path)
    return name[:-len(fmt)] if fmt and name.lower().endswith(fmt) else path.stem


def read_onnx_model(path):
    """The ``ModelProto`` of an ``.onnx`` or ``.onnx.gz`` file (InputError if unreadable)."""
    from .onnx_proto import has_external_data, model_from_bytes
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path=str(path))
    if not path.is_file():
        raise InputError("not a regular file", path=str(path), expected="an ONNX file")
    try:
        data = path.read_bytes()
        if data[:2] == _GZIP_MAGIC or path.suffix.lower() == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"cannot read: {exc}", path=str(path),
                         expected="an ONNX file, or a gzipped one") from None
    try:
        model = model_from_bytes(data)
        if has_external_data(model):
            from onnx.external_data_helper import load_external_data_for_model
            load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # protobuf raises assorted errors on garbage
        raise InputError(f"not a valid ONNX model ({type(exc).__name__})", path=str(path),
                         expected="an ONNX ModelProto file") from None
    if not model.graph.node or not model.graph.output:
        raise InputError("not a valid ONNX model (empty graph)", path=str(path),
                         expected="an ONNX ModelProto file")
    return model


def load_network(source) -> Network | GraphNetwork:
    """A network from a Network / GraphNetwork, a ``compress.Variant`` (what ``compress``
    returns), a ``torch.nn.Module`` or a path to an
    ``.onnx`` / ``.onnx.gz`` / ``.nnet`` file.  ONNX files give a fully-connected
    :class:`Network` when they are a chain of affine maps and ReLUs, else a
    :class:`GraphNetwork` (see :func:`verify.onnx_io.load_onnx`)."""
    if isinstance(source, (Network, GraphNetwork)):
        check_network_values(source)
        return source
    inner = getattr(source, "network", None)  # a compress.Variant: its network (the record
    if isinstance(inner, (Network, GraphNetwork)) and hasattr(source, "record"):  # rides along)
        return inner
    if _is_torch_module(source):
        from .torch_io import from_torch
        return from_torch(source)
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"cannot load a network from a {type(source).__name__}",
                         expected="a Network, a compress.Variant, a torch.nn.Module or a file path")
    path = Path(source)
    if not path.exists():
        raise InputError("no such file", path=str(path))
    fmt = _format(path)
    if fmt in (".onnx", ".onnx.gz"):
        from .onnx_io import load_onnx
        network = load_onnx(path)
    elif fmt == ".nnet":
        from .nnet_io import load_nnet
        network = load_nnet(path)
    else:
        network = None
    if network is not None:
        check_network_values(network, path)
        return network
    listed = ", ".join(f"{k} ({v})" for k, v in FORMATS.items())
    raise InputError(f"unknown network format {fmt or '(no suffix)'!r}", path=str(path),
                     expected=f"one of {listed}")
