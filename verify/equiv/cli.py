"""``coreproof equiv ORIGINAL VARIANT``: certified functional equivalence over a
region (registered lazily by :mod:`verify.cli`; a thin layer over
:func:`verify.equiv.api.certify_equivalence`).

Exit code: 0 certified (top-1 agreement on the whole region, and the
certified delta within ``--target-delta`` when given), 1 a replayed input on
which the predicted classes differ (or the outputs differ by more than the
target), 3 unknown, 2 bad input."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import click

from .. import exit_codes
from ..errors import InputError, OptionError


def _pair(text: str, what: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise OptionError(f"{what} must be two numbers LO,HI, got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise OptionError(f"{what} needs finite LO <= HI, got {text!r}")
    return lo, hi


def _number(text, what: str, minimum: float = 0.0) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise OptionError(f"{what} must be a number, got {text!r}") from None
    if not (math.isfinite(v) and v >= minimum):
        raise OptionError(f"{what} must be a finite number >= {minimum:g}, got {text!r}")
    return v


def _load_point(path: str, n: int):
    import numpy as np
    p = Path(path)
    if not p.is_file():
        raise InputError("no such file", path=path, expected="a .npy file with the centre point")
    try:
        x = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"cannot read: {exc}", path=path, expected="a numpy .npy file") from None
    if x.dtype.kind not in "fiu" or x.size != n:
        raise InputError(f"holds {x.size} values of type {x.dtype}", path=path,
                         expected=f"{n} numbers (the networks' inputs)")
    x = x.astype(np.float64).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise InputError("holds NaN or Inf", path=path, expected="finite numbers")
    return x


def region_of(original, prop, box, around, eps, clip):
    """(lower, upper, description) of the region the options name."""
    import numpy as np
    given = [o for o in (prop, box, around) if o is not None]
    if len(given) != 1:
        raise OptionError("give exactly one region: --property P, --box LO,HI or --around X.npy --eps E")
    n = original.n_inputs
    if prop is not None:
        from ..api import load_property
        from .api import property_box
        lo, hi = property_box(load_property(prop, original))
        what = f"the input box of {Path(prop).name}"
    elif box is not None:
        a, b = _pair(box, "--box")
        lo, hi = np.full(n, a), np.full(n, b)
        what = f"[{a:g}, {b:g}]^{n}"
    else:
        if eps is None:
            raise OptionError("--around needs --eps E")
        e = _number(eps, "--eps")
        x = _load_point(around, n)
        lo, hi = x - e, x + e
        what = f"L-inf ball of radius {e:g} around {Path(around).name}"
    if eps is not None and around is None:
        raise OptionError("--eps goes with --around X.npy")
    if clip is not None:
        a, b = _pair(clip, "--clip")
        lo, hi = np.clip(lo, a, b), np.clip(hi, a, b)
        what += f" clipped to [{a:g}, {b:g}]"
    return lo, hi, what


@click.command("equiv")
@click.argument("original")
@click.argument("variant")
@click.option("--property", "prop", metavar="P.vnnlib", help="Region: the hull of P's input boxes.")
@click.option("--box", metavar="LO,HI", help="Region: every input in [LO, HI].")
@click.option("--around", metavar="X.npy", help="Region: the L-inf ball around X (with --eps).")
@click.option("--eps", metavar="E", help="Radius of the --around ball.")
@click.option("--clip", metavar="LO,HI", help="Clip the region to [LO, HI] (e.g. 0,1 for images).")
@click.option("--target-delta", metavar="D", help="Split the region until the certified delta <= D "
              "(CNNs: the verifier's branch and bound on the product graph).")
@click.option("--timeout", default="10", show_default=True, help="Seconds (searches and splitting).")
@click.option("--argmin", is_flag=True, help="The predicted class is the SMALLEST output (ACAS Xu).")
@click.option("--no-split", is_flag=True, help="Bound the region once; no branch and bound.")
@click.option("--split-by", type=click.Choice(["auto", "input", "relu"]), default="auto",
              show_default=True, help="Bisect the input box, or split hidden ReLU phases "
              "(auto: ReLU phases above 64 inputs).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def equiv_cmd(original, variant, prop, box, around, eps, clip, target_delta, timeout, argmin,
              no_split, split_by, as_json):
    """Certify how far VARIANT can differ from ORIGINAL on a region.

    Prints a sound upper bound delta of max |VARIANT(x) - ORIGINAL(x)| per
    output, the largest deviation a search found, and whether top-1 agreement
    is certified.  Exit code: 0 certified, 1 a replayed disagreement, 3
    unknown, 2 bad input."""
    from ..api import load_network
    from ..options import check_timeout
    from .api import EquivOptions, certify_equivalence
    options = EquivOptions(
        timeout=check_timeout(timeout, "--timeout"), argmin=argmin, split=not no_split,
        split_by=split_by, target_delta=None if target_delta is None else _number(target_delta, "--target-delta"))
    f, g = load_network(original), load_network(variant)
    if (f.n_inputs, f.n_outputs) != (g.n_inputs, g.n_outputs):
        from ..errors import ShapeMismatchError
        raise ShapeMismatchError(f"{f.describe()} and {g.describe()} differ in inputs or outputs",
                                 path=variant, expected=f"{f.n_inputs} inputs and {f.n_outputs} outputs")
    lo, hi, what = region_of(f, prop, box, around, eps, clip)
    res = certify_equivalence(f, g, lo, hi, options)
    if as_json:
        import json
        click.echo(json.dumps({"region": what, **res.to_dict()}))
    else:
        word = {"holds": "CERTIFIED", "violated": "DIFFERENT", "unknown": "UNKNOWN"}[res.status.value]
        click.echo(f"{word}  {res.variant} vs {res.original} on {what}")
        click.echo(f"  certified max |g - f| <= {res.max_delta:.6g}   (search found "
                   f"{max(res.deviation_found):.6g}; separate bounds give {max(res.naive_delta):.6g})")
        click.echo("  per output delta: " + " ".join(f"{d:.4g}" for d in res.delta))
        how = {"relu": f"{res.leaves} ReLU-split branches",
               "verify": "one box, tightened by the verifier"}.get(res.splitting,
                                                                   f"{res.leaves} boxes")
        click.echo(f"  top-1 agreement: {res.top1} ({100 * res.agreement_share:.1f} % of the region "
                   f"certified; {how}, {res.time_s:.2f} s, {res.method} bound)")
        if res.disagreement:
            d = res.disagreement
            click.echo(f"  disagreement (replayed): original says {d['original_class']}, variant "
                       f"says {d['variant_class']}")
        if res.reason:
            click.echo(f"  {res.reason}")
    sys.exit(exit_codes.of_status(res.status))


@click.command("equiv-report")
@click.argument("original")
@click.argument("variants", nargs=-1, required=True)
@click.option("--property", "props", multiple=True, metavar="P.vnnlib",
              help="A region: the hull of P's input boxes (repeatable).")
@click.option("--box", metavar="LO,HI", help="The region: every input in [LO, HI].")
@click.option("--around", metavar="X.npy", help="The region: the L-inf ball around X (with --eps).")
@click.option("--eps", metavar="E", help="Radius of the --around ball.")
@click.option("--clip", metavar="LO,HI", help="Clip the regions to [LO, HI].")
@click.option("-o", "--output", required=True, metavar="REPORT.html")
@click.option("--samples", default=1000, show_default=True, type=click.IntRange(1))
@click.option("--timeout", default="10", show_default=True, help="Seconds per pair.")
@click.option("--argmin", is_flag=True, help="The predicted class is the SMALLEST output.")
@click.option("--no-split", is_flag=True, help="Bound each region once.")
@click.option("--json", "as_json", is_flag=True, help="Also print one JSON object per pair.")
def equiv_report_cmd(original, variants, props, box, around, eps, clip, output, samples,
                     timeout, argmin, no_split, as_json):
    """Write an HTML functional-similarity report for VARIANTS of ORIGINAL.

    Per variant and region: sampled top-1 agreement and deviation, the certified
    delta and certified top-1 agreement, and the compression ratio (packed
    bytes; a change record next to a variant is used), with a plot of the
    certified delta against the compression ratio."""
    import json

    from ..api import load_network
    from ..atomic import atomic_write
    from ..options import check_timeout
    from ..reuse.cli_commands import load_variant_file
    from .api import EquivOptions
    from .report import render_html, similarity_rows
    options = EquivOptions(timeout=check_timeout(timeout, "--timeout"), argmin=argmin,
                           split=not no_split)
    f = load_network(original)
    regions = [(Path(p).name, *region_of(f, p, None, None, None, clip)[:2]) for p in props]
    if box is not None or around is not None:
        lo, hi, what = region_of(f, None, box, around, eps, clip)
        regions.append((what, lo, hi))
    if not regions:
        raise OptionError("give a region: --property P (repeatable), --box LO,HI or --around X.npy --eps E")
    family = []
    for v in variants:
        net, record = load_variant_file(v, f)
        family.append((Path(v).name, net, record))
    rows = similarity_rows(f, family, regions, options, samples)
    if as_json:
        for r in rows:
            click.echo(json.dumps(r.to_dict()))
    atomic_write(Path(output), render_html(f.name, rows))
    click.echo(f"wrote {output} ({len(rows)} pairs)", err=True)
