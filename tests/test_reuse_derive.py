"""Variants without a change record: neurons matched by their weights, torch-pruned and
exported variants re-verified with the derived map, unrelated networks fall back soundly."""
from __future__ import annotations

import io

import numpy as np
import pytest

from compress import compress
from verify.api import VerifyOptions, local_robustness, verify_property
from verify.errors import ShapeMismatchError
from verify.network import Affine, Network
from verify.reuse import ReuseOptions
from verify.reuse.derive import derive_neuron_maps
from verify.reuse.reverify import reverify
from verify.result import Status

torch = pytest.importorskip("torch")
OPTS = VerifyOptions(timeout=30)


def _record_maps(v):
    return [np.array([-1 if j is None else j for j in lc.index_map]) for lc in v.record.layers]


@pytest.mark.parametrize("recipe", ["neurons:0.25", "neurons:0.4,int8", "neurons:0.2,int4:channel",
                                    "magnitude:0.3"])
def test_derived_maps_equal_the_change_record(digits_mlp, recipe):
    net, _, _ = digits_mlp
    v = compress(net, recipe)
    maps, how = derive_neuron_maps(net, v.network)
    assert how == ("position" if recipe == "magnitude:0.3" else "matched by weights")
    for got, want in zip(maps, _record_maps(v)):
        assert np.array_equal(got, want)


def test_shuffled_neurons_are_matched_back(digits_mlp):
    net, _, _ = digits_mlp
    v = compress(net, "neurons:0.25").network
    perm = np.random.default_rng(0).permutation(v.affines[0].out_size)
    a0, a1 = v.affines[0], v.affines[1]
    shuffled = v.with_affines([Affine(a0.weight[perm], a0.bias[perm]),
                               Affine(a1.weight[:, perm], a1.bias)] + list(v.affines[2:]))
    maps, _ = derive_neuron_maps(net, shuffled)
    kept = np.flatnonzero(_record_maps(compress(net, "neurons:0.25"))[0] >= 0)
    assert np.array_equal(maps[0][kept], np.argsort(perm))


def test_an_unrelated_network_is_not_matched(digits_mlp):
    net, _, _ = digits_mlp
    rng = np.random.default_rng(5)
    sizes = (64, 12, 16, 10)
    other = Network(tuple(Affine(rng.normal(size=(o, i)), rng.normal(size=o))
                          for i, o in zip(sizes[:-1], sizes[1:])), name="other")
    with pytest.raises(ShapeMismatchError, match="matches no neuron"):
        derive_neuron_maps(net, other)


def _torch_model(net: Network):
    layers = []
    for k, a in enumerate(net.affines):
        lin = torch.nn.Linear(a.in_size, a.out_size, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(a.weight))
            lin.bias.copy_(torch.from_numpy(a.bias))
        layers += [lin] + ([torch.nn.ReLU()] if k < net.n_layers - 1 else [])
    return torch.nn.Sequential(*layers)


def _export_and_load(model, n_in):
    from verify.onnx_io import load_onnx_model
    import onnx
    buf = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, n_in, dtype=torch.float64), buf, dynamo=False)
    return load_onnx_model(onnx.load_from_string(buf.getvalue()), "torch_pruned")


def _robust_point(net, x, y):
    for xi, yi in zip(x, y):
        prop = local_robustness(xi, 0.01, int(yi), net.n_outputs)
        if verify_property(net, prop, OPTS).status is Status.HOLDS:
            return prop
    pytest.fail("no point is robust at eps 0.01")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_pruned_and_exported_variant_is_reverified_with_a_derived_map(digits_mlp):
    net, x, y = digits_mlp
    model = _torch_model(net)
    import torch.nn.utils.prune as tprune
    tprune.ln_structured(model[0], "weight", amount=0.25, n=1, dim=0)  # zero 4 of 16 rows
    tprune.remove(model[0], "weight")
    keep = torch.nonzero(model[0].weight.abs().sum(dim=1) > 0).flatten()
    small = torch.nn.Sequential(torch.nn.Linear(64, len(keep), dtype=torch.float64), torch.nn.ReLU(),
                                torch.nn.Linear(len(keep), 16, dtype=torch.float64),
                                *list(model)[3:])
    with torch.no_grad():  # physically remove the zeroed neurons (as torch-pruning does)
        small[0].weight.copy_(model[0].weight[keep])
        small[0].bias.copy_(model[0].bias[keep])
        small[2].weight.copy_(model[2].weight[:, keep])
        small[2].bias.copy_(model[2].bias)
    variant = _export_and_load(small, 64)
    assert variant.hidden_sizes[0] == len(keep) < net.hidden_sizes[0]
    prop = _robust_point(net, x, y)
    # (the derived map is what is tested: equivalence transfer, tried first, is off)
    res = reverify(net, variant, prop, OPTS,
                   reuse_options=ReuseOptions(equivalence_transfer=False))
    scratch = verify_property(variant, prop, OPTS)
    assert res.reuse.change_map == "matched by weights" and not res.reuse.fallback
    assert res.status == scratch.status and res.status is not Status.UNKNOWN


def test_unrelated_variant_falls_back_to_scratch_and_says_so(digits_mlp):
    net, x, y = digits_mlp
    prop = _robust_point(net, x, y)
    rng = np.random.default_rng(7)
    sizes = (64, 12, 16, 10)
    other = Network(tuple(Affine(rng.normal(size=(o, i)) * 0.1, rng.normal(size=o) * 0.1)
                          for i, o in zip(sizes[:-1], sizes[1:])), name="other")
    res = reverify(net, other, prop, OPTS)
    assert res.reuse.fallback and "matches no neuron" in (res.reuse.fallback_reason or "")
    assert res.status == verify_property(other, prop, OPTS).status
