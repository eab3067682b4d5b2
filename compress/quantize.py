"""Post-training weight quantization with exact integer weights.

Symmetric uniform quantization with ``b`` bits uses the integer range
``[-qmax, qmax]`` with ``qmax = 2**(b-1) - 1`` and the scale
``scale = max|w| / qmax`` (rounded up to a float32 number, as a written variant
stores it), per tensor or per output channel (row).
The quantized weight is ``w_int = clip(round(w / scale), -qmax, qmax)`` and the
new float weight is *defined* as ``w_int * scale`` (computed in float64), so
``Affine.weight == Affine.weight_int * Affine.weight_scale[:, None]`` holds
exactly and ``|w - w_int * scale| <= scale / 2``.  A tensor (row) that is all
zero gets scale 1.

Fixed-point quantization uses a power-of-two scale ``2**-f`` with the largest
number of fractional bits ``f`` (possibly negative) such that
``max|w| * 2**f <= qmax``.

Bit widths: ``2..16`` quantize; ``32`` (also spelled ``none``, ``int32``,
``fixed32``) means *no quantization* and returns the network unchanged (the
weights stay float64 and any existing integer form is kept).  Every other
width (1, 17..31, above 32) is an :class:`~verify.errors.OptionError`.

Biases are left alone unless ``bias=True``; then each layer's bias is rounded
onto its own symmetric grid with ``bias_bits`` bits (default: ``bits``) and the
same scheme (uniform or fixed point), per tensor.  Biases carry no integer form
in :class:`~verify.network.Affine`; the bias scale goes into the change record.
"""
from __future__ import annotations

import numbers

import numpy as np

from verify.errors import OptionError
from verify.network import Network

from .core import StepOutcome, make_affine

MIN_BITS = 2
MAX_BITS = 16
IDENTITY_BITS = 32
SCHEMES = ("uniform", "fixed")


def check_bits(bits, what: str = "bit width") -> int:
    """Validate a bit width: 2..16 quantize, 32 means no quantization."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise OptionError(f"{what} must be an integer, got {bits!r}")
    b = int(bits)
    if b == IDENTITY_BITS or MIN_BITS <= b <= MAX_BITS:
        return b
    raise OptionError(f"{what} must be in {MIN_BITS}..{MAX_BITS} (or {IDENTITY_BITS} for "
                      f"no quantization), got {b}")


def qmax_of(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def scales_for(magnitude: np.ndarray, bits: int, scheme: str) -> np.ndarray:
    """Scale(s) for tensors whose largest magnitude is ``magnitude`` (array)."""
    qmax = qmax_of(bits)
    m = np.asarray(magnitude, dtype=np.float64)
    out = np.ones_like(m)
    nz = m > 0
    if scheme == "uniform":
        out[nz] = m[nz] / qmax
    elif scheme == "fixed":
        f = np.floor(np.log2(qmax / m[nz]))
        # guard against log2 rounding: make sure m * 2**f <= qmax
        f = np.where(m[nz] * np.exp2(f) > qmax, f - 1, f)
        out[nz] = np.exp2(-f)
    else:
        raise OptionError(f"unknown quantization scheme {scheme!r} (expected one of {SCHEMES})")
    return _float32_up(out)


def _float32_up(x: np.ndarray) -> np.ndarray:
    """The smallest float32 numbers >= ``x``: a written variant stores its scales in
    float32 (QDQ), and rounding up keeps ``|w| / scale <= qmax`` (no extra clipping)."""
    y = x.astype(np.float32)
    low = y.astype(np.float64) < x
    y[low] = np.nextafter(y[low], np.float32(np.inf))
    return y.astype(np.float64)


def quantize_array(values: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """Integer codes ``clip(round(values / scale), -qmax, qmax)`` (int64)."""
    qmax = qmax_of(bits)
    return np.clip(np.rint(values / scale), -qmax, qmax).astype(np.int64)


def quantize(network: Network, bits: int = 8, *, per_channel: bool = False,
             scheme: str = "uniform", bias: bool = False, bias_bits: int | None = None
             ) -> StepOutcome:
    """Quantize every layer's weights (and optionally biases); see the module docstring."""
    bits = check_bits(bits)
    if scheme not in SCHEMES:
        raise OptionError(f"unknown quantization scheme {scheme!r} (expected one of {SCHEMES})")
    if bias_bits is not None:
        bias_bits = check_bits(bias_bits, "bias bit width")
    if bits == IDENTITY_BITS:
        return StepOutcome(network, summary={"bits": bits, "identity": True})
    granularity = "channel" if per_channel else "tensor"
    bb = bias_bits if bias_bits is not None else bits
    affines = []
    quant = {}
    max_err = 0.0
    for k, a in enumerate(network.affines):
        w = a.weight
        mag = np.abs(w).max(axis=1) if per_channel else \
            np.full(a.out_size, np.abs(w).max(initial=0.0))
        scale = scales_for(mag, bits, scheme)
        wi = quantize_array(w, scale[:, None], bits)
        wq = wi * scale[:, None]
        max_err = max(max_err, float(np.abs(wq - w).max(initial=0.0)))
        b = a.bias
        info = {"bits": bits, "scheme": scheme, "granularity": granularity,
                "bias_bits": None, "bias_scale": None}
        if bias and bb != IDENTITY_BITS:
            bscale = float(scales_for(np.array([np.abs(b).max(initial=0.0)]), bb, scheme)[0])
            b = quantize_array(b, bscale, bb) * bscale
            info["bias_bits"] = bb
            info["bias_scale"] = bscale
        affines.append(make_affine(wq, b, wi, scale))
        quant[k] = info
    out = network.with_affines(affines)
    return StepOutcome(out, quant=quant, summary={
        "bits": bits, "scheme": scheme, "granularity": granularity,
        "bias_bits": bb if bias and bb != IDENTITY_BITS else None,
        "max_weight_error": max_err})
