"""Tests for the compress package: pruning, quantization, recipes, change records, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from compress import (ChangeRecord, DeadNeurons, MagnitudePrune, NeuronPrune, Quantize,
                      Recipe, compress, fixed_point, load_variant, magnitude_prune,
                      output_deviation, parameter_counts, parse_step, prune_neurons,
                      quantize_weights, remove_dead_neurons, sample_box, save_variant,
                      storage_bytes, sweep)
from compress.cli import compress_cmd
from verify.errors import CoreproofError, InputError, OptionError
from verify.network import Affine, Network

DATA = Path("/work/shared/data")
ACAS = DATA / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx"
PROP3 = DATA / "acasxu" / "prop_3.vnnlib"
needs_acas = pytest.mark.skipif(not ACAS.is_file(), reason="ACAS Xu data not available")


# --------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------
def random_net(sizes=(6, 12, 10, 8, 4), seed=0, bias_shift=0.0) -> Network:
    rng = np.random.default_rng(seed)
    affines = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        w = rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)
        b = rng.normal(size=n_out) * 0.1 + bias_shift
        affines.append(Affine(w, b))
    return Network(tuple(affines), name="rand")


def interval_bounds(network: Network, lower, upper):
    """Plain interval propagation (sound; used independently of verify.bounds)."""
    lo, hi = np.asarray(lower, float), np.asarray(upper, float)
    out = []
    for k, a in enumerate(network.affines):
        wp, wn = np.maximum(a.weight, 0), np.minimum(a.weight, 0)
        l = wp @ lo + wn @ hi + a.bias
        u = wp @ hi + wn @ lo + a.bias
        out.append((l, u))
        lo, hi = np.maximum(l, 0), np.maximum(u, 0)
    return out


def ibp_fn(network, lower, upper):
    return interval_bounds(network, lower, upper)


@pytest.fixture(scope="module")
def digits():
    """A small torch MLP (64-32-32-10) trained for a moment on sklearn digits."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from verify.torch_io import from_torch

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))
    train, test = perm[:1400], perm[1400:]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
    net = from_torch(model)
    return model, net, x[test].astype(np.float64), y[test], x[train].astype(np.float64)


def zero_outgoing(network: Network, removed: dict[int, list[int]]) -> Network:
    """The original network with the outgoing weights of the given neurons zeroed."""
    affines = list(network.affines)
    for k, idx in removed.items():
        a = affines[k + 1]
        w = np.array(a.weight)
        w[:, idx] = 0.0
        affines[k + 1] = Affine(w, a.bias)
    return network.with_affines(affines)


def removed_by_layer(record: ChangeRecord) -> dict[int, list[int]]:
    return {lc.layer: list(lc.removed) for lc in record.layers if lc.removed}


# --------------------------------------------------------------------------------------
# identity cases
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["magnitude:0", "magnitude:0:global", "magnitude:t=0",
                                    "neurons:0", "neurons:0:global", "none", "int32",
                                    "fixed32", "magnitude:0,none", ""])
def test_identity_recipes(recipe):
    net = random_net()
    v = compress(net, recipe)
    for a, b in zip(net.affines, v.network.affines):
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
    x = np.random.default_rng(1).normal(size=(50, net.n_inputs))
    assert np.array_equal(net.forward(x), v.network.forward(x))
    assert v.record.parent_digest == v.record.variant_digest == net.digest()
    assert v.record.function_preserving
    assert v.record.n_weights_zeroed == v.record.n_weights_revalued == 0
    assert all(v.record.map_neuron(k, i) == i for k in range(net.n_layers)
               for i in range(net.affines[k].out_size))


def test_identity_api_and_32_bit_keeps_existing_integers():
    net = random_net()
    assert magnitude_prune(net, 0.0).network.digest() == net.digest()
    assert prune_neurons(net, 0.0).network.digest() == net.digest()
    assert quantize_weights(net, 32).network.digest() == net.digest()
    q = quantize_weights(net, 8).network
    q32 = quantize_weights(q, "none").network
    assert q32.digest() == q.digest()
    assert all(np.array_equal(a.weight_int, b.weight_int) for a, b in zip(q.affines, q32.affines))


