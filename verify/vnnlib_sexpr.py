"""The lexical layer of the VNN-LIB reader (:mod:`verify.vnnlib`): tokens (``;`` comments
to the end of the line, parentheses, symbols) and S-expressions, each remembering its line."""
from __future__ import annotations

import re

_TOKEN_RE = re.compile(r"(\n)|[ \t\r\f\v]+|;[^\n]*|(\()|(\))|([^\s();]+)")
_COMMANDS = frozenset({"assert", "declare-const", "declare-fun", "define-fun", "check-sat",
                       "get-model", "exit", "set-logic", "set-info", "set-option"})


class _Sym:
    __slots__ = ("text", "line")

    def __init__(self, text: str, line: int):
        self.text = text
        self.line = line


class _List:
    __slots__ = ("items", "line")

    def __init__(self, line: int):
        self.items: list = []
        self.line = line


def read_sexprs(text: str, error) -> list[_List]:
    """Tokenize ``text`` and build its top-level S-expressions (iteratively).
    ``error(message, line, expected)`` makes the exception raised for malformed text."""
    line = 1
    top: list[_List] = []
    stack: list[_List] = []
    for m in _TOKEN_RE.finditer(text):
        group = m.lastindex
        if group is None:  # blanks or comment
            continue
        if group == 1:  # newline
            line += 1
        elif group == 2:  # (
            stack.append(_List(line))
        elif group == 3:  # )
            if not stack:
                raise error("unexpected ')'", line, "'(' to start a command")
            node = stack.pop()
            if stack:
                stack[-1].items.append(node)
            else:
                top.append(node)
        else:
            tok = m.group(4)
            if not stack:
                raise error(f"unexpected {tok!r} outside parentheses", line,
                            "'(' to start a command")
            cur = stack[-1]
            if tok in _COMMANDS and not cur.items and len(stack) > 1:
                outer = stack[0]
                raise error(f"'{tok}' command inside another command", line,
                            f"')' to close the '(' opened at line {outer.line}")
            cur.items.append(_Sym(tok, line))
    if stack:
        node = stack[-1]
        raise error("unclosed '(' at end of file", node.line,
                    f"')' to close the '(' opened at line {node.line}")
    return top
