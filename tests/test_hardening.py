"""Issue 13: no crash, no hang and no trusted-but-unchecked verdict on any input a
user can give.  One test per case of the issue; each failed on main before."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import assert_bad_input
from verify.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "acasxu"
NET = str(EXAMPLES / "ACASXU_run2a_1_1_batch_2000.onnx")
PROP1 = str(EXAMPLES / "prop_1.vnnlib")
PROP2 = str(EXAMPLES / "prop_2.vnnlib")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def small_net(n_in=5, hidden=8, n_out=5, seed=0, name="small"):
    from verify.network import Affine, Network
    rng = np.random.default_rng(seed)
    return Network((Affine(rng.normal(size=(hidden, n_in)), rng.normal(size=hidden)),
                    Affine(rng.normal(size=(n_out, hidden)), rng.normal(size=n_out))),
                   (n_in,), name)


def box_prop(path, n_in=5, n_out=5, lo=-0.1, hi=0.1, rhs=1e6):
    """y0 <= -rhs is unsafe: holds for a huge rhs."""
    text = "".join(f"(declare-const X_{i} Real)\n" for i in range(n_in))
    text += "".join(f"(declare-const Y_{i} Real)\n" for i in range(n_out))
    text += "".join(f"(assert (>= X_{i} {lo}))\n(assert (<= X_{i} {hi}))\n" for i in range(n_in))
    text += f"(assert (<= Y_0 {-rhs}))\n"
    Path(path).write_text(text)
    return str(path)


# ---- exit codes ------------------------------------------------------------------------
def test_internal_error_is_exit_2_one_line_traceback_only_with_debug(monkeypatch):
    import verify.cli as cli

    def boom(*a, **k):
        raise RuntimeError("deliberate\nfailure")
    monkeypatch.setattr(cli, "run_one", boom)
    res = run("verify", NET, PROP1)
    assert_bad_input(res, "internal error", "RuntimeError", "deliberate failure", "--debug")
    res = run("--debug", "verify", NET, PROP1)
    assert res.exit_code == 2 and "Traceback" in res.stderr


def test_ctrl_c_exits_130_without_traceback(monkeypatch):
    import verify.cli as cli

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "run_one", interrupted)
    res = run("verify", NET, PROP1)
    assert res.exit_code == 130, res.output
    assert "Traceback" not in res.output and "Aborted" not in res.output


def test_ctrl_c_during_start_up_exits_130(monkeypatch, capsys):
    import importlib

    from verify import entry

    def interrupted(name, *a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(importlib, "import_module", interrupted)
    with pytest.raises(SystemExit) as exc:
        entry.main()
    assert exc.value.code == 130
    assert "Traceback" not in capsys.readouterr().err


def test_sigint_of_a_running_verify_exits_130(data_dir):
    import signal
    net = data_dir / "mnistfc" / "mnist-net_256x6.onnx"
    prop = data_dir / "mnistfc" / "prop_1_0.05.vnnlib"
    if not net.is_file() or not prop.is_file():
        pytest.skip("mnistfc data missing")
    proc = subprocess.Popen([sys.executable, "-m", "verify.entry", "verify", str(net), str(prop),
                             "--timeout", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    first = proc.stderr.readline()  # the progress line: start-up is over, the run is on
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert first.startswith("[coreproof]"), first + err
    assert proc.returncode == 130, err
    assert "Traceback" not in err


def _instances(tmp_path, rows):
    for f in (NET, PROP1, PROP2):
        shutil.copy(f, tmp_path)
    csv_path = tmp_path / "instances.csv"
    csv_path.write_text("".join(f"{a},{b},{t}\n" for a, b, t in rows))
    return csv_path


def test_verify_instances_goes_on_after_an_error_row_and_exits_with_the_worst(tmp_path):
    net_name = Path(NET).name
    csv_path = _instances(tmp_path, [(net_name, "prop_1.vnnlib", 30),
                                     ("missing.onnx", "prop_1.vnnlib", 30),
                                     (net_name, "prop_1.vnnlib", 30)])
    res = run("verify-instances", csv_path)
    assert res.exit_code == 2, res.output
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert len(rows) == 4 and ",error," in rows[2] and ",holds," in rows[3]
    assert "error 1" in res.stdout and "holds 2" in res.stdout
    assert "error s" not in res.stderr and "missing.onnx" in res.stderr


def test_verify_instances_violated_row_exits_1(tmp_path):
    from verify.onnx_io import save_onnx
    from verify.network import Affine, Network
    # output = -1 everywhere: prop_1 (y0 >= 3.99) holds, "y0 <= 1e6" below is violated
    net = Network((Affine(np.zeros((5, 5)), -np.ones(5)), Affine(np.eye(5), np.zeros(5))), (5,), "c")
    save_onnx(net, tmp_path / "c.onnx")
    text = Path(PROP1).read_text()
    (tmp_path / "v.vnnlib").write_text(text[:text.rindex("(assert")] + "(assert (<= Y_0 1000000))\n")
    csv_path = _instances(tmp_path, [("c.onnx", "prop_1.vnnlib", 10), ("c.onnx", "v.vnnlib", 10)])
    res = run("verify-instances", csv_path, "--quiet")
    assert res.exit_code == 1, res.output
    assert "holds 1, violated 1" in res.stdout


def test_reverify_reports_a_bad_variant_and_still_checks_the_good_one(tmp_path):
    from verify.onnx_io import save_onnx
    orig = small_net()
    save_onnx(orig, tmp_path / "orig.onnx")
    save_onnx(orig.with_affines(orig.affines, "same"), tmp_path / "good.onnx")
    save_onnx(small_net(n_in=4), tmp_path / "wrong.onnx")
    prop = box_prop(tmp_path / "p.vnnlib")
    res = run("reverify", tmp_path / "orig.onnx", tmp_path / "wrong.onnx",
              tmp_path / "good.onnx", "-p", prop, "--json", "--quiet")
    assert res.exit_code == 2, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert {r["status"] for r in rows} == {"error", "holds"}
    bad = next(r for r in rows if r["status"] == "error")
    assert bad["variant"].endswith("wrong.onnx") and "wrong.onnx" in bad["reason"]


# ---- timeouts ----------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0", "abc"])
def test_timeout_must_be_finite_and_positive(value):
    assert_bad_input(run("verify", NET, PROP1, "--timeout", value), "--timeout", "finite")


def test_infinite_timeout_in_an_instances_csv_is_bad_input(tmp_path):
    csv_path = _instances(tmp_path, [(Path(NET).name, "prop_1.vnnlib", "inf")])
    assert_bad_input(run("verify-instances", csv_path), "instances.csv:1", "finite")


def test_options_reject_an_infinite_timeout():
    from verify.errors import OptionError
    from verify.options import VerifyOptions
    with pytest.raises(OptionError, match="finite"):
        VerifyOptions(timeout=float("inf"))