# --------------------------------------------------------------------------------------
# quantization
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8, 12, 16])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("scheme", ["uniform", "fixed"])
def test_quantization_error_at_most_half_a_step(bits, per_channel, scheme):
    net = random_net(seed=bits)
    v = quantize_weights(net, bits, per_channel=per_channel, scheme=scheme)
    qmax = 2 ** (bits - 1) - 1
    for k, (a, q) in enumerate(zip(net.affines, v.network.affines)):
        assert q.is_quantized
        scale = q.weight_scale
        assert np.array_equal(q.weight, q.weight_int * scale[:, None])  # exact
        assert np.abs(q.weight_int).max() <= qmax
        err = np.abs(a.weight - q.weight)
        assert np.all(err <= scale[:, None] / 2 * (1 + 1e-12))
        assert np.array_equal(q.bias, a.bias)  # biases untouched by default
        if scheme == "uniform":
            m = np.abs(a.weight).max(axis=1) if per_channel else np.abs(a.weight).max()
            # the smallest float32 number >= max|w| / qmax (a written variant's scale)
            exact = np.broadcast_to(m / qmax, scale.shape)
            assert np.all(scale >= exact)
            assert np.all(scale.astype(np.float32).astype(np.float64) == scale)
            below = np.nextafter(scale.astype(np.float32), np.float32(0)).astype(np.float64)
            assert np.all(below < exact)
        else:
            f = -np.log2(scale)
            assert np.array_equal(f, np.round(f))  # power of two
            m = np.abs(a.weight).max(axis=1) if per_channel else np.abs(a.weight).max()
            assert np.all(m / scale <= qmax) and np.all(2 * m / scale > qmax)
        if not per_channel:
            assert np.all(scale == scale[0])
        lc = v.record.layers[k]
        assert lc.bits == bits and lc.scheme == scheme
        assert lc.granularity == ("channel" if per_channel else "tensor")
        assert list(lc.scales) == list(scale)
        assert lc.max_weight_change <= scale.max() / 2 * (1 + 1e-12)


def test_bias_quantization_and_fixed_point_names():
    net = random_net()
    v = quantize_weights(net, "int4:bias=6", per_channel=True)
    for a, q, lc in zip(net.affines, v.network.affines, v.record.layers):
        exact = np.abs(a.bias).max() / 31  # rounded up to the next float32 number
        assert lc.bias_bits == 6 and lc.bias_scale >= exact
        assert float(np.float32(lc.bias_scale)) == lc.bias_scale
        assert float(np.nextafter(np.float32(lc.bias_scale), np.float32(0))) < exact
        assert np.all(np.abs(q.bias - a.bias) <= lc.bias_scale / 2 * (1 + 1e-12))
        assert np.array_equal(np.round(q.bias / lc.bias_scale) * lc.bias_scale, q.bias)
    f = fixed_point(net, 8)
    assert all(lc.scheme == "fixed" and lc.bits == 8 for lc in f.record.layers)
    assert str(Recipe.parse("fixed8:channel:bias")) == "fixed8:channel:bias"


@pytest.mark.parametrize("bits", [1, 0, -3, 17, 24, 31, 33, 64, 8.5, True, "8"])
def test_bad_bit_widths(bits):
    with pytest.raises(OptionError):
        quantize_weights(random_net(), bits) if not isinstance(bits, str) else \
            Quantize(bits)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["int1", "int17", "int31", "int33", "fixed0", "int8:foo",
                                  "float8", "int8:bias=40"])
def test_bad_quantization_strings(text):
    with pytest.raises(OptionError):
        parse_step(text)


