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


def hard_instance(tmp_path, n=30):
    """y0 - y1 = 0.1 + sum_i (relu(x_i - .5) - relu(x_i - .5)) > 0 on [0, 1]^n: holds,
    but every ReLU is unstable and duplicated: the search runs until its timeout."""
    from verify.network import Affine, Network
    from verify.onnx_io import save_onnx
    w1, b1 = np.vstack([np.eye(n), np.eye(n)]), -0.5 * np.ones(2 * n)
    w2 = np.zeros((2, 2 * n))
    w2[0, :n], w2[0, n:] = 1.0, -1.0
    save_onnx(Network((Affine(w1, b1), Affine(w2, np.array([0.1, 0.0]))), (n,), "hard"),
              tmp_path / "hard.onnx")
    text = "".join(f"(declare-const X_{i} Real)\n" for i in range(n))
    text += "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
    text += "".join(f"(assert (>= X_{i} 0))\n(assert (<= X_{i} 1))\n" for i in range(n))
    (tmp_path / "hard.vnnlib").write_text(text + "(assert (<= Y_0 Y_1))\n")
    return tmp_path / "hard.onnx", tmp_path / "hard.vnnlib"


@pytest.mark.parametrize("delay", [0.0, 3.0])  # at once; in branch and bound / Z3
def test_sigint_of_a_running_verify_exits_130(tmp_path, delay):
    import signal
    import time
    net, prop = hard_instance(tmp_path)
    # (without the MILP stage: the program decides this small instance in a second)
    proc = subprocess.Popen([sys.executable, "-m", "verify.entry", "verify", str(net), str(prop),
                             "--timeout", "300", "--milp-workers", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()  # the progress line: start-up is over, the run is on
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert first.startswith("[coreproof]"), first + err
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and err.strip().endswith("interrupted")


def test_an_interrupt_that_surfaces_wrapped_in_another_exception_exits_130():
    """Ctrl-C while ctypes converts a Z3 call's arguments surfaces as
    ``ctypes.ArgumentError("argument 3: KeyboardInterrupt")`` (seen in a full test run):
    still exit 130, not an internal error."""
    import ctypes
    import os
    import signal
    import time
    from verify.cli import CoreproofGroup
    group = CoreproofGroup(name="coreproof")

    @group.command("z3-call")
    def z3_call():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises KeyboardInterrupt here
        except KeyboardInterrupt as exc:
            raise ctypes.ArgumentError("argument 3: KeyboardInterrupt: ") from exc

    @group.command("plain-bug")
    def plain_bug():
        raise ctypes.ArgumentError("argument 3: wrong type")

    res = CliRunner().invoke(group, ["z3-call"])
    assert res.exit_code == 130, res.output
    assert "interrupted" in res.stderr and "internal error" not in res.stderr
    res = CliRunner().invoke(group, ["plain-bug"])  # without Ctrl-C: an internal error
    assert res.exit_code == 2 and "internal error" in res.stderr, res.output


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


# ---- networks: NaN / Inf / huge weights ------------------------------------------------
def _with_weight(value, k=0):
    net = small_net()
    w = np.array(net.affines[k].weight)
    w[1, 2] = value
    from verify.network import Affine
    affines = list(net.affines)
    affines[k] = Affine(w, net.affines[k].bias)
    return net.with_affines(affines)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -float("inf")])
def test_onnx_nonfinite_weight_is_bad_input_naming_the_tensor(tmp_path, value):
    from verify.onnx_io import save_onnx
    save_onnx(_with_weight(value), tmp_path / "bad.onnx")
    prop = box_prop(tmp_path / "p.vnnlib")
    assert_bad_input(run("verify", tmp_path / "bad.onnx", prop, "--timeout", "5"),
                     "bad.onnx", "layer0.weight", "NaN or Inf")


def test_nnet_nonfinite_weight_is_bad_input_naming_the_line(tmp_path):
    from verify.nnet_io import save_nnet
    save_nnet(_with_weight(float("nan"), k=1), tmp_path / "bad.nnet")
    prop = box_prop(tmp_path / "p.vnnlib")
    res = run("verify", tmp_path / "bad.nnet", prop, "--timeout", "5")
    assert_bad_input(res, "bad.nnet:", "layer 1 weight row 1", "NaN or Inf")


def test_torch_nonfinite_parameter_is_an_input_error():
    import torch

    from verify.api import load_network
    from verify.errors import InputError
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        model[2].bias[1] = float("inf")
    with pytest.raises(InputError, match=r"parameter '2.bias' holds NaN or Inf"):
        load_network(model)


def test_weight_too_large_for_the_encoder_is_bad_input(tmp_path):
    from verify.onnx_io import save_onnx
    save_onnx(_with_weight(1e200), tmp_path / "huge.onnx")
    prop = box_prop(tmp_path / "p.vnnlib")
    assert_bad_input(run("verify", tmp_path / "huge.onnx", prop, "--timeout", "5"),
                     "layer0.weight", "too large")


