"""End-to-end tests of the coreproof pytest plugin (verify/pytest_plugin.py).

Each test writes a small suite into a temporary directory and runs pytest on it
in a subprocess (torch and the verifier are imported there, not here).  The
networks are tiny hand-set ReLU nets whose verdicts are obvious by design.
"""
from __future__ import annotations

import json
import os
import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]


def _plugin_autoloaded() -> bool:
    """True when the ``pytest11`` entry point of coreproof is installed (then
    ``-p verify.pytest_plugin`` would register the plugin a second time)."""
    return any(ep.value.split(":")[0] == "verify.pytest_plugin"
               for ep in entry_points(group="pytest11"))


PLUGIN_ARGS = [] if _plugin_autoloaded() else ["-p", "verify.pytest_plugin"]

# the unsafe set of a box where diff_model's class is 0 (the property holds)
CLASS0_VNNLIB = """
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (>= X_0 0.6))
(assert (<= X_0 1.0))
(assert (>= X_1 0.0))
(assert (<= X_1 0.1))
(assert (<= Y_0 Y_1))
"""

# y0 = x0 - x1 and y1 = x1 - x0 through one ReLU layer: class 0 iff x0 > x1.
# Around (0.9, 0.1) with eps 0.1 the margin is >= 1.2 (holds); around
# (0.55, 0.45) with eps 0.1 the classes swap (violated).
NETLIB = '''
import torch
from torch import nn

from verify.network import Affine, Network


def diff_model(scale=1.0):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]) * scale)
        m[0].bias.zero_()
        m[2].weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
        m[2].bias.zero_()
    return m.eval()


def hard_network(n=30):
    """y0 = 0.1 + sum_i (relu(x_i - .5) - relu(x_i - .5)) = 0.1 > 0 = y1 on [0, 1]^n.
    The property holds, so no attack can refute it, but every ReLU is unstable and
    the duplicated neurons defeat relaxations: proving it needs real search."""
    import numpy as np
    w1 = np.vstack([np.eye(n), np.eye(n)])
    b1 = -0.5 * np.ones(2 * n)
    w2 = np.zeros((2, 2 * n))
    w2[0, :n], w2[0, n:] = 1.0, -1.0
    return Network((Affine(w1, b1), Affine(w2, np.array([0.1, 0.0]))), name="hard")
''' + f"\n\nCLASS0_VNNLIB = {CLASS0_VNNLIB!r}\n"

ROBUST_SUITE = '''
import numpy as np
import torch

from verify.properties import Conjunction, Property, Region
from netlib import CLASS0_VNNLIB as VNNLIB, diff_model


def test_robust_points(coreproof):
    results = coreproof.assert_robust(diff_model(), torch.tensor([[0.9, 0.1], [0.2, 0.8]]),
                                      [0, 1], eps=0.1)
    assert [r.status.value for r in results] == ["holds", "holds"]


def test_verify_returns_result(coreproof):
    unsafe = Conjunction(np.array([[1.0, -1.0]]), np.array([0.0]))  # y0 - y1 <= 0
    prop = Property((Region([0.7, 0.0], [1.0, 0.3], (unsafe,)),), 2, name="class0")
    assert coreproof.verify(diff_model(), prop).status.value == "holds"
    prop = Property((Region([0.5, 0.0], [1.0, 0.4], (unsafe,)),), 2, name="class0-wide")
    coreproof.assert_holds(diff_model(), prop)


def test_vnnlib_file(coreproof, tmp_path):
    path = tmp_path / "prop.vnnlib"
    path.write_text(VNNLIB)
    coreproof.assert_holds(diff_model(), str(path))
'''

FAILING_SUITE = '''
from netlib import diff_model


def test_near_boundary(coreproof):
    coreproof.assert_robust(diff_model(), [[0.9, 0.1], [0.55, 0.45]], [0, 0], eps=0.1)
'''

UNKNOWN_SUITE = '''
import numpy as np
from netlib import hard_network


def test_hard(coreproof):
    net = hard_network()
    coreproof.assert_robust(net, np.full((1, net.n_inputs), 0.5), [0], eps=0.5)
'''

