"""``coreproof`` command line: a thin layer over :mod:`verify.api`.

Exit codes (:mod:`verify.exit_codes`): 0 holds, 1 violated, 2 bad input or
internal error (one line on stderr; the traceback only with ``--debug``),
3 unknown, 130 interrupted.  :class:`CoreproofGroup` maps exceptions to them
for every command, and loads the commands lazily: ``coreproof --help``
imports neither numpy nor torch.
"""
from __future__ import annotations

import csv
import importlib
import contextlib
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

import click

from . import exit_codes
from .errors import CoreproofError, InputError

#: commands defined outside this module: name -> (module, attribute, short help)
LAZY_COMMANDS = {
    "compress": ("compress.cli", "compress_cmd",
                 "Write pruned, quantized, factorised or merged variants of NET, with change records."),
    "reverify": ("verify.reuse.cli_commands", "reverify_cmd",
                 "Verify compressed VARIANTS of ORIGINAL reusing the original's proof."),
    "report": ("verify.reuse.cli_commands", "report_cmd",
               "Write a proof-reuse statistics report from RESULTS.jsonl."),
    "check-proof": ("verify.reuse.check_cli", "check_proof_cmd",
                    "Re-check a stored proof of PROP on NET, as a certificate."),
    "equiv": ("verify.equiv.cli", "equiv_cmd",
              "Certify how far VARIANT can differ from ORIGINAL on a region."),
    "equiv-report": ("verify.equiv.cli", "equiv_report_cmd",
                     "Write an HTML functional-similarity report for VARIANTS of ORIGINAL."),
}


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _progress(quiet: bool):
    if quiet:
        return None
    return lambda msg: click.echo(f"[coreproof] {msg}", err=True)


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())

#: seconds a Ctrl-C may take to surface as KeyboardInterrupt before the process
#: exits 130 anyway (it surfaces when a Z3 query returns, within its timeout; an
#: interrupt that lands in an object's __del__ is swallowed by Python)
INTERRUPT_GRACE_S = 10.0


class _Interrupt:
    """What :func:`_interruptible` knows of Ctrl-C: whether it came (``seen``), and
    whether the group has turned it into exit 130 (``handled``)."""

    def __init__(self):
        self.seen = threading.Event()
        self.handled = threading.Event()


@contextlib.contextmanager
def _interruptible():
    """Ctrl-C raises KeyboardInterrupt (mapped to exit 130 by the group); should
    that exception be swallowed, a watchdog exits 130 after INTERRUPT_GRACE_S."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    interrupt = _Interrupt()
    handled = interrupt.handled

    def watchdog():
        if not handled.wait(INTERRUPT_GRACE_S):
            sys.stderr.write("interrupted\n")
            sys.stderr.flush()
            os._exit(exit_codes.INTERRUPTED)

    def on_sigint(signum, frame):
        interrupt.seen.set()
        if not any(t.name == "coreproof-interrupt" for t in threading.enumerate()):
            threading.Thread(target=watchdog, name="coreproof-interrupt", daemon=True).start()
        # an object the interrupt cut off half-built (a z3 Context, seen once) fails in
        # its destructor on the way out; after Ctrl-C that is noise, not a traceback
        sys.unraisablehook = lambda unraisable: None
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupt
    finally:
        signal.signal(signal.SIGINT, previous)


class CoreproofGroup(click.Group):
    """The ``coreproof`` group: lazy sub-commands and one mapping from exceptions
    to exit codes (a CoreproofError is bad input, any other exception an
    internal error: both exit 2 with one line on stderr; Ctrl-C exits 130)."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx, name):
        if name not in self.commands and name in LAZY_COMMANDS:
            module, attr, _ = LAZY_COMMANDS[name]
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                rows.append((name, self.commands[name].get_short_help_str(60)))
            else:  # not imported for --help
                rows.append((name, LAZY_COMMANDS[name][2]))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        debug = bool(ctx.params.get("debug")) or bool(os.environ.get("COREPROOF_DEBUG"))
        with _interruptible() as interrupt:
            try:
                return super().invoke(ctx)
            except KeyboardInterrupt:
                self._interrupted(ctx, interrupt)
            except click.UsageError as exc:  # a bad option or argument: one line too
                self._usage(exc)
            except (click.exceptions.Exit, click.ClickException, click.Abort):
                raise
            except CoreproofError as exc:
                self._fail(ctx, exc, debug, "")
            except Exception as exc:  # noqa: BLE001 - an internal error is exit 2, not a traceback
                if interrupt is not None and interrupt.seen.is_set():
                    # Ctrl-C that surfaced wrapped in another exception: raised while
                    # ctypes converted a Z3 call's arguments, it comes out as
                    # ctypes.ArgumentError("argument 3: KeyboardInterrupt")
                    self._interrupted(ctx, interrupt)
                self._fail(ctx, exc, debug, "internal error: ")

    @staticmethod
    def _interrupted(ctx, interrupt):
        if interrupt is not None:
            interrupt.handled.set()
        click.echo("interrupted", err=True)
        ctx.exit(exit_codes.INTERRUPTED)

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            self._usage(exc)

    @staticmethod
    def _usage(exc: click.UsageError):
        if isinstance(exc, _NO_ARGS_IS_HELP):  # bare `coreproof`: click shows the help
            raise exc
        where = exc.ctx.command_path if exc.ctx is not None else "coreproof"
        click.echo(f"error: {one_line(exc.format_message())} (see {where} --help)", err=True)
        raise click.exceptions.Exit(exit_codes.BAD_INPUT)

    @staticmethod
    def _fail(ctx, exc: Exception, debug: bool, kind: str):
        if debug:
            traceback.print_exc()
        text = f"error: {kind}"
        if kind:
            text += f"{type(exc).__name__}: "
        text += one_line(exc)
        if kind and not debug:
            text += " (run with --debug for the traceback)"
        click.echo(text, err=True)
        ctx.exit(exit_codes.BAD_INPUT)


