"""coreproof against a peer verifier on the same instances, side by side.

    python benchmarks/peer_benchmark.py [--benchmark acasxu|mnist] [--props 1,2,...]
                                        [--timeout S] [--every K] [--limit N]
                                        [--jsonl out.jsonl]

For every instance, coreproof (``coreproof verify --json``) and each installed peer run at
the same time, one process each (one per core on this 2-core machine), with the same
timeout; both are killed at timeout + 30 s.  Peers: Marabou, from the ``maraboupy``
package (the ``peers`` extra: ``pip install ".[peers]"``); a peer that is not installed is
skipped.  Times: **wall** is the process's whole run (start-up, loading, solving); **solve**
is what the tool reports for the query itself (coreproof's ``time_s``, Marabou's
``solve()`` call).

Prints the per-instance table, then: instances decided by each, instances where the
verdicts disagree, the geometric mean of the time ratio coreproof / peer over the instances
both decide (wall and solve), and the total wall time of each.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
GRACE_S = 30.0

MARABOU = r'''
import json, sys, time, warnings
warnings.filterwarnings("ignore")
t0 = time.monotonic()
from maraboupy import Marabou
net = Marabou.read_onnx(sys.argv[1])
opts = Marabou.createOptions(timeoutInSeconds=int(float(sys.argv[3])), verbosity=0)
t1 = time.monotonic()
code, vals, stats = net.solve(propertyFilename=sys.argv[2], options=opts, verbose=False)
t2 = time.monotonic()
status = {"unsat": "holds", "sat": "violated"}.get(code, "unknown")
print(json.dumps({"status": status, "solve_s": t2 - t1, "raw": code}))
'''


def has_marabou() -> bool:
    try:
        import maraboupy  # noqa: F401
        return True
    except ImportError:
        return False


def instances(benchmark: str, props) -> list[tuple[Path, Path, float]]:
    if benchmark == "acasxu":
        path = DATA / "acasxu" / "acasxu_instances.csv"
    else:
        path = DATA / "mnistfc" / "mnistfc_instances.csv"
    out = []
    with open(path, newline="") as fh:
        for row in csv.reader(fh):
            if not row:
                continue
            prop = Path(row[1].strip())
            if benchmark == "acasxu" and props and \
                    prop.name not in {f"prop_{p}.vnnlib" for p in props}:
                continue
            out.append((path.parent / row[0].strip(), path.parent / prop, float(row[2])))
    return out


def _run(cmd: list[str], limit: float) -> tuple[float, str, str]:
    t0 = time.monotonic()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=ROOT)
        return time.monotonic() - t0, res.stdout, res.stderr
    except subprocess.TimeoutExpired:
        return time.monotonic() - t0, "", "killed"


def run_coreproof(net: Path, prop: Path, timeout: float) -> dict:
    wall, out, err = _run([sys.executable, "-m", "verify.entry", "verify", str(net), str(prop),
                           "--timeout", f"{timeout:g}", "--json", "--quiet"], timeout + GRACE_S)
    try:
        d = json.loads(out.strip().splitlines()[-1])
        return {"status": d["status"], "solve_s": d["time_s"], "wall_s": wall}
    except (ValueError, IndexError, KeyError):
        return {"status": "error", "solve_s": None, "wall_s": wall, "error": err[-200:]}


def run_marabou(net: Path, prop: Path, timeout: float) -> dict:
    wall, out, err = _run([sys.executable, "-c", MARABOU, str(net), str(prop), str(timeout)],
                          timeout + GRACE_S)
    try:
        d = json.loads(out.strip().splitlines()[-1])
        return {"status": d["status"], "solve_s": d["solve_s"], "wall_s": wall}
    except (ValueError, IndexError, KeyError):
        return {"status": "unknown" if err == "killed" else "error", "solve_s": None,
                "wall_s": wall, "error": err[-200:]}


def geo(xs) -> float:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmark", choices=["acasxu", "mnist"], default="acasxu")
    ap.add_argument("--props", default="", help="ACAS Xu properties, e.g. 1,2,3 (default all)")
    ap.add_argument("--timeout", type=float, help="Seconds per instance (default: the csv's)")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--every", type=int, default=1,
                    help="every K-th instance (a spread sample; --limit applies after)")
    ap.add_argument("--jsonl")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"benchmark data not found at {DATA}")
    if not has_marabou():
        print("peer_benchmark: maraboupy is not installed (pip install '.[peers]'); "
              "running coreproof alone", file=sys.stderr)
    props = [int(p) for p in args.props.split(",") if p.strip()]
    rows = instances(args.benchmark, props)[::args.every][:args.limit]
    out = open(args.jsonl, "w") if args.jsonl else None
    table = []
    print("| network | property | coreproof | wall (s) | solve (s) | Marabou | wall (s) | solve (s) |")
    print("|---|---|---|--:|--:|---|--:|--:|")
    with ThreadPoolExecutor(2) as pool:
        for net, prop, timeout in rows:
            t = args.timeout or timeout
            fc = pool.submit(run_coreproof, net, prop, t)
            fm = pool.submit(run_marabou, net, prop, t) if has_marabou() else None
            c = fc.result()
            m = fm.result() if fm else {"status": "-", "solve_s": None, "wall_s": None}
            row = {"network": net.stem, "property": prop.name, "coreproof": c, "marabou": m}
            table.append(row)
            if out:
                out.write(json.dumps(row) + "\n")
                out.flush()

            def f(x):
                return "-" if x is None else f"{x:.2f}"
            print(f"| {net.stem} | {prop.name} | {c['status']} | {f(c['wall_s'])} | "
                  f"{f(c['solve_s'])} | {m['status']} | {f(m['wall_s'])} | {f(m['solve_s'])} |",
                  flush=True)
    decided = ("holds", "violated")
    both = [r for r in table if r["coreproof"]["status"] in decided
            and r["marabou"]["status"] in decided]
    disagree = [r for r in both if r["coreproof"]["status"] != r["marabou"]["status"]]
    print()
    print(f"instances: {len(table)}; decided: coreproof "
          f"{sum(r['coreproof']['status'] in decided for r in table)}, Marabou "
          f"{sum(r['marabou']['status'] in decided for r in table)}; both {len(both)}; "
          f"verdicts disagree: {len(disagree)}")
    if both:
        print(f"geometric mean of coreproof / Marabou on both-decided: wall "
              f"{geo([r['coreproof']['wall_s'] / r['marabou']['wall_s'] for r in both]):.2f}, "
              f"solve {geo([r['coreproof']['solve_s'] / max(r['marabou']['solve_s'], 1e-3) for r in both]):.2f}")
    print(f"total wall: coreproof {sum(r['coreproof']['wall_s'] or 0 for r in table):.1f} s, "
          f"Marabou {sum(r['marabou']['wall_s'] or 0 for r in table):.1f} s")


if __name__ == "__main__":
    main()
