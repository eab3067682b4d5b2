"""Pooling expressed through the graph model's operators (no pooling operator of its own).

* **AveragePool** is a depthwise :class:`Conv` (one input channel per group) whose kernel
  holds ``1 / (kh * kw)``; where a window overlaps zero padding and the padding is not counted
  (ONNX ``count_include_pad=0``), the kernel holds ones and a :class:`Scale` divides every
  output position by the number of real elements in its window.

* **MaxPool** is rewritten *exactly* into ReLUs with ``max(a, b) = a + ReLU(b - a)``,
  reducing each window's ``n = kh * kw`` elements in a balanced tree of ``ceil(log2 n)``
  levels.  Level 1 reads the pairs straight from the input with two depthwise Convs of the
  pool's kernel, stride and dilation whose kernels are one-hot (``a``) and ``e_b - e_a``
  (``b - a``); pair ``p`` of channel ``c`` is output channel ``c * P + p``.  Every further
  level pairs up the previous level's channels with grouped 1x1 Convs.  An odd element out
  is carried with a zero difference row (``a + ReLU(0)``: a neuron that is 0 on every input,
  which any bound sees as stable).  So a level is ``Sum(Conv_a(x), Relu(Conv_d(x)))``: one
  ReLU node (hidden layer) per level, ``C * Ho * Wo * (P_1 + P_2 + ...)`` ReLUs in all.

  Why exact rather than a relaxation: the rewritten network *is* the pooled network (the
  same function in real arithmetic; evaluated in float64, ``a + (b - a)`` may differ from
  ``b`` by one rounding), so every sound bound of ReLU networks stays sound through it, branch
  and bound can split on the max's decisions like on any ReLU, and Z3 encodes it exactly;
  the price is the extra ReLUs (n - 1 per window and channel, plus carries).

  Padding (which ONNX fills with -inf for MaxPool) is handled exactly too: an element that
  falls into the padding at some output position is replaced there by an element ``f`` of
  the same window that is inside the input at *every* position (so the max is unchanged):
  ``x~_e = x_e + mask_e * x_f`` where the zero-padded Conv gives ``x_e = 0`` in the padding
  and ``mask_e`` (a :class:`Scale` constant) is 1 exactly there.  When no such ``f`` exists
  (pads as large as the dilated kernel), the pool is rejected.

Both take ``add(op, inputs, label) -> node index`` so this module depends only on the model.
"""
from __future__ import annotations

import numpy as np

from .ops import Conv, Relu, Scale, Sum


def window_valid(size: int, out: int, kernel: int, stride: int, pad_begin: int,
                 dilation: int) -> np.ndarray:
    """``(kernel, out)``: whether element ``k`` of the window at output ``o`` is inside
    an axis of ``size`` elements (not in its padding)."""
    pos = np.arange(out)[None, :] * stride - pad_begin + np.arange(kernel)[:, None] * dilation
    return (pos >= 0) & (pos < size)


def average_pool(add, x: int, channels: int, in_hw: tuple[int, int], kernel, strides, pads,
                 dilations, count_include_pad: bool, label: str) -> int:
    kh, kw = kernel
    t, l, b, r = pads
    conv_args = dict(strides=strides, pads=pads, dilations=dilations, groups=channels)
    uniform = count_include_pad or not any(pads)
    value = 1.0 / (kh * kw) if uniform else 1.0
    weight = np.full((channels, 1, kh, kw), value)
    y = add(Conv(weight, np.zeros(channels), **conv_args), (x,), label)
    if uniform:
        return y
    ho, wo = _out_hw(in_hw, kernel, strides, pads, dilations)
    rows = window_valid(in_hw[0], ho, kh, strides[0], t, dilations[0]).sum(0)
    cols = window_valid(in_hw[1], wo, kw, strides[1], l, dilations[1]).sum(0)
    count = rows[:, None] * cols[None, :]
    if np.all(count == kh * kw):
        return y
    return add(Scale(1.0 / count, np.zeros(1)), (y,), label + "/count")