def run_one(net_path: str, prop_path: str, timeout: float, progress=None,
            save_proof: str | None = None, milp_workers: int | None = None):
    """Load a network and a VNN-LIB property and decide it; with ``save_proof``,
    a ``holds`` also writes its re-checkable proof record there. ``milp_workers``:
    ``VerifyOptions.milp_workers`` (None: its default)."""
    from .api import load_network, load_property, verify_property
    from .options import VerifyOptions
    options = VerifyOptions(timeout=timeout) if milp_workers is None else \
        VerifyOptions(timeout=timeout, milp_workers=milp_workers)
    network = load_network(net_path)
    prop = load_property(prop_path, network)
    if progress:
        progress(f"{network.describe()} / {prop.name}: {len(prop.regions)} region(s), timeout {timeout:g} s")
    if save_proof is None:
        return verify_property(network, prop, options, progress=progress)
    import json
    from .atomic import atomic_write
    from .reuse.check import record_of
    from .verifier import Proof
    proof = Proof()
    result = verify_property(network, prop, options, progress=progress, proof=proof)
    record = record_of(network, prop, result, proof)
    if record is not None:
        try:
            atomic_write(save_proof, json.dumps(record.to_dict(prop)))
        except OSError as exc:
            raise InputError(f"cannot write: {exc.strerror or exc}", path=save_proof) from None
    return result


def _describe(result) -> str:
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


def _timeout(value, what: str = "--timeout") -> float:
    from .options import check_timeout
    return check_timeout(value, what)


@click.group(cls=CoreproofGroup)
@click.version_option(package_name="coreproof")
@click.option("--debug", is_flag=True, help="Print the traceback of an error.")
def main(debug):
    """coreproof: verify ReLU networks and their compressed variants.

    Exit codes: 0 holds, 1 violated, 2 bad input or internal error, 3 unknown,
    130 interrupted."""


@main.command()
@click.argument("net")
@click.argument("prop")
@click.option("--timeout", default="60", show_default=True,
              help="Seconds (hard limit; finite and > 0).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--quiet", is_flag=True, help="No progress messages on stderr.")
@click.option("--save-proof", metavar="PROOF.json", default=None,
              help="On holds, write the proof (for `coreproof check-proof`).")
@click.option("--milp-workers", type=click.IntRange(min=0), default=None,
              help="Processes on a region's mixed-integer program (needs the 'milp' extra; "
                   "default 2: one beside branch and bound, two once it stops; 0: none).")
def verify(net, prop, timeout, as_json, quiet, save_proof, milp_workers):
    """Verify NET (.onnx or .nnet) against the VNN-LIB property PROP.

    Exit code: 0 holds, 1 violated, 3 unknown, 2 bad input."""
    result = run_one(net, prop, _timeout(timeout), _progress(quiet), save_proof, milp_workers)
    click.echo(result.to_json() if as_json else _describe(result))
    sys.exit(result.exit_code)


@main.command("verify-instances")
@click.argument("instances", type=click.Path(dir_okay=False))
@click.option("-o", "--output", default=None,
              help="Results .csv or .jsonl (default: results.csv next to the instances).")
@click.option("--timeout-scale", default="1", show_default=True,
              help="Multiply every instance timeout by this.")
@click.option("-j", "--jobs", type=click.IntRange(1), default=None,
              help="Worker processes, one single-threaded job each (default: the usable "
                   "cores).")
@click.option("--scheduler", default=None, envvar="COREPROOF_SCHEDULER",
              help="A Dask scheduler address (tcp://host:8786): run the jobs on that cluster "
                   "(needs the 'cluster' extra). Default: $COREPROOF_SCHEDULER.")
