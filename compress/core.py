"""Shared machinery: network coercion, neuron removal, and the record builder."""
from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np

from verify.errors import OptionError
from verify.network import Affine, Network

from .record import ChangeRecord, LayerChange


def as_network(obj) -> Network:
    """A :class:`Network` from a Network, a torch ``nn.Module`` or a ``.onnx``/``.nnet`` path."""
    from verify.loading import load_network
    return load_network(obj)


def make_affine(weight, bias, weight_int=None, weight_scale=None) -> Affine:
    return Affine(np.asarray(weight, dtype=np.float64), np.asarray(bias, dtype=np.float64),
                  weight_int, weight_scale)


def slice_affine(a: Affine, rows=None, cols=None) -> Affine:
    """Keep the given output rows / input columns (index arrays; ``None`` keeps all)."""
    r = np.arange(a.out_size) if rows is None else np.asarray(rows, dtype=np.int64)
    c = np.arange(a.in_size) if cols is None else np.asarray(cols, dtype=np.int64)
    w = a.weight[np.ix_(r, c)]
    b = a.bias[r]
    if a.is_quantized:
        return make_affine(w, b, a.weight_int[np.ix_(r, c)], a.weight_scale[r])
    return make_affine(w, b)


def remove_neurons(network: Network, keep: dict[int, np.ndarray], name: str | None = None
                   ) -> Network:
    """Delete hidden neurons: ``keep[k]`` lists the kept neurons of hidden layer ``k``
    (sorted); their rows in layer ``k`` and columns in layer ``k+1`` stay."""
    affines = list(network.affines)
    for k, kept in keep.items():
        if not 0 <= k < network.n_layers - 1:
            raise OptionError(f"layer {k} is not a hidden layer")
    new = []
    for k, a in enumerate(affines):
        rows = keep.get(k)
        cols = keep.get(k - 1)
        if rows is None and cols is None:
            new.append(a)
        else:
            new.append(slice_affine(a, rows, cols))
    return network.with_affines(new, name)


# --------------------------------------------------------------------------------------
# step outcomes and recipe state
# --------------------------------------------------------------------------------------
@dataclass
class StepOutcome:
    """What one step did, in terms of the network it was applied to."""

    network: Network
    kept: dict[int, np.ndarray] = field(default_factory=dict)  # hidden layer -> kept indices
    reason: str = "pruned"  # "pruned", "dead" or "merged" (compress.merge)
    quant: dict[int, dict] = field(default_factory=dict)  # layer -> bits/scheme/...
    summary: dict = field(default_factory=dict)
    box: tuple[np.ndarray, np.ndarray] | None = None
    factors: dict = field(default_factory=dict)  # layer -> compress.factorize.Factor


class Tracker:
    """Composes step outcomes into parent -> current index maps."""

    def __init__(self, parent: Network):
        self.parent = parent
        # maps[k][i] = current index of parent neuron i of affine layer k, -1 if removed
        self.maps = [np.arange(a.out_size) for a in parent.affines]
        self.dead = [set() for _ in parent.affines]
        self.pruned = [set() for _ in parent.affines]
        self.merged = [set() for _ in parent.affines]
        self.factors: dict = {}  # layer -> Factor (factorization is the last step)
        self.quant: list[dict | None] = [None] * parent.n_layers
        self.steps: list[dict] = []
        self.boxes: list[tuple[np.ndarray, np.ndarray]] = []

    def update(self, outcome: StepOutcome, spec: str) -> None:
        for k, kept in outcome.kept.items():
            kept = np.asarray(kept, dtype=np.int64)
            old = self.maps[k]
            alive = old >= 0
            cur_to_new = np.full(int(alive.sum()), -1, dtype=np.int64)
            cur_to_new[kept] = np.arange(kept.size)
            new = np.full_like(old, -1)
            new[alive] = cur_to_new[old[alive]]
            gone = np.flatnonzero(alive & (new < 0))
            kind = {"dead": self.dead, "merged": self.merged}.get(outcome.reason, self.pruned)
            kind[k].update(int(i) for i in gone)
            self.maps[k] = new
        self.factors.update(outcome.factors)
        for k, q in outcome.quant.items():
            self.quant[k] = q
        if outcome.box is not None:
            self.boxes.append(outcome.box)
        self.steps.append({"step": spec, **outcome.summary})


