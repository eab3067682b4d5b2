"""The one home of coreproof's process exit codes (every command keeps them).

====  =========================================================
code  meaning
====  =========================================================
0     holds / certified (every row of a batch)
1     violated (a counterexample, re-run on the network)
2     bad input or internal error (one line on stderr)
3     unknown (timeout, or not decided)
130   interrupted (Ctrl-C)
====  =========================================================

A batch (``verify-instances``, ``reverify``) exits with the worst code over
its rows, worst first: error (2), violated (1), unknown (3), holds (0).
"""
from __future__ import annotations

HOLDS = 0
VIOLATED = 1
BAD_INPUT = 2  # also an internal error
UNKNOWN = 3
INTERRUPTED = 130

#: status value (``Status.value`` or ``"error"``) -> exit code
BY_STATUS = {"holds": HOLDS, "violated": VIOLATED, "unknown": UNKNOWN, "error": BAD_INPUT}
_SEVERITY = (HOLDS, UNKNOWN, VIOLATED, BAD_INPUT)  # ascending


def of_status(status) -> int:
    """The exit code of one verdict (a ``Status``, its value, or ``"error"``)."""
    return BY_STATUS[getattr(status, "value", status)]


def worst(codes) -> int:
    """The worst of ``codes`` (``HOLDS`` for none)."""
    return max(codes, key=_SEVERITY.index, default=HOLDS)
