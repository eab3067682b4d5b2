"""Tests for verify.vnnlib (the VNN-LIB reader)."""
from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from verify.errors import PropertyError, ShapeMismatchError
from verify.vnnlib import check_fits, load_vnnlib, parse_vnnlib

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "acasxu").is_dir(),
                                reason="benchmark data not available")

ACAS = [DATA / "acasxu" / f"prop_{i}.vnnlib" for i in range(1, 11)]
MNIST = [DATA / "mnistfc" / f"prop_{i}_{e}.vnnlib" for i in range(15) for e in ("0.03", "0.05")]
PRUNED = [DATA / "pruned_pairs" / f"mnist_{d}_local_15.vnnlib" for d in (0, 7)]


# ---------------------------------------------------------------------------
# A tiny, independent evaluator of the VNN-LIB S-expressions (float semantics,
# strict comparisons read as non-strict like the reader documents).
# ---------------------------------------------------------------------------
def _sexprs(text: str) -> list:
    text = re.sub(r";[^\n]*", "", text)
    out: list = []
    stack: list[list] = [out]
    for tok in re.findall(r"\(|\)|[^\s()]+", text):
        if tok == "(":
            stack.append([])
        elif tok == ")":
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    assert len(stack) == 1
    return out


def _ev_term(t, env):
    if isinstance(t, str):
        return env[t] if t in env else float(t)
    op, *args = t
    vals = [_ev_term(a, env) for a in args]
    if op == "+":
        return sum(vals)
    if op == "-":
        return -vals[0] if len(vals) == 1 else vals[0] - sum(vals[1:])
    if op == "*":
        return float(np.prod(vals))
    if op == "/":
        r = vals[0]
        for v in vals[1:]:
            r /= v
        return r
    raise AssertionError(op)


def _ev_formula(f, env) -> bool:
    if isinstance(f, str):
        return {"true": True, "false": False}[f]
    op, *args = f
    if op == "and":
        return all(_ev_formula(a, env) for a in args)
    if op == "or":
        return any(_ev_formula(a, env) for a in args)
    vals = [_ev_term(a, env) for a in args]
    cmp = {"<=": lambda a, b: a <= b, "<": lambda a, b: a <= b,
           ">=": lambda a, b: a >= b, ">": lambda a, b: a >= b,
           "=": lambda a, b: a == b}[op]
    return all(cmp(a, b) for a, b in zip(vals, vals[1:]))


def _asserts(text: str) -> list:
    return [cmd[1] for cmd in _sexprs(text) if cmd[0] == "assert"]


def _evaluate(asserts: list, x, y) -> bool:
    env = {f"X_{i}": float(v) for i, v in enumerate(x)}
    env.update({f"Y_{j}": float(v) for j, v in enumerate(y)})
    return all(_ev_formula(f, env) for f in asserts)


def _sample_points(prop, rng, n):
    """Points inside, on the corners of, and just outside the region boxes,
    with integer-valued outputs (so ties between outputs are common)."""
    for k in range(n):
        r = prop.regions[rng.integers(len(prop.regions))]
        lo, hi = r.lower, r.upper
        mode = k % 3
        if mode == 0:
            x = lo + (hi - lo) * rng.random(lo.shape)
        elif mode == 1:
            x = np.where(rng.random(lo.shape) < 0.5, lo, hi)
        else:
            x = lo + (hi - lo) * rng.random(lo.shape)
            i = rng.integers(lo.shape[0])
            x[i] = hi[i] + 0.01 if rng.random() < 0.5 else lo[i] - 0.01
        y = rng.integers(-5, 6, size=prop.n_outputs).astype(float)
        if rng.random() < 0.5:
            y = y + rng.normal(size=prop.n_outputs)
        yield x, y


def _cross_check(prop, text, seed=0, n=None, require_both=True):
    if n is None:
        n = 300 if prop.n_inputs < 100 else 60
    rng = np.random.default_rng(seed)
    asserts = _asserts(text)
    verdicts = []
    for x, y in _sample_points(prop, rng, n):
        mine = prop.violated_by(x, y)
        ref = _evaluate(asserts, x, y)
        assert mine == ref, (x, y)
        verdicts.append(mine)
    if require_both:
        assert any(verdicts) and not all(verdicts)


# ---------------------------------------------------------------------------
# Benchmark files
# ---------------------------------------------------------------------------
@needs_data
@pytest.mark.parametrize("path", ACAS, ids=lambda p: p.stem)
def test_acas_files_parse(path):
    prop = load_vnnlib(path, n_inputs=5, n_outputs=5)
    assert (prop.n_inputs, prop.n_outputs) == (5, 5)
    assert prop.name == path.stem and prop.source == str(path)
    _cross_check(prop, path.read_text(), seed=int(path.stem.split("_")[1]))


