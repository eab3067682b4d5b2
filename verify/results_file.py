"""A results table that grows row by row (CSV or JSON lines) and resumes.

Every finished row is written at once: the whole file is rewritten to a temporary file and
renamed (:mod:`verify.atomic`), so an interrupted run always leaves a complete, parseable
file holding every row finished so far.  Opening an existing file reads its rows back;
a re-run skips the instances they hold (matched by network and property, as many times
as they occur) unless told to start again.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .atomic import atomic_write
from .errors import InputError

COLUMNS = ("onnx", "vnnlib", "status", "time_s", "method", "reason")


class ResultsFile:
    def __init__(self, path, *, fresh: bool = False):
        self.path = Path(path)
        self.jsonl = self.path.suffix.lower() == ".jsonl"
        self.rows: list[dict] = []
        if self.path.exists() and not fresh:
            self.rows = self._read()

    @staticmethod
    def key(row: dict) -> tuple[str, str]:
        return row["onnx"], row["vnnlib"]

    def _read(self) -> list[dict]:
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the results to resume: {exc}",
                             path=str(self.path)) from None
        rows = []
        if self.jsonl:
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    raise InputError("not a JSON object", path=str(self.path), line=n,
                                     expected="a results file written by coreproof "
                                              "(or --force to start again)") from None
                if not isinstance(row, dict) or not {"onnx", "vnnlib", "status"} <= set(row):
                    raise InputError("a row without onnx / vnnlib / status", path=str(self.path),
                                     line=n, expected="a results file written by coreproof")
                rows.append(row)
            return rows
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None:
            return []
        if list(reader.fieldnames) != list(COLUMNS):
            raise InputError(f"columns {reader.fieldnames}", path=str(self.path), line=1,
                             expected=f"{', '.join(COLUMNS)} (a results file written by "
                                      "coreproof, or --force to start again)")
        return [dict(r) for r in reader]

    def save(self, rows: list[dict]) -> None:
        """Replace the file's rows by ``rows`` (atomically)."""
        self.rows = list(rows)
        atomic_write(self.path, self._text(), durable=False)

    def _text(self) -> str:
        if self.jsonl:
            return "".join(json.dumps(r) + "\n" for r in self.rows)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(COLUMNS)
        for r in self.rows:
            w.writerow([r.get(c, "") for c in COLUMNS])
        return buf.getvalue()
