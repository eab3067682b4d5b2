"""The operators of the graph network model, each with its own linear-algebra rules.

Every operator but :class:`Relu` is *affine*: ``op(x_1, ..., x_n) = L(x_1, ..., x_n) + c``.
An affine operator knows four things about itself, and nothing about bounds:

* :meth:`forward` -- the affine map on a batch;
* :meth:`transpose` -- ``L^T``: coefficients of its output to coefficients of each input
  (what back-substitution needs);
* :meth:`abs_forward` -- ``|L|`` applied to nonnegative tensors (the radius of an interval in
  centre/radius form);
* :meth:`constant` -- ``c``, broadcastable to the output shape (``None`` for zero).

Tensors are torch float64 shaped ``(N, *shape)``: a leading batch axis in front of the
operator's static per-sample shape (the ONNX shape, whose own leading batch axis is 1).
Parameters are read-only float64 numpy arrays; their torch copies are made on first use.
This module depends on nothing else in the project.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np


def _torch():
    import torch
    return torch


def _frozen(a, dtype=np.float64) -> np.ndarray:
    out = np.ascontiguousarray(np.asarray(a, dtype=dtype))
    out.setflags(write=False)
    return out


def _ints(values, n: int, name: str) -> tuple[int, ...]:
    out = tuple(int(v) for v in values)
    if len(out) != n:
        raise ValueError(f"{name} needs {n} values, got {out}")
    return out


class Op:
    """Base of every operator.  ``arity`` inputs; ``affine`` tells whether the rules apply."""

    kind: ClassVar[str] = "op"
    arity: ClassVar[int] = 1
    affine: ClassVar[bool] = True

    def out_shape(self, *in_shapes: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def forward(self, *xs):
        raise NotImplementedError

    def transpose(self, A, *in_shapes: tuple[int, ...]) -> list:
        raise NotImplementedError

    def abs_forward(self, *rads):
        raise NotImplementedError

    def constant(self, *in_shapes):
        """``c``, broadcastable to the output shape, or None for zero."""
        return None

    def n_parameters(self) -> int:
        return 0

    def arrays(self) -> dict[str, np.ndarray]:
        """The numeric parameters (for digests and writers)."""
        return {}

    def describe(self) -> str:
        return self.kind


# ------------------------------------------------------------------ dense
@dataclass(frozen=True, eq=False)
class Gemm(Op):
    """``y = x @ weight.T + bias`` on the last axis; ``weight`` (out, in).

    A quantized layer also keeps its exact integer form ``weight == weight_int *
    weight_scale[:, None]`` (as :class:`verify.network.Affine` does)."""

    weight: np.ndarray
    bias: np.ndarray
    weight_int: np.ndarray | None = None
    weight_scale: np.ndarray | None = None
    kind: ClassVar[str] = "Gemm"

    def __post_init__(self):
        w = _frozen(self.weight)
        b = _frozen(self.bias).reshape(-1)
        if w.ndim != 2 or b.shape != (w.shape[0],):
            raise ValueError(f"Gemm weight {w.shape} and bias {b.shape} do not fit")
        b.setflags(write=False)
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)
        if (self.weight_int is None) != (self.weight_scale is None):
            raise ValueError("weight_int and weight_scale go together")
        if self.weight_int is not None:
            wi, sc = _frozen(self.weight_int, np.int64), _frozen(self.weight_scale).reshape(-1)
            if wi.shape != w.shape or sc.shape != (w.shape[0],) or \
                    not np.array_equal(wi * sc[:, None], w):
                raise ValueError("weight != weight_int * weight_scale")
            object.__setattr__(self, "weight_int", wi)
            object.__setattr__(self, "weight_scale", sc)

    @property
    def in_size(self) -> int:
        return self.weight.shape[1]

    @property
    def out_size(self) -> int:
        return self.weight.shape[0]

    @cached_property
    def _w(self):
        return _torch().from_numpy(np.array(self.weight))

    @cached_property
    def _w_abs_t(self):
        return self._w.abs().T.contiguous()

    @cached_property
    def _b(self):
        return _torch().from_numpy(np.array(self.bias))

    def out_shape(self, s):
        if not s or s[-1] != self.in_size:
            raise ValueError(f"Gemm with {self.in_size} inputs applied to shape {s}")
        return tuple(s[:-1]) + (self.out_size,)

    def forward(self, x):
        return x @ self._w.T + self._b

    def transpose(self, A, s):
        return [A @ (self._w if A.dtype == self._w.dtype else self._w_lowp(A.dtype))]

    def _w_lowp(self, dtype):
        """The weight in a lower precision (the bound optimisers' steps), kept."""
        cache = self.__dict__.setdefault("_w_cast", {})
        if dtype not in cache:
            cache[dtype] = self._w.to(dtype)
        return cache[dtype]

    def abs_forward(self, r):
        return r @ self._w_abs_t

    def constant(self, *in_shapes):
        return self._b

    def n_parameters(self):
        return self.weight.size + self.bias.size

    def arrays(self):
        return {"weight": self.weight, "bias": self.bias}

    def describe(self):
        return f"Gemm {self.in_size}->{self.out_size}"


# ------------------------------------------------------------------ convolution
@dataclass(frozen=True, eq=False)
class Conv(Op):
    """2-d convolution on the last three axes ``(C, H, W)``; ``weight`` (O, C/groups, kh, kw).

    ``pads`` are (top, left, bottom, right) zeros, as ONNX gives them."""

    weight: np.ndarray
    bias: np.ndarray
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    groups: int = 1
    weight_int: np.ndarray | None = None
    weight_scale: np.ndarray | None = None  # per output channel
    kind: ClassVar[str] = "Conv"

    def __post_init__(self):
        w = _frozen(self.weight)
        b = _frozen(self.bias).reshape(-1)
        if w.ndim != 4 or b.shape != (w.shape[0],):
            raise ValueError(f"Conv weight {w.shape} and bias {b.shape} do not fit")
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)
        object.__setattr__(self, "strides", _ints(self.strides, 2, "strides"))
        object.__setattr__(self, "pads", _ints(self.pads, 4, "pads"))
        object.__setattr__(self, "dilations", _ints(self.dilations, 2, "dilations"))
        object.__setattr__(self, "groups", int(self.groups))
        if self.groups < 1 or w.shape[0] % self.groups:
            raise ValueError(f"{w.shape[0]} output channels do not split into {self.groups} groups")
        if min(self.strides) < 1 or min(self.dilations) < 1 or min(self.pads) < 0:
            raise ValueError("strides and dilations must be >= 1 and pads >= 0")
        if (self.weight_int is None) != (self.weight_scale is None):
            raise ValueError("weight_int and weight_scale go together")
        if self.weight_int is not None:
            wi, sc = _frozen(self.weight_int, np.int64), _frozen(self.weight_scale).reshape(-1)
            if wi.shape != w.shape or sc.shape != (w.shape[0],) or \
                    not np.array_equal(wi * sc[:, None, None, None], w):
                raise ValueError("weight != weight_int * weight_scale")
            object.__setattr__(self, "weight_int", wi)
            object.__setattr__(self, "weight_scale", sc)

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @cached_property
    def _w(self):
        return _torch().from_numpy(np.array(self.weight))

    @cached_property
    def _w_abs(self):
        return self._w.abs()

    @cached_property
    def _b(self):
        return _torch().from_numpy(np.array(self.bias))

    @property
    def _symmetric(self) -> bool:
        t, l, b, r = self.pads
        return t == b and l == r

    def out_shape(self, s):
        if len(s) < 3 or s[-3] != self.in_channels:
            raise ValueError(f"Conv with {self.in_channels} input channels applied to shape {s}")
        t, l, b, r = self.pads
        kh, kw = self.weight.shape[2:]
        dh, dw = self.dilations
        h = (s[-2] + t + b - dh * (kh - 1) - 1) // self.strides[0] + 1
        w = (s[-1] + l + r - dw * (kw - 1) - 1) // self.strides[1] + 1
        if h < 1 or w < 1:
            raise ValueError(f"Conv kernel does not fit shape {s}")
        return tuple(s[:-3]) + (self.out_channels, h, w)

    def _conv(self, x, weight, bias):
        torch = _torch()
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:])
        t, l, b, r = self.pads
        if self._symmetric:
            y = torch.nn.functional.conv2d(x, weight, bias, self.strides, (t, l), self.dilations,
                                           self.groups)
        else:
            y = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (l, r, t, b)), weight, bias,
                                           self.strides, 0, self.dilations, self.groups)
        return y.reshape(*lead, *y.shape[-3:])

    def forward(self, x):
        return self._conv(x, self._w, self._b)

    def abs_forward(self, r):
        return self._conv(r, self._w_abs, None)

    def transpose(self, A, s):
        torch = _torch()
        lead = A.shape[:-3]
        A = A.reshape(-1, *A.shape[-3:])
        t, l, b, r = self.pads
        c, h, w = s[-3:]
        weight = self._w.to(A.dtype)  # (float32 in the bound optimisers' steps)
        if self._symmetric:
            x = torch.nn.grad.conv2d_input((A.shape[0], c, h, w), weight, A, self.strides,
                                           (t, l), self.dilations, self.groups)
        else:
            x = torch.nn.grad.conv2d_input((A.shape[0], c, h + t + b, w + l + r), weight, A,
                                           self.strides, 0, self.dilations, self.groups)
            x = x[:, :, t:t + h, l:l + w]
        return [x.reshape(*lead, c, h, w)]

    def constant(self, *in_shapes):
        return self._b[:, None, None]

    def n_parameters(self):
        return self.weight.size + self.bias.size

    def arrays(self):
        return {"weight": self.weight, "bias": self.bias}

    def describe(self):
        o, i, kh, kw = self.weight.shape
        return f"Conv {i * self.groups}->{o} {kh}x{kw}/{self.strides[0]}"


