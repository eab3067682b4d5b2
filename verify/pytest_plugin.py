"""pytest plugin: formal safety checks of ReLU networks as ordinary tests.

Registered through the ``pytest11`` entry point ``coreproof``.  Provides

* the ``coreproof`` fixture (:class:`Coreproof`): ``assert_robust``,
  ``assert_holds``, ``verify``, ``assert_variant_holds``;
* the marker ``@pytest.mark.coreproof_reuse(original=...)``: every check in the
  test treats its network as a compressed variant of ``original`` and reuses
  the original's proof when it can;
* options ``--coreproof-timeout``, ``--coreproof-unknown``,
  ``--coreproof-cache`` / ``--coreproof-no-cache``, ``--coreproof-trust-cache``
  (and ini keys ``coreproof_timeout``, ``coreproof_unknown``, ``coreproof_cache``,
  ``coreproof_trust_cache``);
* the cache is untrusted input: an entry must match its content digest, a
  cached ``violated`` is re-run on the network and a cached ``holds`` is used
  only after its stored proof re-checks (:mod:`verify.reuse.check`); anything
  else is a reported miss and the property is verified again;
* a ``coreproof`` terminal summary section, aggregated over pytest-xdist workers.

Heavy modules (numpy, torch, the verifier) are imported only when a check
runs, so having the plugin installed costs nothing to unrelated test suites.

This module holds the hooks, options and per-session state; the fixture object is
:class:`verify.plugin_fixture.Coreproof`, its failure text :mod:`verify.plugin_messages`.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pytest

from .plugin_fixture import Coreproof

__all__ = ["COUNTEREXAMPLE_DIR", "DEFAULT_CACHE", "DEFAULT_TIMEOUT", "UNKNOWN_MODES", "Coreproof",
           "Tally", "coreproof"]

UNKNOWN_MODES = ("fail", "skip", "pass")
DEFAULT_TIMEOUT = 60.0
DEFAULT_CACHE = os.path.join(".coreproof", "proofs")
COUNTEREXAMPLE_DIR = os.path.join(".coreproof", "counterexamples")


# ---------------------------------------------------------------------------
# bookkeeping
# ---------------------------------------------------------------------------
@dataclass
class Tally:
    """What the checks of one process did; summed over xdist workers."""

    checked: int = 0
    holds: int = 0
    violated: int = 0
    unknown: int = 0
    cached: int = 0  # served from the proof store
    reused: int = 0  # variants decided by verify.reuse.reverify
    verify_time_s: float = 0.0  # wall time spent verifying (cache misses)
    saved_time_s: float = 0.0  # original verification time of cache hits
    counterexamples: int = 0
    problems: list = field(default_factory=list)

    def count(self, status: str) -> None:
        self.checked += 1
        setattr(self, status, getattr(self, status) + 1)

    def to_dict(self) -> dict:
        return asdict(self)

    def merge(self, other: dict) -> None:
        for f in fields(self):
            if f.name in other:
                if f.name == "problems":
                    self.problems.extend(str(p) for p in other[f.name])
                else:
                    setattr(self, f.name, getattr(self, f.name) + other[f.name])


@dataclass
class _State:
    timeout: float
    unknown_mode: str
    cache_dir: Path | None
    counterexample_dir: Path
    tally: Tally = field(default_factory=Tally)
    trust_cache: bool = False  # serve cached holds without re-checking their proofs
    _store: Any = None
    worker_down_without_output: int = 0

    @property
    def store(self):
        if self.cache_dir is None:
            return None
        if self._store is None:
            from .proof_store import ProofStore
            self._store = ProofStore(self.cache_dir)
        return self._store

    def problems(self) -> list[str]:
        own = list(self._store.problems) if self._store is not None else []
        return own + list(self.tally.problems)


_STATE = pytest.StashKey[_State]()


# ---------------------------------------------------------------------------
# hooks
# ---------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("coreproof", "coreproof formal verification")
    group.addoption(
        "--coreproof-timeout", type=float, default=None, metavar="SECONDS",
        help=f"wall-clock budget per verified property (default: ini coreproof_timeout "
             f"or {DEFAULT_TIMEOUT:g}).")
    group.addoption(
        "--coreproof-unknown", choices=UNKNOWN_MODES, default=None,
        help="what an undecided property (verdict 'unknown', e.g. out of time) does to "
             "the test: fail (default), skip, or pass.")
    group.addoption(
        "--coreproof-cache", default=None, metavar="DIR",
        help=f"proof cache directory (default: ini coreproof_cache or "
             f"<rootdir>/{DEFAULT_CACHE}).")
    group.addoption(
        "--coreproof-no-cache", action="store_true", default=False,
        help="neither read nor write the proof cache.")
    group.addoption(
        "--coreproof-trust-cache", action="store_true", default=None,
        help="serve a cached 'holds' without re-checking its proof on the network "
             "(faster; the cache is then trusted input).")
    parser.addini("coreproof_timeout", f"coreproof: seconds per property (default "
                  f"{DEFAULT_TIMEOUT:g})", default=str(DEFAULT_TIMEOUT))
    parser.addini("coreproof_unknown", "coreproof: fail|skip|pass on an unknown verdict",
                  default="fail")
    parser.addini("coreproof_cache", "coreproof: proof cache directory (relative to rootdir)",
                  default=DEFAULT_CACHE)
    parser.addini("coreproof_trust_cache", "coreproof: serve cached 'holds' verdicts without "
                  "re-checking their proofs", type="bool", default=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "coreproof_reuse(original): the coreproof checks of this test verify compressed "
        "variants of `original` (torch module, ONNX/NNet path, Network, or a zero-argument "
        "callable returning one), reusing the original's proof where possible.")
    # getoption/getini defaults: the plugin may be registered after option parsing
    # (``pytest_plugins = ["verify.pytest_plugin"]`` in a test module)
    timeout = config.getoption("coreproof_timeout", None)
    if timeout is None:
        text = _ini(config, "coreproof_timeout", str(DEFAULT_TIMEOUT))
        try:
            timeout = float(text)
        except ValueError:
            raise pytest.UsageError(f"ini coreproof_timeout must be a number, got {text!r}")
    if not (timeout > 0 and timeout != float("inf")):
        raise pytest.UsageError(f"--coreproof-timeout must be positive and finite, got {timeout:g}")
    mode = config.getoption("coreproof_unknown", None) or _ini(config, "coreproof_unknown", "fail")
    if mode not in UNKNOWN_MODES:
        raise pytest.UsageError(
            f"coreproof_unknown must be one of {', '.join(UNKNOWN_MODES)}, got {mode!r}")
    root = Path(config.rootpath)
    if config.getoption("coreproof_no_cache", False):
        cache = None
    elif config.getoption("coreproof_cache", None):
        cache = Path(config.invocation_params.dir, config.getoption("coreproof_cache"))
    else:
        cache = root / _ini(config, "coreproof_cache", DEFAULT_CACHE)
    trust = config.getoption("coreproof_trust_cache", None)
    if trust is None:
        try:
            trust = bool(config.getini("coreproof_trust_cache"))
        except ValueError:  # not registered (late plugin registration)
            trust = False
    config.stash[_STATE] = _State(timeout=timeout, unknown_mode=mode, cache_dir=cache,
                                  counterexample_dir=root / COUNTEREXAMPLE_DIR,
                                  trust_cache=trust)


def _ini(config: pytest.Config, name: str, default: str) -> str:
    try:
        value = config.getini(name)
    except ValueError:  # not registered (late plugin registration)
        return default
    return str(value).strip() or default


def pytest_sessionfinish(session: pytest.Session) -> None:
    # on an xdist worker: hand the counts to the controller (see pytest_testnodedown)
    config = session.config
    state = config.stash.get(_STATE, None)
    if state is not None and hasattr(config, "workeroutput"):
        data = state.tally.to_dict()
        data["problems"] = state.problems()
        config.workeroutput["coreproof"] = data


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    # on the xdist controller: add up what each worker reported
    state = node.config.stash.get(_STATE, None)
    if state is None:
        return
    data = getattr(node, "workeroutput", None) or {}
    if "coreproof" in data:
        state.tally.merge(data["coreproof"])
    elif error:
        state.worker_down_without_output += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    t = state.tally
    problems = state.problems()
    if not t.checked and not problems:
        return
    tr = terminalreporter
    tr.write_sep("=", "coreproof")
    tr.write_line(f"properties checked: {t.checked} (holds: {t.holds}, violated: {t.violated}, "
                  f"unknown: {t.unknown})")
    line = f"served from cache: {t.cached} (reused proofs)"
    if t.reused:
        line += f"; variants re-verified from their original's proof: {t.reused}"
    tr.write_line(line)
    line = f"total verification time: {t.verify_time_s:.2f}s"
    if t.cached:
        line += f" (cache saved {t.saved_time_s:.2f}s)"
    tr.write_line(line)
    tr.write_line(f"proof cache: {state.cache_dir if state.cache_dir else 'disabled'}")
    if t.counterexamples:
        tr.write_line(f"counterexamples saved: {t.counterexamples} under {state.counterexample_dir}")
    if state.worker_down_without_output:
        tr.write_line(f"warning: {state.worker_down_without_output} xdist worker(s) crashed; "
                      f"their counts are missing")
    for p in problems:
        tr.write_line(f"warning: {p}")


@pytest.fixture
def coreproof(request: pytest.FixtureRequest) -> "Coreproof":
    """Formal checks of ReLU networks: ``coreproof.assert_robust(model, points, labels, eps)``,
    ``coreproof.assert_holds(model, "prop.vnnlib")``, ``coreproof.verify(model, prop)``,
    ``coreproof.assert_variant_holds(original, variant, ...)``."""
    return Coreproof(request.config.stash[_STATE], request.node)
