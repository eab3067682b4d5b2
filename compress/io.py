"""Saving and loading variants: ``STEM.onnx`` next to ``STEM.changes.json``."""
from __future__ import annotations

import re
from pathlib import Path

from verify.errors import InputError, OptionError
from verify.network import Network

from .core import Variant
from .record import ChangeRecord

ONNX_SUFFIX = ".onnx"
RECORD_SUFFIX = ".changes.json"


def variant_paths(out_dir, stem: str) -> tuple[Path, Path]:
    out = Path(out_dir)
    return out / f"{stem}{ONNX_SUFFIX}", out / f"{stem}{RECORD_SUFFIX}"


def save_variant(network: Network, record: ChangeRecord, out_dir, stem: str
                 ) -> tuple[Path, Path]:
    """Write ``OUT_DIR/STEM.onnx`` (float64, integer scales in the metadata) and
    ``OUT_DIR/STEM.changes.json``; returns both paths."""
    from verify.onnx_io import save_onnx
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
    from verify.atomic import atomic_path
    # both files are written to temporary names first; then the record is renamed
    # into place, then the network: no .onnx ever appears without its record
    # (a record without its .onnx fails to load, loudly), and a failure leaves neither
    try:
        with atomic_path(onnx_path) as onnx_tmp, atomic_path(record_path) as record_tmp:
            save_onnx(network, onnx_tmp)
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