# ------------------------------------------------------------------ elementwise affine
@dataclass(frozen=True, eq=False)
class Scale(Op):
    """``y = x * scale + shift`` with constants broadcastable to the input shape (input
    normalisation, a BatchNormalization that follows no Conv/Gemm, Neg, Mul/Div/Add/Sub by
    a constant)."""

    scale: np.ndarray
    shift: np.ndarray
    kind: ClassVar[str] = "Scale"

    def __post_init__(self):
        object.__setattr__(self, "scale", _frozen(self.scale))
        object.__setattr__(self, "shift", _frozen(self.shift))

    @cached_property
    def _s(self):
        return _torch().from_numpy(np.array(self.scale))

    @cached_property
    def _c(self):
        return _torch().from_numpy(np.array(self.shift))

    def out_shape(self, s):
        out = np.broadcast_shapes(tuple(s), self.scale.shape, self.shift.shape)
        if tuple(out) != tuple(s):
            raise ValueError(f"constants of shapes {self.scale.shape}, {self.shift.shape} "
                             f"would broadcast {s} to {out}")
        return tuple(s)

    def forward(self, x):
        return x * self._s + self._c

    def transpose(self, A, s):
        return [A * self._s.to(A.dtype)]

    def abs_forward(self, r):
        return r * self._s.abs()

    def constant(self, *in_shapes):
        return self._c

    def n_parameters(self):
        return self.scale.size + self.shift.size

    def arrays(self):
        return {"scale": self.scale, "shift": self.shift}


