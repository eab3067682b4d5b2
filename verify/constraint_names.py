"""Constraint names: the one place that formats and parses them.

Names are stable across a network and its compressed variants (a hidden neuron keeps
its layer and index), which is what lets a proof's unsat cores be reused:

* ``in.{i}.box``          lower_i <= x_i <= upper_i
* ``L{k}.N{i}.affine``    z = W a + b of hidden neuron i of affine layer k
* ``L{k}.N{i}.relu``      a = max(z, 0) for an unstable neuron (a disjunction)
* ``L{k}.N{i}.bounds``    l <= z <= u, the propagated bounds of the neuron
* ``L{k}.N{i}.active`` / ``L{k}.N{i}.inactive``  a ReLU phase split (a fact of a
  branch; ``inactive`` is also asserted as W a + b <= 0 by the encoder)
* ``out.{j}.affine``      output j of the last affine layer
* ``spec.{r}``            row r of the unsafe conjunction: c_r @ y <= d_r

ReLU phase splits, per hidden layer an int8 array in {-1, 0, +1}, are recorded as
these named facts (:func:`split_facts`, :func:`split_arrays`, :func:`fact_dict`,
:func:`fact_names`).  This module depends on nothing else in the project.
"""
from __future__ import annotations

import re

import numpy as np

NEURON_KINDS = ("affine", "relu", "bounds", "active", "inactive")
_NEURON = re.compile(r"^L(\d+)\.N(\d+)\.(" + "|".join(NEURON_KINDS) + r")$")
_OUTPUT = re.compile(r"^out\.(\d+)\.affine$")


def neuron_name(layer: int, index: int, kind: str) -> str:
    """A neuron's constraint name, ``L{layer}.N{index}.{kind}`` (kind: one of
    :data:`NEURON_KINDS`)."""
    return f"L{layer}.N{index}.{kind}"


def output_name(j: int) -> str:
    return f"out.{j}.affine"


def input_name(i: int) -> str:
    return f"in.{i}.box"


def spec_name(r: int) -> str:
    return f"spec.{r}"


def parse_neuron(name: str) -> tuple[int, int, str] | None:
    """``"L1.N7.relu"`` -> (1, 7, "relu"); None for a name that is not a neuron's."""
    m = _NEURON.match(name)
    return None if m is None else (int(m.group(1)), int(m.group(2)), m.group(3))


def parse_output(name: str) -> int | None:
    """``"out.3.affine"`` -> 3; None for any other name."""
    m = _OUTPUT.match(name)
    return None if m is None else int(m.group(1))


def _phase(p) -> str:
    return "active" if p > 0 else "inactive"


def split_facts(splits) -> tuple[str, ...]:
    """ReLU phase splits (per hidden layer, int8 in {-1, 0, +1}) as named facts."""
    if splits is None:
        return ()
    return tuple(neuron_name(k, i, _phase(s[i]))
                 for k, s in enumerate(splits) for i in np.flatnonzero(s))


def parse_fact(fact: str) -> tuple[tuple[int, int], int]:
    """``"L1.N7.active"`` -> ((1, 7), +1); ``inactive`` -> -1."""
    got = parse_neuron(fact)
    if got is None or got[2] not in ("active", "inactive"):
        raise ValueError(f"not a ReLU phase fact: {fact!r} (expected L<k>.N<i>.active "
                         "or .inactive)")
    return (got[0], got[1]), (1 if got[2] == "active" else -1)


def fact_dict(facts) -> dict[tuple[int, int], int]:
    """Named facts as {(layer, neuron): +1 active / -1 inactive}."""
    return dict(parse_fact(f) for f in facts)


def fact_names(facts: dict) -> tuple[str, ...]:
    """The inverse of :func:`fact_dict`."""
    return tuple(neuron_name(k, i, _phase(p)) for (k, i), p in facts.items())


def split_arrays(facts, hidden_sizes) -> list[np.ndarray]:
    """The inverse of :func:`split_facts`."""
    arrays = [np.zeros(n, dtype=np.int8) for n in hidden_sizes]
    for f in facts:
        (layer, neuron), phase = parse_fact(f)
        arrays[layer][neuron] = phase
    return arrays
