"""``coreproof reverify`` and ``coreproof report`` (registered by :mod:`verify.cli`).

``reverify`` exit codes: 0 every pair holds, 1 some pair is violated, 3 some
pair is unknown (and none violated), 2 bad input.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NoReturn

import click

from ..errors import CoreproofError, InputError
from ..options import VerifyOptions
from ..result import EXIT_CODES, Status, _json_default

BAD_INPUT = 2


def _fail(error: Exception) -> NoReturn:  # same format as verify.cli
    click.echo("error: " + " ".join(str(error).split()), err=True)
    sys.exit(BAD_INPUT)


def load_variant_file(path: str, original):
    """(network, change record or None) of a variant file.  A change record
    ``STEM.changes.json`` next to ``STEM.onnx`` is used when present; it must
    describe ``original`` as the parent."""
    from compress.io import RECORD_SUFFIX, load_variant, variant_paths
    from compress.io import _stem_of  # noqa: PLC2701 - the io module's own naming rule
    from ..api import load_network

    p = Path(path)
    folder, stem = _stem_of(p)
    onnx_path, record_path = variant_paths(folder, stem)
    if p.suffix.lower() == ".onnx" and record_path.is_file():
        v = load_variant(onnx_path)
        if v.record.parent_digest != original.digest():
            raise InputError(f"the change record {record_path.name} belongs to another parent "
                             f"network than {original.name}", path=str(record_path),
                             expected=f"a variant of the original (or no {RECORD_SUFFIX})")
        return v.network, v.record
    return load_network(path), None


def exit_code(statuses) -> int:
    statuses = list(statuses)
    if any(s is Status.VIOLATED for s in statuses):
        return EXIT_CODES[Status.VIOLATED]
    if any(s is Status.UNKNOWN for s in statuses):
        return EXIT_CODES[Status.UNKNOWN]
    return EXIT_CODES[Status.HOLDS]


def row_of(result, variant_path: str, prop_path: str, record) -> dict:
    """One JSON line: the ReuseResult plus what identifies the pair."""
    d = result.to_dict()
    d = {"variant": str(variant_path), "property": Path(prop_path).name,
         "variant_name": d.pop("network"), "property_name": d.pop("property"),
         "recipe": record.recipe if record is not None else None, **d}
    return d


def describe(row: dict) -> str:
    r = row["reuse"]
    text = (f"{Path(row['variant']).name} / {row['property']}: {row['status'].upper()} "
            f"({row['method']}, {row['time_s']:.3f} s; core size {r['core_size']}, "
            f"reused {r['reused']}, refinements {r['refinements']}"
            + (f", fallback: {r['fallback_reason']}" if r["fallback"] else "") + ")")
    if "scratch_status" in row:
        text += f"; scratch {row['scratch_status'].upper()} in {row['scratch_time_s']:.3f} s"
        if row["scratch_time_s"] and row["time_s"] > 0:
            text += f" (speedup {row['scratch_time_s'] / max(row['time_s'], 1e-4):.1f}x)"
    if row["status"] != "holds" and row.get("reason"):
        text += f"\n  reason: {row['reason']}"
    cex = row.get("counterexample")
    if cex is not None:
        vals = ", ".join(f"{v:.6g}" for v in cex["input"][:10])
        text += f"\n  counterexample input: [{vals}{', ...' if len(cex['input']) > 10 else ''}]"
    return text


@click.command("reverify")
@click.argument("original")
@click.argument("variants", nargs=-1, required=True)
@click.option("--property", "-p", "properties", multiple=True, required=True,
              help="A VNN-LIB property (repeat for several).")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds per (variant, property) pair, and for the original's proof.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--compare-scratch", is_flag=True,
              help="Also verify each variant from scratch (scratch_status, scratch_time_s).")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="Proof store directory for the original's proofs (default: in memory).")
@click.option("--quiet", is_flag=True, help="No progress messages on stderr.")
def reverify_cmd(original, variants, properties, timeout, as_json, compare_scratch, cache, quiet):
    """Verify compressed VARIANTS of ORIGINAL reusing the original's proof.

    A change record STEM.changes.json next to a variant STEM.onnx (as written
    by `coreproof compress`) relates its neurons to the original's; without one
    the variant must have the original's shape (or is verified from scratch).
    Exit code: 0 all hold, 1 some violated, 3 some unknown, 2 bad input."""
    from ..api import load_network, load_property
    from ..proof_store import ProofStore
    from .options import ReuseOptions
    from .reverify import compare_scratch as scratch, get_proof, reverify

    say = (lambda msg: None) if quiet else (lambda msg: click.echo(f"[coreproof] {msg}", err=True))
    try:
        if not timeout > 0:
            raise InputError(f"--timeout must be positive, got {timeout:g}")
        options, ropt = VerifyOptions(timeout=timeout), ReuseOptions()
        orig = load_network(original)
        props = [(p, load_property(p, orig)) for p in properties]
        loaded = [(v, *load_variant_file(v, orig)) for v in variants]
        for v, net, _ in loaded:
            for p, _prop in props:
                load_property(p, net)  # sizes fit the variant too (bad input otherwise)
        store = ProofStore(cache) if cache else None
    except CoreproofError as exc:
        _fail(exc)
    statuses = []
    for p, prop in props:
        try:
            proof, from_store = get_proof(orig, prop, options, ropt, store)
        except CoreproofError as exc:
            _fail(exc)
        n_cores = sum(1 for _ in proof.cores())
        say(f"original {orig.name} / {Path(p).name}: {proof.status} "
            + ("(from the proof store)" if from_store else
               f"in {proof.time_s:.2f} s, {proof.n_branches} branches, {n_cores} cores "
               f"({proof.core_time_s:.2f} s)"))
        for v, net, record in loaded:
            try:
                res = reverify(orig, net, prop, options, record=record, reuse_options=ropt,
                               proof=proof)
                if compare_scratch:
                    scratch(res, net, prop, options)
            except CoreproofError as exc:
                _fail(exc)
            res.reuse.proof_from_store = from_store
            statuses.append(res.status)
            row = row_of(res, v, p, record)
            click.echo(json.dumps(row, default=_json_default) if as_json else describe(row))
    sys.exit(exit_code(statuses))


@click.command("report")
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("-o", "--output", default=None,
              help="HTML file (default: RESULTS with the suffix .html).")
def report_cmd(results, output):
    """Write a proof-reuse statistics report (table, speedup and reuse-rate
    plots) from RESULTS.jsonl as written by `coreproof reverify --json
    --compare-scratch`, and print a short summary."""
    from .report import aggregate, load_rows, summary_text, write_report
    try:
        rows = load_rows(results)
        agg = aggregate(rows)
        out = write_report(rows, output or Path(results).with_suffix(".html"))
    except CoreproofError as exc:
        _fail(exc)
    click.echo(summary_text(agg))
    click.echo(f"report: {out}")
