"""``coreproof`` command line: a thin layer over :mod:`verify.api`.

Exit codes of ``verify``: 0 holds, 1 violated, 3 unknown, 2 bad input.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import NoReturn

import click

from .errors import CoreproofError, InputError
from .options import VerifyOptions
from .result import Status, VerificationResult

BAD_INPUT = 2


def _fail(error: Exception) -> NoReturn:
    click.echo("error: " + " ".join(str(error).split()), err=True)
    sys.exit(BAD_INPUT)


def _progress(quiet: bool):
    if quiet:
        return None
    return lambda msg: click.echo(f"[coreproof] {msg}", err=True)


def run_one(net_path: str, prop_path: str, timeout: float, progress=None) -> VerificationResult:
    """Load a network and a VNN-LIB property and decide it."""
    from .api import load_network, load_property, verify_property
    network = load_network(net_path)
    prop = load_property(prop_path, network)
    if progress:
        progress(f"{network.describe()} / {prop.name}: {len(prop.regions)} region(s), timeout {timeout:g} s")
    return verify_property(network, prop, VerifyOptions(timeout=timeout), progress=progress)


def _describe(result: VerificationResult) -> str:
    lines = [f"{result.status.value.upper()}  ({result.method}, {result.time_s:.2f} s)"]
    if result.reason:
        lines.append(f"  reason: {result.reason}")
    cex = result.counterexample
    if cex is not None:
        def short(v):
            vals = ", ".join(f"{x:.6g}" for x in v[:10])
            return f"[{vals}{', ...' if len(v) > 10 else ''}]"
        lines.append(f"  counterexample input:  {short(cex.input)}")
        lines.append(f"  counterexample output: {short(cex.output)}  (margin {cex.margin:.3g})")
    s = result.statistics
    lines.append(f"  ReLUs {s.n_relus}: {s.stable_active} active, {s.stable_inactive} inactive, "
                 f"{s.unstable} unstable at the root; {s.branches} branches, {s.z3_queries} Z3 queries")
    return "\n".join(lines)


@click.group()
@click.version_option(package_name="coreproof")
def main():
    """coreproof: verify ReLU networks and their compressed variants."""


@main.command()
@click.argument("net")
@click.argument("prop")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds (hard limit).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--quiet", is_flag=True, help="No progress messages on stderr.")
def verify(net, prop, timeout, as_json, quiet):
    """Verify NET (.onnx or .nnet) against the VNN-LIB property PROP.

    Exit code: 0 holds, 1 violated, 3 unknown, 2 bad input."""
    try:
        if not timeout > 0:
            raise InputError(f"--timeout must be positive, got {timeout:g}")
        result = run_one(net, prop, timeout, _progress(quiet))
    except CoreproofError as exc:
        _fail(exc)
    click.echo(result.to_json() if as_json else _describe(result))
    sys.exit(result.exit_code)


@main.command("verify-instances")
@click.argument("instances", type=click.Path(dir_okay=False))
@click.option("-o", "--output", default=None, help="Results csv (default: results.csv next to the instances).")
@click.option("--timeout-scale", type=float, default=1.0, show_default=True,
              help="Multiply every instance timeout by this.")
@click.option("--quiet", is_flag=True)
def verify_instances(instances, output, timeout_scale, quiet):
    """Run a VNN-COMP instances csv (onnx, vnnlib, timeout; paths relative to the csv)."""
    try:
        rows = read_instances(instances)
    except CoreproofError as exc:
        _fail(exc)
    out = Path(output) if output else Path(instances).with_name("results.csv")
    say = _progress(quiet)
    counts = {s.value: 0 for s in Status}
    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["onnx", "vnnlib", "status", "time_s", "method", "reason"])
        for n, (net, prop, timeout) in enumerate(rows, 1):
            try:
                res = run_one(str(net), str(prop), timeout * timeout_scale)
                row = [net.name, prop.name, res.status.value, f"{res.time_s:.3f}", res.method, res.reason or ""]
                counts[res.status.value] += 1
            except CoreproofError as exc:
                row = [net.name, prop.name, "error", "", "", " ".join(str(exc).split())]
            writer.writerow(row)
            fh.flush()
            if say:
                say(f"{n}/{len(rows)} {net.name} {prop.name}: {row[2]} {row[3]}s")
    click.echo(f"{len(rows)} instances: " + ", ".join(f"{k} {v}" for k, v in counts.items())
               + f"; results in {out}")


def read_instances(path: str) -> list[tuple[Path, Path, float]]:
    p = Path(path)
    if not p.is_file():
        raise InputError("no such file", path=path, expected="a VNN-COMP instances csv")
    rows = []
    with open(p, newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 3:
                raise InputError(f"{len(row)} columns", path=path, line=line_no,
                                 expected="3 columns: onnx, vnnlib, timeout")
            try:
                timeout = float(row[2])
            except ValueError:
                raise InputError(f"bad timeout {row[2]!r}", path=path, line=line_no,
                                 expected="a number of seconds") from None
            rows.append((p.parent / row[0].strip(), p.parent / row[1].strip(), timeout))
    return rows


def _register_optional_commands():
    from compress.cli import compress_cmd
    main.add_command(compress_cmd, "compress")
    try:
        from .reuse.cli_commands import report_cmd, reverify_cmd
    except ModuleNotFoundError as exc:  # only a missing module; a broken one raises
        if exc.name not in ("verify.reuse", "verify.reuse.cli_commands"):
            raise
        return
    main.add_command(reverify_cmd, "reverify")
    main.add_command(report_cmd, "report")


_register_optional_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
