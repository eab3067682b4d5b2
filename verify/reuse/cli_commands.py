"""``coreproof reverify`` and ``coreproof report`` (registered by :mod:`verify.cli`).

Exit codes (:mod:`verify.exit_codes`; errors are mapped by
:class:`verify.cli.CoreproofGroup`): ``reverify`` exits with the worst over
its rows (error 2, violated 1, unknown 3, holds 0).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from .. import exit_codes
from ..batch import BatchOptions, Job
from ..errors import CoreproofError, InputError
from ..options import VerifyOptions
from ..result import Status, _json_default


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
    if p.suffix.lower() == ".onnx" and record_path.is_file() and not hasattr(original, "affines"):
        from compress.graph_compress import load_graph_variant
        g = load_graph_variant(onnx_path)  # a CNN variant: its record is digest-checked
        if g.record.get("parent_digest") != original.digest():
            raise InputError(f"the change record {record_path.name} belongs to another parent "
                             f"network than {original.name}", path=str(record_path),
                             expected=f"a variant of the original (or no {RECORD_SUFFIX})")
        return g.network, None
    if p.suffix.lower() == ".onnx" and record_path.is_file():
        v = load_variant(onnx_path)
        if v.record.parent_digest != original.digest():
            raise InputError(f"the change record {record_path.name} belongs to another parent "
                             f"network than {original.name}", path=str(record_path),
                             expected=f"a variant of the original (or no {RECORD_SUFFIX})")
        return v.network, v.record
    return load_network(path), None


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
    if row["method"] == "equivalence-transfer" and r.get("transfer_margin") is not None:
        text += (f"; original's margin >= {r['transfer_margin']:.4g}, certified deviation "
                 f"along the rows <= {r['transfer_deviation']:.4g} on {r['transfer_boxes']} boxes")
    if "scratch_status" in row:
        text += f"; scratch {row['scratch_status'].upper()} in {row['scratch_time_s']:.3f} s"
        if row["scratch_time_s"] and row["time_s"] > 0:
            text += f" (speedup {row['scratch_time_s'] / max(row['time_s'], 1e-4):.1f}x)"
    if row["status"] != Status.HOLDS and row.get("reason"):
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
@click.option("--timeout", default="60", show_default=True,
              help="Seconds per (variant, property) pair, and for the original's proof.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--compare-scratch", is_flag=True,
              help="Also verify each variant from scratch (scratch_status, scratch_time_s).")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="Proof store directory for the original's proofs (default: in memory).")
@click.option("--trust-cache", is_flag=True,
              help="Use a stored proof of the original without re-checking it on the "
                   "network (faster; the store is then trusted input).")
@click.option("--quiet", is_flag=True, help="No progress messages on stderr.")
@click.option("-j", "--jobs", type=click.IntRange(1), default=None,
              help="Worker processes, one property (its proof, then every variant) each "
                   "(default: the usable cores).")
def reverify_cmd(original, variants, properties, timeout, as_json, compare_scratch, cache,
                 trust_cache, quiet, jobs):
    """Verify compressed VARIANTS of ORIGINAL reusing the original's proof.

    A change record STEM.changes.json next to a variant STEM.onnx (as written
    by `coreproof compress`) relates its neurons to the original's; without one
    the variant must have the original's shape (or is verified from scratch).
    Equivalence transfer comes first when the original's proof has a margin on
    input boxes: the certified deviation of the variant along the property's
    rows below that margin proves it (any network with the same inputs and
    outputs, e.g. a distilled student; method "equivalence-transfer").
    A stored proof of the original (--cache) is re-checked on the original
    before use unless --trust-cache.  A variant that cannot be read is an
    error row and the others go on.  Exit code: the worst over the rows
    (error 2, violated 1, unknown 3, holds 0)."""
    from ..api import load_network, load_property
    from ..options import check_timeout
    from ..proof_store import ProofStore
    from ..vnnlib import check_fits
    from .options import ReuseOptions
    from .reverify import compare_scratch as scratch, get_proof, reverify

    say = (lambda msg: None) if quiet else (lambda msg: click.echo(f"[coreproof] {msg}", err=True))
    options = VerifyOptions(timeout=check_timeout(timeout, "--timeout"))
    ropt = ReuseOptions()
    orig = load_network(original)
    props = [(p, load_property(p, orig)) for p in properties]
    store = ProofStore(cache) if cache else None
    loaded, codes = [], []
    for v in variants:
        try:
            net, record = load_variant_file(v, orig)
            for _p, prop in props:
                check_fits(net, prop, path=v)  # sizes fit the variant (named, not the property)
            loaded.append((v, net, record))
        except CoreproofError as exc:
            codes.append(exit_codes.BAD_INPUT)
            _error_row(v, None, exc, as_json)
    from ..batch import default_jobs
    n_jobs = min(jobs or default_jobs(), len(props))
    if loaded and n_jobs > 1:
        codes += _parallel(original, [v for v, _, _ in loaded], properties, options, cache,
                           trust_cache, compare_scratch, as_json, say, n_jobs)
        sys.exit(exit_codes.worst(codes))
    for p, prop in props if loaded else ():  # no variant to check: no proof to build
        proof, from_store = get_proof(orig, prop, options, ropt, store, trust=trust_cache)
        for problem in (store.problems if store is not None else []):
            say(f"proof store: {problem}")
        if store is not None:
            store.problems.clear()
        n_cores = sum(1 for _ in proof.cores())
        say(f"original {orig.name} / {Path(p).name}: {proof.status} "
            + (("(from the proof store" + (", trusted)" if trust_cache else ", re-checked)"))
               if from_store else
               f"in {proof.time_s:.2f} s, {proof.n_branches} branches, {n_cores} cores "
               f"({proof.core_time_s:.2f} s)"))
        for v, net, record in loaded:
            try:
                res = reverify(orig, net, prop, options, record=record, reuse_options=ropt,
                               proof=proof)
                if compare_scratch:
                    scratch(res, net, prop, options)
            except CoreproofError as exc:
                codes.append(exit_codes.BAD_INPUT)
                _error_row(v, p, exc, as_json)
                continue
            res.reuse.proof_from_store = from_store
            codes.append(exit_codes.of_status(res.status))
            row = row_of(res, v, p, record)
            click.echo(json.dumps(row, default=_json_default) if as_json else describe(row))
    sys.exit(exit_codes.worst(codes))


@dataclass(frozen=True)
class _PropertyTasks(BatchOptions):
    """What every worker of a parallel reverify needs beside its property."""

    variants: tuple = ()
    compare_scratch: bool = False
    trust_cache: bool = False
    as_json: bool = False


def property_task(job: Job, options: _PropertyTasks) -> dict:
    """One property on a worker: the original's proof (from the shared store, or built),
    then every variant reusing it; the printed rows come back in ``extra``."""
    import time

    from ..api import load_network, load_property
    from ..proof_store import ProofStore
    from ..threads import single_threaded
    from .options import ReuseOptions
    from .reverify import compare_scratch as scratch, get_proof, reverify
    single_threaded()
    t0 = time.monotonic()
    lines, codes = [], []
    try:
        orig = load_network(job.network)
        prop = load_property(job.property, orig)
        store = ProofStore(options.store) if options.store else None
        ropt = ReuseOptions()
        proof, from_store = get_proof(orig, prop, options.verify, ropt, store,
                                      trust=options.trust_cache)
        lines.append(("say", f"original {orig.name} / {Path(job.property).name}: "
                             f"{proof.status} in {proof.time_s:.2f} s"
                             + (" (from the proof store)" if from_store else "")))
        for v in options.variants:
            try:
                net, record = load_variant_file(v, orig)
                res = reverify(orig, net, prop, options.verify, record=record,
                               reuse_options=ropt, proof=proof)
                if options.compare_scratch:
                    scratch(res, net, prop, options.verify)
                res.reuse.proof_from_store = from_store
                codes.append(exit_codes.of_status(res.status))
                row = row_of(res, v, job.property, record)
                lines.append(("echo", json.dumps(row, default=_json_default)
                              if options.as_json else describe(row)))
            except CoreproofError as exc:
                codes.append(exit_codes.BAD_INPUT)
                lines.append(("error", (v, " ".join(str(exc).split()))))
        status = "holds"
    except CoreproofError as exc:
        codes.append(exit_codes.BAD_INPUT)
        lines.append(("error", (None, " ".join(str(exc).split()))))
        status = "error"
    return {"status": status, "time_s": time.monotonic() - t0, "method": "reverify",
            "result": None, "error": None, "extra": {"lines": lines, "codes": codes}}


def _parallel(original, variants, properties, options, cache, trust_cache, compare_scratch,
              as_json, say, n_jobs) -> list[int]:
    """reverify with one worker per property at a time (verify.batch)."""
    from ..batch import verify_many
    jobs = [Job(original, p, options.timeout, key=f"{k}") for k, p in enumerate(properties)]
    tasks = _PropertyTasks(store=cache, verify=options, variants=tuple(variants),
                           compare_scratch=compare_scratch, trust_cache=trust_cache,
                           as_json=as_json)
    codes = []
    for res in verify_many(jobs, jobs_n=n_jobs, options=tasks, runner=property_task):
        prop_path = res.job.property
        if res.extra is None:  # the worker died twice on this property
            codes.append(exit_codes.BAD_INPUT)
            _error_row(original, prop_path, Exception(res.error), as_json)
            continue
        for kind, payload in res.extra["lines"]:
            if kind == "say":
                say(payload)
            elif kind == "echo":
                click.echo(payload)
            else:
                v, message = payload
                _error_row(v or original, prop_path, Exception(message), as_json)
        codes += res.extra["codes"]
    return codes


def _error_row(variant: str, prop_path: str | None, exc: Exception, as_json: bool) -> None:
    """Report a (variant, property) pair that could not be checked; the batch goes on."""
    message = " ".join(str(exc).split())
    if as_json:
        click.echo(json.dumps({"variant": str(variant),
                               "property": Path(prop_path).name if prop_path else None,
                               "status": "error", "reason": message}))
    else:
        click.echo(f"{Path(variant).name}" + (f" / {Path(prop_path).name}" if prop_path else "")
                   + f": ERROR  {message}")


@click.command("report")
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("-o", "--output", default=None,
              help="HTML file (default: RESULTS with the suffix .html).")
def report_cmd(results, output):
    """Write a proof-reuse statistics report (table, speedup and reuse-rate
    plots) from RESULTS.jsonl as written by `coreproof reverify --json
    --compare-scratch`, and print a short summary."""
    from .report import aggregate, load_rows, summary_text, write_report
    rows = load_rows(results)
    agg = aggregate(rows)
    out = write_report(rows, output or Path(results).with_suffix(".html"))
    click.echo(summary_text(agg))
    click.echo(f"report: {out}")
