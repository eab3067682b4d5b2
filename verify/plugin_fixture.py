"""The object behind the ``coreproof`` pytest fixture (:class:`Coreproof`): loading the
model and property, the cached check (a cached ``violated`` is re-run, a cached ``holds``
is used only after its proof re-checks), variant checks through proof reuse, and the
failure message of an assertion.  The hooks and options are in :mod:`verify.pytest_plugin`.

Heavy modules (numpy, torch, the verifier) are imported only when a check runs.
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .plugin_messages import _fmt_vec, _prop_label, _safe_name, _unknown_lines

if TYPE_CHECKING:
    from .pytest_plugin import _State


class Coreproof:
    """Helper returned by the ``coreproof`` fixture.

    ``model`` is anything :func:`verify.loading.load_network` accepts: a
    :class:`~verify.network.Network`, a torch ``nn.Module`` or a path to an
    ``.onnx`` / ``.nnet`` file (relative paths are also looked up next to the
    test file).  Every check consults the proof cache first; only ``holds``
    and ``violated`` verdicts are cached.
    """

    def __init__(self, state: _State, node: pytest.Item):
        self._state = state
        self._node = node
        self._saved = 0
        self._records: dict[str, object] = {}  # variant digest -> its compress change record
        marker = node.get_closest_marker("coreproof_reuse")
        self._marker_original = None
        if marker is not None:
            if "original" in marker.kwargs:
                self._marker_original = marker.kwargs["original"]
            elif marker.args:
                self._marker_original = marker.args[0]
            else:
                raise pytest.UsageError(
                    f"{node.nodeid}: @pytest.mark.coreproof_reuse needs original=<model>")

    # ---- configuration -------------------------------------------------------
    @property
    def timeout(self) -> float:
        return self._state.timeout

    @property
    def unknown_mode(self) -> str:
        return self._state.unknown_mode

    @property
    def options(self):
        """The :class:`~verify.options.VerifyOptions` used when none are passed."""
        from .options import VerifyOptions
        return VerifyOptions(timeout=self._state.timeout)

    # ---- public API ------------------------------------------------------------
    def network(self, model):
        """Load ``model`` as a :class:`~verify.network.Network`."""
        from .network import Network
        if isinstance(model, Network):
            return model
        from .loading import load_network
        if isinstance(model, (str, os.PathLike)):
            model = self._resolve_path(model)
        elif inspect.isfunction(model) or inspect.ismethod(model):
            model = model()  # a factory (e.g. given to the coreproof_reuse marker)
            if isinstance(model, (str, os.PathLike)):
                model = self._resolve_path(model)
        net = load_network(model)
        record = getattr(model, "record", None)  # a compress.Variant keeps its change record
        if record is not None and getattr(model, "network", None) is net:
            self._records[net.digest()] = record
        return net

    def verify(self, model, prop, *, options=None, original=None):
        """Verify ``prop`` (a Property or a ``.vnnlib`` path) on ``model`` and
        return the :class:`~verify.result.VerificationResult` (no assertion).
        With ``original`` (or the ``coreproof_reuse`` marker) ``model`` is
        checked as a variant of ``original``."""
        net = self.network(model)
        prop = self._property(prop, net)
        orig = self._original_network(original)
        return self._check(net, prop, options or self.options, orig)

    def assert_holds(self, model, prop, *, options=None, original=None):
        """Fail the test unless ``prop`` holds on ``model``; returns the result."""
        __tracebackhide__ = True
        net = self.network(model)
        prop = self._property(prop, net)
        orig = self._original_network(original)
        result = self._check(net, prop, options or self.options, orig)
        self._judge(net, [_Case(f"property {_prop_label(prop)}", prop, result)],
                    f"property {_prop_label(prop)}")
        return result

    def assert_robust(self, model, points, labels, eps: float,
                      domain: tuple[float, float] | None = (0.0, 1.0), *, options=None,
                      original=None):
        """Fail the test unless ``model`` is locally robust (L-inf ball of radius
        ``eps``, a number or one per point, clipped to ``domain``) at every point.
        ``labels=None`` uses the model's own predictions.  Returns the list of results, one per point."""
        __tracebackhide__ = True
        import numpy as np

        from .properties import local_robustness
        net = self.network(model)
        orig = self._original_network(original)
        xs = _as_points(points, net.n_inputs)
        eps_arr = np.broadcast_to(np.asarray(eps, dtype=np.float64).reshape(-1), (len(xs),)) \
            if np.ndim(eps) else np.full(len(xs), float(eps))
        if labels is None:
            ys = np.argmax(net.forward(xs), axis=1)
        else:
            ys = np.asarray(_to_numpy(labels)).reshape(-1)
            if ys.shape[0] != len(xs):
                raise ValueError(f"{len(xs)} points but {ys.shape[0]} labels")
        opts = options or self.options
        cases = []
        for i, (x, y, e) in enumerate(zip(xs, ys, eps_arr)):
            prop = local_robustness(x, float(e), int(y), net.n_outputs, domain=domain,
                                    name=f"robust[{i}] label={int(y)} eps={float(e):g}")
            result = self._check(net, prop, opts, orig)
            cases.append(_Case(f"point #{i} (label {int(y)})", prop, result,
                               robustness=(i, int(y), float(e), x)))
        dom = "unbounded" if domain is None else f"[{domain[0]:g}, {domain[1]:g}]"
        eps_text = f"{float(eps_arr[0]):g}" if len(set(eps_arr.tolist())) <= 1 \
            else "per point"
        self._judge(net, cases, f"local robustness (L-inf eps={eps_text}, domain {dom})")
        return [c.result for c in cases]

    def assert_variant_holds(self, original, variant, prop_or_points, labels=None,
                             eps: float | None = None,
                             domain: tuple[float, float] | None = (0.0, 1.0), *,
                             options=None):
        """Check a compressed ``variant`` of ``original``: the original is verified
        first (usually served from the cache), then the variant, reusing the
        original's proof via ``verify.reuse.reverify`` when that is available.

        ``prop_or_points`` is a Property / ``.vnnlib`` path (like
        :meth:`assert_holds`) or points (with ``labels`` and ``eps``, like
        :meth:`assert_robust`)."""
        __tracebackhide__ = True
        from .properties import Property
        if isinstance(prop_or_points, (Property, str, os.PathLike)):
            return self.assert_holds(variant, prop_or_points, options=options,
                                     original=original)
        if eps is None:
            raise TypeError("assert_variant_holds with points needs eps=")
        return self.assert_robust(variant, prop_or_points, labels, eps, domain,
                                  options=options, original=original)

    # ---- the check -------------------------------------------------------------
    def _check(self, net, prop, options, original=None):
        """Cached verification of one property; ``original`` makes it a variant check."""
        from .proof_store import options_key
        from .result import Status
        state, tally = self._state, self._state.tally
        store = state.store
        key = options_key(options)
        if store is not None:
            payload = store.get(net.digest(), prop.digest(), key)
            cached = None if payload is None else _result_of(payload)
            if cached is not None and self._still_valid(cached, payload, net, prop, options,
                                                        store, state.trust_cache):
                tally.count(cached.status.value)
                tally.cached += 1
                tally.saved_time_s += cached.time_s
                return cached
        start = time.perf_counter()
        result = None
        proof = None
        if original is not None and original.digest() != net.digest():
            orig_result = self._check(original, prop, options)
            reverify = _reverify_function()
            if reverify is not None and orig_result.status is Status.HOLDS:
                record = self._records.get(net.digest())
                result = reverify(original, net, prop, options, store=store,
                                  **({} if record is None else {"record": record}))
                if hasattr(result, "to_verification_result"):
                    result = result.to_verification_result()
                if result.status is Status.UNKNOWN:
                    result = None  # reuse did not settle it: verify from scratch
                else:
                    tally.reused += 1
        if result is None:
            from .api import verify_property
            from .verifier import Proof
            proof = Proof() if store is not None else None
            result = verify_property(net, prop, options, proof=proof)
            if proof is not None:
                from .reuse.check import record_of
                record = record_of(net, prop, result, proof)
                proof = None if record is None else record.to_dict(prop)
        tally.verify_time_s += time.perf_counter() - start
        tally.count(result.status.value)
        if store is not None:
            store.put_result(net.digest(), prop.digest(), key, result, proof=proof)
        return result

    @staticmethod
    def _still_valid(cached, payload, net, prop, options, store, trust: bool) -> bool:
        """A cached counterexample is re-run through the network (cheap) before use;
        a cached holds is used only after its proof re-checks on the network
        (:mod:`verify.reuse.check`), unless the cache is trusted."""
        from .result import Status
        if cached.status is Status.HOLDS:
            if trust:
                return True
            return _proof_rechecks(payload, net, prop, options, store)
        if cached.counterexample is None:
            return False
        import numpy as np
        x = np.asarray(cached.counterexample.input, dtype=np.float64)
        if x.shape != (net.n_inputs,) or not prop.violated_by(x, net.forward(x)):
            store.problems.append("a cached counterexample did not reproduce; re-verifying")
            return False
        return True

    # ---- judging and reporting -------------------------------------------------
    def _judge(self, net, cases: list["_Case"], what: str) -> None:
        __tracebackhide__ = True
        from .result import Status
        violated = [c for c in cases if c.result.status is Status.VIOLATED]
        unknown = [c for c in cases if c.result.status is Status.UNKNOWN]
        if not violated and not unknown:
            return
        if not violated and self.unknown_mode == "pass":
            return
        lines = []
        bad = violated or unknown
        head = f"coreproof {'VIOLATED' if violated else 'UNKNOWN'}: {what}"
        if cases[0].robustness is not None:
            head += f" at {len(bad)} of {len(cases)} point(s)"
        head += f", network {net.describe()}"
        if not violated:
            head += " (could not decide within the budget)"
        lines.append(head)
        for c in cases:
            if c.result.status is Status.VIOLATED:
                lines.extend(self._violation_lines(net, c))
            elif c.result.status is Status.UNKNOWN:
                lines.extend(_unknown_lines(c))
        if unknown:
            lines.append("  hint: raise --coreproof-timeout (now "
                         f"{self.timeout:g}s) or choose --coreproof-unknown=skip|pass")
        message = "\n".join(lines)
        if not violated and self.unknown_mode == "skip":
            pytest.skip(message)
        raise AssertionError(message)

    def _violation_lines(self, net, case: "_Case") -> list[str]:
        r = case.result
        cex = r.counterexample
        lines = [f"  {case.label}: violated (found by {r.method} in {r.time_s:.2f}s)"]
        lines.append(f"    counterexample input ({len(cex.input)} values): {_fmt_vec(cex.input)}")
        lines.append(f"    output: {_fmt_vec(cex.output)}")
        if case.robustness is not None:
            i, label, eps, center = case.robustness
            import numpy as np
            predicted = int(np.argmax(cex.output))
            rival = cex.conjunction if cex.conjunction < label else cex.conjunction + 1
            dist = float(np.max(np.abs(np.asarray(cex.input) - center)))
            lines.append(f"    class {rival} scores >= label {label} "
                         f"(predicted class {predicted}); margin {cex.margin:.6g} "
                         f"(y[{label}] - y[{rival}])")
            lines.append(f"    L-inf distance from point #{i}: {dist:.6g} (eps {eps:g})")
        else:
            lines.append(f"    unsafe in region {cex.region}, conjunction {cex.conjunction}; "
                         f"margin {cex.margin:.6g} (<= 0 means inside the unsafe set)")
        path = self._save_counterexample(net, case)
        lines.append(f"    full counterexample: {path}")
        return lines

    def _save_counterexample(self, net, case: "_Case") -> str:
        self._saved += 1
        self._state.tally.counterexamples += 1
        prop = case.prop
        payload = {
            "test": self._node.nodeid,
            "check": case.label,
            "verdict": case.result.status.value,
            "network": {"name": net.name, "digest": net.digest(),
                        "layer_sizes": list(net.layer_sizes()),
                        "input_shape": list(net.input_shape)},
            "property": {"name": prop.name, "digest": prop.digest(), "source": prop.source},
            "counterexample": case.result.counterexample.to_dict(),
            "result": case.result.to_dict(),
        }
        if case.robustness is not None:
            i, label, eps, center = case.robustness
            payload["point"] = {"index": i, "label": label, "eps": eps,
                                "center": [float(v) for v in center]}
        from .proof_store import _atomic_write
        from .result import _json_default
        text = json.dumps(payload, default=_json_default, indent=1)
        name = f"{_safe_name(self._node.nodeid)}-{self._saved}.json"
        for directory in (self._state.counterexample_dir,
                          Path(tempfile.gettempdir()) / "coreproof-counterexamples"):
            try:
                directory.mkdir(parents=True, exist_ok=True)
                _atomic_write(directory / name, text)
                return str(directory / name)
            except OSError:
                continue
        return "(could not be saved)"

    # ---- helpers ---------------------------------------------------------------
    def _resolve_path(self, path) -> str:
        p = Path(path)
        if not p.is_absolute() and not p.exists():
            beside = Path(self._node.path).parent / p
            if beside.exists():
                return str(beside)
        return str(p)

    def _property(self, prop, net):
        from .properties import Property
        if isinstance(prop, Property):
            return prop
        if isinstance(prop, (str, os.PathLike)):
            from .api import load_property
            return load_property(self._resolve_path(prop), net)
        raise TypeError(f"expected a Property or a .vnnlib path, got {type(prop).__name__}")

    def _original_network(self, original):
        if original is None:
            original = self._marker_original
        return None if original is None else self.network(original)


