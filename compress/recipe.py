"""Recipes: ordered compression steps, their string form, and the Python API.

Step strings (case-insensitive; a recipe joins steps with ``,``)::

    magnitude:R[:global][:nooutput]      unstructured magnitude pruning, ratio R
    magnitude:t=T[:nooutput]             ... every weight with |w| < T
    neurons:R[:activation][:global]      structured pruning of a fraction R (< 1) of hidden
                                         neurons, scored by norm (default) or by mean
                                         activation on calibration data
    remove:K.I[:K.I...]                  remove exactly hidden neurons (K, I)
    dead                                 remove neurons dead on the input box (exact)
    intB[:channel][:bias[=BB]]           symmetric uniform quantization, B in 2..16
    fixedB[:channel][:bias[=BB]]         fixed point (power-of-two scale)
    none | int32 | fixed32               no quantization (identity)
    merge-linear                         merge neurons proven active on the domain into the
                                         next layer (compress.merge; exact on the domain)
    merge-approx:T[:TOL]                 ... active on a share T of calibration inputs (approx.)
    svd:RANK | energy:E                  low-rank factorization W = U V of every affine
                                         layer (compress.factorize; the last step)

``R`` is a fraction in [0, 1] or a percentage (``50%``).  ``int8`` and ``int4``
are the usual names.  ``str(Recipe.parse(s))`` is the canonical spelling.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator

import numpy as np

from verify.errors import OptionError
from verify.network import Network

from . import prune as _prune
from . import quantize as _quant
from .core import StepOutcome, Tracker, Variant, as_network, build_record
from .factorize import Factorize, parse_factorize
from .merge import MergeLinear, parse_merge


def _num(text: str, what: str) -> float:
    t = text.strip()
    pct = t.endswith("%")
    try:
        v = float(t[:-1] if pct else t)
    except ValueError:
        raise OptionError(f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(v):
        raise OptionError(f"{what} must be finite, got {text!r}")
    return v / 100.0 if pct else v


def _fmt(x: float) -> str:
    return repr(float(x))


@dataclass(frozen=True)
class Context:
    """What steps may need besides the network."""

    box: tuple[np.ndarray, np.ndarray] | None = None
    calibration: np.ndarray | None = None
    bounds_fn: Callable | None = None  # (network, lower, upper) -> [(lb, ub), ...]


# --------------------------------------------------------------------------------------
# steps
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MagnitudePrune:
    ratio: float | None = None
    threshold: float | None = None
    scope: str = "layer"
    include_output: bool = True

    def __post_init__(self):
        if (self.ratio is None) == (self.threshold is None):
            raise OptionError("magnitude pruning needs exactly one of a ratio or a threshold")
        if self.ratio is not None:
            object.__setattr__(self, "ratio", _prune.check_ratio(self.ratio, "pruning ratio"))
        else:
            t = self.threshold
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) \
                    or t < 0:
                raise OptionError(f"pruning threshold must be a finite number >= 0, got {t!r}")
            object.__setattr__(self, "threshold", float(t))
        if self.scope not in ("layer", "global"):
            raise OptionError(f"unknown pruning scope {self.scope!r} (expected layer or global)")

    def spec(self) -> str:
        s = f"magnitude:{_fmt(self.ratio)}" if self.ratio is not None \
            else f"magnitude:t={_fmt(self.threshold)}"
        if self.scope == "global" and self.ratio is not None:
            s += ":global"
        if not self.include_output:
            s += ":nooutput"
        return s

    def run(self, network: Network, ctx: Context) -> StepOutcome:
        return _prune.magnitude(network, self.ratio, threshold=self.threshold, scope=self.scope,
                                include_output=self.include_output)


@dataclass(frozen=True)
class NeuronPrune:
    ratio: float | None = None
    method: str = "norm"
    scope: str = "layer"
    neurons: tuple[tuple[int, int], ...] = ()  # explicit (layer, index) pairs

    def __post_init__(self):
        if self.neurons:
            if self.ratio is not None:
                raise OptionError("give either a ratio or explicit neurons, not both")
            object.__setattr__(self, "neurons",
                               tuple(sorted({(int(k), int(i)) for k, i in self.neurons})))
        else:
            if self.ratio is None:
                raise OptionError("neuron pruning needs a ratio")
            object.__setattr__(self, "ratio", _prune.check_neuron_ratio(self.ratio))
        if self.method not in ("norm", "activation"):
            raise OptionError(f"unknown neuron-scoring method {self.method!r} "
                              "(expected norm or activation)")
        if self.scope not in ("layer", "global"):
            raise OptionError(f"unknown pruning scope {self.scope!r} (expected layer or global)")

    def spec(self) -> str:
        if self.neurons:
            return "remove:" + ":".join(f"{k}.{i}" for k, i in self.neurons)
        s = f"neurons:{_fmt(self.ratio)}"
        if self.method != "norm":
            s += f":{self.method}"
        if self.scope != "layer":
            s += f":{self.scope}"
        return s

    def run(self, network: Network, ctx: Context) -> StepOutcome:
        if self.neurons:
            remove: dict[int, list[int]] = {}
            for k, i in self.neurons:
                remove.setdefault(k, []).append(i)
            return _prune.neurons(network, remove=remove)
        return _prune.neurons(network, self.ratio, method=self.method, scope=self.scope,
                              calibration=ctx.calibration)


@dataclass(frozen=True)
class DeadNeurons:
    def spec(self) -> str:
        return "dead"

    def run(self, network: Network, ctx: Context) -> StepOutcome:
        if ctx.box is None:
            raise OptionError("dead-neuron removal needs an input box (domain)")
        lo, hi = ctx.box
        bounds = None
        if ctx.bounds_fn is not None:
            lo, hi = _prune.as_box(network, lo, hi)
            bounds = ctx.bounds_fn(network, lo, hi)
        return _prune.dead(network, lo, hi, bounds=bounds)


@dataclass(frozen=True)
class Quantize:
    bits: int = 8
    per_channel: bool = False
    scheme: str = "uniform"
    bias: bool = False
    bias_bits: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "bits", _quant.check_bits(self.bits))
        if self.scheme not in _quant.SCHEMES:
            raise OptionError(f"unknown quantization scheme {self.scheme!r} "
                              f"(expected one of {', '.join(_quant.SCHEMES)})")
        if self.bias_bits is not None:
            object.__setattr__(self, "bias_bits",
                               _quant.check_bits(self.bias_bits, "bias bit width"))

    @property
    def identity(self) -> bool:
        return self.bits == _quant.IDENTITY_BITS

    def spec(self) -> str:
        if self.identity:
            return "none"
        s = f"{'int' if self.scheme == 'uniform' else 'fixed'}{self.bits}"
        if self.per_channel:
            s += ":channel"
        if self.bias:
            s += ":bias" if self.bias_bits is None else f":bias={self.bias_bits}"
        return s

    def run(self, network: Network, ctx: Context) -> StepOutcome:
        return _quant.quantize(network, self.bits, per_channel=self.per_channel,
                               scheme=self.scheme, bias=self.bias, bias_bits=self.bias_bits)


Step = MagnitudePrune | NeuronPrune | DeadNeurons | Quantize | MergeLinear | Factorize
STEP_TYPES = (MagnitudePrune, NeuronPrune, DeadNeurons, Quantize, MergeLinear, Factorize)

_STEP_HELP = ("expected magnitude:R, neurons:R, remove:K.I, dead, intB, fixedB, none, "
              "merge-linear, merge-approx:T, svd:RANK or energy:E (B = bit width 2..16)")


def parse_step(text: str) -> Step:
    """Parse one step string (see the module docstring)."""
    if not isinstance(text, str) or not text.strip():
        raise OptionError(f"empty compression step ({_STEP_HELP})")
    s = text.strip().lower()
    head, *opts = [t.strip() for t in s.split(":")]
    if head in ("magnitude", "mag"):
        kw: dict = {}
        for o in opts:
            if o in ("global", "layer"):
                kw["scope"] = o
            elif o in ("nooutput", "no-output", "hidden"):
                kw["include_output"] = False
            elif o.startswith(("t=", "threshold=")):
                kw["threshold"] = _num(o.split("=", 1)[1], "pruning threshold")
            elif "ratio" not in kw:
                kw["ratio"] = _num(o, "pruning ratio")
            else:
                raise OptionError(f"unknown option {o!r} in {text!r}")
        if "ratio" not in kw and "threshold" not in kw:
            raise OptionError(f"{text!r}: magnitude pruning needs a ratio, e.g. magnitude:0.5")
        return MagnitudePrune(**kw)
    if head in ("neurons", "neuron", "structured"):
        kw = {}
        for o in opts:
            if o in ("global", "layer"):
                kw["scope"] = o
            elif o in ("norm", "activation"):
                kw["method"] = o
            elif o in ("act", "activations"):
                kw["method"] = "activation"
            elif "ratio" not in kw:
                kw["ratio"] = _num(o, "neuron pruning ratio")
            else:
                raise OptionError(f"unknown option {o!r} in {text!r}")
        if "ratio" not in kw:
            raise OptionError(f"{text!r}: neuron pruning needs a ratio, e.g. neurons:0.25")
        return NeuronPrune(**kw)
    if head == "remove":
        pairs = []
        for o in opts:
            m = re.fullmatch(r"(\d+)\.(\d+)", o)
            if not m:
                raise OptionError(f"{text!r}: neurons to remove are written LAYER.INDEX")
            pairs.append((int(m.group(1)), int(m.group(2))))
        if not pairs:
            raise OptionError(f"{text!r}: name the neurons to remove, e.g. remove:0.3:1.7")
        return NeuronPrune(neurons=tuple(pairs))
    if head in ("svd", "energy"):
        return parse_factorize(head, opts, text)
    if head in ("merge-linear", "merge-approx"):
        return parse_merge(head, opts, text)
    if head == "dead":
        if opts:
            raise OptionError(f"'dead' takes no options, got {text!r}")
        return DeadNeurons()
    if head == "none":
        if opts:
            raise OptionError(f"'none' takes no options, got {text!r}")
        return Quantize(bits=_quant.IDENTITY_BITS)
    m = re.fullmatch(r"(int|fixed)(\d+)", head)
    if m:
        kw = {"bits": int(m.group(2)), "scheme": "uniform" if m.group(1) == "int" else "fixed"}
        for o in opts:
            if o in ("channel", "per-channel", "perchannel", "row"):
                kw["per_channel"] = True
            elif o in ("tensor", "per-tensor"):
                kw["per_channel"] = False
            elif o == "bias":
                kw["bias"] = True
            elif o.startswith("bias="):
                kw["bias"] = True
                try:
                    kw["bias_bits"] = int(o.split("=", 1)[1])
                except ValueError:
                    raise OptionError(f"bias bit width must be an integer in {text!r}") from None
            else:
                raise OptionError(f"unknown option {o!r} in {text!r}")
        return Quantize(**kw)
    raise OptionError(f"unknown compression step {text!r} ({_STEP_HELP})")


# --------------------------------------------------------------------------------------
# recipes
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """An ordered tuple of steps; applying it yields one :class:`Variant`."""

    steps: tuple[Step, ...] = field(default_factory=tuple)

    def __post_init__(self):
        steps = tuple(self.steps)
        for s in steps:
            if not isinstance(s, STEP_TYPES):
                raise OptionError(f"not a compression step: {s!r}")
        for s in steps[:-1]:
            if isinstance(s, Factorize):
                raise OptionError(f"{s.spec()} must be the last step of a recipe (a later "
                                  "step would rewrite the composed weights)")
        object.__setattr__(self, "steps", steps)

    @classmethod
    def parse(cls, spec) -> "Recipe":
        """From ``"magnitude:0.5,int8"``, a list of step strings/steps, or a Recipe."""
        if isinstance(spec, Recipe):
            return spec
        if isinstance(spec, STEP_TYPES):
            return cls((spec,))
        if isinstance(spec, str):
            parts = [p for p in spec.split(",") if p.strip()]
            if not parts and spec.strip() == "":
                return cls(())
            return cls(tuple(parse_step(p) for p in parts))
        try:
            items = list(spec)
        except TypeError:
            raise OptionError(f"cannot read a recipe from {spec!r}") from None
        steps = []
        for it in items:
            steps.extend(cls.parse(it).steps)
        return cls(tuple(steps))

    def __str__(self) -> str:
        return ",".join(s.spec() for s in self.steps) or "identity"

    @property
    def slug(self) -> str:
        """A file-name friendly form, e.g. ``magnitude-0.5_int8``."""
        text = "_".join(s.spec() for s in self.steps) or "identity"
        return re.sub(r"[^A-Za-z0-9._=-]+", "-", text.replace(":", "-"))

    def then(self, *steps) -> "Recipe":
        return Recipe(self.steps + Recipe.parse(list(steps)).steps)

    def with_per_channel(self, per_channel: bool = True) -> "Recipe":
        return Recipe(tuple(replace(s, per_channel=per_channel) if isinstance(s, Quantize)
                            and not s.identity else s for s in self.steps))

    @property
    def needs_box(self) -> bool:
        return any(isinstance(s, DeadNeurons) or isinstance(s, MergeLinear) and s.exact
                   for s in self.steps)

    @property
    def needs_calibration(self) -> bool:
        return any(isinstance(s, NeuronPrune) and s.method == "activation" and not s.neurons
                   or isinstance(s, MergeLinear) and not s.exact for s in self.steps)

    def apply(self, network, *, box=None, calibration=None, bounds_fn=None,
              name: str | None = None) -> Variant:
        """Apply the steps in order to ``network`` (Network, nn.Module or file)."""
        parent = as_network(network)
        if box is not None:
            box = _prune.as_box(parent, box[0], box[1])
        ctx = Context(box=box, calibration=calibration, bounds_fn=bounds_fn)
        tracker = Tracker(parent)
        current = parent
        for step in self.steps:
            outcome = step.run(current, ctx)
            tracker.update(outcome, step.spec())
            current = outcome.network
        variant = current.with_affines(current.affines,
                                       name or (parent.name if not self.steps
                                                else f"{parent.name}~{self}"))
        return Variant(variant, build_record(parent, variant, tracker, str(self)),
                       dict(tracker.factors))


# --------------------------------------------------------------------------------------
# Python API
# --------------------------------------------------------------------------------------
def compress(network, recipe, *, box=None, calibration=None, bounds_fn=None) -> Variant:
    """Apply a recipe (string, list of steps or :class:`Recipe`) to one network."""
    return Recipe.parse(recipe).apply(network, box=box, calibration=calibration,
                                      bounds_fn=bounds_fn)


def sweep(network, recipes: Iterable, *, box=None, calibration=None, bounds_fn=None
          ) -> Iterator[Variant]:
    """Yield one variant per recipe, each applied to the same parent network."""
    parsed = [Recipe.parse(r) for r in recipes]
    parent = as_network(network)
    for r in parsed:
        yield r.apply(parent, box=box, calibration=calibration, bounds_fn=bounds_fn)


def magnitude_prune(network, ratio=None, *, threshold=None, scope: str = "layer",
                    include_output: bool = True) -> Variant:
    """Unstructured magnitude pruning (per layer or global; by ratio or threshold).

    ``threshold`` may also be a list with one threshold per affine layer (this
    form is not expressible as a step string; the record names the step
    ``magnitude:t=per-layer``)."""
    if threshold is not None and np.ndim(threshold) > 0:
        parent = as_network(network)
        outcome = _prune.magnitude(parent, threshold=list(threshold), scope=scope,
                                   include_output=include_output)
        tracker = Tracker(parent)
        spec = "magnitude:t=per-layer" + ("" if include_output else ":nooutput")
        tracker.update(outcome, spec)
        variant = outcome.network.with_affines(outcome.network.affines,
                                               f"{parent.name}~{spec}")
        return Variant(variant, build_record(parent, variant, tracker, spec))
    return Recipe((MagnitudePrune(ratio, threshold, scope, include_output),)).apply(network)


def prune_neurons(network, ratio=None, *, method: str = "norm", scope: str = "layer",
                  calibration=None, remove=None) -> Variant:
    """Structured pruning: delete hidden neurons (lowest score, or exactly ``remove``:
    a dict ``{layer: [indices]}`` or a list of ``(layer, index)`` pairs)."""
    if remove is not None:
        pairs = [(k, i) for k, idx in remove.items() for i in idx] if isinstance(remove, dict) \
            else [tuple(p) for p in remove]
        step = NeuronPrune(neurons=tuple(pairs), method=method, scope=scope)
        if ratio is not None:
            raise OptionError("give either a ratio or explicit neurons to remove, not both")
    else:
        step = NeuronPrune(ratio, method, scope)
    return Recipe((step,)).apply(network, calibration=calibration)


def remove_dead_neurons(network, lower, upper, *, bounds_fn=None) -> Variant:
    """Delete hidden neurons that are never active on the box ``[lower, upper]`` (exact)."""
    return Recipe((DeadNeurons(),)).apply(network, box=(lower, upper), bounds_fn=bounds_fn)


def quantize_weights(network, bits=8, *, per_channel: bool = False, scheme: str = "uniform",
                     bias: bool = False, bias_bits: int | None = None) -> Variant:
    """Symmetric weight quantization; ``bits`` is 2..16, 32 (identity), or a name
    such as ``"int8"``, ``"int4"``, ``"fixed8"``, ``"none"``."""
    if isinstance(bits, str):
        step = parse_step(bits)
        if not isinstance(step, Quantize):
            raise OptionError(f"{bits!r} is not a quantization")
        step = replace(step, per_channel=per_channel or step.per_channel,
                       bias=bias or step.bias, bias_bits=bias_bits or step.bias_bits)
    else:
        step = Quantize(bits, per_channel, scheme, bias, bias_bits)
    return Recipe((step,)).apply(network)


def fixed_point(network, bits=8, *, per_channel: bool = False, bias: bool = False,
                bias_bits: int | None = None) -> Variant:
    """Fixed-point quantization: power-of-two scales, fractional bits from max|w|."""
    return quantize_weights(network, bits, per_channel=per_channel, scheme="fixed", bias=bias,
                            bias_bits=bias_bits)