def _max(x) -> float:
    x = np.asarray(x)
    return float(np.max(x)) if x.size else 0.0


def build_record(parent: Network, variant: Network, tracker: Tracker, recipe: str
                 ) -> ChangeRecord:
    """Diff ``variant`` against ``parent`` through the tracked index maps."""
    layers = []
    preserving = True
    prev_kept = np.arange(parent.n_inputs)
    for k, (pa, va) in enumerate(zip(parent.affines, variant.affines)):
        m = tracker.maps[k]
        kept = np.flatnonzero(m >= 0)
        if not np.array_equal(m[kept], np.arange(va.out_size)) or \
                prev_kept.size != va.in_size:
            raise AssertionError(f"internal error: index map of layer {k} does not fit")
        wp = pa.weight[np.ix_(kept, prev_kept)]
        wv = va.weight
        bp = pa.bias[kept]
        bv = va.bias
        zeroed = (wp != 0) & (wv == 0)
        revalued = (wv != 0) & (wv != wp)
        bias_changed = bv != bp
        q = tracker.quant[k] or {}
        lc = LayerChange(
            layer=k,
            index_map=tuple(None if v < 0 else int(v) for v in m),
            removed_dead=tuple(sorted(tracker.dead[k])),
            removed_pruned=tuple(sorted(tracker.pruned[k])),
            removed_merged=tuple(sorted(tracker.merged[k])),
            factor_rank=tracker.factors[k].rank if k in tracker.factors else None,
            weights_removed=int(pa.weight.size - wv.size),
            weights_zeroed=int(zeroed.sum()),
            max_zeroed_magnitude=_max(np.abs(wp[zeroed])),
            weights_revalued=int(revalued.sum()),
            max_weight_change=_max(np.abs(wv - wp)[revalued]),
            biases_revalued=int(bias_changed.sum()),
            max_bias_change=_max(np.abs(bv - bp)[bias_changed]),
            bits=q.get("bits"),
            scheme=q.get("scheme"),
            granularity=q.get("granularity"),
            scales=None if not va.is_quantized else tuple(float(s) for s in va.weight_scale),
            bias_bits=q.get("bias_bits"),
            bias_scale=q.get("bias_scale"),
        )
        if lc.removed_pruned or lc.weights_zeroed or lc.weights_revalued or lc.biases_revalued:
            preserving = False
        # weights of deleted columns of *pruned* (not dead) neurons change the function;
        # that is already covered by removed_pruned of the previous layer.
        layers.append(lc)
        prev_kept = kept
    box = None
    if tracker.boxes:
        lo = np.max([b[0] for b in tracker.boxes], axis=0)
        hi = np.min([b[1] for b in tracker.boxes], axis=0)
        box = (tuple(float(v) for v in lo), tuple(float(v) for v in hi))
    rec = ChangeRecord(
        parent_digest=parent.digest(),
        variant_digest=variant.digest(),
        recipe=recipe,
        layers=tuple(layers),
        parent_sizes=tuple(int(s) for s in parent.layer_sizes()),
        variant_sizes=tuple(int(s) for s in variant.layer_sizes()),
        parent_name=parent.name,
        variant_name=variant.name,
        function_preserving=preserving,
        exact_on_box=box,
        steps=tuple(tracker.steps),
    )
    rec.check()
    return rec


@dataclass(frozen=True, eq=False)
class Variant:
    """A compressed network together with the record of how it differs from its parent."""

    network: Network
    record: ChangeRecord
    # layer -> compress.factorize.Factor: the thin factors the deployable file holds
    # (the network holds their composition)
    factors: dict = field(default_factory=dict)

    def to_torch(self):
        """The variant as a torch ``nn.Module`` (via :func:`verify.torch_io.to_torch`)."""
        from verify.torch_io import to_torch
        return to_torch(self.network)

    def save(self, out_dir, stem: str):
        from .io import save_variant
        return save_variant(self.network, self.record, out_dir, stem, factors=self.factors)

    def map_neuron(self, layer: int, index: int) -> int | None:
        return self.record.map_neuron(layer, index)
