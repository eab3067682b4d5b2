"""A variant that is a near copy of its original (int16) gets no up-front attack
(``ReuseOptions.attack_skip_below``); a near copy that is violated is still found,
with its counterexample replayed."""
import dataclasses

import numpy as np
import pytest

from compress import sweep
from verify.api import VerifyOptions, load_property, verify_property
from verify.attack import Attacker
from verify.network import Affine, Network
from verify.result import Status
from verify.reuse import ReuseOptions, build_proof, reverify
from verify.reuse.changes import ChangeMap

OPTS = VerifyOptions(timeout=10, z3_query_timeout=1)
# every proof counts as long enough for the up-front round (the digits proofs take ms)
ALWAYS = ReuseOptions(attack_first_proof_s=0.0)


def _variant(net, recipe):
    return next(iter(sweep(net, [recipe])))


def test_relative_change_separates_int16_from_int8_and_counts_biases(digits_mlp):
    net, _, _ = digits_mlp
    int16, int8 = _variant(net, "int16"), _variant(net, "int8")
    assert ChangeMap(net, int16.network, int16.record).relative_change < 1e-3
    assert ChangeMap(net, int8.network, int8.record).relative_change > 1e-3
    # the weights as they are, one bias moved: a near copy by its weights alone, not
    # by its parameters
    moved = list(net.affines)
    b = moved[1].bias.copy()
    b[0] += 10 * np.linalg.norm(np.concatenate([moved[1].weight.ravel(), b]))
    moved[1] = Affine(moved[1].weight, b)
    far = Network(tuple(moved), net.input_shape, "bias moved")
    assert ChangeMap(net, far).relative_change > 1.0


@pytest.fixture
def attack_calls(monkeypatch):
    calls = []
    attack = Attacker.attack

    def counted(self, *args, **kw):
        calls.append(1)
        return attack(self, *args, **kw)
    monkeypatch.setattr(Attacker, "attack", counted)
    return calls


def test_a_near_copy_gets_no_attack_up_front(split_proof, attack_calls):
    net, prop, proof = split_proof
    v = _variant(net, "int16")
    skipped = reverify(net, v, prop, OPTS, reuse_options=ALWAYS, proof=proof)
    n_skipped = len(attack_calls)
    assert skipped.reuse.attack_skipped and not skipped.reuse.fallback
    assert skipped.status == verify_property(v.network, prop, OPTS).status == Status.HOLDS
    attack_calls.clear()
    attacked = reverify(net, v, prop, OPTS, proof=proof,
                        reuse_options=dataclasses.replace(ALWAYS, attack_skip_below=0.0))
    assert not attacked.reuse.attack_skipped and attacked.status == Status.HOLDS
    assert len(attack_calls) > n_skipped  # the up-front round ran only here
    # a variant further away is attacked up front as before
    v8 = _variant(net, "int8")
    assert not reverify(net, v8, prop, OPTS, reuse_options=ALWAYS, proof=proof).reuse.attack_skipped


def test_a_near_copy_that_violates_is_found(tmp_path):
    """y = 1.5 x0 + 1.5 x1 + 0.2 on [0, 1]^2 (every ReLU active): the original's
    maximum 3.2 stays below the unsafe threshold by 2e-4 of it; the variant's output
    weights, 5e-4 larger, reach it.  A near copy by its parameters, and violated."""
    hidden = Affine(np.array([[1.0, 0.5], [0.5, 1.0]]), np.array([0.1, 0.1]))
    net = Network((hidden, Affine(np.array([[1.0, 1.0]]), np.array([0.0]))), (2,), "orig")
    variant = Network((hidden, Affine(np.array([[1.0, 1.0]]) * (1 + 5e-4), np.array([0.0]))),
                      (2,), "near")
    threshold = 3.2 * (1 + 2e-4)
    path = tmp_path / "p.vnnlib"
    path.write_text("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
                    "(assert (>= X_0 0.0))\n(assert (<= X_0 1.0))\n"
                    "(assert (>= X_1 0.0))\n(assert (<= X_1 1.0))\n"
                    f"(assert (>= Y_0 {threshold!r}))\n")
    prop = load_property(path, net)
    proof = build_proof(net, prop, OPTS)
    assert proof.status == "holds"
    assert ChangeMap(net, variant).relative_change < ALWAYS.attack_skip_below
    res = reverify(net, variant, prop, OPTS, reuse_options=ALWAYS, proof=proof)
    assert res.status == Status.VIOLATED, res
    x = np.array(res.counterexample.input)
    y = variant.forward(x)
    assert prop.regions[0].contains_input(x) and prop.violated_by(x, y)


@pytest.mark.parametrize("bad", [{"attack_skip_below": -1.0}, {"attack_skip_below": float("nan")},
                                 {"interval_symbolic_max_loss": float("nan")},
                                 {"walk_interior_depth": -2}])
def test_this_sessions_reuse_options_refuse_bad_values(bad):
    from verify.errors import OptionError
    with pytest.raises(OptionError, match=next(iter(bad))):
        ReuseOptions(**bad)
