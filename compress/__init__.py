"""Compressed variants of ReLU networks with an exact record of what changed.

Quick tour::

    from compress import compress, sweep, Recipe, load_variant
    v = compress("net.onnx", "neurons:0.25,int8")     # -> Variant(network, record)
    v.record.map_neuron(2, 17)                        # parent neuron -> variant index
    v.save("out", "net.small")                        # out/net.small.onnx + .changes.json

Steps, their string forms and conventions are documented in
:mod:`compress.recipe`, :mod:`compress.prune`, :mod:`compress.quantize`,
:mod:`compress.factorize` (``svd:R`` / ``energy:E``), :mod:`compress.merge`
(``merge-linear`` / ``merge-approx``); the
change-record schema in :mod:`compress.record`; size/fidelity measures in
:mod:`compress.metrics`.
"""
from .core import Variant
from .factorize import Factorize
from .merge import MergeLinear
from .io import load_variant, save_variant
from .metrics import (accuracy, agreement, output_deviation, parameter_counts,
                      sample_box, storage_bytes)
from .quantize import IDENTITY_BITS, MAX_BITS, MIN_BITS
from .recipe import (DeadNeurons, MagnitudePrune, NeuronPrune, Quantize, Recipe, compress,
                     fixed_point, magnitude_prune, parse_step, prune_neurons,
                     quantize_weights, remove_dead_neurons, sweep)
from .record import SCHEMA, SCHEMA_VERSION, ChangeRecord, LayerChange

__all__ = [
    "Variant", "Recipe", "MagnitudePrune", "NeuronPrune", "DeadNeurons", "Quantize",
    "Factorize", "MergeLinear",
    "parse_step", "compress", "sweep", "magnitude_prune", "prune_neurons",
    "remove_dead_neurons", "quantize_weights", "fixed_point", "ChangeRecord", "LayerChange",
    "SCHEMA", "SCHEMA_VERSION", "save_variant", "load_variant", "parameter_counts",
    "storage_bytes", "output_deviation", "sample_box", "accuracy", "agreement",
    "MIN_BITS", "MAX_BITS", "IDENTITY_BITS",
]