@dataclass
class _Case:
    label: str
    prop: Any
    result: Any
    robustness: tuple | None = None  # (index, label, eps, center)


def _result_of(payload: dict):
    from .result import VerificationResult
    return VerificationResult.from_dict(payload["result"])  # validated by the store


def _proof_rechecks(payload: dict, net, prop, options, store) -> bool:
    """Whether the cache entry's proof record re-checks on ``net`` (a problem is
    reported otherwise, and the property is verified again)."""
    proof = payload.get("proof")
    where = f"{net.name} / {getattr(prop, 'name', 'property')}"
    if not isinstance(proof, dict):
        store.problems.append(f"cached holds for {where} has no proof to re-check; re-verifying")
        return False
    from .errors import InputError
    from .reuse.check import check_proof
    from .reuse.proof import ProofRecord
    try:
        record = ProofRecord.from_dict(proof, prop)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError,
            InputError) as exc:
        store.problems.append(f"cached proof for {where} is malformed ({exc}); re-verifying")
        return False
    outcome = check_proof(net, prop, record, options)
    if not outcome.ok:
        store.problems.append(f"cached proof for {where} failed its re-check "
                              f"({outcome.reason}); re-verifying")
    return outcome.ok


def _reverify_function():
    """``verify.reuse.reverify`` if another part of coreproof provides it."""
    try:
        mod = importlib.import_module("verify.reuse")
    except ImportError:
        return None
    fn = getattr(mod, "reverify", None)
    return fn if callable(fn) else None


def _to_numpy(a):
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().numpy()
    return a


def _as_points(points, n_inputs: int):
    import numpy as np
    arr = np.asarray(_to_numpy(points), dtype=np.float64)
    if arr.size == n_inputs:
        return arr.reshape(1, n_inputs)
    if n_inputs == 1 and arr.ndim == 1:
        return arr.reshape(-1, 1)
    if arr.ndim < 2 or arr.size % n_inputs or arr[0].size != n_inputs:
        from .errors import ShapeMismatchError
        raise ShapeMismatchError(
            f"points of shape {arr.shape} do not fit a network with {n_inputs} inputs",
            expected=f"(n_points, {n_inputs}) or (n_points, *input_shape)")
    return arr.reshape(arr.shape[0], n_inputs)
