"""Saving and loading variants: ``STEM.onnx`` next to ``STEM.changes.json``."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from verify.errors import InputError, OptionError
from verify.network import Network

from .core import Variant
from .record import ChangeRecord

ONNX_SUFFIX = ".onnx"
RECORD_SUFFIX = ".changes.json"


def variant_paths(out_dir, stem: str) -> tuple[Path, Path]:
    out = Path(out_dir)
    return out / f"{stem}{ONNX_SUFFIX}", out / f"{stem}{RECORD_SUFFIX}"


def deployable_model(network: Network, like=None, factors=None):
    """The ONNX ``ModelProto`` of a variant, as a drop-in replacement for its original.

    Written in float32 (quantized layers as int8 -- or int32 for wider codes -- QDQ
    weights with float32 scales) with ``like``'s input and output names, shapes and element
    type when given (a path or ModelProto of the original).  The file must read back as
    exactly ``network`` (same digest), because that is the network coreproof verifies;
    a factorised layer (``factors``: layer -> :class:`compress.factorize.Factor`) is
    written as its two thin factors, which the loader composes back into ``network``;
    when some parameter is not a float32 number (a parent read from a float64 ``.nnet``,
    say) the model is written in float64 instead, still behind the original's signature,
    and a warning says so.  Returns ``(model, dtype_name)``."""
    from onnx import helper

    from .factorize import factored_graph

    from verify.graph.onnx_write import graph_to_onnx
    from verify.onnx_io import load_onnx_model, quantization_metadata
    graph = factored_graph(network, factors or {})
    for dtype in (np.float32, np.float64):
        model = graph_to_onnx(graph, like=like, dtype=dtype)
        helper.set_model_props(model, quantization_metadata(network))
        back = load_onnx_model(model, network.name)
        if back.digest() == network.digest() and _same_integers(back, network):
            if dtype is np.float64:
                warnings.warn(f"{network.name}: some parameters are not float32 numbers; "
                              "the variant is written in float64 (exact, not compact)",
                              stacklevel=3)
            return model, np.dtype(dtype).name
    raise OptionError(f"{network.name}: the written ONNX model does not read back as the "
                      "variant (internal error)")


def _same_integers(a: Network, b: Network) -> bool:
    return all((x.weight_int is None) == (y.weight_int is None) and
               (x.weight_int is None or np.array_equal(x.weight_int, y.weight_int))
               for x, y in zip(a.affines, b.affines))


def save_variant(network: Network, record: ChangeRecord, out_dir, stem: str, *, like=None,
                 factors=None) -> tuple[Path, Path]:
    """Write ``OUT_DIR/STEM.onnx`` (:func:`deployable_model`: float32, QDQ weights, the
    original's signature when ``like`` names it) and ``OUT_DIR/STEM.changes.json``;
    returns both paths.  Each file is written to a temporary name and renamed, so a
    failure never leaves a partial artifact."""
    if not stem or re.search(r"[/\\]", stem) or stem in (".", ".."):
        raise OptionError(f"invalid file stem {stem!r}")
    if record.variant_digest != network.digest():
        raise OptionError("the change record does not describe this network "
                          "(variant digest differs)")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output directory: {exc.strerror or exc}",
                         path=str(out)) from None
    onnx_path, record_path = variant_paths(out, stem)
    model, _ = deployable_model(network, like, factors)
    from verify.atomic import atomic_path
    # both files are written to temporary names first; then the record is renamed
    # into place, then the network: no .onnx ever appears without its record
    # (a record without its .onnx fails to load, loudly), and a failure leaves neither
    try:
        with atomic_path(onnx_path) as onnx_tmp, atomic_path(record_path) as record_tmp:
            onnx_tmp.write_bytes(model.SerializeToString())
            record.save(record_tmp)
    except OSError as exc:
        raise InputError(f"cannot write: {exc.strerror or exc}", path=str(out)) from None
    return onnx_path, record_path


def _stem_of(path: Path) -> tuple[Path, str]:
    name = path.name
    for suffix in (RECORD_SUFFIX, ONNX_SUFFIX):
        if name.endswith(suffix):
            return path.parent, name[: -len(suffix)]
    return path.parent, name


def load_variant(path) -> Variant:
    """Load a saved variant from ``STEM.onnx``, ``STEM.changes.json`` or ``STEM``.

    The network is checked against the record's variant digest."""
    from verify.onnx_io import load_onnx
    folder, stem = _stem_of(Path(path))
    onnx_path, record_path = variant_paths(folder, stem)
    if not onnx_path.is_file():
        raise InputError("no such variant network", path=str(onnx_path))
    record = ChangeRecord.load(record_path)
    network = load_onnx(onnx_path)
    network = network.with_affines(network.affines, record.variant_name)
    if network.digest() != record.variant_digest:
        raise InputError("the network does not match its change record (digest differs)",
                         path=str(onnx_path))
    return Variant(network, record)