@click.option("--shared-paths", is_flag=True,
              help="Dask workers read the files at the same paths (default: files shipped).")
@click.option("--force", is_flag=True, help="Start again instead of resuming the output.")
@click.option("--quiet", is_flag=True)
def verify_instances(instances, output, timeout_scale, jobs, scheduler, shared_paths, force,
                     quiet):
    """Run a VNN-COMP instances csv (onnx, vnnlib, timeout; paths relative to the csv).

    Rows are written to the output as they finish (in the csv's order); a re-run with the
    same output resumes, skipping the rows it holds, unless --force.  A row that fails
    (bad file, a worker that died twice, ...) is an `error` row and the batch goes on.
    Exit code: the worst over the rows (error 2, violated 1, unknown 3, holds 0)."""
    from .batch import BatchOptions, Job, verify_many
    from .results_file import ResultsFile
    scale = _timeout(timeout_scale, "--timeout-scale")
    rows = read_instances(instances)
    base = Path(instances).parent
    out = Path(output) if output else Path(instances).with_name("results.csv")
    results = ResultsFile(out, fresh=force)
    names = [(os.path.relpath(net, base), os.path.relpath(prop, base)) for net, prop, _ in rows]
    slots: list[dict | None] = [None] * len(rows)
    left = {}
    for r in results.rows:
        left.setdefault(ResultsFile.key(r), []).append(r)
    todo = []
    for n, ((net, prop, timeout), key) in enumerate(zip(rows, names)):
        if left.get(key):
            slots[n] = left[key].pop(0)
            continue
        todo.append(Job(net, prop, _timeout(timeout * scale, "timeout"), key=f"{n}"))
    counts = {s: 0 for s in ("holds", "violated", "unknown", "error")}
    for r in slots:
        if r is not None:
            counts[r["status"] if r["status"] in counts else "error"] += 1
    bar = _bar(len(rows), len(rows) - len(todo), quiet)
    say = None if quiet or bar is not None else _progress(quiet)
    if todo and say:
        say(f"{len(todo)} of {len(rows)} instances to run"
            + (f" on {scheduler}" if scheduler else "")
            + (f", {len(rows) - len(todo)} done already in {out}" if len(todo) < len(rows) else ""))
    options = BatchOptions(ship="path" if shared_paths else "bytes")
    try:
        for res in verify_many(todo, jobs_n=jobs, scheduler=scheduler, options=options):
            n = int(res.job.key)
            onnx, vnnlib = names[n]
            reason = res.error if res.status == "error" else \
                (res.result.reason if res.result is not None else "") or ""
            slots[n] = {"onnx": onnx, "vnnlib": vnnlib, "status": res.status,
                        "time_s": f"{res.time_s:.3f}", "method": res.method, "reason": reason}
            counts[res.status] += 1
            results.save([r for r in slots if r is not None])
            if bar is not None:
                bar.set_postfix(counts, refresh=False)
                bar.update(1)
            elif say:
                say(f"{sum(r is not None for r in slots)}/{len(rows)} {onnx} {vnnlib}: "
                    f"{res.status} ({res.time_s:.1f} s)"
                    + (f": {reason}" if res.status == "error" else ""))
    finally:
        if bar is not None:
            bar.close()
    click.echo(f"{len(rows)} instances: " + ", ".join(f"{k} {v}" for k, v in counts.items())
               + f"; results in {out}")
    sys.exit(exit_codes.worst(exit_codes.of_status(r["status"] if r["status"] in counts
                                                   else "error") for r in slots if r))


def _bar(total: int, done: int, quiet: bool):
    """A tqdm progress bar on stderr, or None when quiet or stderr is not a terminal."""
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=done, unit="instance", file=sys.stderr,
                dynamic_ncols=True)


def read_instances(path: str) -> list[tuple[Path, Path, float]]:
    p = Path(path)
    if not p.is_file():
        raise InputError("no such file", path=path, expected="a VNN-COMP instances csv")
    rows = []
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read: {exc}", path=path,
                         expected="a VNN-COMP instances csv (UTF-8 text)") from None
    for line_no, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 3:
            raise InputError(f"{len(row)} columns", path=path, line=line_no,
                             expected="3 columns: onnx, vnnlib, timeout")
        try:
            timeout = float(row[2])
        except ValueError:
            timeout = float("nan")
        if not (timeout > 0 and timeout != float("inf")):
            raise InputError(f"bad timeout {row[2].strip()!r}", path=path, line=line_no,
                             expected="a finite number of seconds > 0")
        rows.append((p.parent / row[0].strip(), p.parent / row[1].strip(), timeout))
    return rows


if __name__ == "__main__":  # pragma: no cover
    main()