# ------------------------------------------------------------------ several inputs
@dataclass(frozen=True, eq=False)
class Sum(Op):
    """``y = sum_i weights[i] * x_i`` of tensors of one shape (a residual Add, a Sub of two
    computed tensors, the parts of a rewritten MaxPool)."""

    weights: tuple[float, ...] = (1.0, 1.0)
    kind: ClassVar[str] = "Sum"

    def __post_init__(self):
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        if len(self.weights) < 2:
            raise ValueError("a Sum needs two inputs or more")

    @property
    def arity(self) -> int:  # type: ignore[override]
        return len(self.weights)

    def out_shape(self, *shapes):
        if any(tuple(s) != tuple(shapes[0]) for s in shapes):
            raise ValueError(f"Sum of tensors of different shapes {shapes}")
        return tuple(shapes[0])

    def forward(self, *xs):
        out = xs[0] * self.weights[0]
        for w, x in zip(self.weights[1:], xs[1:]):
            out = out + w * x
        return out

    def transpose(self, A, *shapes):
        return [A * w for w in self.weights]

    def abs_forward(self, *rads):
        out = rads[0] * abs(self.weights[0])
        for w, r in zip(self.weights[1:], rads[1:]):
            out = out + abs(w) * r
        return out

    def describe(self):
        return "Sum(" + ", ".join(f"{w:g}" for w in self.weights) + ")"


