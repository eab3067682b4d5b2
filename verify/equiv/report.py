"""The functional-similarity report: a family of variants of one original, sampled and
certified, per region (``coreproof equiv-report``).

Per (variant, region): the top-1 agreement and the max / mean ``max_i |g_i - f_i|`` on
uniform samples of the region (what a test set shows), the certified delta and the
certified top-1 agreement (:func:`verify.equiv.api.certify_equivalence`: what holds on
every input of the region), and the compression ratio (the original's packed bytes over
the variant's, :func:`compress.metrics.storage_bytes`: non-zero weights at their bit
width, factors of factorised layers).  The HTML page has one table and an inline SVG
plot of the certified delta (log scale) against the compression ratio.
"""
from __future__ import annotations

import html
import math
from dataclasses import asdict, dataclass

import numpy as np

from .api import EquivOptions, certify_equivalence


@dataclass(frozen=True)
class SimilarityRow:
    variant: str
    region: str
    compression: float  # original packed bytes / variant packed bytes
    sampled_agreement: float
    sampled_max_deviation: float
    sampled_mean_deviation: float
    certified_delta: float
    top1: str  # certified | disagreement | unknown
    agreement_share: float  # share of the region's volume with top-1 agreement certified
    time_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def similarity_rows(original, variants, regions, options: EquivOptions = EquivOptions(),
                    samples: int = 1000, seed: int = 0) -> list[SimilarityRow]:
    """``variants``: (name, network, change record or None); ``regions``: (name, lower,
    upper).  One row per pair."""
    from compress.metrics import storage_bytes
    base = storage_bytes(original)
    sign = -1.0 if options.argmin else 1.0
    rows = []
    for vname, net, record in variants:
        ratio = base / max(storage_bytes(net, record), 1)
        for rname, lo, hi in regions:
            xs = np.random.default_rng(seed).uniform(lo, hi, size=(samples, len(lo)))
            yf, yg = original.forward(xs), net.forward(xs)
            dev = np.abs(yg - yf).max(axis=1)
            agree = float(np.mean((sign * yf).argmax(1) == (sign * yg).argmax(1)))
            res = certify_equivalence(original, net, lo, hi, options)
            rows.append(SimilarityRow(vname, rname, ratio, agree, float(dev.max()),
                                      float(dev.mean()), res.max_delta, res.top1,
                                      res.agreement_share, res.time_s))
    return rows


def _plot(rows: list[SimilarityRow], width: int = 560, height: int = 320) -> str:
    """Inline SVG: certified delta (log10) against the compression ratio."""
    pts = [(r.compression, r.certified_delta, r) for r in rows if r.certified_delta > 0]
    if not pts:
        return "<p>(no positive certified delta to plot)</p>"
    xs = [p[0] for p in pts]
    ys = [math.log10(p[1]) for p in pts]
    x0, x1 = min(xs + [1.0]), max(xs + [1.0])
    y0, y1 = math.floor(min(ys)), math.ceil(max(ys))
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    m = 50
    sx = lambda v: m + (v - x0) / (x1 - x0) * (width - 2 * m)  # noqa: E731
    sy = lambda v: height - m - (v - y0) / (y1 - y0) * (height - 2 * m)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           'font-family="sans-serif" font-size="11">',
           f'<line x1="{m}" y1="{height - m}" x2="{width - m}" y2="{height - m}" stroke="#333"/>',
           f'<line x1="{m}" y1="{m}" x2="{m}" y2="{height - m}" stroke="#333"/>',
           f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">compression ratio '
           '(original bytes / variant bytes)</text>',
           f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" '
           'text-anchor="middle">certified delta (log10)</text>']
    for e in range(y0, y1 + 1):
        out.append(f'<text x="{m - 6}" y="{sy(e) + 4:.1f}" text-anchor="end">1e{e}</text>')
    for v in np.linspace(x0, x1, 5):
        out.append(f'<text x="{sx(v):.1f}" y="{height - m + 14}" text-anchor="middle">'
                   f'{v:.2f}</text>')
    for x, y, r in pts:
        colour = {"certified": "#2a7", "disagreement": "#c33"}.get(r.top1, "#888")
        out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(math.log10(y)):.1f}" r="4" '
                   f'fill="{colour}"><title>{html.escape(r.variant)} on '
                   f'{html.escape(r.region)}: delta {y:.4g}, top-1 {r.top1}</title></circle>')
    out.append("</svg>")
    return "\n".join(out)


def render_html(original_name: str, rows: list[SimilarityRow]) -> str:
    head = ("<tr><th>variant</th><th>region</th><th>compression</th><th>sampled agreement</th>"
            "<th>sampled max dev</th><th>sampled mean dev</th><th>certified delta</th>"
            "<th>certified top-1</th><th>share certified</th><th>time</th></tr>")
    body = "\n".join(
        f"<tr><td>{html.escape(r.variant)}</td><td>{html.escape(r.region)}</td>"
        f"<td>{r.compression:.2f}x</td><td>{100 * r.sampled_agreement:.1f}%</td>"
        f"<td>{r.sampled_max_deviation:.4g}</td><td>{r.sampled_mean_deviation:.4g}</td>"
        f"<td>{r.certified_delta:.4g}</td><td>{r.top1}</td>"
        f"<td>{100 * r.agreement_share:.1f}%</td><td>{r.time_s:.2f} s</td></tr>" for r in rows)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>functional similarity "
            f"of variants of {html.escape(original_name)}</title><style>body{{font-family:"
            "sans-serif}} td,th{padding:2px 8px;border-bottom:1px solid #ddd}</style></head>"
            f"<body><h1>Functional similarity: variants of {html.escape(original_name)}</h1>"
            "<p>Sampled: top-1 agreement and max / mean of max<sub>i</sub> |g<sub>i</sub> - "
            "f<sub>i</sub>| on uniform samples of the region (proves nothing about the inputs "
            "it missed). Certified: a sound bound delta of |g - f| on every input of the "
            "region, and top-1 agreement proven on the share of the region shown.</p>"
            f"<table>{head}\n{body}</table><h2>Certified delta against compression</h2>"
            f"{_plot(rows)}</body></html>")
