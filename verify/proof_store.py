"""A JSON store of verification verdicts (and proof artifacts) on disk.

One file per key::

    <directory>/<network digest[:16]>/<property digest[:16]>-<options key>.json

with the payload ::

    {"schema": 1, "network": <sha256>, "property": <sha256>,
     "result": VerificationResult.to_dict(), "proof": <dict or null>,
     "created": <ISO-8601 UTC>, "coreproof_version": <str>,
     "digest": <sha256 of the rest, see content_digest>}

Entries are untrusted input: one whose bytes are not UTF-8 JSON or whose
content does not match its digest is a miss; a ``holds`` read back is only
used after its proof re-checks on the network (:mod:`verify.reuse.check`),
unless the caller trusts the store explicitly.

Only decided verdicts (``holds`` / ``violated``) are stored; ``unknown`` never
is, so a later run with a larger budget tries again.  Writes are atomic (temp
file in the same directory, fsync, ``os.replace``), so concurrent writers --
e.g. pytest-xdist workers -- never leave a torn file: the last writer wins and
every reader sees one complete payload.  A corrupt, unreadable or mismatching
entry is a miss; the problem is logged and kept in :attr:`ProofStore.problems`,
never raised.  Failing to write (read-only disk, ...) is reported the same way.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from .atomic import atomic_write
from .result import Status, VerificationResult, _json_default

log = logging.getLogger(__name__)

SCHEMA = 1
#: Verdicts worth remembering; ``unknown`` depends on the budget, so it is not.
CACHEABLE = frozenset({Status.HOLDS.value, Status.VIOLATED.value})
#: Option fields that only bound the search, not what a verdict means.
_BUDGET_FIELDS = frozenset({"timeout", "z3_query_timeout", "z3_input_query_timeout"})


def coreproof_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("coreproof")
        except PackageNotFoundError:
            pass
    except ImportError:  # pragma: no cover
        pass
    import verify
    return getattr(verify, "__version__", "0+unknown")


def options_key(options=None) -> str:
    """A short (8 hex) key for the options that shape how a proof is found.

    Pure time budgets (``timeout``, ``z3_query_timeout``) are left out: a
    verdict found within 5 s is the same verdict with 60 s, so changing
    ``--coreproof-timeout`` keeps the cache.  ``None`` means the defaults."""
    if options is None:
        from .options import VerifyOptions
        options = VerifyOptions()
    if dataclasses.is_dataclass(options):
        fields = dataclasses.asdict(options)
    else:
        fields = dict(options)
    items = sorted((k, v) for k, v in fields.items() if k not in _BUDGET_FIELDS)
    return hashlib.sha256(repr(items).encode()).hexdigest()[:8]


def make_payload(net_digest: str, prop_digest: str, result: VerificationResult | dict,
                 proof: dict | None = None) -> dict:
    """The payload :meth:`ProofStore.put` expects, stamped with time and version."""
    rd = result.to_dict() if isinstance(result, VerificationResult) else dict(result)
    return {
        "schema": SCHEMA,
        "network": net_digest,
        "property": prop_digest,
        "result": rd,
        "proof": proof,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "coreproof_version": coreproof_version(),
    }


def content_digest(payload: dict) -> str:
    """sha256 of the payload's canonical JSON without its ``digest`` field: an
    entry whose content does not match its digest is damaged or edited (a
    deliberate edit can recompute it, so a stored ``holds`` is re-checked too)."""
    body = {k: v for k, v in payload.items() if k != "digest"}
    text = json.dumps(body, default=_json_default, sort_keys=True, separators=(",", ":"),
                      allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def decode_payload(data: bytes):
    """The JSON value of a stored entry's bytes (ValueError when they are not
    UTF-8 JSON: a corrupt entry, never a crash)."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"not UTF-8 JSON ({type(exc).__name__})") from None


def result_from_dict(d: dict) -> VerificationResult:
    return VerificationResult.from_dict(d)


