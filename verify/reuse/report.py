"""Proof-reuse statistics: read ``coreproof reverify --json`` lines, aggregate
them, render an HTML report (a table and inline SVG bar charts) and a short
text summary.  Pure functions, no plotting library.

A row is one (variant, property) pair: ``status``, ``time_s``, ``reuse``
(``fallback``, ``core_size``, ...), optionally ``scratch_status`` /
``scratch_time_s``, and ``variant`` / ``property`` / ``recipe`` labels.

* *reuse rate*: share of pairs decided (holds or violated) without the full
  fallback to verification from scratch;
* *speedup*: ``scratch_time_s / time_s`` per pair where both verdicts are
  decided, summarised by the geometric mean;
* *end to end*, per original (network, property) and overall: (scratch on the
  original + scratch on its variants) / (building the original's proof + reuse
  on its variants) -- the proof is charged once per original; the original's
  scratch time is the row's ``original_scratch_s`` when measured, else the
  time its proof's search took (``reuse.original_time_s``);
* *hard pairs*: the speedup restricted to pairs whose scratch run takes at
  least 1 s (geometric mean, and total scratch time / total reuse time);
* *compression strength*: the recipe (``magnitude:0.3``, ``int8``, ...), from
  the row's ``recipe`` field or else from the variant's name.
"""
from __future__ import annotations

import html
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import atomic_write
from ..errors import InputError
from ..result import Status

#: rows are the results file's JSON objects: their verdicts are plain strings, which
#: compare equal to the Status members
DECIDED = (Status.HOLDS, Status.VIOLATED)
_MIN_TIME = 1e-4  # seconds: time_s is rounded to 1e-6, keep ratios finite


# ---- reading ----------------------------------------------------------------------
def load_rows(path) -> list[dict]:
    """The JSON objects of a JSON-lines file (blank lines skipped)."""
    p = Path(path)
    if not p.is_file():
        raise InputError("no such file", path=str(p), expected="a JSON-lines results file")
    rows = []
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read: {exc}", path=str(p)) from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"not JSON ({exc.msg})", path=str(p), line=n,
                             expected="one JSON object per line") from None
        if not isinstance(row, dict) or "status" not in row or "time_s" not in row:
            raise InputError("not a reverify result", path=str(p), line=n,
                             expected='an object with "status" and "time_s"')
        if row["status"] not in tuple(Status):
            raise InputError(f"unknown status {row['status']!r}", path=str(p), line=n,
                             expected="holds, violated or unknown")
        rows.append(row)
    if not rows:
        raise InputError("no results", path=str(p), expected="at least one JSON line")
    return rows


# ---- per-row measures ---------------------------------------------------------------
def recipe_of(row: dict) -> str:
    """The compression recipe of a row (``"?"`` when it cannot be told)."""
    if row.get("recipe"):
        return str(row["recipe"])
    name = str(row.get("variant_name") or row.get("network") or "")
    if "~" in name:  # compress names variants PARENT~RECIPE
        return name.split("~", 1)[1]
    stem = Path(str(row.get("variant") or name)).name
    m = re.search(r"((?:magnitude|neurons)-[0-9.]+|int\d+(?:-channel)?|dead)(?:_.*)?(?:\.onnx)?$",
                  stem)
    return m.group(0).removesuffix(".onnx").replace("-", ":") if m else "?"


def strength_key(recipe: str) -> tuple:
    """Sort key: pruning by ratio, then quantization from many to few bits."""
    keys = []
    for step in recipe.split(","):
        m = re.fullmatch(r"(magnitude|neurons):([0-9.]+)", step.strip())
        if m:
            keys.append((0 if m.group(1) == "magnitude" else 1, float(m.group(2))))
            continue
        m = re.fullmatch(r"int(\d+)(:channel)?", step.strip())
        if m:
            keys.append((2, 1.0 / int(m.group(1))))
            continue
        keys.append((3, step))
    return tuple(keys)