@needs_data
@pytest.mark.parametrize("path", MNIST, ids=lambda p: p.stem)
def test_mnist_files_parse(path):
    prop = load_vnnlib(path, n_inputs=784, n_outputs=10)
    assert (prop.n_inputs, prop.n_outputs) == (784, 10)
    assert len(prop.regions) == 1
    region = prop.regions[0]
    assert region.lower.shape == region.upper.shape == (784,)
    assert np.all(region.lower <= region.upper)
    assert len(region.unsafe) == 9
    for conj in region.unsafe:
        assert conj.coeffs.shape == (1, 10) and conj.rhs.shape == (1,)
        assert sorted(conj.coeffs[0]) == [-1.0] + [0.0] * 8 + [1.0]
        assert conj.rhs[0] == 0.0


@needs_data
def test_mnist_label_and_semantics():
    path = DATA / "mnistfc" / "prop_0_0.03.vnnlib"
    text = path.read_text()
    prop = load_vnnlib(path)
    label = int(re.search(r"label: (\d+)", text).group(1))
    # every conjunction is "y_label - y_j <= 0" for some j != label
    others = set()
    for conj in prop.regions[0].unsafe:
        row = conj.coeffs[0]
        assert row[label] == 1.0
        others.add(int(np.flatnonzero(row == -1.0)[0]))
    assert others == set(range(10)) - {label}
    _cross_check(prop, text, seed=1)


@needs_data
def test_mnist_property_parses_to_its_box():
    """(Parse speed is a benchmark figure, not a timed assertion.)"""
    text = (DATA / "mnistfc" / "prop_0_0.03.vnnlib").read_text()
    prop = parse_vnnlib(text)
    (region,) = prop.regions
    assert prop.n_inputs == 784 and prop.n_outputs == 10
    width = region.upper - region.lower
    assert np.all(width >= 0.03 - 1e-6) and np.all(width <= 0.06 + 1e-6)  # 2 eps, clipped to [0, 1]
    assert len(region.unsafe) == 9  # one disjunct per wrong class


@needs_data
@pytest.mark.parametrize("path", PRUNED, ids=lambda p: p.stem)
def test_pruned_pair_files_parse(path):
    prop = load_vnnlib(path)
    assert (prop.n_inputs, prop.n_outputs) == (784, 0)
    assert len(prop.regions) == 1
    r = prop.regions[0]
    assert np.all(np.isfinite(r.lower)) and np.all(r.lower <= r.upper)
    # no output constraints: the whole box is the unsafe set
    assert len(r.unsafe) == 1 and r.unsafe[0].coeffs.shape == (0, 0)
    _cross_check(prop, path.read_text(), seed=2)
    # an input-only file adopts the network's output size
    prop10 = load_vnnlib(path, n_inputs=784, n_outputs=10)
    assert prop10.n_outputs == 10 and prop10.regions[0].unsafe[0].coeffs.shape == (0, 10)