# --------------------------------------------------------------------------------------
# magnitude pruning
# --------------------------------------------------------------------------------------
def test_magnitude_per_layer_counts_and_biases():
    net = random_net()
    v = magnitude_prune(net, 0.5)
    for a, p, lc in zip(net.affines, v.network.affines, v.record.layers):
        n = a.weight.size
        assert int((p.weight == 0).sum()) == int(np.floor(0.5 * n + 0.5))
        assert lc.weights_zeroed == int(np.floor(0.5 * n + 0.5))
        kept = p.weight != 0
        assert np.array_equal(p.weight[kept], a.weight[kept])
        assert np.abs(a.weight[~kept]).max() <= np.abs(a.weight[kept]).min()
        assert np.array_equal(p.bias, a.bias)
        assert lc.weights_revalued == 0


def test_magnitude_global_threshold_and_output_layer():
    net = random_net()
    all_w = np.concatenate([np.abs(a.weight).ravel() for a in net.affines])
    v = magnitude_prune(net, 0.3, scope="global")
    zeros = sum(int((a.weight == 0).sum()) for a in v.network.affines)
    assert zeros == int(np.floor(0.3 * all_w.size + 0.5))
    cut = np.sort(all_w)[zeros - 1]
    for a in v.network.affines:
        assert np.all(np.abs(a.weight[a.weight != 0]) >= cut)
    t = magnitude_prune(net, threshold=0.2, include_output=False)
    for k, (a, p) in enumerate(zip(net.affines, t.network.affines)):
        if k == net.n_layers - 1:
            assert np.array_equal(a.weight, p.weight)
        else:
            assert np.array_equal(p.weight, np.where(np.abs(a.weight) < 0.2, 0, a.weight))
    per = magnitude_prune(net, threshold=[0.0, 0.5, 0.0, 0.0])
    assert np.array_equal(per.network.affines[0].weight, net.affines[0].weight)
    assert per.record.layers[1].weights_zeroed == int((np.abs(net.affines[1].weight) < .5).sum())


def test_pruning_a_quantized_network_keeps_integers():
    net = quantize_weights(random_net(), 8).network
    v = compress(net, "magnitude:0.5,neurons:0.25")
    for a in v.network.affines:
        assert a.is_quantized
        assert np.array_equal(a.weight, a.weight_int * a.weight_scale[:, None])


@pytest.mark.parametrize("text", ["magnitude:1.5", "magnitude:-0.1", "magnitude:abc",
                                  "magnitude", "magnitude:0.5:sideways", "neurons:2",
                                  "neurons:0.2:bogus", "neurons", "prune:0.5", "dead:1",
                                  "remove:3", "magnitude:t=-1", "magnitude:nan"])
def test_bad_step_strings(text):
    with pytest.raises(OptionError):
        parse_step(text)


def test_bad_api_arguments():
    net = random_net()
    with pytest.raises(OptionError):
        magnitude_prune(net, 1.2)
    with pytest.raises(OptionError):
        magnitude_prune(net, 0.5, threshold=0.1)
    with pytest.raises(OptionError):
        prune_neurons(net, 0.5, method="magic")
    with pytest.raises(OptionError):
        prune_neurons(net, 0.5, method="activation")  # no calibration data
    with pytest.raises(OptionError):
        prune_neurons(net, remove={0: list(range(12))})  # would empty the layer
    with pytest.raises(OptionError):
        prune_neurons(net, remove={3: [0]})  # output layer is not hidden
    with pytest.raises(OptionError):
        compress(net, "dead")  # no box
    with pytest.raises(InputError):
        compress("/nonexistent/net.onnx", "int8")


# --------------------------------------------------------------------------------------
# structured pruning
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["neurons:0.25", "neurons:0.5:global", "neurons:0.4",
                                    "remove:0.1:0.5:2.7"])
def test_structured_pruning_equals_removed_contributions(recipe):
    net = random_net()
    v = compress(net, recipe)
    removed = removed_by_layer(v.record)
    assert removed
    reference = zero_outgoing(net, removed)
    x = np.random.default_rng(2).normal(size=(200, net.n_inputs))
    assert np.allclose(v.network.forward(x), reference.forward(x), rtol=1e-12, atol=1e-12)
    assert not v.record.function_preserving
    for k, idx in removed.items():
        assert v.network.affines[k].out_size == net.affines[k].out_size - len(idx)
        assert set(v.record.layers[k].removed_pruned) == set(idx)


