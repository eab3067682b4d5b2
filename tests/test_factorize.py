"""Low-rank factorization (``svd:R`` / ``energy:E``, :mod:`compress.factorize`): the
deployable file holds the thin factors, the verified network is their composition."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from compress import Recipe, compress, load_variant, parameter_counts, save_variant, storage_bytes
from compress.factorize import choose_rank
from verify.cli import main
from verify.equiv.api import EquivOptions, certify_equivalence
from verify.errors import OptionError
from verify.graph import chain_graph
from verify.graph.onnx_write import save_graph_onnx
from verify.reuse.changes import REVALUED, ChangeMap

from test_deployable import float32_net

ort = pytest.importorskip("onnxruntime")


def _gemm_weights(path):
    model = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    return [inits[n.input[1]].shape for n in gemms]


def test_svd_file_holds_the_thin_factors_and_reads_back_as_the_verified_network(tmp_path):
    net = float32_net(sizes=(20, 32, 24, 5), shape=(1, 20))
    original = tmp_path / "orig.onnx"
    save_graph_onnx(chain_graph(net), original, input_name="obs", output_name="scores")
    v = compress(original, "svd:3")
    assert [lc.factor_rank for lc in v.record.layers] == [3, 3, 3]
    onnx_path, _ = save_variant(v.network, v.record, tmp_path, "svd3", like=original,
                                factors=v.factors)
    # two Gemms per layer, no Relu between them, and the thin shapes
    assert _gemm_weights(onnx_path) == [(3, 20), (32, 3), (3, 32), (24, 3), (3, 24), (5, 3)]
    assert onnx_path.stat().st_size < 0.5 * original.stat().st_size
    back = load_variant(onnx_path)
    assert back.network.digest() == v.network.digest()
    # onnxruntime runs U (V x) in float32: the verified composition up to float32 rounding
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).uniform(-1, 1, size=(16, 20)).astype(np.float32)
    y = np.vstack([sess.run(None, {"obs": row[None]})[0] for row in x])
    assert np.allclose(y, v.network.forward(x.astype(np.float64)), atol=1e-4)
    # the metrics count the factors, not the composed weights
    total, nnz = parameter_counts(v.network, v.record)
    assert total == 3 * (20 + 32) + 3 * (32 + 24) + 3 * (24 + 5) + 32 + 24 + 5 == nnz
    assert storage_bytes(v.network, v.record) == 4 * total
    assert parameter_counts(v.network)[0] > total  # without the record: the dense count


def test_full_rank_svd_equals_the_original_and_is_recorded_as_revalued(digits_mlp):
    net, X, _ = digits_mlp
    v = compress(net, "svd:64")  # at least every layer's full rank
    assert [lc.factor_rank for lc in v.record.layers] == [16, 16, 10]
    assert not v.record.function_preserving  # the weights are re-valued by rounding
    assert np.allclose(v.network.forward(X), net.forward(X), atol=1e-5)
    lo, hi = np.clip(X[0] - 0.05, 0, 1), np.clip(X[0] + 0.05, 0, 1)
    res = certify_equivalence(net, v.network, lo, hi, EquivOptions(timeout=20, split=False))
    assert res.max_delta < 1e-4 and res.top1 == "certified"
    # reuse sees the factorised layers honestly: every neuron re-valued, none unchanged
    cmap = ChangeMap(net, v.network, v.record)
    assert set(cmap.status.values()) == {REVALUED}
    # and a low rank really changes the function
    low = compress(net, "svd:2").network
    assert np.abs(low.forward(X) - net.forward(X)).max() > 1e-2


@pytest.mark.parametrize("energy", [0.9, 1.0])
def test_energy_rank_and_layers_without_saving_stay_dense(digits_mlp, energy):
    net, _, _ = digits_mlp
    v = compress(net, f"energy:{energy}")
    for a, lc in zip(net.affines, v.record.layers):
        s = np.linalg.svd(a.weight, compute_uv=False)
        r = choose_rank(s, None, energy)
        assert (s[:r] ** 2).sum() >= energy * (s ** 2).sum() * (1 - 1e-12)
        assert energy * (s ** 2).sum() > (s[:r - 1] ** 2).sum()
        saves = r * (a.in_size + a.out_size) < a.weight.size
        assert lc.factor_rank == (r if saves else None)
        if not saves:
            assert lc.weights_revalued == 0
    if energy == 1.0:  # full rank never saves parameters: nothing factorised
        assert all(lc.factor_rank is None for lc in v.record.layers)
        assert v.network.digest() == net.digest()
    else:
        assert any(lc.factor_rank is not None for lc in v.record.layers)


def test_factorization_is_the_last_step():
    with pytest.raises(OptionError, match="last step"):
        Recipe.parse("svd:4,int8")
    assert str(Recipe.parse("magnitude:0.5,energy:90%")) == "magnitude:0.5,energy:0.9"
    for bad in ("svd:0", "svd:x", "energy:1.5", "svd"):
        with pytest.raises(OptionError):
            Recipe.parse(bad)


def test_cli_writes_factorised_variants_with_real_sizes(tmp_path):
    net = float32_net(sizes=(20, 32, 24, 5), shape=(1, 20))
    original = tmp_path / "orig.onnx"
    save_graph_onnx(chain_graph(net), original)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["compress", str(original), "-o", str(out),
                                    "--factorize", "svd:3", "--domain", "-1,1"])
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if line.startswith("svd:3"))
    assert row.split()[1] == f"{3 * (52 + 56 + 29) + 61:,}"
    written = next(out.glob("*.onnx"))
    assert int(row.split()[3].replace(",", "")) == written.stat().st_size
    res = CliRunner().invoke(main, ["compress", str(original), "-o", str(out),
                                    "--factorize", "svd:3", "--quantize", "int8"])
    assert res.exit_code == 2 and "do not combine" in res.stderr
