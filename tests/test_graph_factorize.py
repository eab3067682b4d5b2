"""Low-rank factorization of graph networks: Conv by its matrix form, Gemm into two Gemms;
written as deployable ONNX files that hold the thin factors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compress.graph_compress import compress_graph
from compress.graph_factorize import factorize_graph
from verify.errors import OptionError
from verify.graph import Conv, Gemm
from verify.graph.onnx_write import save_graph_onnx

from test_graph_compress import _check_written, _points, residual_cnn

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _learned(g):
    return {n.name: n.op for n in g.nodes[1:] if isinstance(n.op, (Conv, Gemm))}


def test_full_rank_factorization_equals_the_original():
    g = residual_cnn()
    v, ranks = factorize_graph(g, rank=100)
    assert set(ranks) == {"c1", "c2", "fc"}  # the pooling Conv (groups=6) is left alone
    assert ranks == {"c1": 6, "c2": 6, "fc": 3}  # min(rows, columns)
    assert len(v.nodes) == len(g.nodes) + 3
    x = _points(g, 32)
    # the factors are float32 numbers: equal up to their rounding
    assert np.allclose(v.forward(x), g.forward(x), rtol=1e-5, atol=1e-5)
    ops = _learned(v)
    assert ops["c1.v"].weight.shape == (6, 2, 3, 3) and ops["c1.v"].pads == (1, 1, 1, 1)
    assert ops["c1.u"].weight.shape == (6, 6, 1, 1)
    assert np.array_equal(ops["c2.u"].bias, _learned(g)["c2"].bias)
    assert not np.any(ops["c2.v"].bias)


def test_low_rank_is_the_truncated_svd_of_the_matrix_form():
    g = residual_cnn()
    v, ranks = factorize_graph(g, rank=2)
    assert ranks == {"c1": 2, "c2": 2, "fc": 2}
    for name, op in _learned(g).items():
        if name not in ranks:
            continue
        f = _learned(v)
        u = f[f"{name}.u"].weight.reshape(op.weight.shape[0], 2)
        vv = f[f"{name}.v"].weight.reshape(2, -1)
        s = np.linalg.svd(op.weight.reshape(op.weight.shape[0], -1), compute_uv=False)
        err = np.linalg.norm(u @ vv - op.weight.reshape(op.weight.shape[0], -1), 2)
        assert err == pytest.approx(s[2], rel=1e-4)  # Eckart-Young: the 3rd singular value
    x = _points(g, 8)
    assert not np.allclose(v.forward(x), g.forward(x), atol=1e-3)


def test_energy_factorises_only_where_it_saves_weights():
    g = residual_cnn()
    v, ranks = factorize_graph(g, energy=0.5)
    for name, r in ranks.items():
        w = _learned(g)[name].weight
        rows, cols = w.shape[0], w.size // w.shape[0]
        assert r * (rows + cols) < rows * cols
    assert v.n_parameters < g.n_parameters or not ranks
    _, none = factorize_graph(g, energy=1.0)
    assert none == {}  # full energy never saves


def test_quantized_layers_are_refused_and_order_matters():
    g = residual_cnn()
    with pytest.raises(OptionError, match="quantized"):
        compress_graph(g, "int8,svd:2")
    v = compress_graph(g, "svd:2,int8").network
    assert _learned(v)["c1.v"].weight_int is not None  # the factors quantized apart
    with pytest.raises(OptionError):
        compress_graph(g, "svd:0")


@pytest.mark.parametrize("recipe", ["svd:3", "energy:0.9", "svd:2,int8"])
def test_factorised_cnn_is_written_and_runs_in_onnxruntime(recipe, tmp_path):
    original = tmp_path / "orig.onnx"
    save_graph_onnx(residual_cnn(), original, input_name="image", output_name="logits")
    onnx_path, v = _check_written(original, recipe, tmp_path)
    import onnx

    def convs(path):
        return sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)
    ranks = next(s["ranks"] for s in v.record["steps"] if "ranks" in s)
    factored = [n for n in v.network.nodes if n.name in {f"{k}.u" for k in ranks}]
    assert len(factored) == len(ranks) and (len(ranks) == 3 or recipe.startswith("energy"))
    # the file holds the thin factors: one more Conv per factorised Conv
    assert convs(onnx_path) == convs(original) + sum(isinstance(n.op, Conv) for n in factored)


def test_factorised_cnn_is_verified_like_any_variant(tmp_path):
    from verify.api import VerifyOptions, verify_property
    from verify.properties import local_robustness
    g = residual_cnn()
    v, _ = factorize_graph(g, rank=4)
    x0 = _points(g, 1, seed=3)[0]
    label = int(np.argmax(v.forward(x0)))
    for eps, allowed in ((1e-4, {"holds"}), (0.5, {"violated", "unknown"})):
        prop = local_robustness(x0, eps, label, v.n_outputs)
        res = verify_property(v, prop, VerifyOptions(timeout=20))
        assert res.status.value in allowed, (eps, res.status)
        if res.status.value == "violated":
            y = v.forward(np.asarray(res.counterexample.input))
            assert int(np.argmax(y)) != label


def test_cli_factorises_a_cnn(tmp_path):
    from click.testing import CliRunner

    from compress.cli import compress_cmd
    original = tmp_path / "cnn.onnx"
    save_graph_onnx(residual_cnn(), original)
    res = CliRunner().invoke(compress_cmd, [str(original), "-o", str(tmp_path / "out"),
                                            "--factorize", "svd:2", "--samples", "50"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "out").glob("*.onnx"))) == 1
    bad = CliRunner().invoke(compress_cmd, [str(original), "-o", str(tmp_path / "o2"),
                                            "--merge-linear", "--domain", "0,1"])
    assert bad.exit_code == 2 and "fully-connected" in bad.output


@pytest.mark.skipif(not (DATA / "oval21").is_dir(), reason="oval21 data not available")
def test_factorised_oval_base_is_smaller_and_runs(tmp_path):
    original = DATA / "oval21" / "nets" / "cifar_base_kw.onnx"
    onnx_path, v = _check_written(original, "energy:0.9", tmp_path)
    assert onnx_path.stat().st_size < original.stat().st_size