def reused(row: dict) -> bool:
    """Decided without falling back to verification from scratch."""
    return row["status"] in DECIDED and not bool((row.get("reuse") or {}).get("fallback"))


def speedup(row: dict) -> float | None:
    """scratch time / reuse time when both verdicts are decided, else None."""
    if row["status"] not in DECIDED or row.get("scratch_status") not in DECIDED:
        return None
    if row.get("scratch_time_s") is None:
        return None
    return max(float(row["scratch_time_s"]), _MIN_TIME) / max(float(row["time_s"]), _MIN_TIME)


def disagrees(row: dict) -> bool:
    s = row.get("scratch_status")
    return row["status"] in DECIDED and s in DECIDED and s != row["status"]


def geomean(values) -> float | None:
    values = [v for v in values if v is not None and v > 0]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


# ---- aggregation ------------------------------------------------------------------
@dataclass
class Group:
    label: str
    pairs: int = 0
    holds: int = 0
    violated: int = 0
    unknown: int = 0
    reused: int = 0
    fallback: int = 0
    disagreements: int = 0
    time_s: float = 0.0
    scratch_time_s: float = 0.0
    speedups: list[float] = field(default_factory=list)

    def add(self, row: dict) -> None:
        self.pairs += 1
        setattr(self, row["status"], getattr(self, row["status"]) + 1)
        self.reused += int(reused(row))
        self.fallback += int(bool((row.get("reuse") or {}).get("fallback")))
        self.disagreements += int(disagrees(row))
        self.time_s += float(row["time_s"])
        self.scratch_time_s += float(row.get("scratch_time_s") or 0.0)
        s = speedup(row)
        if s is not None:
            self.speedups.append(s)

    @property
    def reuse_rate(self) -> float:
        return self.reused / self.pairs if self.pairs else 0.0

    @property
    def speedup(self) -> float | None:
        return geomean(self.speedups)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("speedups")
        d["reuse_rate"] = self.reuse_rate
        d["speedup"] = self.speedup
        d["compared"] = len(self.speedups)
        return d


def _grouped(rows, key, order=None) -> list[Group]:
    groups: dict[str, Group] = {}
    for row in rows:
        k = key(row)
        groups.setdefault(k, Group(k)).add(row)
    labels = sorted(groups, key=order) if order else list(groups)
    return [groups[k] for k in labels]


def variant_label(row: dict) -> str:
    v = row.get("variant") or row.get("variant_name") or row.get("network") or "?"
    return Path(str(v)).name.removesuffix(".onnx")


ORIGINAL_KINDS = ("original settled by its root bound", "original needed branch and bound",
                  "original violated", "original undecided")


def original_kind(row: dict) -> str:
    """How hard the ORIGINAL's proof was (a property of the original alone, so a
    fair way to split the pairs): settled by one bound of the whole box, by
    branch and bound, violated, or undecided."""
    r = row.get("reuse") or {}
    status = r.get("original_status")
    if status == Status.VIOLATED:
        return ORIGINAL_KINDS[2]
    if status != Status.HOLDS:
        return ORIGINAL_KINDS[3]
    return ORIGINAL_KINDS[0] if int(r.get("branches") or 0) <= 1 else ORIGINAL_KINDS[1]


def aggregate(rows: list[dict]) -> dict:
    """Totals, per-variant, per-recipe and per-original-kind groups (``Group`` objects)."""
    total = Group("all")
    for row in rows:
        total.add(row)
    return {"total": total,
            "headline": headline(rows, total),
            "by_variant": _grouped(rows, variant_label),
            "by_recipe": _grouped(rows, recipe_of, strength_key),
            "by_original": _grouped(rows, original_kind, ORIGINAL_KINDS.index)}


HARD_SCRATCH_S = 1.0  # pairs whose scratch run takes at least this long are "hard"


def original_key(row: dict) -> tuple[str, str]:
    """(original network, property) of a row."""
    r = row.get("reuse") or {}
    name = str(r.get("original_name") or "")
    if not name:
        v = str(row.get("variant_name") or row.get("network") or "")
        name = v.split("~", 1)[0] if "~" in v else "?"
    return name, str(row.get("property_name") or row.get("property") or "?")