def test_api_rejects_a_network_with_nan_weights(tmp_path):
    from verify.api import load_property, verify_property
    from verify.errors import InputError
    net = _with_weight(float("nan"))
    prop = load_property(box_prop(tmp_path / "p.vnnlib"), net)
    with pytest.raises(InputError, match="layer 0 weight holds NaN or Inf"):
        verify_property(net, prop)


def test_encoder_rounds_huge_coefficients_without_overflow():
    from verify.encode import Branch, encode, solve
    net = _with_weight(1e306)  # finite, but 1e306 * 10**4 is not
    lo, hi = -np.ones(5), np.ones(5)
    lb = [(np.full(8, -1e307), np.full(8, 1e307))]
    q = encode(net, Branch(lo, hi, lb, np.eye(5)[:1], np.array([-1e6])), digits=4)
    assert q.constraints  # built (was OverflowError: cannot convert float infinity)


def test_verify_instances_reports_an_inf_network_row_and_goes_on(tmp_path):
    from verify.onnx_io import save_onnx
    save_onnx(_with_weight(float("inf")), tmp_path / "inf.onnx")
    csv_path = _instances(tmp_path, [("inf.onnx", "prop_1.vnnlib", 10),
                                     (Path(NET).name, "prop_1.vnnlib", 30)])
    res = run("verify-instances", csv_path, "--quiet")
    assert res.exit_code == 2
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert ",error," in rows[1] and "NaN or Inf" in rows[1] and ",holds," in rows[2]


def test_compress_of_an_inf_network_leaves_no_artifact(tmp_path):
    from verify.onnx_io import save_onnx
    save_onnx(_with_weight(float("inf")), tmp_path / "inf.onnx")
    out = tmp_path / "out"
    res = run("compress", tmp_path / "inf.onnx", "-o", out, "--prune", "magnitude:0.3")
    assert_bad_input(res, "NaN or Inf")
    assert not out.exists() or not any(out.iterdir())


# ---- messages ------------------------------------------------------------------------------
def test_relu_statistics_count_each_relu_once(tmp_path):
    from verify.api import load_property, verify_property
    net = small_net(hidden=8)
    text = "".join(f"(declare-const X_{i} Real)\n" for i in range(5))
    text += "".join(f"(declare-const Y_{i} Real)\n" for i in range(5))
    boxes = [" ".join(f"(>= X_{i} {c - 0.2}) (<= X_{i} {c + 0.2})" for i in range(5))
             for c in (-0.5, 0.0, 0.5)]
    text += "(assert (or " + " ".join(f"(and {b} (<= Y_0 -1000000))" for b in boxes) + "))\n"
    (tmp_path / "three.vnnlib").write_text(text)
    prop = load_property(tmp_path / "three.vnnlib", net)
    assert len(prop.regions) == 3
    s = verify_property(net, prop).statistics
    assert s.n_relus == 8
    assert s.stable_active + s.stable_inactive + s.unstable == 8, s


# ---- atomic outputs ------------------------------------------------------------------------
@pytest.mark.parametrize("fails", ["record", "network"])
def test_compress_failing_mid_write_leaves_no_partial_variant(tmp_path, monkeypatch, fails):
    import compress.io
    import compress.record
    import verify.onnx_io
    out = tmp_path / "out"
    real_save = verify.onnx_io.save_onnx

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    class HalfWritten:  # the model dies while it is being written
        def SerializeToString(self):
            raise KeyboardInterrupt

    def half_written(network, like=None, factors=None):
        return HalfWritten(), "float32"
    if fails == "record":
        monkeypatch.setattr(compress.record.ChangeRecord, "save", broken)
        res = run("compress", NET, "-o", out, "--prune", "magnitude:0.3")
        assert_bad_input(res, "No space left")
    else:
        monkeypatch.setattr(compress.io, "deployable_model", half_written)
        res = run("compress", NET, "-o", out, "--prune", "magnitude:0.3")
        assert res.exit_code == 130
    assert list(out.iterdir()) == []  # neither file, no temporary left over
    monkeypatch.setattr(verify.onnx_io, "save_onnx", real_save)