class ProofStore:
    """Verdicts keyed by (network digest, property digest, options key)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        #: Human-readable descriptions of entries that could not be read or written.
        self.problems: list[str] = []

    def __repr__(self) -> str:
        return f"ProofStore({str(self.directory)!r})"

    # ---- layout --------------------------------------------------------------
    def path_for(self, net_digest: str, prop_digest: str, key: str) -> Path:
        for name, value in (("network digest", net_digest), ("property digest", prop_digest),
                            ("options key", key)):
            if not value or not all(c.isalnum() or c in "-_" for c in value):
                raise ValueError(f"{name} must be a non-empty alphanumeric string, got {value!r}")
        return self.directory / net_digest[:16] / f"{prop_digest[:16]}-{key}.json"

    def _problem(self, message: str) -> None:
        self.problems.append(message)
        log.warning("coreproof proof store: %s", message)

    # ---- reading ---------------------------------------------------------------
    def get(self, net_digest: str, prop_digest: str, key: str) -> dict | None:
        """The stored payload, or ``None`` on a miss (absent, corrupt or mismatching)."""
        path = self.path_for(net_digest, prop_digest, key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._problem(f"cannot read {path}: {exc}")
            return None
        try:
            payload = decode_payload(data)
        except ValueError as exc:
            self._problem(f"corrupt entry {path} ignored: {exc}")
            return None
        why = self._invalid(payload, net_digest, prop_digest)
        if why:
            self._problem(f"entry {path} ignored: {why}")
            return None
        return payload

    def get_result(self, net_digest: str, prop_digest: str, key: str) -> VerificationResult | None:
        payload = self.get(net_digest, prop_digest, key)
        return None if payload is None else VerificationResult.from_dict(payload["result"])

    @staticmethod
    def _invalid(payload, net_digest: str, prop_digest: str, sealed: bool = True) -> str | None:
        if not isinstance(payload, dict):
            return "not a JSON object"
        if payload.get("schema") != SCHEMA:
            return f"schema {payload.get('schema')!r}, expected {SCHEMA}"
        if sealed and payload.get("digest") != content_digest(payload):
            return "content digest does not match (edited or damaged entry)"
        if payload.get("network") != net_digest:
            return "network digest differs"
        if payload.get("property") != prop_digest:
            return "property digest differs"
        result = payload.get("result")
        if not isinstance(result, dict) or result.get("status") not in CACHEABLE:
            return "no decided result"
        try:
            VerificationResult.from_dict(result)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            return f"malformed result ({exc})"
        proof = payload.get("proof")
        if proof is not None and not isinstance(proof, dict):
            return "proof is not an object"
        return None

    # ---- writing ---------------------------------------------------------------
    def put(self, net_digest: str, prop_digest: str, key: str, payload: dict) -> Path | None:
        """Store ``payload`` atomically; returns the path, or ``None`` when the
        verdict is not cacheable (``unknown``) or the write failed (reported)."""
        why = self._invalid(payload, net_digest, prop_digest, sealed=False)
        if why:
            if isinstance(payload, dict) and isinstance(payload.get("result"), dict) \
                    and payload["result"].get("status") == Status.UNKNOWN.value:
                return None  # unknown is never cached, silently
            raise ValueError(f"refusing to store an invalid payload: {why}")
        path = self.path_for(net_digest, prop_digest, key)
        try:
            payload = {**payload, "digest": content_digest(payload)}
            data = json.dumps(payload, default=_json_default, indent=1, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"payload is not JSON serialisable: {exc}") from exc
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, data)
        except OSError as exc:
            self._problem(f"cannot write {path}: {exc}")
            return None
        return path

    def put_result(self, net_digest: str, prop_digest: str, key: str,
                   result: VerificationResult, proof: dict | None = None) -> Path | None:
        """Store a result (a no-op returning ``None`` for ``unknown``)."""
        if result.status.value not in CACHEABLE:
            return None
        return self.put(net_digest, prop_digest, key,
                        make_payload(net_digest, prop_digest, result, proof))

    def delete(self, net_digest: str, prop_digest: str, key: str) -> bool:
        try:
            self.path_for(net_digest, prop_digest, key).unlink()
            return True
        except FileNotFoundError:
            return False


def _atomic_write(path: Path, data: str) -> None:
    atomic_write(path, data)
