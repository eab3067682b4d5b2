"""Tightening ``equiv`` on graph networks (CNNs) by verifying properties with the search.

Bisecting an image-sized input box does not pay, and the chains' neuron-aligned ReLU
splitting (:mod:`verify.equiv.relusplit`) needs two chains.  For graph networks the two
questions ``equiv`` splits for are asked to the verifier itself, whose ReLU branch and
bound, alpha/beta-CROWN and attacks work on any graph:

* **a target delta** ``T``: the product graph ``P(x) = g(x) - f(x)``
  (:func:`verify.equiv.bounds.product_graph`) against the property "some output of ``P``
  is >= ``T`` or <= ``-T``" on the box (:func:`deviation_property`; only the outputs whose
  bound is still above ``T``).  ``holds`` certifies
  ``|g - f| < T`` on every output over the whole box; ``violated`` gives an input at which
  some output moved by at least ``T``, re-run here on both float64 networks;
* **top-1 agreement** with the class ``c`` the original predicts at the box centre:
  "class ``c`` wins strictly" verified on ``f``, then on ``g`` (:func:`class_property`).
  Both holding certifies that the two networks predict ``c`` everywhere on the box; a
  counterexample of either is checked for a disagreement of the two (it may be an input
  where both predict the same other class, which settles nothing).

Soundness is the verifier's: ``holds`` comes from its sound bounds, and every input
returned here is a replayed point of the box.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from ..options import VerifyOptions
from ..properties import Conjunction, Property, Region
from ..result import Status
from .bounds import product_graph


def deviation_property(n_outputs: int, lo, hi, target: float, outputs=None) -> Property:
    """Unsafe: some output ``y_i >= target`` or ``y_i <= -target`` (of the product graph;
    ``outputs``: only these ``i``, default all)."""
    unsafe = []
    for i in range(n_outputs) if outputs is None else outputs:
        e = np.zeros(n_outputs)
        e[i] = 1.0
        unsafe += [Conjunction(-e[None, :], np.array([-target])),  # y_i >= target
                   Conjunction(e[None, :], np.array([-target]))]  # y_i <= -target
    return Property((Region(lo, hi, tuple(unsafe)),), n_outputs, f"|g-f|>={target:g}")


def class_property(n_outputs: int, lo, hi, c: int, sign: float = 1.0) -> Property:
    """Unsafe: class ``c`` does not win strictly (``sign`` -1: the smallest output wins)."""
    unsafe = []
    for j in range(n_outputs):
        if j != c:
            row = np.zeros(n_outputs)
            row[c], row[j] = sign, -sign
            unsafe.append(Conjunction(row[None, :], np.zeros(1)))
    return Property((Region(lo, hi, tuple(unsafe)),), n_outputs, f"class-{c}-wins")


@dataclass(frozen=True)
class Verified:
    status: Status
    inputs: tuple[np.ndarray, ...] = ()  # replayed unsafe inputs (violated)


def _verify(net, prop, deadline: float) -> Verified:
    from ..verifier import verify_property
    left = deadline - time.monotonic()
    if left <= 0.05:
        return Verified(Status.UNKNOWN)
    res = verify_property(net, prop, VerifyOptions(timeout=left))
    cex = () if res.counterexample is None else \
        (np.asarray(res.counterexample.input, dtype=np.float64),)
    return Verified(res.status, cex)


def deviation_below(f, g, lo, hi, target: float, deadline: float, outputs=None) -> Verified:
    """Whether ``|g - f| < target`` on the box for the ``outputs`` (default all; see the
    module doc); a violated answer's input has ``|g(x) - f(x)| >= target`` on some
    output, re-checked on both networks."""
    got = _verify(product_graph(f, g),
                  deviation_property(f.n_outputs, lo, hi, target, outputs), deadline)
    if got.status is Status.VIOLATED:
        x = got.inputs[0]
        if not np.any(np.abs(g.forward(x) - f.forward(x)) >= target):
            return Verified(Status.UNKNOWN)  # not replayed: no verdict
    return got


def class_constant(f, g, lo, hi, c: int, sign: float, deadline: float) -> Verified:
    """Whether both networks predict class ``c`` everywhere on the box; a violated
    answer carries the inputs where one of them does not (to be replayed for a
    disagreement by the caller)."""
    prop = class_property(f.n_outputs, lo, hi, c, sign)
    for net in (f, g):
        got = _verify(net, prop, deadline)
        if got.status is not Status.HOLDS:
            return got
    return got


def tighten_graph(f, g, lo, hi, root, target: float | None, agreement: bool, sign: float,
                  deadline: float):
    """The box's bound ``root`` (a :class:`verify.equiv.search.BoxBound`) after asking the
    verifier: its delta capped at ``target`` when :func:`deviation_below` holds, its
    top-1 agreement certified when ``agreement`` is asked and :func:`class_constant`
    holds.  Returns it and the unsafe inputs found (for the caller to replay)."""
    delta, agree, inputs = root.delta, root.agree, []
    above = [] if target is None else np.flatnonzero(root.delta > target).tolist()
    need_target = bool(above)
    need_agree = agreement and not root.agree
    if need_target:
        share = 0.5 if need_agree else 1.0
        got = deviation_below(f, g, lo, hi, target,  # only the outputs still above it
                              time.monotonic() + share * (deadline - time.monotonic()), above)
        if got.status is Status.HOLDS:
            delta = np.minimum(delta, target)
        inputs += got.inputs
    if need_agree:
        got = class_constant(f, g, lo, hi, root.top_class, sign, deadline)
        agree = got.status is Status.HOLDS
        inputs += got.inputs
    return replace(root, delta=delta, agree=agree), inputs


__all__ = ["deviation_property", "class_property", "deviation_below", "class_constant",
           "tighten_graph", "Verified"]
