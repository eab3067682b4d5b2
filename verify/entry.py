"""The ``coreproof`` console script.  Importing the command line is itself
interruptible: Ctrl-C during start-up exits 130 without a traceback, like
Ctrl-C at any later point (see :class:`verify.cli.CoreproofGroup`)."""
from __future__ import annotations

import importlib
import sys

INTERRUPTED = 130  # verify.exit_codes.INTERRUPTED (not imported: start-up may be cut)


def main() -> None:
    try:
        cli = importlib.import_module("verify.cli")
        cli.main()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(INTERRUPTED)


if __name__ == "__main__":  # pragma: no cover
    main()