def test_structured_pruning_removes_lowest_norm_scores():
    net = random_net()
    v = prune_neurons(net, 0.25)
    for k in range(net.n_layers - 1):
        score = (np.linalg.norm(net.affines[k].weight, axis=1)
                 * np.linalg.norm(net.affines[k + 1].weight, axis=0))
        n_drop = int(np.floor(0.25 * score.size + 0.5))
        assert sorted(v.record.removed_neurons(k)) == sorted(np.argsort(score)[:n_drop].tolist())


def test_structured_pruning_by_activation_on_digits(digits):
    model, net, x_test, y_test, x_train = digits
    v = prune_neurons(net, 0.25, method="activation", calibration=x_train[:500])
    removed = removed_by_layer(v.record)
    means = [np.maximum(p, 0).mean(axis=0) for p in net.pre_activations(x_train[:500])[:-1]]
    for k, idx in removed.items():
        assert len(idx) == 8
        assert np.max(means[k][idx]) <= np.min(np.delete(means[k], idx))
    ref = zero_outgoing(net, removed)
    assert np.allclose(v.network.forward(x_test), ref.forward(x_test), rtol=1e-12, atol=1e-12)


def test_torch_round_trip(digits):
    torch = pytest.importorskip("torch")
    model, net, x_test, y_test, _ = digits
    v = compress(model, "neurons:0.25,int8")  # an nn.Module in memory
    assert v.record.parent_digest == net.digest()
    module = v.to_torch()
    with torch.no_grad():
        out = module(torch.from_numpy(x_test)).numpy()
    assert np.allclose(out, v.network.forward(x_test), rtol=1e-12, atol=1e-12)
    acc0 = np.mean(net.forward(x_test).argmax(1) == y_test)
    acc = np.mean(v.network.forward(x_test).argmax(1) == y_test)
    assert acc0 > 0.9 and acc > 0.8


# --------------------------------------------------------------------------------------
# dead-neuron removal
# --------------------------------------------------------------------------------------
def test_dead_neurons_exact_on_box_with_own_bounds():
    net = random_net(sizes=(5, 30, 30, 30, 3), seed=3, bias_shift=-0.6)
    lo, hi = -0.5 * np.ones(5), 0.5 * np.ones(5)
    v = remove_dead_neurons(net, lo, hi, bounds_fn=ibp_fn)
    bounds = interval_bounds(net, lo, hi)
    for k in range(net.n_layers - 1):
        dead = np.flatnonzero(bounds[k][1] <= 0).tolist()
        assert list(v.record.layers[k].removed_dead) == dead
    assert v.record.n_removed_neurons > 0
    assert v.record.function_preserving
    assert v.record.exact_on_box == (tuple(lo), tuple(hi))
    x = sample_box(lo, hi, 2000, seed=5)
    assert np.allclose(v.network.forward(x), net.forward(x), rtol=1e-12, atol=1e-12)


def test_dead_neurons_match_verifier_bounds():
    pytest.importorskip("verify.bounds")
    from verify.bounds import layer_bounds
    net = random_net(sizes=(5, 30, 30, 30, 3), seed=4, bias_shift=-0.5)
    lo, hi = -0.5 * np.ones(5), 0.5 * np.ones(5)
    v = remove_dead_neurons(net, lo, hi)
    bounds = layer_bounds(net, lo, hi)
    for k in range(net.n_layers - 1):
        expect = np.flatnonzero(bounds[k][1] <= 0)
        if expect.size == net.affines[k].out_size:  # a whole dead layer keeps one neuron
            expect = np.delete(expect, np.argmax(bounds[k][1]))
        assert list(v.record.layers[k].removed_dead) == expect.tolist()
    x = sample_box(lo, hi, 2000, seed=6)
    assert np.allclose(v.network.forward(x), net.forward(x), rtol=1e-12, atol=1e-12)


