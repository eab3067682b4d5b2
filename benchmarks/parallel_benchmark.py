"""Many instances at once on this machine: wall time with --jobs 1 against --jobs N and
through a local Dask cluster, with identical verdicts checked.

    python benchmarks/parallel_benchmark.py [--jobs 2] [--limit N] [--skip-dask] [--skip-reverify]

1. ACAS Xu properties 1-4 (the 180 instances of the VNN-COMP csv) through
   ``coreproof verify-instances``: ``--jobs 1``, ``--jobs N``, and ``--scheduler`` pointed
   at a ``distributed.LocalCluster`` of N single-threaded worker processes (its start-up
   is not counted; the per-job overhead is (dask wall - jobs-N wall) / instances).
2. ``coreproof reverify`` of 5 variants of ACAS Xu 1_1 (written by ``coreproof compress``:
   magnitude 10 % and 30 %, neurons 5 %, int8, int16) on 20 properties (the input boxes of
   props 1-4 shrunk around their centres to 5 sizes), ``--jobs 1`` against ``--jobs N``.

Each configuration runs alone (one after the other); the figures are wall-clock seconds.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ACAS = DATA / "acasxu"
COREPROOF = [sys.executable, "-m", "verify.entry"] if (ROOT / "verify" / "entry.py").is_file() \
    else [sys.executable, "-c", "from verify.cli import main; main()"]


def run(args, **kw) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    res = subprocess.run(COREPROOF + [str(a) for a in args], capture_output=True, text=True,
                         cwd=ROOT, **kw)
    return time.monotonic() - t0, res


def verdicts(path: Path) -> dict:
    with open(path, newline="") as fh:
        return {(r["onnx"], r["vnnlib"]): r["status"] for r in csv.DictReader(fh)}


def instances_csv(folder: Path, limit: int | None) -> Path:
    rows = []
    with open(ACAS / "acasxu_instances.csv", newline="") as fh:
        for row in csv.reader(fh):
            if row and Path(row[1].strip()).name in {f"prop_{i}.vnnlib" for i in (1, 2, 3, 4)}:
                rows.append([str(ACAS / row[0].strip()), str(ACAS / row[1].strip()), row[2]])
    rows = rows[:limit]
    out = folder / "acas_1_4.csv"
    with open(out, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return out


def bench_instances(folder: Path, jobs: int, limit, skip_dask: bool) -> list[dict]:
    csv_path = instances_csv(folder, limit)
    n = sum(1 for _ in open(csv_path))
    out = []
    for label, extra in (("--jobs 1", ["--jobs", "1"]), (f"--jobs {jobs}", ["--jobs", jobs])):
        wall, res = run(["verify-instances", csv_path, "-o", folder / f"r{extra[1]}.csv",
                         "--quiet", "--force", *extra])
        out.append({"run": label, "instances": n, "wall_s": wall, "exit": res.returncode,
                    "verdicts": verdicts(folder / f"r{extra[1]}.csv")})
        print(f"[parallel] verify-instances {label}: {wall:.1f} s", file=sys.stderr, flush=True)
    if not skip_dask:
        from distributed import LocalCluster
        with LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster:
            wall, res = run(["verify-instances", csv_path, "-o", folder / "rdask.csv", "--quiet",
                             "--force", "--scheduler", cluster.scheduler_address,
                             "--shared-paths"])
        out.append({"run": f"Dask LocalCluster ({jobs} workers)", "instances": n, "wall_s": wall,
                    "exit": res.returncode, "verdicts": verdicts(folder / "rdask.csv")})
        print(f"[parallel] verify-instances dask: {wall:.1f} s", file=sys.stderr, flush=True)
    return out


def shrunk_properties(folder: Path) -> list[Path]:
    """Props 1-4 of ACAS Xu with their input box shrunk around its centre (5 sizes)."""
    from verify.vnnlib import load_vnnlib
    out = []
    for p in (1, 2, 3, 4):
        text = (ACAS / f"prop_{p}.vnnlib").read_text()
        prop = load_vnnlib(ACAS / f"prop_{p}.vnnlib", 5, 5)
        r = prop.regions[0]
        mid, half = (r.lower + r.upper) / 2, (r.upper - r.lower) / 2
        outputs = "\n".join(line for line in text.splitlines()  # one assert per line here
                            if "Y_" in line and not line.startswith("(declare"))
        for k, f in enumerate((1.0, 0.5, 0.25, 0.1, 0.05)):
            lo, hi = mid - f * half, mid + f * half
            lines = [f"(declare-const X_{i} Real)" for i in range(5)]
            lines += [f"(declare-const Y_{j} Real)" for j in range(5)]
            for i in range(5):
                lines += [f"(assert (>= X_{i} {float(lo[i])!r}))",
                          f"(assert (<= X_{i} {float(hi[i])!r}))"]
            path = folder / f"prop_{p}_s{k}.vnnlib"
            path.write_text("\n".join(lines) + "\n" + outputs + "\n")
            out.append(path)
    return out


def bench_reverify(folder: Path, jobs: int) -> list[dict]:
    net = ACAS / "ACASXU_run2a_1_1_batch_2000.onnx"
    vdir = folder / "variants"
    wall, res = run(["compress", net, "-o", vdir, "--sweep", "--prune", "magnitude:0.1",
                     "--prune", "magnitude:0.3", "--prune", "neurons:0.05", "--quantize", "int8",
                     "--quantize", "16", "--domain", "-0.5,0.5"])
    if res.returncode:
        sys.exit(res.stderr)
    variants = sorted(vdir.glob("*.onnx"))
    props = shrunk_properties(folder)
    out = []
    for j in (1, jobs):
        args = ["reverify", net, *variants] + [x for p in props for x in ("-p", p)]
        wall, res = run(args + ["--json", "--quiet", "--jobs", j, "--timeout", "60"])
        rows = sorted((Path(r.split('"variant": "')[1].split('"')[0]).name,
                       r.split('"property": "')[1].split('"')[0],
                       r.split('"status": "')[1].split('"')[0])
                      for r in res.stdout.splitlines() if r.startswith("{"))
        out.append({"run": f"reverify --jobs {j}", "pairs": len(rows), "wall_s": wall,
                    "exit": res.returncode, "verdicts": rows})
        print(f"[parallel] reverify --jobs {j}: {wall:.1f} s, {len(rows)} rows",
              file=sys.stderr, flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--skip-dask", action="store_true")
    ap.add_argument("--skip-reverify", action="store_true")
    args = ap.parse_args()
    if not ACAS.is_dir():
        sys.exit(f"benchmark data not found at {ACAS}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        inst = bench_instances(folder, args.jobs, args.limit, args.skip_dask)
        rev = [] if args.skip_reverify else bench_reverify(folder, args.jobs)
    base = inst[0]
    print("| run | jobs | wall (s) | speed-up vs --jobs 1 | verdicts as --jobs 1 |")
    print("|---|--:|--:|--:|---|")
    for r in inst:
        same = r["verdicts"] == base["verdicts"]
        print(f"| verify-instances ACAS Xu props 1-4 ({r['instances']}) | {r['run']} | "
              f"{r['wall_s']:.1f} | {base['wall_s'] / r['wall_s']:.2f}x | {'yes' if same else 'NO'} |")
    if len(inst) == 3:
        per_job = (inst[2]["wall_s"] - inst[1]["wall_s"]) / inst[0]["instances"]
        print(f"\nDask overhead per job (vs --jobs {args.jobs}): {per_job * 1000:.0f} ms")
    if rev:
        for r in rev:
            print(f"| reverify 5 variants x 20 properties ({r['pairs']} pairs) | {r['run']} | "
                  f"{r['wall_s']:.1f} | {rev[0]['wall_s'] / r['wall_s']:.2f}x | "
                  f"{'yes' if r['verdicts'] == rev[0]['verdicts'] else 'NO'} |")
    print(f"\nmachine: {os.cpu_count()} cores; load average at the end "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
