"""The text of coreproof test failures: property labels, abbreviated vectors, the
lines of an undecided check, and file names for saved counterexamples."""
from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .plugin_fixture import _Case

_MAX_SHOWN = 10  # vector entries shown in a failure message before abbreviating


def _unknown_lines(case: _Case) -> list[str]:
    r = case.result
    reason = r.reason or "no reason given"
    return [f"  {case.label}: unknown after {r.time_s:.2f}s ({r.method}): {reason}"]


def _prop_label(prop) -> str:
    if prop.source:
        return f"{prop.name!r} ({prop.source})" if prop.name not in str(prop.source) \
            else repr(str(prop.source))
    return repr(prop.name)


def _fmt_vec(values) -> str:
    vals = [f"{float(v):.6g}" for v in values]
    if len(vals) > _MAX_SHOWN:
        head = ", ".join(vals[:_MAX_SHOWN - 2])
        return f"[{head}, ... ({len(vals) - _MAX_SHOWN + 1} more), {vals[-1]}]"
    return "[" + ", ".join(vals) + "]"


def _safe_name(nodeid: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_") or "test"
    if len(name) > 100:
        name = name[:90] + "-" + hashlib.sha256(nodeid.encode()).hexdigest()[:8]
    return name