@needs_acas
def test_dead_neurons_on_acas_property_box():
    pytest.importorskip("verify.bounds")
    from verify.vnnlib import load_vnnlib
    from verify.loading import load_network
    net = load_network(ACAS)
    region = load_vnnlib(PROP3, 5, 5).regions[0]
    v = compress(net, "dead", box=(region.lower, region.upper))
    assert v.record.n_removed_neurons > 0
    x = sample_box(region.lower, region.upper, 1000)
    assert np.allclose(v.network.forward(x), net.forward(x), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------
# change record and variant files
# --------------------------------------------------------------------------------------
def test_record_index_map_consistent_with_saved_onnx(tmp_path):
    net = random_net(sizes=(5, 30, 30, 30, 3), seed=7, bias_shift=-0.4)
    lo, hi = -0.5 * np.ones(5), 0.5 * np.ones(5)
    v = compress(net, "dead,neurons:0.2,remove:1.0", box=(lo, hi), bounds_fn=ibp_fn)
    onnx_path, json_path = save_variant(v.network, v.record, tmp_path, "rand.small")
    assert onnx_path.name == "rand.small.onnx" and json_path.name == "rand.small.changes.json"
    loaded = load_variant(onnx_path)
    rec = loaded.record
    assert loaded.network.digest() == rec.variant_digest == v.network.digest()
    assert rec.parent_digest == net.digest()
    prev = np.arange(net.n_inputs)  # parent columns kept, in variant order
    for k, (pa, va) in enumerate(zip(net.affines, loaded.network.affines)):
        kept = []
        for i in range(pa.out_size):
            j = rec.map_neuron(k, i)
            if j is None:
                assert i in rec.removed_neurons(k)
                continue
            kept.append(i)
            assert rec.parent_neuron(k, j) == i
            assert np.array_equal(va.weight[j], pa.weight[i, prev])
            assert va.bias[j] == pa.bias[i]
        assert len(kept) == va.out_size
        prev = np.array(kept)
    assert rec.layers[1].removed_pruned and 0 in rec.layers[1].removed_pruned


def test_quantized_variant_round_trip_keeps_integers(tmp_path):
    net = random_net()
    v = compress(net, "neurons:0.25,int4:channel")
    save_variant(v.network, v.record, tmp_path, "q")
    loaded = load_variant(tmp_path / "q.changes.json")
    for a, b, lc in zip(v.network.affines, loaded.network.affines, loaded.record.layers):
        assert b.is_quantized
        assert np.array_equal(a.weight_int, b.weight_int)
        assert np.array_equal(b.weight_scale, np.array(lc.scales))
        assert np.abs(b.weight_int).max() <= 7 and lc.bits == 4


def test_record_json_round_trip(tmp_path):
    net = random_net()
    v = compress(net, "magnitude:0.3:global,neurons:0.25,fixed6:channel:bias")
    rec = v.record
    again = ChangeRecord.from_dict(json.loads(json.dumps(rec.to_dict())))
    assert again == rec
    path = rec.save(tmp_path / "r.changes.json")
    assert ChangeRecord.load(path) == rec
    d = rec.to_dict()
    assert d["schema"] == "coreproof.changes" and d["version"] == 1
    assert d["recipe"] == "magnitude:0.3:global,neurons:0.25,fixed6:channel:bias"
    assert Recipe.parse(d["recipe"]) == Recipe.parse(rec.recipe)
    assert len(d["layers"]) == net.n_layers
    for lc in d["layers"]:
        assert {"index_map", "weights_zeroed", "weights_revalued", "max_weight_change",
                "scales", "bits"} <= set(lc)
    bad = dict(d, version=99)
    with pytest.raises(InputError):
        ChangeRecord.from_dict(bad)
    with pytest.raises(InputError):
        ChangeRecord.from_dict({"schema": "something else"})
    broken = json.loads(json.dumps(d))
    broken["layers"][0]["index_map"] = [0] * len(broken["layers"][0]["index_map"])
    with pytest.raises(InputError):
        ChangeRecord.from_dict(broken)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError):
        ChangeRecord.load(tmp_path / "bad.json")
    with pytest.raises(InputError):
        ChangeRecord.load(tmp_path / "missing.json")
    with pytest.raises(OptionError):
        rec.map_neuron(99, 0)
    with pytest.raises(OptionError):
        rec.map_neuron(0, 10 ** 6)