VARIANT_SUITE = '''
import sys
import types

import pytest
from netlib import diff_model

ORIGINAL = diff_model()


def test_variant_points(coreproof):
    coreproof.assert_variant_holds(ORIGINAL, diff_model(scale=0.5), [[0.9, 0.1]], [0], eps=0.1)


@pytest.mark.coreproof_reuse(original=ORIGINAL)
def test_marker_uses_reverify(coreproof, monkeypatch):
    calls = []

    def reverify(original, variant, prop, options, store=None):
        from verify.api import verify_property
        calls.append((original.digest(), variant.digest()))
        return verify_property(variant, prop, options)

    fake = types.ModuleType("verify.reuse")
    fake.reverify = reverify
    monkeypatch.setitem(sys.modules, "verify.reuse", fake)
    coreproof.assert_robust(diff_model(scale=2.0), [[0.1, 0.9]], [1], eps=0.1)
    assert len(calls) == 1 and calls[0][0] != calls[0][1]
'''


@pytest.fixture
def suite(pytester, monkeypatch):
    """A pytester dir where the inner pytest can import coreproof and netlib."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny nets: threads only add start-up cost
    pytester.makeini("[pytest]\n")  # pins rootdir to the temporary directory
    pytester.makepyfile(netlib=NETLIB)
    return pytester


def run(pytester, *args):
    return pytester.runpytest_subprocess(*PLUGIN_ARGS, "-p", "no:cacheprovider", *args,
                                         timeout=120)


def summary(result) -> dict:
    """Numbers of the coreproof terminal section."""
    text = result.stdout.str()
    assert "= coreproof =" in text, text
    m = re.search(r"properties checked: (\d+) \(holds: (\d+), violated: (\d+), unknown: (\d+)\)",
                  text)
    c = re.search(r"served from cache: (\d+) \(reused proofs\)", text)
    assert m and c, text
    assert re.search(r"total verification time: \d+\.\d\ds", text), text
    keys = ("checked", "holds", "violated", "unknown")
    return {**dict(zip(keys, map(int, m.groups()))), "cached": int(c.group(1))}


def test_robust_suite_passes(suite):
    suite.makepyfile(test_robust=ROBUST_SUITE)
    result = run(suite)
    result.assert_outcomes(passed=3)
    assert summary(result) == {"checked": 5, "holds": 5, "violated": 0, "unknown": 0,
                               "cached": 0}
    assert list((suite.path / ".coreproof" / "proofs").rglob("*.json"))


def test_non_robust_point_fails_with_counterexample(suite):
    suite.makepyfile(test_fail=FAILING_SUITE)
    result = run(suite)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert ("coreproof VIOLATED: local robustness (L-inf eps=0.1, domain [0, 1]) "
            "at 1 of 2 point(s)") in out
    assert "point #1 (label 0): violated" in out
    assert "point #0" not in out  # only failing points are listed
    assert "counterexample input (2 values): [" in out
    assert "class 1 scores >= label 0" in out
    m = re.search(r"full counterexample: (\S+\.json)", out)
    assert m, out
    path = Path(m.group(1))
    assert path.parent == suite.path / ".coreproof" / "counterexamples"
    saved = json.loads(path.read_text())
    assert saved["test"] == "test_fail.py::test_near_boundary"
    assert saved["verdict"] == "violated"
    assert saved["point"]["index"] == 1 and saved["point"]["label"] == 0
    x0, x1 = saved["counterexample"]["input"]
    assert 0.45 <= x0 <= 0.65 and 0.35 <= x1 <= 0.55 and x0 - x1 <= 0  # in the box, unsafe
    assert saved["counterexample"]["margin"] <= 0
    assert summary(result) == {"checked": 2, "holds": 1, "violated": 1, "unknown": 0,
                               "cached": 0}

    # The violated verdict is cached too; the re-run fails the same way, from the cache.
    again = run(suite)
    again.assert_outcomes(failed=1)
    assert "point #1 (label 0): violated" in again.stdout.str()
    assert summary(again)["cached"] == 2


@pytest.mark.parametrize("mode", [None, "skip", "pass"])  # None: the default, fail
def test_unknown_follows_option(suite, mode):
    suite.makepyfile(test_unknown=UNKNOWN_SUITE)
    args = ["--coreproof-timeout", "0.000001", "-rs"]
    if mode:
        args.append(f"--coreproof-unknown={mode}")
    result = run(suite, *args)
    out = result.stdout.str()
    if mode is None:
        result.assert_outcomes(failed=1)
        assert "coreproof UNKNOWN: local robustness" in out
        assert "(could not decide within the budget)" in out
        assert "point #0 (label 0): unknown after" in out
        assert "hint: raise --coreproof-timeout" in out
    elif mode == "skip":
        result.assert_outcomes(skipped=1)
        assert "SKIPPED" in out and "point #0 (label 0): unknown" in out
    else:
        result.assert_outcomes(passed=1)
    assert summary(result) == {"checked": 1, "holds": 0, "violated": 0, "unknown": 1,
                               "cached": 0}
    # unknown is never cached
    assert not list((suite.path / ".coreproof" / "proofs").rglob("*.json"))


def test_second_run_hits_cache(suite):
    suite.makepyfile(test_robust=ROBUST_SUITE)
    first = run(suite)
    first.assert_outcomes(passed=3)
    assert summary(first)["cached"] == 0

    second = run(suite)
    second.assert_outcomes(passed=3)
    assert summary(second) == {"checked": 5, "holds": 5, "violated": 0, "unknown": 0,
                               "cached": 5}
    assert "cache saved" in second.stdout.str()

    # --coreproof-no-cache neither reads nor writes
    fresh = run(suite, "--coreproof-no-cache")
    fresh.assert_outcomes(passed=3)
    assert summary(fresh)["cached"] == 0
    assert "proof cache: disabled" in fresh.stdout.str()

    # a corrupt entry is a reported miss, not an error
    entry = sorted((suite.path / ".coreproof" / "proofs").rglob("*.json"))[0]
    entry.write_text("{ truncated")
    third = run(suite)
    third.assert_outcomes(passed=3)
    assert summary(third)["cached"] == 4
    assert "warning: corrupt entry" in third.stdout.str()
    json.loads(entry.read_text())  # rewritten


def test_xdist_counts_are_aggregated(suite):
    pytest.importorskip("xdist")
    suite.makepyfile(test_robust=ROBUST_SUITE, test_fail=FAILING_SUITE)
    result = run(suite, "-n", "2")
    result.assert_outcomes(passed=3, failed=1)
    assert summary(result) == {"checked": 7, "holds": 6, "violated": 1, "unknown": 0,
                               "cached": 0}


def test_variant_checks_and_custom_cache_dir(suite, tmp_path):
    suite.makepyfile(test_variant=VARIANT_SUITE)
    cache = tmp_path / "elsewhere"
    result = run(suite, f"--coreproof-cache={cache}")
    result.assert_outcomes(passed=2)
    # each variant check verifies the original and then the variant
    assert summary(result) == {"checked": 4, "holds": 4, "violated": 0, "unknown": 0,
                               "cached": 0}
    assert "variants re-verified from their original's proof: 2" in result.stdout.str()
    assert f"proof cache: {cache}" in result.stdout.str()
    # four verdicts and the original's proof record (its branches and cores)
    assert len(list(cache.rglob("*.json"))) == 5
    assert not (suite.path / ".coreproof" / "proofs").exists()


def test_bad_options_are_usage_errors(suite):
    suite.makepyfile(test_robust=ROBUST_SUITE)
    result = run(suite, "--coreproof-timeout", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--coreproof-timeout must be positive and finite" in result.stderr.str()


def test_plugin_is_silent_when_unused(suite):
    suite.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = run(suite)
    result.assert_outcomes(passed=1)
    assert "= coreproof =" not in result.stdout.str()  # no summary section
    assert not (suite.path / ".coreproof").exists()


README_PRELUDE = '''
import numpy as np
import pytest

from verify.properties import local_robustness
from netlib import diff_model

load_my_model = diff_model
model = diff_model()
quantized = pruned = diff_model(scale=0.5)
points, labels = [[0.9, 0.1]], [0]
prop = local_robustness(np.array([0.9, 0.1]), 0.05, 0, 2)
'''



def _readme_pytest_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Safety checks in pytest"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_pytest_example_runs_as_written(suite):
    """The README's two pytest examples, with the names they leave to the reader
    (the model, points, a property, the compressed variants) defined on tiny nets;
    the second block's first lines (meant for a test body) wrapped in a test."""
    first, second = _readme_pytest_blocks()[:2]
    head, marked = second.split("@pytest.mark", 1)
    body = "".join("    " + line + "\n" for line in head.strip().splitlines())
    module = (README_PRELUDE + "\n\n" + first + "\n\ndef test_variant_lines(coreproof):\n" + body
              + "\n\n@pytest.mark" + marked)
    (suite.path / "props").mkdir()
    (suite.path / "props" / "prop_1.vnnlib").write_text(CLASS0_VNNLIB)
    suite.makepyfile(test_readme=module)
    result = run(suite)
    result.assert_outcomes(passed=3)
    counts = summary(result)
    assert counts["violated"] == counts["unknown"] == 0 and counts["holds"] >= 6
