"""VNN-COMP 2021 benchmarks on this machine, one instance at a time.

    python benchmarks/vnncomp_benchmark.py [--only NAME ...] [--timeout-scale 1.0]
                                           [--limit N] [--every K [--start S]] [--max-timeout S]
                                           [--jsonl results.jsonl] [--unknown-in OLD.jsonl]
                                           [--cross-check SECONDS] [--milp-workers N]

Benchmarks: ``acasxu`` (properties 1-4 on all 45 networks), ``mnist``
(mnist-net_256x2, 30 properties), ``mnistfc`` (all three MNIST-FC networks, 90
instances), and the CNN / residual / deep-FC sets
``verivital``, ``eran``, ``oval21``, ``cifar10_resnet``, ``marabou-cifar10``
(every row of their instances csv, with its timeout).

Each benchmark runs in one worker process (instances one after another, so the
peak resident memory of that process is the benchmark's peak memory). The
worker is killed and restarted if an instance overruns its timeout by more
than a grace period; that instance counts as ``unknown``. Every ``violated``
comes with a counterexample the verifier re-ran on the float64 network; this
script replays it once more. ``--cross-check S`` additionally attacks every
``holds`` for S seconds with a different seed: a counterexample found there is
a wrong verdict (printed and counted). ``--unknown-in OLD.jsonl`` runs only the
instances that an earlier run (its ``--jsonl``) left unknown, e.g. again at the
instance timeouts after a run at ``--max-timeout 60``.

Prints per benchmark: instances, solved, holds, violated, unknown, errors,
wrong, median time (all instances, unknown at their time), median solved time,
peak memory (MiB).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data"

from verify.options import VerifyOptions  # noqa: E402  (after the path above)
CSV = {
    "acasxu": "acasxu/acasxu_instances.csv",
    "mnist": "mnistfc/mnistfc_instances.csv",
    "mnistfc": "mnistfc/mnistfc_instances.csv",
    "verivital": "verivital/verivital_instances.csv",
    "eran": "eran/eran_instances.csv",
    "oval21": "oval21/oval21_instances.csv",
    "cifar10_resnet": "cifar10_resnet/cifar10_resnet_instances.csv",
    "marabou-cifar10": "marabou-cifar10/marabou-cifar10_instances.csv",
}
GRACE_S = 30.0


def instances(name: str):
    from verify.cli import read_instances
    rows = read_instances(str(DATA / CSV[name]))
    if name == "acasxu":
        return [r for r in rows if r[1].name in {f"prop_{i}.vnnlib" for i in (1, 2, 3, 4)}]
    if name == "mnist":
        return [r for r in rows if r[0].name == "mnist-net_256x2.onnx"]
    return rows


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _worker(conn, cross_check: float, milp_workers: int):
    """Verify the instances sent over ``conn`` one at a time."""
    from verify.api import VerifyOptions, load_network, load_property, verify_property
    from verify.errors import CoreproofError
    while True:
        job = conn.recv()
        if job is None:
            return
        net_path, prop_path, timeout = job
        line = {"network": Path(net_path).name, "property": Path(prop_path).name}
        try:
            net = load_network(net_path)
            prop = load_property(prop_path, net)
            res = verify_property(net, prop, VerifyOptions(timeout=timeout,
                                                            milp_workers=milp_workers))
            line.update(res.to_dict())
            line["replayed"] = _replay(net, prop, res) if res.counterexample else None
            line["wrong"] = False
            if cross_check > 0 and res.status.value == "holds":
                line["wrong"] = _attack_finds(net, prop, cross_check)
        except CoreproofError as exc:
            line.update(status="error", time_s=0.0, method="error", reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - a benchmark row, reported, never hidden
            line.update(status="error", time_s=0.0, method="crash",
                        reason=f"{type(exc).__name__}: {exc}")
        line.pop("counterexample", None)
        line["peak_mib"] = round(_peak_mib(), 1)
        conn.send(line)


def _replay(net, prop, res) -> bool:
    """The counterexample, re-run on the float64 forward, lies in the unsafe set."""
    import numpy as np
    cex = res.counterexample
    region = prop.regions[cex.region]
    x = np.asarray(cex.input)
    if not region.contains_input(x):
        return False
    y = net.forward(x)
    m = region.unsafe[cex.conjunction].margins(y)
    return bool(m.size == 0 or np.all(m <= 0.0))


def _attack_finds(net, prop, seconds: float) -> bool:
    import numpy as np

    from verify.attack import Attacker
    attacker = Attacker(net)
    rng = np.random.default_rng(12345)
    until = time.monotonic() + seconds
    for r, region in enumerate(prop.regions):
        cex, _ = attacker.attack(region, r, rng, until, restarts=64, steps=100, samples=4096)
        if cex is not None:
            return True
    return False


class _Runner:
    def __init__(self, cross_check: float, milp_workers: int):
        self.ctx = mp.get_context("spawn")
        self.cross_check = cross_check
        self.milp_workers = milp_workers
        self.proc = None
        self.peak = 0.0

    def _start(self):
        self.conn, child = self.ctx.Pipe()
        # not a daemon: the verifier's MILP stage starts worker processes of its own
        self.proc = self.ctx.Process(target=_worker, args=(child, self.cross_check,
                                                           self.milp_workers))
        self.proc.start()

    def run(self, net_path, prop_path, timeout: float) -> dict:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        t0 = time.monotonic()
        self.conn.send((str(net_path), str(prop_path), timeout))
        limit = timeout + GRACE_S + 4 * self.cross_check
        if self.conn.poll(limit):
            try:
                line = self.conn.recv()
                self.peak = max(self.peak, line["peak_mib"])
                return line
            except EOFError:
                reason = "worker died (out of memory?)"
        else:
            reason = f"killed after {limit:.0f} s"
        self.proc.kill()
        self.proc.join()
        self.proc = None
        return {"network": Path(net_path).name, "property": Path(prop_path).name,
                "status": "unknown", "time_s": time.monotonic() - t0, "method": "killed",
                "reason": reason, "replayed": None, "wrong": False}

    def close(self):
        if self.proc is not None and self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(10)


def _bare(name: str) -> str:
    """A network or property file name without its .onnx / .vnnlib / .gz suffixes."""
    for suffix in (".gz", ".onnx", ".vnnlib"):
        name = name[:-len(suffix)] if name.endswith(suffix) else name
    return name


def unknown_in(path: str) -> set[tuple[str, str]]:
    """(network, property) names, bare, of the instances a results file left unknown."""
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return {(_bare(r["network"]), _bare(r["property"])) for r in lines
            if r["status"] == "unknown"}


def run(name: str, scale: float, limit: int | None, cross_check: float, out,
        every: int = 1, max_timeout: float | None = None, only=None, start: int = 0,
        milp_workers: int = VerifyOptions().milp_workers) -> dict:
    rows = instances(name)
    if only is not None:
        rows = [r for r in rows if (_bare(r[0].name), _bare(r[1].name)) in only]
    rows = rows[start::every][:limit]
    counts = {"holds": 0, "violated": 0, "unknown": 0, "error": 0}
    times, solved_times, wrong = [], [], 0
    runner = _Runner(cross_check, milp_workers)
    try:
        for n, (net_path, prop_path, timeout) in enumerate(rows, 1):
            line = runner.run(net_path, prop_path, min(timeout * scale, max_timeout or float("inf")))
            line["benchmark"] = name
            status = line["status"]
            counts[status] += 1
            bad = status == "violated" and not line.get("replayed")
            wrong += int(bool(line.get("wrong")) or bad)
            times.append(line["time_s"])
            if status in ("holds", "violated"):
                solved_times.append(line["time_s"])
            flag = "  WRONG" if (line.get("wrong") or bad) else ""
            print(f"[{name} {n}/{len(rows)}] {net_path.stem} {prop_path.name}: {status} "
                  f"{line['time_s']:.2f}s ({line['method']}){flag}"
                  + (f" {line.get('reason')}" if status == "error" else ""),
                  file=sys.stderr, flush=True)
            if out:
                out.write(json.dumps(line) + "\n")
                out.flush()
    finally:
        runner.close()
    return {"benchmark": name, "instances": len(rows),
            "solved": counts["holds"] + counts["violated"], **counts, "wrong": wrong,
            "median_time_s": statistics.median(times) if times else float("nan"),
            "median_solved_time_s": statistics.median(solved_times) if solved_times else float("nan"),
            "peak_mib": runner.peak, "timeout_scale": scale}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(CSV))
    ap.add_argument("--timeout-scale", type=float, default=1.0)
    ap.add_argument("--limit", type=int, help="first N instances of each benchmark")
    ap.add_argument("--max-timeout", type=float, metavar="SECONDS",
                    help="cap every instance's (scaled) timeout at this many seconds")
    ap.add_argument("--every", type=int, default=1,
                    help="every K-th instance (a spread sample; --limit applies after)")
    ap.add_argument("--start", type=int, default=0,
                    help="with --every K: from instance S (0-based; --every 2 --start 0 and "
                         "--start 1 split a benchmark over two processes)")
    ap.add_argument("--cross-check", type=float, default=0.0, metavar="SECONDS")
    ap.add_argument("--milp-workers", type=int, default=VerifyOptions().milp_workers,
                    help="VerifyOptions.milp_workers: processes on a region's MILP (0: none; "
                         "with two benchmark processes on two cores, 0 keeps one per core)")
    ap.add_argument("--jsonl")
    ap.add_argument("--unknown-in", metavar="OLD.jsonl",
                    help="only the instances this earlier results file left unknown")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"benchmark data not found at {DATA}")
    out = open(args.jsonl, "w") if args.jsonl else None
    summaries = []
    for name in args.only or [n for n in CSV if n != "mnistfc"]:  # (mnist: its 256x2 part)
        t0 = time.monotonic()
        s = run(name, args.timeout_scale, args.limit, args.cross_check, out, args.every,
                args.max_timeout, unknown_in(args.unknown_in) if args.unknown_in else None,
                args.start, args.milp_workers)
        s["wall_s"] = round(time.monotonic() - t0, 1)
        summaries.append(s)
    print("| benchmark | instances | solved | holds | violated | unknown | error | wrong "
          "| median time (s) | median solved time (s) | peak memory (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in summaries:
        print(f"| {s['benchmark']} | {s['instances']} | {s['solved']} | {s['holds']} | "
              f"{s['violated']} | {s['unknown']} | {s['error']} | {s['wrong']} | "
              f"{s['median_time_s']:.2f} | {s['median_solved_time_s']:.2f} | {s['peak_mib']:.0f} |")
    print(json.dumps(summaries))


if __name__ == "__main__":
    main()