@dataclass
class EndToEnd:
    label: str
    variants: int = 0
    proof_s: float = 0.0  # building the original's proof (once)
    reuse_s: float = 0.0  # reuse on the variants
    original_scratch_s: float = 0.0  # the original from scratch (once)
    scratch_s: float = 0.0  # the variants from scratch

    @property
    def ratio(self) -> float | None:
        """(scratch on the original and its variants) / (proof building + reuse)."""
        cost = self.proof_s + self.reuse_s
        if not self.scratch_s or cost <= 0:
            return None
        return (self.original_scratch_s + self.scratch_s) / cost


def end_to_end(rows: list[dict]) -> tuple[list[EndToEnd], EndToEnd]:
    """Per original (network, property) and overall (rows with a scratch time)."""
    per: dict[tuple, EndToEnd] = {}
    for row in rows:
        if row.get("scratch_time_s") is None:
            continue
        r = row.get("reuse") or {}
        key = original_key(row)
        if key not in per:
            per[key] = EndToEnd(f"{key[0]} / {key[1]}",
                                proof_s=float(r.get("original_proof_s") or 0.0),
                                original_scratch_s=float(row.get("original_scratch_s")
                                                         or r.get("original_time_s") or 0.0))
        e = per[key]
        e.variants += 1
        e.reuse_s += float(row["time_s"])
        e.scratch_s += float(row["scratch_time_s"])
    total = EndToEnd("all")
    for e in per.values():
        for name in ("variants", "proof_s", "reuse_s", "original_scratch_s", "scratch_s"):
            setattr(total, name, getattr(total, name) + getattr(e, name))
    return list(per.values()), total


def hard_pairs(rows: list[dict], min_scratch_s: float = HARD_SCRATCH_S) -> Group:
    """The pairs whose scratch run took at least ``min_scratch_s``."""
    g = Group(f"scratch >= {min_scratch_s:g} s")
    for row in rows:
        if float(row.get("scratch_time_s") or 0.0) >= min_scratch_s:
            g.add(row)
    return g


def headline(rows: list[dict], total: Group | None = None) -> dict:
    """The three figures: geometric-mean speedup (all pairs), the speedup on
    pairs whose scratch run takes >= 1 s (geometric mean and totals), and the
    end-to-end ratio (proof building included)."""
    t, h = total or aggregate(rows)["total"], hard_pairs(rows)
    _, e2e = end_to_end(rows)
    return {"speedup": t.speedup, "hard_pairs": len(h.speedups), "hard_speedup": h.speedup,
            "hard_total_ratio": (h.scratch_time_s / h.time_s) if h.time_s > 0 and h.pairs else None,
            "end_to_end": e2e.ratio, "reuse_rate": t.reuse_rate,
            "disagreements": t.disagreements}


def summary_text(agg: dict) -> str:
    t = agg["total"]
    sp = t.speedup
    lines = [f"pairs: {t.pairs} (holds {t.holds}, violated {t.violated}, unknown {t.unknown})",
             f"proof reuse rate: {t.reuse_rate:.1%} ({t.reused}/{t.pairs} decided without "
             f"the fallback to scratch)",
             "speedup over scratch (geometric mean): "
             + (f"{sp:.2f}x over {len(t.speedups)} pairs decided both ways" if sp is not None
                else "n/a (no scratch times)"),
             f"disagreements with scratch: {t.disagreements}"]
    if "headline" in agg:
        h = agg["headline"]
        lines.append(f"pairs with scratch >= {HARD_SCRATCH_S:g} s: {h['hard_pairs']}, speedup "
                     f"{_fmt(h['hard_speedup'], '.2f', 'n/a')}x (geo-mean), "
                     f"{_fmt(h['hard_total_ratio'], '.2f', 'n/a')}x (totals)")
        lines.append(f"end to end (proof building included): {_fmt(h['end_to_end'], '.2f', 'n/a')}x")
    for g in agg["by_recipe"] + agg["by_original"]:
        gs = g.speedup
        lines.append(f"  {g.label}: {g.pairs} pairs, reuse {g.reuse_rate:.0%}"
                     + (f", speedup {gs:.2f}x" if gs is not None else ""))
    return "\n".join(lines)