@needs_data
def test_acas_prop1_values():
    prop = load_vnnlib(DATA / "acasxu" / "prop_1.vnnlib")
    assert len(prop.regions) == 1
    r = prop.regions[0]
    np.testing.assert_array_equal(r.lower, [0.6, -0.5, -0.5, 0.45, -0.5])
    np.testing.assert_array_equal(r.upper, [0.679857769, 0.5, 0.5, 0.5, -0.45])
    assert len(r.unsafe) == 1
    np.testing.assert_array_equal(r.unsafe[0].coeffs, [[-1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(r.unsafe[0].rhs, [-3.991125645861615])


@needs_data
def test_acas_prop6_two_regions():
    prop = load_vnnlib(DATA / "acasxu" / "prop_6.vnnlib")
    assert len(prop.regions) == 2
    for r in prop.regions:
        assert len(r.unsafe) == 4
        for conj in r.unsafe:
            assert conj.coeffs.shape == (1, 5)
            assert conj.coeffs[0, 0] == -1.0  # y_j - y_0 <= 0
    assert prop.regions[0].lower[1] == 0.11140846
    assert prop.regions[1].upper[1] == -0.11140846


@needs_data
def test_acas_prop2_single_conjunction_of_four_rows():
    prop = load_vnnlib(DATA / "acasxu" / "prop_2.vnnlib")
    (r,) = prop.regions
    (conj,) = r.unsafe
    assert conj.coeffs.shape == (4, 5)
    np.testing.assert_array_equal(conj.coeffs[:, 0], [-1, -1, -1, -1])


@needs_data
def test_size_mismatch_with_network():
    path = DATA / "acasxu" / "prop_1.vnnlib"
    with pytest.raises(ShapeMismatchError) as ei:
        load_vnnlib(path, n_inputs=784)
    assert str(path) in str(ei.value) and "5" in str(ei.value) and "784" in str(ei.value)
    with pytest.raises(ShapeMismatchError) as ei:
        load_vnnlib(path, n_outputs=10)
    assert "10" in str(ei.value)


# ---------------------------------------------------------------------------
# Synthetic texts
# ---------------------------------------------------------------------------
HEADER = """(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
; body starts on line 6
"""

BOX = "(assert (<= 0 X_0))\n(assert (<= X_0 1))\n(assert (>= X_1 -1))\n(assert (<= X_1 1))\n"

RICH = """(declare-const X_0 Real) ; inputs
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (or (and (>= X_0 -1) (<= X_0 0))
            (and (>= X_0 0.5) (<= (* 2 X_0) 2.5))))
(assert (<= -1 X_1 1))
(assert (< 1 2))
(assert (= 0.5 (/ 1 2) (- 1 0.5)))
(assert (or (and (<= (+ Y_0 (* -2 Y_1)) 0.5) (> Y_2 (- 1)))
            (= Y_0 Y_2)
            (<= (- Y_1 Y_2) (/ 1 4))
            (and (< 3 2) (>= Y_0 0))))
"""


def test_rich_formula_structure_and_semantics():
    prop = parse_vnnlib(RICH)
    assert (prop.n_inputs, prop.n_outputs) == (2, 3)
    assert len(prop.regions) == 2
    r0, r1 = prop.regions
    np.testing.assert_array_equal(r0.lower, [-1, -1])
    np.testing.assert_array_equal(r0.upper, [0, 1])
    np.testing.assert_array_equal(r1.lower, [0.5, -1])
    np.testing.assert_array_equal(r1.upper, [1.25, 1])
    for r in prop.regions:
        assert [c.coeffs.shape[0] for c in r.unsafe] == [2, 2, 1]
    np.testing.assert_array_equal(r0.unsafe[0].coeffs, [[1, -2, 0], [0, 0, -1]])
    np.testing.assert_array_equal(r0.unsafe[0].rhs, [0.5, 1])
    np.testing.assert_array_equal(r0.unsafe[1].coeffs, [[1, 0, -1], [-1, 0, 1]])
    _cross_check(prop, RICH, seed=3, n=600)


def test_term_without_outputs_makes_box_unsafe_and_empty_boxes_are_dropped():
    text = HEADER + """(assert (>= X_1 0)) (assert (<= X_1 1))
(assert (or (and (<= 0 X_0) (<= X_0 1))
            (and (<= 2 X_0) (<= X_0 3) (>= Y_0 Y_1))
            (and (<= 5 X_0) (<= X_0 4) (>= Y_1 0))))
"""
    prop = parse_vnnlib(text)
    assert len(prop.regions) == 2
    assert prop.regions[0].unsafe[0].coeffs.shape == (0, 2)
    assert prop.violated_by([0.5, 0.5], [1.0, 2.0])
    assert not prop.violated_by([2.5, 0.5], [1.0, 2.0])
    assert prop.violated_by([2.5, 0.5], [2.0, 2.0])
    _cross_check(prop, text, seed=4)


def test_same_box_disjuncts_are_grouped():
    text = HEADER + BOX + "(assert (or (>= Y_0 1) (and (<= X_0 1) (>= Y_1 1))))\n"
    prop = parse_vnnlib(text)
    assert len(prop.regions) == 1 and len(prop.regions[0].unsafe) == 2


def test_strict_is_non_strict_and_scientific_numbers():
    text = HEADER + "(assert (< 0 X_0)) (assert (< X_0 1e-1))\n" \
                    "(assert (> X_1 -2.5E+0)) (assert (> +.5 X_1)) (assert (> Y_0 Y_1))\n"
    prop = parse_vnnlib(text)
    r = prop.regions[0]
    np.testing.assert_array_equal(r.lower, [0, -2.5])
    np.testing.assert_array_equal(r.upper, [0.1, 0.5])
    assert prop.violated_by([0, 0.5], [1.0, 1.0])


def test_scaled_bounds_round_outward():
    text = HEADER + "(assert (<= (* 3 X_0) 1)) (assert (>= (* 3 X_0) 1))\n" \
                    "(assert (<= (/ X_1 3) 1)) (assert (>= X_1 0))\n"
    r = parse_vnnlib(text).regions[0]
    assert Fraction(float(r.lower[0])) <= Fraction(1, 3) <= Fraction(float(r.upper[0]))
    assert r.upper[1] == 3.0


def test_dnf_size_cap():
    ors = "".join(f"(assert (or (>= Y_0 {i}) (>= Y_1 {i})))\n" for i in range(14))
    with pytest.raises(PropertyError, match="disjunctive normal form exceeds 10000"):
        parse_vnnlib(HEADER + BOX + ors)
    prop = parse_vnnlib(HEADER + BOX + ors, max_terms=20000)
    assert len(prop.regions[0].unsafe) == 2 ** 14


def test_all_terms_empty_is_an_error():
    text = HEADER + BOX + "(assert (>= X_0 2))\n"
    with pytest.raises(PropertyError, match="unsatisfiable"):
        parse_vnnlib(text)


def test_check_fits():
    prop = parse_vnnlib(HEADER + BOX, source="p.vnnlib")
    check_fits(SimpleNamespace(n_inputs=2, n_outputs=2), prop)
    with pytest.raises(ShapeMismatchError, match=r"p\.vnnlib.*2 inputs.*network has 3"):
        check_fits(SimpleNamespace(n_inputs=3, n_outputs=2), prop)
    with pytest.raises(ShapeMismatchError, match=r"q\.vnnlib.*2 outputs.*network has 5"):
        check_fits(SimpleNamespace(n_inputs=2, n_outputs=5), prop, path="q.vnnlib")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.vnnlib"
    with pytest.raises(PropertyError, match="no such file") as ei:
        load_vnnlib(path)
    assert str(path) in str(ei.value)


def test_name_and_source(tmp_path):
    path = tmp_path / "my_prop.vnnlib"
    path.write_text(HEADER + BOX)
    prop = load_vnnlib(path)
    assert prop.name == "my_prop" and prop.source == str(path)


# ---------------------------------------------------------------------------
# Malformed inputs: path, line and the right message
# ---------------------------------------------------------------------------
BAD = [
    # (body after HEADER (starts line 6), expected line, message fragment)
    ("(assert (<= X_0 1.0)\n" + BOX, 7, "expected ')'"),
    (BOX + "(assert (<= X_0 1.0)", 10, "expected ')' to close the '(' opened at line 10"),
    (BOX + "(assert (<= Y_0 1.0)))\n", 10, "unexpected ')'"),
    (BOX + "\n(assert (<= Z_3 1.0))\n", 11, "unknown variable Z_3"),
    (BOX + "(assert (<= Y_7 1.0))\n", 10, "unknown variable Y_7"),
    (BOX + "(assert (or (<= Y_0 0)\n   (<= (* X_0 X_1) 1.0)))\n", 11, "nonlinear term"),
    (BOX + "(assert (<= (* Y_0 Y_1) 1.0))\n", 10, "nonlinear term"),
    ("(assert (<= 0 X_0))\n(assert (<= X_0 1))\n(assert (>= X_1 -1))\n", 2,
     "input X_1 has no upper bound"),
    (BOX + "(assert (<= Y_0 0.5.1))\n", 10, "bad number '0.5.1'"),
    (BOX + "(assert (<= Y_0 1e))\n", 10, "bad number"),
    (BOX + "(assert (<= Y_0 1e999))\n", 10, "bad number"),
    (BOX + "(assert (<= X_0 Y_0))\n", 10, "atom mixes input and output variables"),
    (BOX + "(assert (<= (+ X_0 X_1) 1))\n", 10,
     "only box constraints on inputs are supported"),
    (BOX + "(assert (not (<= Y_0 1)))\n", 10, "negation is not supported"),
    (BOX + "(assert (<= Y_0 1) (<= Y_1 1))\n", 10, "assert takes one formula"),
    (BOX + "(declare-fun Y_2 () Real)\n", 10, "unsupported command"),
    (BOX + "X_0\n", 10, "outside parentheses"),
]


@pytest.mark.parametrize("body,line,fragment", BAD)
def test_malformed_inputs(tmp_path, body, line, fragment):
    _expect_error(tmp_path, HEADER + body, line, fragment)


def _expect_error(tmp_path, text, line, fragment):
    path = tmp_path / "bad.vnnlib"
    path.write_text(text)
    with pytest.raises(PropertyError) as ei:
        load_vnnlib(path)
    msg = str(ei.value)
    assert ei.value.path == str(path)
    assert ei.value.line == line, msg
    assert f"{path}:{line}: " in msg
    assert fragment in msg, msg


def test_declaration_errors(tmp_path):
    _expect_error(tmp_path, "(declare-const X_0 Real)\n(declare-const X_1 Int)\n", 2,
                  "sort 'Int'")
    _expect_error(tmp_path, "(declare-const X_0 Real)\n(declare-const X_0 Real)\n", 2,
                  "declared twice")
    _expect_error(tmp_path, "(declare-const X_0 Real)\n(declare-const Z Real)\n", 2,
                  "unsupported variable name 'Z'")
    _expect_error(tmp_path, "(declare-const X_0 Real)\n\n(declare-const X_2 Real)\n"
                  "(assert (<= 0 X_0 1))\n", 3, "X_1 is not declared")
    _expect_error(tmp_path, "(declare-const X_0 Real)\n(assert (<= 0 X_0 1))\n"
                  "(assert (<= Y_0 1))\n(declare-const Y_0 Real)\n", 3, "unknown variable Y_0")
