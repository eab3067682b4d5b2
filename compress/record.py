"""The change record: an exact, versioned account of what compression changed.

A :class:`ChangeRecord` relates a *variant* network to its *parent* (the
network the recipe was applied to).  It is written next to the variant as
``STEM.changes.json`` and is enough for a verifier to

* check that it has the right pair of networks (``parent_digest`` /
  ``variant_digest`` are :meth:`verify.network.Network.digest` values);
* map a named neuron ``(layer, index)`` of the parent onto the variant
  (:meth:`ChangeRecord.map_neuron`; ``None`` when the neuron was removed);
* know, per affine layer, how many weights were removed with deleted
  neurons, zeroed, or given a new value (and the largest change), which
  neurons were removed as provably dead on a box (exact), merged into the next
  layer as provably active on a box (:mod:`compress.merge`: exact on that box up
  to float rounding, or approximate from calibration data) or pruned (changes
  the function), the quantization grid (bits and per-row scales, so ``weight ==
  weight_int * scale``), and the rank of a factorised layer (its weight is the
  composition of two thin factors, :mod:`compress.factorize`).

Layer numbering follows :mod:`verify.network`: ``layer`` counts affine layers
from 0, the last affine layer is the output layer; "neuron i of layer k" is
output ``i`` of affine layer ``k``.  Inputs and outputs are never removed.

JSON schema (``schema == "coreproof.changes"``, ``version == 1``)::

    {
      "schema": "coreproof.changes", "version": 1,
      "parent_digest": hex, "variant_digest": hex,
      "parent_name": str, "variant_name": str,
      "recipe": "magnitude:0.5,int8",          # Recipe string, parseable again
      "function_preserving": bool,            # true iff the only changes are removals of
                                              # dead neurons (then: same function on
                                              # exact_on_box) or nothing at all
      "exact_on_box": [[lo...], [hi...]] | null,  # box the dead-neuron removal used
      "parent_sizes": [n_in, n_1, ..., n_out], "variant_sizes": [...],
      "steps": [{"step": "magnitude:0.5", ...summary...}, ...],
      "layers": [ {                                # one per affine layer
          "layer": k,
          "index_map": [new index or null for every parent neuron of layer k],
          "removed_dead": [parent indices removed as dead on the box],
          "removed_pruned": [parent indices removed by structured pruning],
          "removed_merged": [parent indices merged into layer k+1] (optional),
          "weights_removed": int,     # parent weights gone with deleted rows/columns
          "weights_zeroed": int,      # kept positions: parent != 0, variant == 0
          "max_zeroed_magnitude": float,
          "weights_revalued": int,    # kept positions: variant != 0 and != parent
          "max_weight_change": float, # max |variant - parent| over re-valued weights
          "biases_revalued": int, "max_bias_change": float,
          "bits": int | null,         # weight bit width when quantized
          "scheme": "uniform" | "fixed" | null,
          "granularity": "tensor" | "channel" | null,
          "scales": [float per output row] | null,
          "bias_bits": int | null, "bias_scale": float | null,
          "factor_rank": int | null   # (optional) rank r: weight = U (out x r) @ V (r x in)
      }, ... ]

The optional keys were added within version 1: a record without them reads as
"nothing merged, nothing factorised".
    }
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from verify.errors import InputError, OptionError

SCHEMA = "coreproof.changes"
SCHEMA_VERSION = 1


def _opt_float(x):
    return None if x is None else float(x)


@dataclass(frozen=True)
class LayerChange:
    """What changed in one affine layer (see the module docstring)."""

    layer: int
    index_map: tuple[int | None, ...]
    removed_dead: tuple[int, ...] = ()
    removed_pruned: tuple[int, ...] = ()
    removed_merged: tuple[int, ...] = ()
    weights_removed: int = 0
    weights_zeroed: int = 0
    max_zeroed_magnitude: float = 0.0
    weights_revalued: int = 0
    max_weight_change: float = 0.0
    biases_revalued: int = 0
    max_bias_change: float = 0.0
    bits: int | None = None
    scheme: str | None = None
    granularity: str | None = None
    scales: tuple[float, ...] | None = None
    bias_bits: int | None = None
    bias_scale: float | None = None
    factor_rank: int | None = None

    @property
    def removed(self) -> tuple[int, ...]:
        """All removed parent neurons of this layer, ascending."""
        return tuple(sorted(self.removed_dead + self.removed_pruned + self.removed_merged))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["index_map"] = list(self.index_map)
        d["removed_dead"] = list(self.removed_dead)
        d["removed_pruned"] = list(self.removed_pruned)
        d["removed_merged"] = list(self.removed_merged)
        d["scales"] = None if self.scales is None else [float(s) for s in self.scales]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LayerChange":
        scales = d.get("scales")
        return cls(
            layer=int(d["layer"]),
            index_map=tuple(None if v is None else int(v) for v in d["index_map"]),
            removed_dead=tuple(int(v) for v in d.get("removed_dead", ())),
            removed_pruned=tuple(int(v) for v in d.get("removed_pruned", ())),
            removed_merged=tuple(int(v) for v in d.get("removed_merged", ())),
            weights_removed=int(d.get("weights_removed", 0)),
            weights_zeroed=int(d.get("weights_zeroed", 0)),
            max_zeroed_magnitude=float(d.get("max_zeroed_magnitude", 0.0)),
            weights_revalued=int(d.get("weights_revalued", 0)),
            max_weight_change=float(d.get("max_weight_change", 0.0)),
            biases_revalued=int(d.get("biases_revalued", 0)),
            max_bias_change=float(d.get("max_bias_change", 0.0)),
            bits=None if d.get("bits") is None else int(d["bits"]),
            scheme=d.get("scheme"),
            granularity=d.get("granularity"),
            scales=None if scales is None else tuple(float(s) for s in scales),
            bias_bits=None if d.get("bias_bits") is None else int(d["bias_bits"]),
            bias_scale=_opt_float(d.get("bias_scale")),
            factor_rank=None if d.get("factor_rank") is None else int(d["factor_rank"]),
        )


@dataclass(frozen=True)
class ChangeRecord:
    """Versioned record relating a compressed variant to its parent network."""

    parent_digest: str
    variant_digest: str
    recipe: str
    layers: tuple[LayerChange, ...]
    parent_sizes: tuple[int, ...]
    variant_sizes: tuple[int, ...]
    parent_name: str = "network"
    variant_name: str = "network"
    function_preserving: bool = True
    exact_on_box: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    steps: tuple[dict, ...] = field(default_factory=tuple)
    version: int = SCHEMA_VERSION

    # ---- neuron mapping -----------------------------------------------------
    def _layer(self, layer: int) -> LayerChange:
        if not isinstance(layer, (int, np.integer)) or not 0 <= layer < len(self.layers):
            raise OptionError(f"layer {layer} out of range: the parent has "
                              f"{len(self.layers)} affine layers (0..{len(self.layers) - 1})")
        return self.layers[int(layer)]

    def map_neuron(self, layer: int, index: int) -> int | None:
        """Index in the variant of parent neuron ``(layer, index)``; ``None`` if removed."""
        lc = self._layer(layer)
        if not isinstance(index, (int, np.integer)) or not 0 <= index < len(lc.index_map):
            raise OptionError(f"neuron {index} out of range: layer {layer} of the parent has "
                              f"{len(lc.index_map)} neurons")
        return lc.index_map[int(index)]

    def parent_neuron(self, layer: int, index: int) -> int:
        """Inverse of :meth:`map_neuron`: parent index of variant neuron ``(layer, index)``."""
        lc = self._layer(layer)
        for old, new in enumerate(lc.index_map):
            if new == index:
                return old
        raise OptionError(f"neuron {index} out of range for layer {layer} of the variant")

    def removed_neurons(self, layer: int) -> tuple[int, ...]:
        return self._layer(layer).removed

    @property
    def n_removed_neurons(self) -> int:
        return sum(len(lc.removed) for lc in self.layers)

    @property
    def n_weights_zeroed(self) -> int:
        return sum(lc.weights_zeroed for lc in self.layers)

    @property
    def n_weights_revalued(self) -> int:
        return sum(lc.weights_revalued for lc in self.layers)

    # ---- (de)serialisation ----------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "version": self.version,
            "parent_digest": self.parent_digest,
            "variant_digest": self.variant_digest,
            "parent_name": self.parent_name,
            "variant_name": self.variant_name,
            "recipe": self.recipe,
            "function_preserving": bool(self.function_preserving),
            "exact_on_box": None if self.exact_on_box is None
            else [list(map(float, self.exact_on_box[0])), list(map(float, self.exact_on_box[1]))],
            "parent_sizes": list(self.parent_sizes),
            "variant_sizes": list(self.variant_sizes),
            "steps": [dict(s) for s in self.steps],
            "layers": [lc.to_dict() for lc in self.layers],
        }

    @classmethod
    def from_dict(cls, d: dict, *, path: str | None = None) -> "ChangeRecord":
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise InputError("not a coreproof change record", path=path,
                             expected=f'a JSON object with "schema": "{SCHEMA}"')
        version = d.get("version")
        if version != SCHEMA_VERSION:
            raise InputError(f"unsupported change-record version {version!r}", path=path,
                             expected=f"version {SCHEMA_VERSION}")
        try:
            box = d.get("exact_on_box")
            rec = cls(
                parent_digest=str(d["parent_digest"]),
                variant_digest=str(d["variant_digest"]),
                recipe=str(d["recipe"]),
                layers=tuple(LayerChange.from_dict(x) for x in d["layers"]),
                parent_sizes=tuple(int(v) for v in d["parent_sizes"]),
                variant_sizes=tuple(int(v) for v in d["variant_sizes"]),
                parent_name=str(d.get("parent_name", "network")),
                variant_name=str(d.get("variant_name", "network")),
                function_preserving=bool(d.get("function_preserving", False)),
                exact_on_box=None if box is None
                else (tuple(float(v) for v in box[0]), tuple(float(v) for v in box[1])),
                steps=tuple(dict(s) for s in d.get("steps", ())),
                version=int(version),
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError,
                OverflowError) as exc:
            raise InputError(f"malformed change record ({exc.__class__.__name__}: {exc})",
                             path=path) from None
        rec.check()
        return rec

    def to_json(self) -> str:
        """JSON text: one top-level key per line, one step / layer entry per line."""
        parts = []
        for key, value in self.to_dict().items():
            if key in ("steps", "layers") and value:
                inner = ",\n  ".join(json.dumps(v, allow_nan=False) for v in value)
                parts.append(f' "{key}": [\n  {inner}\n ]')
            else:
                parts.append(f" {json.dumps(key)}: {json.dumps(value, allow_nan=False)}")
        return "{\n" + ",\n".join(parts) + "\n}"

    def save(self, path) -> Path:
        from verify.atomic import atomic_write
        path = Path(path)
        atomic_write(path, self.to_json() + "\n")  # never a partial record
        return path

    @classmethod
    def load(cls, path) -> "ChangeRecord":
        path = Path(path)
        if not path.is_file():
            raise InputError("no such change record", path=str(path))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # incl. undecodable bytes
            raise InputError(f"cannot read change record: {exc}", path=str(path)) from None
        return cls.from_dict(data, path=str(path))

    # ---- consistency -----------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`InputError` if the record is internally inconsistent."""
        if len(self.layers) != len(self.parent_sizes) - 1 or \
                len(self.variant_sizes) != len(self.parent_sizes):
            raise InputError("change record: layer count does not match the sizes")
        for k, lc in enumerate(self.layers):
            if lc.layer != k:
                raise InputError(f"change record: layer entry {k} is numbered {lc.layer}")
            if len(lc.index_map) != self.parent_sizes[k + 1]:
                raise InputError(f"change record: layer {k} index map has {len(lc.index_map)} "
                                 f"entries, the parent layer has {self.parent_sizes[k + 1]}")
            kept = [v for v in lc.index_map if v is not None]
            if kept != list(range(self.variant_sizes[k + 1])):
                raise InputError(f"change record: layer {k} index map is not a monotone "
                                 f"map onto 0..{self.variant_sizes[k + 1] - 1}")
            removed = [i for i, v in enumerate(lc.index_map) if v is None]
            if sorted(lc.removed) != removed:
                raise InputError(f"change record: layer {k} removed neurons do not match "
                                 f"its index map")
            if lc.scales is not None:
                if len(lc.scales) != self.variant_sizes[k + 1]:
                    raise InputError(f"change record: layer {k} has {len(lc.scales)} scales "
                                     f"for {self.variant_sizes[k + 1]} rows")
                if not all(math.isfinite(s) and s > 0 for s in lc.scales):
                    raise InputError(f"change record: layer {k} has a non-positive scale")