# ------------------------------------------------------------------ layout
@dataclass(frozen=True, eq=False)
class Reshape(Op):
    """Reshape to a static ``shape`` (Flatten, Reshape, Squeeze, Unsqueeze)."""

    shape: tuple[int, ...]
    kind: ClassVar[str] = "Reshape"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    def out_shape(self, s):
        if int(np.prod(s)) != int(np.prod(self.shape)):
            raise ValueError(f"cannot reshape {s} to {self.shape}")
        return self.shape

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)

    def transpose(self, A, s):
        lead = A.shape[:A.dim() - len(self.shape)]
        return [A.reshape(*lead, *s)]

    def abs_forward(self, r):
        return self.forward(r)

    def describe(self):
        return f"Reshape {self.shape}"


@dataclass(frozen=True, eq=False)
class Transpose(Op):
    """Permute the axes of the per-sample shape by ``perm``."""

    perm: tuple[int, ...]
    kind: ClassVar[str] = "Transpose"

    def __post_init__(self):
        object.__setattr__(self, "perm", tuple(int(p) for p in self.perm))
        if sorted(self.perm) != list(range(len(self.perm))):
            raise ValueError(f"{self.perm} is not a permutation")

    def out_shape(self, s):
        if len(s) != len(self.perm):
            raise ValueError(f"Transpose {self.perm} applied to shape {s}")
        return tuple(s[p] for p in self.perm)

    def _permute(self, x, perm):
        lead = x.dim() - len(perm)
        return x.permute(*range(lead), *[p + lead for p in perm])

    def forward(self, x):
        return self._permute(x, self.perm)

    def transpose(self, A, s):
        return [self._permute(A, tuple(int(i) for i in np.argsort(self.perm)))]

    def abs_forward(self, r):
        return self.forward(r)

    def describe(self):
        return f"Transpose {self.perm}"


@dataclass(frozen=True, eq=False)
class Pad(Op):
    """Constant padding of the last axes: ``pads`` is ONNX's (begin_0.., end_0..) over the
    whole per-sample shape; the border holds ``value`` (the operator's constant)."""

    pads: tuple[int, ...]
    value: float = 0.0
    kind: ClassVar[str] = "Pad"

    def __post_init__(self):
        object.__setattr__(self, "pads", tuple(int(p) for p in self.pads))
        object.__setattr__(self, "value", float(self.value))
        if len(self.pads) % 2 or min(self.pads, default=0) < 0:
            raise ValueError(f"pads {self.pads} must be nonnegative (begin..., end...)")

    def _torch_pads(self) -> list[int]:
        n = len(self.pads) // 2
        out = []
        for axis in reversed(range(n)):  # torch pads the last axis first
            out += [self.pads[axis], self.pads[axis + n]]
        return out

    def out_shape(self, s):
        n = len(self.pads) // 2
        if n != len(s):
            raise ValueError(f"Pad with {n} axes applied to shape {s}")
        return tuple(d + self.pads[i] + self.pads[i + n] for i, d in enumerate(s))

    def forward(self, x):
        return _torch().nn.functional.pad(x, self._torch_pads(), value=self.value)

    def transpose(self, A, s):
        n = len(self.pads) // 2
        lead = A.dim() - n
        index = [slice(None)] * lead + [slice(self.pads[i], self.pads[i] + s[i]) for i in range(n)]
        return [A[tuple(index)]]

    def abs_forward(self, r):
        return _torch().nn.functional.pad(r, self._torch_pads(), value=0.0)

    def constant(self, s=None):
        if self.value == 0.0:
            return None
        if s is None:
            raise ValueError("a Pad with a nonzero value needs its input shape for its constant")
        torch = _torch()
        inner = torch.zeros((1,) + tuple(s), dtype=torch.float64)
        return torch.nn.functional.pad(inner, self._torch_pads(), value=1.0)[0] * self.value

    def describe(self):
        return f"Pad {self.pads}" + (f" value {self.value:g}" if self.value else "")


# ------------------------------------------------------------------ the nonlinearity
@dataclass(frozen=True, eq=False)
class Relu(Op):
    kind: ClassVar[str] = "Relu"
    affine: ClassVar[bool] = False

    def out_shape(self, s):
        return tuple(s)

    def forward(self, x):
        return x.clamp(min=0)


AFFINE_OPS = (Gemm, Conv, Scale, Sum, Reshape, Transpose, Pad)