def test_load_variant_detects_mismatch(tmp_path):
    net = random_net()
    v = compress(net, "int8")
    w = compress(net, "int4")
    save_variant(v.network, v.record, tmp_path, "a")
    w.record.save(tmp_path / "a.changes.json")  # wrong record for a.onnx
    with pytest.raises(InputError):
        load_variant(tmp_path / "a.onnx")
    with pytest.raises(OptionError):
        save_variant(v.network, w.record, tmp_path, "b")
    with pytest.raises(InputError):
        load_variant(tmp_path / "nothing.onnx")


# --------------------------------------------------------------------------------------
# recipes, sweep, metrics
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["magnitude:0.5", "magnitude:0.5:global:nooutput",
                                  "magnitude:t=0.01", "neurons:0.25:activation:global",
                                  "remove:0.1:2.3", "dead", "int8", "int4:channel",
                                  "fixed8:bias=12", "none", "neurons:0.25,int8",
                                  "magnitude:0.1,dead,neurons:0.5,int2:channel:bias"])
def test_recipe_strings_round_trip(text):
    r = Recipe.parse(text)
    assert str(r) == text
    assert Recipe.parse(str(r)) == r
    assert "/" not in r.slug and ":" not in r.slug


def test_recipe_parse_forms():
    assert Recipe.parse("magnitude:50%").steps == (MagnitudePrune(0.5),)
    assert Recipe.parse(["neurons:0.25", Quantize(8)]).steps == (NeuronPrune(0.25), Quantize(8))
    assert Recipe.parse("INT32").steps == (Quantize(32),)
    assert Recipe.parse("dead").steps == (DeadNeurons(),)
    assert Recipe.parse("int8").with_per_channel().steps == (Quantize(8, per_channel=True),)


def test_sweep_family():
    net = random_net()
    fam = list(sweep(net, ["magnitude:0.1", "magnitude:0.5", "neurons:0.25", "int8", "int4"]))
    assert [str(v.record.recipe) for v in fam] == ["magnitude:0.1", "magnitude:0.5",
                                                   "neurons:0.25", "int8", "int4"]
    assert all(v.record.parent_digest == net.digest() for v in fam)
    nz = [parameter_counts(v.network)[1] for v in fam[:2]]
    assert nz[0] > nz[1]
    x = sample_box(-np.ones(6), np.ones(6), 500)
    assert output_deviation(net, fam[3].network, x)[0] < output_deviation(net, fam[4].network,
                                                                          x)[0]


def test_storage_bytes():
    net = random_net()
    total, nnz = parameter_counts(net)
    assert storage_bytes(net) == 4 * total
    n_w = sum(a.weight.size for a in net.affines)
    n_b = sum(a.bias.size for a in net.affines)
    v8 = quantize_weights(net, 8)
    nz8 = sum(int(np.count_nonzero(a.weight)) for a in v8.network.affines)
    assert storage_bytes(v8.network, v8.record) == nz8 + 4 * net.n_layers + 4 * n_b
    v4 = quantize_weights(net, 4, per_channel=True)
    expect = sum(int(np.ceil(np.count_nonzero(a.weight) * 4 / 8)) + 4 * a.out_size
                 for a in v4.network.affines) + 4 * n_b
    assert storage_bytes(v4.network, v4.record) == expect
    assert storage_bytes(magnitude_prune(net, 0.5).network) < 4 * n_w


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------
@needs_acas
def test_cli_acas_composed_variant(tmp_path):
    res = CliRunner().invoke(compress_cmd, [
        str(ACAS), "-o", str(tmp_path), "--prune", "magnitude:0.5", "--prune", "neurons:0.1",
        "--quantize", "int8", "--per-channel", "--domain", "-0.5,0.5", "--samples", "300"])
    assert res.exit_code == 0, res.output
    stem = "ACASXU_run2a_1_1_batch_2000.magnitude-0.5_neurons-0.1_int8-channel"
    assert (tmp_path / f"{stem}.onnx").is_file()
    assert (tmp_path / f"{stem}.changes.json").is_file()
    v = load_variant(tmp_path / f"{stem}.onnx")
    assert v.record.recipe == "magnitude:0.5,neurons:0.1,int8:channel"
    assert all(a.is_quantized for a in v.network.affines)
    assert "original" in res.output and "magnitude:0.5,neurons:0.1,int8:channel" in res.output
    assert "max dev" in res.output and "[-0.5, 0.5]^5" in res.output


