"""The one error hierarchy of coreproof.

Every error a user can cause (bad file, bad option, unsupported network) is a
``CoreproofError``; the CLI prints ``str(error)`` on one line and exits with 2.
Errors about a file name the file, the line when known, and what was expected.
"""
from __future__ import annotations


class CoreproofError(Exception):
    """Base of every error coreproof raises on purpose."""


class InputError(CoreproofError):
    """A file or value given by the user is missing or malformed."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 expected: str | None = None):
        self.path = path
        self.line = line
        self.expected = expected
        self.detail = message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        text = f"{where}{message}"
        if expected:
            text += f" (expected {expected})"
        super().__init__(text)


class UnsupportedNetworkError(InputError):
    """The network uses an operator or structure coreproof cannot verify."""


class PropertyError(InputError):
    """A property file is malformed or does not fit the network."""


class ShapeMismatchError(InputError):
    """Network and property (or two networks) disagree on sizes."""


class OptionError(CoreproofError):
    """An option value is out of range or unknown."""
