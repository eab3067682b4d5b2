"""Atomic file outputs: write to a temporary file in the target's directory,
then ``os.replace`` it over the target, so no reader (or interrupted run) ever
sees a partial artifact.  The one home of this rule for stores, reports,
result tables and compressed variants."""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path


def _replace(tmp: str, path: Path) -> None:
    for attempt in range(20):
        try:
            os.replace(tmp, path)
            return
        except PermissionError:  # Windows: target open by a reader; retry
            if attempt == 19:
                raise
            time.sleep(0.01 * (attempt + 1))


def _sync_dir(folder: Path) -> None:
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        try:
            dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass


@contextlib.contextmanager
def atomic_path(path, durable: bool = True):
    """Yield a temporary path next to ``path``; when the block ends without an
    exception the file written there replaces ``path``, else it is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        _replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _sync_dir(path.parent)


def atomic_write(path, data: str | bytes, durable: bool = True) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
