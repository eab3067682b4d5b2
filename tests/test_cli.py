"""The `coreproof` command line: verdicts, JSON, exit codes, bad input."""
import json
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper

from verify.cli import main
from conftest import assert_bad_input

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "acasxu"
NET = str(EXAMPLES / "ACASXU_run2a_1_1_batch_2000.onnx")
PROP1 = str(EXAMPLES / "prop_1.vnnlib")


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_verify_holds_with_json():
    res = run("verify", NET, PROP1, "--json", "--quiet", "--timeout", "60")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["status"] == "holds" and out["counterexample"] is None
    assert out["time_s"] > 0


def test_verify_violated_exit_1_and_counterexample_replays(data_dir):
    from verify.api import load_network, load_property
    net_path = data_dir / "acasxu" / "ACASXU_run2a_2_1_batch_2000.onnx"
    prop_path = data_dir / "acasxu" / "prop_2.vnnlib"
    res = run("verify", str(net_path), str(prop_path), "--json", "--quiet")
    assert res.exit_code == 1, res.output
    cex = json.loads(res.stdout)["counterexample"]
    net = load_network(net_path)
    prop = load_property(prop_path, net)
    x = np.array(cex["input"])
    y = net.forward(x)
    np.testing.assert_array_equal(y, np.array(cex["output"]))
    assert prop.violated_by(x, y)


def test_verify_unknown_exit_3_on_timeout(data_dir):
    net_path = data_dir / "mnistfc" / "mnist-net_256x2.onnx"
    prop_path = data_dir / "mnistfc" / "prop_1_0.03.vnnlib"
    res = run("verify", str(net_path), str(prop_path), "--json", "--quiet", "--timeout", "1")
    assert res.exit_code == 3, res.output
    out = json.loads(res.stdout)
    # no wall-time assertion (flaky on a shared machine): the verdict says why it stopped
    assert out["status"] == "unknown" and "timeout" in out["reason"]


def test_human_output_and_progress():
    res = run("verify", NET, PROP1)
    assert res.exit_code == 0
    assert "HOLDS" in res.stdout
    assert "[coreproof]" in res.stderr


def test_missing_file():
    assert_bad_input(run("verify", "nope.onnx", PROP1), "nope.onnx", "no such file")
    assert_bad_input(run("verify", NET, "nope.vnnlib"), "nope.vnnlib")


def test_malformed_vnnlib(tmp_path):
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1)\n")
    res = run("verify", NET, str(bad))
    assert_bad_input(res, "bad.vnnlib")


def test_unsupported_op(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])
    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"], name="sig")], "g", [x], [y])
    path = tmp_path / "sigmoid.onnx"
    onnx.save(helper.make_model(graph), path)
    assert_bad_input(run("verify", str(path), PROP1), "Sigmoid", "sigmoid.onnx")


def test_shape_mismatch(data_dir):
    prop = data_dir / "mnistfc" / "prop_0_0.03.vnnlib"
    assert_bad_input(run("verify", NET, str(prop)), "784", "5")


def test_bad_timeout():
    assert_bad_input(run("verify", NET, PROP1, "--timeout", "0"), "timeout")


def test_verify_instances_writes_results(tmp_path):
    import shutil
    for f in (NET, PROP1):
        shutil.copy(f, tmp_path)
    csv_path = tmp_path / "instances.csv"
    csv_path.write_text(f"{Path(NET).name},{Path(PROP1).name},30\n")
    res = run("verify-instances", str(csv_path), "--quiet")
    assert res.exit_code == 0, res.output
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0].startswith("onnx,vnnlib,status") and ",holds," in rows[1]


def test_verify_instances_bad_csv(tmp_path):
    csv_path = tmp_path / "instances.csv"
    csv_path.write_text("a.onnx,b.vnnlib\n")
    assert_bad_input(run("verify-instances", str(csv_path)), "instances.csv:1")