@needs_acas
def test_cli_acas_sweep_with_box(tmp_path):
    res = CliRunner().invoke(compress_cmd, [
        str(ACAS), "-o", str(tmp_path), "--sweep", "--prune", "dead", "--prune",
        "magnitude:0.3", "--quantize", "int4", "--box", str(PROP3), "--samples", "200"])
    assert res.exit_code == 0, res.output
    assert len(list(tmp_path.glob("*.onnx"))) == 3
    assert len(list(tmp_path.glob("*.changes.json"))) == 3
    dead_line = next(line for line in res.output.splitlines() if line.startswith("dead "))
    # max deviation on the box: the same function; dropping zero terms from a
    # float sum may only change the last bits of the rounding
    assert float(dead_line.split()[5]) <= 1e-12


def test_cli_calibration_and_labels(tmp_path, digits):
    from verify.onnx_io import save_onnx
    model, net, x_test, y_test, x_train = digits
    save_onnx(net, tmp_path / "digits.onnx")
    np.save(tmp_path / "x.npy", x_test)
    np.save(tmp_path / "y.npy", y_test)
    res = CliRunner().invoke(compress_cmd, [
        str(tmp_path / "digits.onnx"), "-o", str(tmp_path / "out"), "--sweep",
        "--prune", "neurons:0.25:activation", "--quantize", "int8",
        "--calibration", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")])
    assert res.exit_code == 0, res.output
    assert "accuracy" in res.output and "%" in res.output
    assert len(list((tmp_path / "out").glob("*.changes.json"))) == 2


@pytest.mark.parametrize("args", [
    ["--prune", "magnitude:1.5"],
    ["--prune", "bogus:0.3"],
    ["--prune", "int8"],
    ["--quantize", "int17"],
    ["--quantize", "int1"],
    ["--quantize", "magnitude:0.2"],
    ["--quantize", "int8", "--quantize", "int4"],
    ["--prune", "dead"],
    ["--prune", "neurons:0.2:activation"],
    ["--quantize", "int8", "--labels", "y.npy"],
    ["--quantize", "int8", "--domain", "1,0"],
    ["--quantize", "int8", "--domain", "abc"],
    ["--quantize", "int8", "--calibration", "/nonexistent/x.npy"],
    [],
])
def test_cli_bad_options_exit_2(tmp_path, args):
    net = ACAS if ACAS.is_file() else None
    if net is None:
        pytest.skip("ACAS Xu data not available")
    res = CliRunner().invoke(compress_cmd, [str(net), "-o", str(tmp_path)] + args)
    assert res.exit_code == 2, res.output
    err = res.stderr if hasattr(res, "stderr") else res.output
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not list(tmp_path.glob("*.onnx"))


def test_cli_missing_network_and_usage_errors(tmp_path):
    res = CliRunner().invoke(compress_cmd, [str(tmp_path / "nope.onnx"), "-o", str(tmp_path),
                                            "--quantize", "int8"])
    assert res.exit_code == 2
    assert res.stderr.strip().startswith("error: ") and "nope.onnx" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = CliRunner().invoke(compress_cmd, [str(tmp_path / "nope.onnx")])  # no -o
    assert res.exit_code == 2


def test_errors_are_coreproof_errors():
    assert issubclass(OptionError, CoreproofError) and issubclass(InputError, CoreproofError)