def max_pool(add, x: int, channels: int, in_hw: tuple[int, int], kernel, strides, pads,
             dilations, label: str) -> int:
    """The exact ReLU rewrite of a MaxPool (see the module docstring); raises ValueError
    when its padding cannot be handled exactly."""
    kh, kw = kernel
    C = channels
    elements = [(a, b) for a in range(kh) for b in range(kw)]
    n = len(elements)
    ho, wo = _out_hw(in_hw, kernel, strides, pads, dilations)
    vr = window_valid(in_hw[0], ho, kh, strides[0], pads[0], dilations[0])
    vc = window_valid(in_hw[1], wo, kw, strides[1], pads[1], dilations[1])
    valid = {e: vr[e[0]][:, None] & vc[e[1]][None, :] for e in elements}  # (ho, wo) each
    conv_args = dict(strides=strides, pads=pads, dilations=dilations, groups=C)

    def first_level_conv(rows, name):
        P = len(rows)
        w = np.zeros((C * P, 1, kh, kw))
        for p, row in enumerate(rows):
            for (a, b), v in row.items():
                w[p::P, 0, a, b] += v
        return add(Conv(w, np.zeros(C * P), **conv_args), (x,), f"{label}/{name}")

    if n == 1:
        return first_level_conv([{elements[0]: 1.0}], "select")
    pairs = [(elements[i], elements[i + 1] if i + 1 < n else None) for i in range(0, n, 2)]
    a = first_level_conv([{ea: 1.0} for ea, _ in pairs], "l1.a")
    d = first_level_conv([{} if eb is None else _difference(ea, eb) for ea, eb in pairs],
                         "l1.d")
    if not all(v.all() for v in valid.values()):
        a, d = _pad_fallback(add, x, a, d, pairs, valid, elements, kernel, C, conv_args, label)
    m = add(Sum((1.0, 1.0)), (a, add(Relu(), (d,), f"{label}/l1.relu")), f"{label}/l1.max")
    P, level = len(pairs), 1
    while P > 1:
        level += 1
        Q = (P + 1) // 2
        wa = np.zeros((C * Q, P, 1, 1))
        wd = np.zeros((C * Q, P, 1, 1))
        for q in range(Q):
            wa[q::Q, 2 * q] = 1.0
            if 2 * q + 1 < P:
                wd[q::Q, 2 * q + 1] = 1.0
                wd[q::Q, 2 * q] = -1.0
        a = add(Conv(wa, np.zeros(C * Q), groups=C), (m,), f"{label}/l{level}.a")
        d = add(Conv(wd, np.zeros(C * Q), groups=C), (m,), f"{label}/l{level}.d")
        m = add(Sum((1.0, 1.0)), (a, add(Relu(), (d,), f"{label}/l{level}.relu")),
                f"{label}/l{level}.max")
        P = Q
    return m


def _difference(ea, eb) -> dict:
    return {ea: -1.0, eb: 1.0}


def _pad_fallback(add, x, a, d, pairs, valid, elements, kernel, C, conv_args, label):
    """Replace the elements in the padding by an always-inside element ``f``, exactly."""
    inside = [e for e in elements if valid[e].all()]
    if not inside:
        raise ValueError("the padding is too large for an exact rewrite (no window element "
                         "lies inside the input at every output position)")
    f = inside[len(inside) // 2]
    P = len(pairs)
    kh, kw = kernel
    w = np.zeros((C * P, 1, kh, kw))
    w[:, 0, f[0], f[1]] = 1.0
    xf = add(Conv(w, np.zeros(C * P), **conv_args), (x,), f"{label}/l1.fallback")

    def outside(e):
        return (~valid[e]).astype(np.float64) if e is not None else None

    mask_a = np.stack([outside(ea) for ea, _ in pairs])  # (P, ho, wo)
    mask_d = np.stack([np.zeros_like(mask_a[0]) if eb is None else outside(eb) - outside(ea)
                       for ea, eb in pairs])
    out = []
    for t, mask, name in ((a, mask_a, "a"), (d, mask_d, "d")):
        if not mask.any():
            out.append(t)
            continue
        fix = add(Scale(np.tile(mask, (C, 1, 1)), np.zeros(1)), (xf,), f"{label}/l1.{name}.pad")
        out.append(add(Sum((1.0, 1.0)), (t, fix), f"{label}/l1.{name}.inside"))
    return out[0], out[1]


def _out_hw(in_hw, kernel, strides, pads, dilations) -> tuple[int, int]:
    t, l, b, r = pads
    ho = (in_hw[0] + t + b - dilations[0] * (kernel[0] - 1) - 1) // strides[0] + 1
    wo = (in_hw[1] + l + r - dilations[1] * (kernel[1] - 1) - 1) // strides[1] + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"a {kernel} window does not fit {in_hw} with pads {pads}")
    return ho, wo
