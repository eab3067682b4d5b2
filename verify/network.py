"""The network representation: a small, explicit list of layers.

A :class:`Network` is always in canonical form ``Affine (ReLU Affine)*``:
flatten, reshape and identity-like operators are folded away by the loaders, and
consecutive affine maps are composed.  The input is the flattened input vector.

Every hidden neuron has a stable structural name ``(layer, index)`` where
``layer`` counts the affine layers from 0; the last affine layer is the output.
This module depends on nothing else in the project (numpy only).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class Affine:
    """``y = weight @ x + bias``; ``weight`` has shape (out, in), float64.

    A quantized layer also keeps its exact integer form: ``weight ==
    weight_int * weight_scale[:, None]`` (per output row; a per-tensor scale is
    a constant vector), so an encoder can use small integer coefficients.
    """

    weight: np.ndarray
    bias: np.ndarray
    weight_int: np.ndarray | None = None
    weight_scale: np.ndarray | None = None

    def __post_init__(self):
        w = np.ascontiguousarray(np.asarray(self.weight, dtype=np.float64))
        b = np.ascontiguousarray(np.asarray(self.bias, dtype=np.float64)).reshape(-1)
        if w.ndim != 2:
            raise ValueError(f"affine weight must be 2-d, got shape {w.shape}")
        if b.shape != (w.shape[0],):
            raise ValueError(f"affine bias has shape {b.shape}, expected ({w.shape[0]},)")
        w.setflags(write=False)
        b.setflags(write=False)
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)
        if (self.weight_int is None) != (self.weight_scale is None):
            raise ValueError("weight_int and weight_scale go together")
        if self.weight_int is not None:
            wi = np.asarray(self.weight_int, dtype=np.int64)
            sc = np.asarray(self.weight_scale, dtype=np.float64).reshape(-1)
            if wi.shape != w.shape or sc.shape != (w.shape[0],):
                raise ValueError("integer weights/scales do not match the weight shape")
            if not np.array_equal(wi * sc[:, None], w):
                raise ValueError("weight != weight_int * weight_scale")
            wi.setflags(write=False)
            sc.setflags(write=False)
            object.__setattr__(self, "weight_int", wi)
            object.__setattr__(self, "weight_scale", sc)

    @property
    def in_size(self) -> int:
        return self.weight.shape[1]

    @property
    def out_size(self) -> int:
        return self.weight.shape[0]

    @property
    def is_quantized(self) -> bool:
        return self.weight_int is not None


@dataclass(frozen=True)
class Network:
    """A feed-forward ReLU network: ``affines[0]``, ReLU, ``affines[1]``, ..., ``affines[-1]``.

    ReLU follows every affine layer except the last one.  ``input_shape`` is
    the shape the source format expects (for reshaping counterexamples back);
    the verifier always works on the flat vector.
    """

    affines: tuple[Affine, ...]
    input_shape: tuple[int, ...] = ()
    name: str = "network"
    _digest: list = field(default_factory=list, init=False, repr=False, compare=False)
    _float32: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self):
        affines = tuple(self.affines)
        if not affines:
            raise ValueError("a network needs at least one affine layer")
        for k in range(1, len(affines)):
            if affines[k].in_size != affines[k - 1].out_size:
                raise ValueError(
                    f"layer {k} takes {affines[k].in_size} inputs but layer {k - 1} "
                    f"gives {affines[k - 1].out_size}")
        object.__setattr__(self, "affines", affines)
        shape = tuple(int(s) for s in self.input_shape) or (affines[0].in_size,)
        if int(np.prod(shape)) != affines[0].in_size:
            raise ValueError(f"input shape {shape} does not hold {affines[0].in_size} values")
        object.__setattr__(self, "input_shape", shape)

    # ---- sizes -------------------------------------------------------------
    @property
    def n_inputs(self) -> int:
        return self.affines[0].in_size

    @property
    def n_outputs(self) -> int:
        return self.affines[-1].out_size

    @property
    def n_layers(self) -> int:
        """Number of affine layers (hidden layers + output layer)."""
        return len(self.affines)

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return tuple(a.out_size for a in self.affines[:-1])

    @property
    def n_relus(self) -> int:
        return sum(self.hidden_sizes)

    @property
    def n_parameters(self) -> int:
        return sum(a.weight.size + a.bias.size for a in self.affines)

    def layer_sizes(self) -> tuple[int, ...]:
        return (self.n_inputs,) + tuple(a.out_size for a in self.affines)

    # ---- evaluation --------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        """Exact float64 evaluation; ``x`` is (n_inputs,) or (batch, n_inputs)."""
        z = np.asarray(x, dtype=np.float64)
        single = z.ndim == 1
        z = z.reshape(-1, self.n_inputs) if not single else z[None, :]
        for k, a in enumerate(self.affines):
            z = z @ a.weight.T + a.bias
            if k < len(self.affines) - 1:
                z = np.maximum(z, 0.0)
        return z[0] if single else z

    def screen(self, x: np.ndarray) -> np.ndarray:
        """A float32 evaluation of a batch ``x`` (batch, n_inputs), about 4x faster
        than :meth:`forward` on wide layers: for picking candidate counterexamples
        among many points, never for deciding one (see ``attack.confirm_batch``)."""
        if not self._float32:
            self._float32.extend((np.ascontiguousarray(a.weight.T, dtype=np.float32),
                                  a.bias.astype(np.float32)) for a in self.affines)
        z = np.asarray(x, dtype=np.float32).reshape(-1, self.n_inputs)
        last = len(self._float32) - 1
        for k, (w, b) in enumerate(self._float32):
            z = z @ w + b
            if k < last:
                z = np.maximum(z, 0.0)
        return z.astype(np.float64)

    def pre_activations(self, x: np.ndarray) -> list[np.ndarray]:
        """Pre-activation values of every affine layer (batch, size) for inputs ``x``."""
        z = np.atleast_2d(np.asarray(x, dtype=np.float64))
        out = []
        for k, a in enumerate(self.affines):
            z = z @ a.weight.T + a.bias
            out.append(z)
            if k < len(self.affines) - 1:
                z = np.maximum(z, 0.0)
        return out

    # ---- identity ----------------------------------------------------------
    def digest(self) -> str:
        """SHA-256 of the architecture and exact weights (stable across runs)."""
        if not self._digest:
            h = hashlib.sha256()
            h.update(repr(self.layer_sizes()).encode())
            for a in self.affines:
                h.update(a.weight.tobytes())
                h.update(a.bias.tobytes())
            self._digest.append(h.hexdigest())
        return self._digest[0]

    def with_affines(self, affines, name: str | None = None) -> "Network":
        return Network(tuple(affines), self.input_shape, name or self.name)

    def describe(self) -> str:
        sizes = "-".join(str(s) for s in self.layer_sizes())
        return f"{self.name} ({sizes}, {self.n_relus} ReLUs)"
