"""Linearity-based merging (``merge-linear`` / ``merge-approx``, :mod:`compress.merge`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from compress import ChangeRecord, compress
from verify.cli import main
from verify.equiv.api import EquivOptions, certify_equivalence, property_box
from verify.errors import OptionError
from verify.network import Affine, Network

from conftest import assert_bad_input
from test_equiv import _assert_sound, _largest_deviation

ACAS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "acasxu"
NO_SPLIT = EquivOptions(timeout=30, split=False)


def linear_first_layer(seed=0) -> Network:
    """3 inputs, 12 neurons in the first layer all active on [-1, 1]^3 (bias 10):
    at most 3 of them are needed."""
    rng = np.random.default_rng(seed)
    a0 = Affine(rng.normal(size=(12, 3)), np.full(12, 10.0))
    a1 = Affine(rng.normal(size=(8, 12)) / 3, rng.normal(size=8))
    a2 = Affine(rng.normal(size=(4, 8)) / 3, rng.normal(size=4))
    return Network((a0, a1, a2), name="lin")


def test_merge_is_exact_on_its_domain_and_recorded():
    net = linear_first_layer()
    lo, hi = -np.ones(3), np.ones(3)
    v = compress(net, "merge-linear", box=(lo, hi))
    rec = v.record
    assert v.network.hidden_sizes[0] == 3 and len(rec.layers[0].removed_merged) == 9
    assert rec.exact_on_box == (tuple(lo), tuple(hi)) and not rec.function_preserving
    for i in rec.layers[0].removed_merged:
        assert rec.map_neuron(0, i) is None
    ChangeRecord.from_dict(rec.to_dict()).check()  # round trip keeps the merged neurons
    assert ChangeRecord.from_dict(rec.to_dict()).layers[0].removed_merged == \
        rec.layers[0].removed_merged
    x = np.random.default_rng(1).uniform(lo, hi, size=(2000, 3))
    assert np.abs(v.network.forward(x) - net.forward(x)).max() < 1e-9
    # outside the domain the merged neurons are no longer linear: the functions differ
    far = np.random.default_rng(2).uniform(-40, 40, size=(2000, 3))
    assert np.abs(v.network.forward(far) - net.forward(far)).max() > 1e-3
    # equiv certifies delta 0 up to float rounding: the floor the bound has for the
    # identical network (its widening for rounding) and no more
    same = certify_equivalence(net, net, lo, hi, NO_SPLIT)
    res = certify_equivalence(net, v.network, lo, hi, NO_SPLIT)
    assert res.top1 == "certified"
    assert res.max_delta <= 2 * same.max_delta + 1e-12 and res.max_delta < 1e-6


def test_only_proven_active_neurons_are_merged():
    net = linear_first_layer()
    # on a box where the first layer is not provably active nothing may be merged
    v = compress(net, "merge-linear", box=(-np.full(3, 50.0), np.full(3, 50.0)))
    lb = [np.asarray(net.pre_activations(np.zeros(3))[0])]
    assert v.network.hidden_sizes[0] + len(v.record.layers[0].removed_merged) == 12
    from verify.bounds import layer_bounds
    l0, _ = layer_bounds(net, -np.full(3, 50.0), np.full(3, 50.0))[0]
    active = np.flatnonzero(l0 > 0)
    assert set(v.record.layers[0].removed_merged) <= set(active.tolist())
    assert lb  # the box is large enough to leave some neurons unstable
    assert (l0 <= 0).any()


@pytest.mark.skipif(not ACAS.is_dir(), reason="ACAS Xu data not available")
def test_acas_merge_on_property_3_box_is_exact():
    from verify.loading import load_network
    from verify.vnnlib import load_vnnlib
    net = load_network(ACAS / "ACASXU_run2a_1_1_batch_2000.onnx")
    lo, hi = property_box(load_vnnlib(ACAS / "prop_3.vnnlib", 5, 5))
    v = compress(net, "merge-linear", box=(lo, hi))
    assert v.record.n_removed_neurons > 5
    res = certify_equivalence(net, v.network, lo, hi, NO_SPLIT)
    # float32 parameters: the folded layer is rounded to float32 (a compact file), a
    # change of float32 rounding (about 1e-7 of the values; the outputs reach ~1e3 here)
    assert all(np.array_equal(a.weight.astype(np.float32), a.weight) for a in v.network.affines)
    assert res.max_delta < 1e-3 and max(res.deviation_found) < 1e-5


VARIANTS = ["svd:3", "energy:0.9", "merge-linear", "merge-approx:0.9"]


@pytest.mark.parametrize("recipe", VARIANTS)
def test_certified_delta_bounds_the_pgd_deviation(digits_mlp, recipe):
    """Soundness for the new variant kinds: the certified delta (and the root
    bounds) >= the largest deviation PGD and dense sampling find."""
    net, X, _ = digits_mlp
    lo, hi = np.clip(X[5] - 0.05, 0, 1), np.clip(X[5] + 0.05, 0, 1)
    if recipe == "merge-linear":  # (nothing is provably mergeable on the digits balls)
        net, lo, hi = linear_first_layer(), -np.ones(3), np.ones(3)
    v = compress(net, recipe, box=(lo, hi), calibration=X[:200])
    assert v.record.n_removed_neurons > 0 or recipe.startswith(("svd", "energy"))
    res = certify_equivalence(net, v.network, lo, hi, NO_SPLIT)
    found = _largest_deviation(net, v.network, lo, hi)
    _assert_sound(res, found)
    if recipe == "merge-linear":
        assert max(found) < 1e-9
    else:
        assert max(found) > 1e-6  # a real change, which the bound must cover


def test_merge_approx_merges_and_is_not_exact(digits_mlp):
    net, X, _ = digits_mlp
    v = compress(net, "merge-approx:0.9", calibration=X[:200])
    assert v.record.n_removed_neurons > 0
    assert all(lc.removed == lc.removed_merged for lc in v.record.layers)
    assert v.record.exact_on_box is None
    with pytest.raises(OptionError, match="calibration"):
        compress(net, "merge-approx:0.9")
    with pytest.raises(OptionError, match="domain"):
        compress(net, "merge-linear")


def test_cli_merge_linear(tmp_path):
    from verify.onnx_io import save_onnx
    path = tmp_path / "lin.onnx"
    save_onnx(linear_first_layer(), path)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["compress", str(path), "-o", str(out), "--merge-linear",
                                    "--domain", "-1,1"])
    assert res.exit_code == 0, res.output
    rec = ChangeRecord.load(next(out.glob("*.changes.json")))
    assert len(rec.layers[0].removed_merged) == 9 and rec.recipe == "merge-linear"
    res = CliRunner().invoke(main, ["compress", str(path), "-o", str(out),
                                                    "--merge-linear"])
    assert_bad_input(res, "--merge-linear")