# ---- rendering --------------------------------------------------------------------
def bar_chart(title: str, labels: list[str], values: list[float | None], unit: str = "",
              reference: float | None = None, log: bool = False, width: int = 640) -> str:
    """A horizontal SVG bar chart (``None`` values drawn as 'n/a'); ``reference``
    adds a dashed vertical line (e.g. speedup 1x or a target)."""
    esc = html.escape
    bar_h, gap, left, right, top = 18, 6, 220, 70, 28
    height = top + len(labels) * (bar_h + gap) + 24
    vals = [v for v in values if v is not None]
    if reference is not None:
        vals.append(reference)

    def tr(v: float) -> float:
        return math.log10(max(v, 1e-3)) if log else v

    lo = min([0.0] + [tr(v) for v in vals]) if log else 0.0
    hi = max([tr(v) for v in vals] + [lo + 1e-9]) if vals else 1.0
    span = (hi - lo) or 1.0
    plot_w = width - left - right

    def x_of(v: float) -> float:
        return left + (tr(v) - lo) / span * plot_w

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'role="img" aria-label="{esc(title)}" font-family="sans-serif" font-size="12">',
           f'<text x="{left}" y="16" font-weight="bold">{esc(title)}</text>']
    for i, (label, v) in enumerate(zip(labels, values)):
        y = top + i * (bar_h + gap)
        out.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{esc(label)}</text>')
        if v is None:
            out.append(f'<text x="{left + 4}" y="{y + 13}" fill="#888">n/a</text>')
            continue
        x0 = left  # bars start at the axis (0, or the smallest power of ten on a log axis)
        w = max(x_of(v) - x0, 1.0)
        out.append(f'<rect x="{x0:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                   f'fill="#4a7ebb"><title>{esc(label)}: {v:.3g}{esc(unit)}</title></rect>')
        out.append(f'<text x="{x0 + w + 4:.1f}" y="{y + 13}">{v:.3g}{esc(unit)}</text>')
    if reference is not None:
        xr = x_of(reference)
        out.append(f'<line x1="{xr:.1f}" y1="{top - 4}" x2="{xr:.1f}" y2="{height - 20}" '
                   f'stroke="#c33" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{xr:.1f}" y="{height - 6}" text-anchor="middle" fill="#c33">'
                   f'{reference:g}{esc(unit)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _fmt(v, spec=".3g", none="–") -> str:
    return none if v is None else format(v, spec)


def render_html(rows: list[dict], agg: dict | None = None, title: str = "Proof reuse report"
                ) -> str:
    agg = agg or aggregate(rows)
    esc = html.escape
    t = agg["total"]
    head = ["variant", "property", "recipe", "status", "time (s)", "scratch", "scratch time (s)",
            "speedup", "core size", "reused", "refinements", "fallback", "method"]
    body = []
    for row in rows:
        reuse = row.get("reuse") or {}
        cls = ' class="bad"' if disagrees(row) else ""
        cells = [variant_label(row), str(row.get("property") or ""), recipe_of(row),
                 row["status"], _fmt(float(row["time_s"]), ".3f"),
                 str(row.get("scratch_status") or "–"),
                 _fmt(row.get("scratch_time_s"), ".3f"), _fmt(speedup(row), ".2f"),
                 str(reuse.get("core_size", "–")), str(reuse.get("reused", "–")),
                 str(reuse.get("refinements", "–")), "yes" if reuse.get("fallback") else "no",
                 str(row.get("method") or "")]
        body.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    by_recipe_rows = "".join(
        f"<tr><td>{esc(g.label)}</td><td>{g.pairs}</td><td>{g.reuse_rate:.1%}</td>"
        f"<td>{_fmt(g.speedup, '.2f')}</td><td>{g.unknown}</td><td>{g.disagreements}</td></tr>"
        for g in agg["by_recipe"])
    by_original_rows = "".join(
        f"<tr><td>{esc(g.label)}</td><td>{g.pairs}</td><td>{g.reuse_rate:.1%}</td>"
        f"<td>{_fmt(g.speedup, '.2f')}</td><td>{len(g.speedups)}</td>"
        f"<td>{g.time_s:.2f}</td><td>{g.scratch_time_s:.2f}</td></tr>"
        for g in agg["by_original"])
    per_original, e2e = end_to_end(rows)
    e2e_rows = "".join(
        f"<tr><td>{esc(e.label)}</td><td>{e.variants}</td><td>{e.proof_s:.2f}</td>"
        f"<td>{e.reuse_s:.2f}</td><td>{e.original_scratch_s:.2f}</td><td>{e.scratch_s:.2f}</td>"
        f"<td>{_fmt(e.ratio, '.2f')}</td></tr>" for e in per_original + [e2e])
    h = agg.get("headline") or headline(rows, t)
    variants = agg["by_variant"]
    charts = [
        bar_chart("Speedup of reuse over scratch per variant (geometric mean)",
                  [g.label for g in variants], [g.speedup for g in variants], "x",
                  reference=1.0, log=True),
        bar_chart("Reuse rate by compression strength", [g.label for g in agg["by_recipe"]],
                  [100.0 * g.reuse_rate for g in agg["by_recipe"]], "%"),
    ]
    sp = t.speedup
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
tr.bad td {{ background: #fdd; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p>{t.pairs} (variant, property) pairs: {t.holds} holds, {t.violated} violated,
{t.unknown} unknown. Proof reuse rate <b>{t.reuse_rate:.1%}</b>
({t.reused} decided without the fallback to verification from scratch).
Speedup over scratch (geometric mean over {len(t.speedups)} pairs decided both ways):
<b>{_fmt(sp, '.2f', 'n/a')}{'x' if sp is not None else ''}</b>.
Disagreements with scratch: <b>{t.disagreements}</b>.</p>
<p>On the {h['hard_pairs']} pairs whose scratch run takes at least {HARD_SCRATCH_S:g} s:
speedup <b>{_fmt(h['hard_speedup'], '.2f', 'n/a')}x</b> (geometric mean),
<b>{_fmt(h['hard_total_ratio'], '.2f', 'n/a')}x</b> (total scratch time / total reuse time).
End to end, building the originals' proofs included:
<b>{_fmt(h['end_to_end'], '.2f', 'n/a')}x</b>.</p>
{''.join(f'<div>{c}</div>' for c in charts)}
<h2>End to end per original</h2>
<p>(scratch on the original + scratch on its variants) / (building its proof + reuse on
its variants).</p>
<table><tr><th>original / property</th><th>variants</th><th>proof building (s)</th>
<th>reuse (s)</th><th>original scratch (s)</th><th>variants scratch (s)</th>
<th>end to end</th></tr>
{e2e_rows}
</table>
<h2>By compression strength</h2>
<table><tr><th>recipe</th><th>pairs</th><th>reuse rate</th><th>speedup</th><th>unknown</th>
<th>disagreements</th></tr>
{by_recipe_rows}
</table>
<h2>By how hard the original's proof was</h2>
<table><tr><th>original</th><th>pairs</th><th>reuse rate</th><th>speedup</th><th>compared</th>
<th>reuse time (s)</th><th>scratch time (s)</th></tr>
{by_original_rows}
</table>
<h2>All pairs</h2>
<table><tr>{''.join(f'<th>{esc(h)}</th>' for h in head)}</tr>
{chr(10).join(body)}
</table>
</body></html>
"""


def write_report(rows: list[dict], out) -> Path:
    out = Path(out)
    try:
        atomic_write(out, render_html(rows))
    except OSError as exc:
        raise InputError(f"cannot write: {exc.strerror or exc}", path=str(out)) from None
    return out