def test_report_is_never_partial(tmp_path, monkeypatch):
    from verify.reuse.report import write_report
    out = tmp_path / "r.html"
    out.write_text("old complete report")
    real_bytes = Path.write_bytes

    def dies_half_way(self, data, *a, **k):  # a full disk or Ctrl-C in mid-write
        real_bytes(self, (data if isinstance(data, bytes) else data.encode())[:10])
        raise KeyboardInterrupt
    monkeypatch.setattr(Path, "write_text", dies_half_way)
    monkeypatch.setattr(Path, "write_bytes", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        write_report([], out)
    monkeypatch.undo()
    assert out.read_text() == "old complete report" and len(list(tmp_path.iterdir())) == 1


# ---- fast start ------------------------------------------------------------------------------
def test_help_imports_no_heavy_module():
    code = ("import sys\nfrom verify.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'numpy', 'z3', 'onnx', 'compress', 'verify.reuse')"
            " if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
    assert "check-proof" in out.stdout and "compress" in out.stdout  # listed, not imported


def test_every_lazy_command_loads():
    from verify.cli import LAZY_COMMANDS
    for name in LAZY_COMMANDS:
        res = run(name, "--help")
        assert res.exit_code == 0 and "Usage:" in res.stdout, (name, res.output)


# ---- messages (VNN-LIB, compress) ------------------------------------------------------------
VNN = """(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(assert (>= X_0 0.0))
(assert (<= X_0 1.0))
(assert (>= X_1 LOW))
(assert (<= X_1 HIGH))
(assert (<= Y_0 0.0))
"""


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "+Infinity"])
def test_vnnlib_nonfinite_bound_is_named_as_a_number(bad):
    from verify.errors import PropertyError
    from verify.vnnlib import parse_vnnlib
    with pytest.raises(PropertyError) as exc:
        parse_vnnlib(VNN.replace("LOW", bad).replace("HIGH", "1"), "p.vnnlib")
    assert f"p.vnnlib:6: bad number '{bad}' (not finite)" in str(exc.value)
    assert "unknown variable" not in str(exc.value)


def test_vnnlib_lower_above_upper_names_the_variable_and_lines():
    from verify.errors import PropertyError
    from verify.vnnlib import parse_vnnlib
    with pytest.raises(PropertyError) as exc:
        parse_vnnlib(VNN.replace("LOW", "0.7").replace("HIGH", "0.2"), "p.vnnlib")
    text = str(exc.value)
    assert "X_1" in text and "0.7 (line 6)" in text and "0.2 (line 7)" in text


def test_neurons_ratio_one_is_an_error_said_in_the_help(tmp_path):
    res = run("compress", NET, "-o", tmp_path / "out", "--prune", "neurons:1.0")
    assert_bad_input(res, "neuron pruning ratio must be below 1")
    assert not (tmp_path / "out").exists()
    assert "neurons:1 is an error" in " ".join(run("compress", "--help").stdout.split())


def test_compress_samples_the_input_bounds_an_nnet_records(tmp_path):
    from verify.nnet_io import NnetNormalisation, save_nnet
    net = small_net()
    norm = NnetNormalisation((0.0,) * 5, (10.0,) * 5, (5.0,) * 6, (20.0,) * 6)  # -> [-0.25, 0.25]
    save_nnet(net, tmp_path / "n.nnet", norm)
    res = run("compress", tmp_path / "n.nnet", "-o", tmp_path / "out", "--prune", "magnitude:0.3")
    assert res.exit_code == 0, res.output
    assert "the input bounds recorded in n.nnet" in res.stdout
    # the deviation is the one over that box, not over [0, 1]^5
    from compress.io import load_variant
    from compress.metrics import output_deviation, sample_box
    variant = load_variant(tmp_path / "out" / "n.magnitude-0.3.onnx").network
    pts = sample_box(np.full(5, -0.25), np.full(5, 0.25), 1000, 0)
    dmax, _ = output_deviation(net, variant, pts)
    row = next(line for line in res.stdout.splitlines() if line.startswith("magnitude:0.3"))
    assert row.split()[5] == f"{dmax:.3g}"  # variant, params, non-zero, bytes, packed, max dev


def test_compress_says_when_it_samples_the_unit_box(tmp_path):
    res = run("compress", NET, "-o", tmp_path / "out", "--prune", "magnitude:0.3")
    assert res.exit_code == 0, res.output
    assert "[0, 1]^5 (sampling the default: no --domain or --box given" in res.stdout


def test_change_record_with_a_huge_number_is_an_input_error(tmp_path):
    """Found by the fuzzer: int(1e4001) raised OverflowError out of the reader."""
    from compress import compress
    from compress.record import ChangeRecord
    from verify.errors import InputError
    text = compress(small_net(), "magnitude:0.3").record.to_json()
    path = tmp_path / "v.changes.json"
    path.write_text(text.replace('"layer": 1,', '"layer": 1e4001,', 1))
    with pytest.raises(InputError, match="malformed change record"):
        ChangeRecord.load(path)
    path.write_bytes(b"\xff" + text.encode())
    with pytest.raises(InputError, match="cannot read change record"):
        ChangeRecord.load(path)


@pytest.mark.parametrize("args", [["--nosuch"], ["nosuch"], ["verify", NET], ["verify", NET, PROP1, "--bogus"]])
def test_usage_errors_are_one_line(args):
    assert_bad_input(run(*args), "--help")  # was click's usage block (3 lines)
