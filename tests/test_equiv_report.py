"""The functional-similarity report (``coreproof equiv-report``, :mod:`verify.equiv.report`)."""
from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from compress import compress
from verify.cli import main
from verify.onnx_io import save_onnx

from conftest import assert_bad_input


def test_report_rows_and_plot(digits_mlp, tmp_path):
    net, X, _ = digits_mlp
    save_onnx(net, tmp_path / "orig.onnx")
    paths = []
    for recipe in ("int8", "svd:4", "magnitude:0.5"):
        onnx_path, _ = compress(net, recipe).save(tmp_path, recipe.replace(":", "-"))
        paths.append(str(onnx_path))
    np.save(tmp_path / "x.npy", X[3])
    out = tmp_path / "similarity.html"
    res = CliRunner().invoke(main, ["equiv-report", str(tmp_path / "orig.onnx"), *paths,
                                    "--around", str(tmp_path / "x.npy"), "--eps", "0.03",
                                    "--clip", "0,1", "--box", "0,1", "-o", str(out), "--json",
                                    "--timeout", "3", "--samples", "500"])
    assert res.exit_code == 2  # --box and --around together are refused
    res = CliRunner().invoke(main, ["equiv-report", str(tmp_path / "orig.onnx"), *paths,
                                    "--around", str(tmp_path / "x.npy"), "--eps", "0.03",
                                    "--clip", "0,1", "-o", str(out), "--json",
                                    "--timeout", "3", "--samples", "500"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 3
    for r in rows:
        # what samples show never exceeds what is certified
        assert r["sampled_max_deviation"] <= r["certified_delta"]
        assert 0 <= r["sampled_agreement"] <= 1 and r["top1"] in ("certified", "disagreement",
                                                                  "unknown")
    by = {r["variant"]: r for r in rows}
    assert by["int8.onnx"]["compression"] > 3  # 8-bit weights against float32
    assert by["svd-4.onnx"]["compression"] > 1
    text = out.read_text()
    assert text.count("<svg") == 1 and text.count("<circle") == 3 and "<table>" in text


def test_report_needs_a_region(digits_mlp, tmp_path):
    net, _, _ = digits_mlp
    save_onnx(net, tmp_path / "orig.onnx")
    res = CliRunner().invoke(main, ["equiv-report", str(tmp_path / "orig.onnx"),
                                    str(tmp_path / "orig.onnx"), "-o", str(tmp_path / "r.html")])
    assert_bad_input(res, "region")


def test_report_on_a_family_of_cnn_variants(tmp_path):
    """CNN variants (int8, factorised, magnitude) of one residual CNN: certified delta above
    every sampled deviation, packed bytes from the graph's own nodes."""
    from compress.graph_compress import compress_graph
    from compress.metrics import storage_bytes
    from test_graph_compress import residual_cnn
    from verify.graph.onnx_write import save_graph_onnx
    from verify.loading import load_network
    save_graph_onnx(residual_cnn(), tmp_path / "orig.onnx")
    g = load_network(tmp_path / "orig.onnx")  # the network as its file defines it
    paths = []
    for recipe in ("int8", "svd:2", "magnitude:0.5"):
        onnx_path, _ = compress_graph(g, recipe).save(tmp_path, recipe.replace(":", "-"))
        paths.append(str(onnx_path))
    out = tmp_path / "cnn.html"
    res = CliRunner().invoke(main, ["equiv-report", str(tmp_path / "orig.onnx"), *paths,
                                    "--box", "0.4,0.5", "-o", str(out), "--json",
                                    "--timeout", "3", "--samples", "500"])
    assert res.exit_code == 0, res.output
    by = {r["variant"]: r for r in map(json.loads, res.stdout.splitlines()[:3])}
    for r in by.values():
        assert r["sampled_max_deviation"] <= r["certified_delta"]
    assert by["int8.onnx"]["compression"] > 2.5  # 8-bit weights, float32 biases and Scale
    assert by["svd-2.onnx"]["compression"] > 1
    assert by["magnitude-0.5.onnx"]["compression"] > 1.5  # half of the weights are zero
    assert storage_bytes(compress_graph(g, "magnitude:0.5").network) < storage_bytes(g)
    assert out.read_text().count("<circle") == 3
