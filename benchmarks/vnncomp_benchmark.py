"""VNN-COMP 2021 benchmarks on this machine: ACAS Xu properties 1-4 (all 45
networks, as listed in the instances csv) and mnist-net_256x2 (all 30 properties).

    python benchmarks/vnncomp_benchmark.py [--timeout-scale 1.0] [--only acasxu|mnist]
                                           [--limit N] [--jsonl results.jsonl]

Prints per benchmark: instances, solved, holds, violated, unknown, median time
(over all instances, unknown counted at their time) and median solved time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from verify.api import VerifyOptions, load_network, load_property, verify_property  # noqa: E402
from verify.cli import read_instances  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def instances(name: str):
    if name == "acasxu":
        rows = read_instances(str(DATA / "acasxu" / "acasxu_instances.csv"))
        return [r for r in rows if r[1].name in {f"prop_{i}.vnnlib" for i in (1, 2, 3, 4)}]
    rows = read_instances(str(DATA / "mnistfc" / "mnistfc_instances.csv"))
    return [r for r in rows if r[0].name == "mnist-net_256x2.onnx"]


def run(name: str, scale: float, limit: int | None, out) -> dict:
    rows = instances(name)[:limit]
    counts = {"holds": 0, "violated": 0, "unknown": 0}
    times, solved_times = [], []
    for n, (net_path, prop_path, timeout) in enumerate(rows, 1):
        net = load_network(net_path)
        prop = load_property(prop_path, net)
        res = verify_property(net, prop, VerifyOptions(timeout=timeout * scale))
        counts[res.status.value] += 1
        times.append(res.time_s)
        if res.status.value != "unknown":
            solved_times.append(res.time_s)
        line = {"benchmark": name, "network": net_path.name, "property": prop_path.name,
                **res.to_dict()}
        line.pop("counterexample")
        print(f"[{name} {n}/{len(rows)}] {net_path.stem} {prop_path.stem}: {res.status.value} "
              f"{res.time_s:.2f}s ({res.method})", file=sys.stderr, flush=True)
        if out:
            out.write(json.dumps(line) + "\n")
            out.flush()
    solved = counts["holds"] + counts["violated"]
    return {"benchmark": name, "instances": len(rows), "solved": solved, **counts,
            "median_time_s": statistics.median(times) if times else None,
            "median_solved_time_s": statistics.median(solved_times) if solved_times else None,
            "timeout_scale": scale}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--timeout-scale", type=float, default=1.0)
    ap.add_argument("--only", choices=["acasxu", "mnist"])
    ap.add_argument("--limit", type=int)
    ap.add_argument("--jsonl")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"benchmark data not found at {DATA}")
    out = open(args.jsonl, "w") if args.jsonl else None
    summaries = []
    for name in (["acasxu", "mnist"] if args.only is None else [args.only]):
        t0 = time.monotonic()
        s = run(name, args.timeout_scale, args.limit, out)
        s["wall_s"] = round(time.monotonic() - t0, 1)
        summaries.append(s)
    print("| benchmark | instances | solved | holds | violated | unknown | median time (s) | median solved time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for s in summaries:
        print(f"| {s['benchmark']} | {s['instances']} | {s['solved']} | {s['holds']} | {s['violated']} | "
              f"{s['unknown']} | {s['median_time_s']:.2f} | "
              f"{(s['median_solved_time_s'] or float('nan')):.2f} |")
    print(json.dumps(summaries))


if __name__ == "__main__":
    main()
