"""Certified functional equivalence benchmark (``coreproof equiv``, issue 16).

    python benchmarks/equivalence_benchmark.py [--reduced] [--timeout S] [--images N] [--json out.json]

Pairs: ACAS Xu 1_1 on the input boxes of properties 1-4 (classes by argmin;
input-splitting branch and bound until the timeout), and mnist-net_256x2 on
L-inf balls of radius 0.02 (clipped to [0, 1]) around the images of the
MNIST-FC properties (recovered from the eps 0.03 boxes; 784 inputs: one bound,
no splitting), each against int8, int4, magnitude pruning 10 % and 30 %
(made here with :mod:`compress`).

Per pair: the certified delta (max over outputs of the bound on |g - f|),
the best deviation found by PGD on |g - f| (the equiv run's own search, then
a stronger PGD with 12 restarts x 100 steps and 20,000 samples), their ratio
(certified / found: 1 is exact; target <= 3 on int8 and magnitude 10 %), the
naive bound (difference of the two networks' separate CROWN bounds) and
naive / certified (target >= 10), the top-1 verdict and the time.  A
summary per (network, variant) gives the median and worst ratios.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress import magnitude_prune, quantize_weights  # noqa: E402
from verify.api import load_network, load_property  # noqa: E402
from verify.equiv.api import EquivOptions, certify_equivalence, property_box  # noqa: E402
from verify.equiv.attack import max_deviation  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
VARIANTS = {
    "int8": lambda n: quantize_weights(n, 8).network,
    "int4": lambda n: quantize_weights(n, 4).network,
    "magnitude 10 %": lambda n: magnitude_prune(n, 0.1).network,
    "magnitude 30 %": lambda n: magnitude_prune(n, 0.3).network,
}


def mnist_image(box_lo: np.ndarray, box_hi: np.ndarray, eps: float = 0.03) -> np.ndarray:
    """The image of an MNIST-FC property box [clip(x - eps), clip(x + eps)]."""
    return np.where(box_lo <= 0, box_hi - eps, np.where(box_hi >= 1, box_lo + eps, (box_lo + box_hi) / 2))


def pairs(args):
    acas = load_network(DATA / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx")
    for p in (1, 2, 3, 4):
        lo, hi = property_box(load_property(DATA / "acasxu" / f"prop_{p}.vnnlib", acas))
        yield "acasxu_1_1", f"prop_{p}", acas, lo, hi, True, args.timeout
    mnist = load_network(DATA / "mnistfc" / "mnist-net_256x2.onnx")
    for i in range(args.images):
        plo, phi = property_box(load_property(DATA / "mnistfc" / f"prop_{i}_0.03.vnnlib", mnist))
        x = mnist_image(plo, phi)
        yield "mnist-net_256x2", f"image_{i}", mnist, np.clip(x - 0.02, 0, 1), np.clip(x + 0.02, 0, 1), \
            False, args.mnist_timeout


def run(args) -> list[dict]:
    rows = []
    variants_of = {}
    for net_name, region, net, lo, hi, split, timeout in pairs(args):
        if net_name not in variants_of:
            variants_of[net_name] = {k: make(net) for k, make in VARIANTS.items()}
        for vname, variant in variants_of[net_name].items():
            opts = EquivOptions(timeout=timeout, argmin=net_name.startswith("acas"),
                                target_delta=0.0 if split else None, split=split)
            res = certify_equivalence(net, variant, lo, hi, opts)
            pgd = max_deviation(net, variant, lo, hi, rng=np.random.default_rng(1), samples=20000,
                                restarts=12, steps=100).value
            found = float(max(pgd.max(), max(res.deviation_found)))
            delta, naive = res.max_delta, max(res.naive_delta)
            row = {"network": net_name, "region": region, "variant": vname, "delta": delta,
                   "found": found, "ratio": delta / found if found > 0 else float("inf"),
                   "naive": naive, "naive_over_delta": naive / delta if delta > 0 else float("inf"),
                   "root_differential": max(res.root_differential or [float("nan")]),
                   "root_product": max(res.root_product or [float("nan")]),
                   "top1": res.top1, "leaves": res.leaves, "time_s": res.time_s,
                   "sound": bool(np.all(np.asarray(res.delta) >= np.maximum(pgd, res.deviation_found)))}
            rows.append(row)
            print(f"{net_name:16s} {region:9s} {vname:15s} delta {delta:10.4g}  found {found:10.4g}  "
                  f"ratio {row['ratio']:7.2f}  naive {naive:10.4g} ({row['naive_over_delta']:8.1f}x)  "
                  f"root {row['root_differential']:9.4g}  {res.top1:12s} {res.leaves:5d} boxes "
                  f"{res.time_s:6.2f} s{'' if row['sound'] else '  UNSOUND'}", flush=True)
    return rows


def summary(rows: list[dict]) -> None:
    print("\n| network | variant | pairs | certified delta (median) | PGD found (median) | "
          "ratio median | ratio worst | naive (median) | naive / certified (median) | "
          "differential before splitting (median) | top-1 certified | time (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    keys = sorted({(r["network"], r["variant"]) for r in rows}, key=lambda k: (k[0], list(VARIANTS).index(k[1])))
    for net, var in keys:
        rs = [r for r in rows if (r["network"], r["variant"]) == (net, var)]
        med = lambda k: float(np.median([r[k] for r in rs]))
        print(f"| {net} | {var} | {len(rs)} | {med('delta'):.4g} | {med('found'):.4g} | "
              f"{med('ratio'):.2f} | {max(r['ratio'] for r in rs):.2f} | {med('naive'):.4g} | "
              f"{med('naive_over_delta'):.1f}x | {med('root_differential'):.4g} | "
              f"{sum(r['top1'] == 'certified' for r in rs)}/{len(rs)} | {med('time_s'):.2f} s |")
    print(f"\nunsound rows (certified < found): {sum(not r['sound'] for r in rows)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reduced", action="store_true", help="3 MNIST images, 5 s per ACAS Xu pair")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per ACAS Xu pair")
    ap.add_argument("--mnist-timeout", type=float, default=10.0)
    ap.add_argument("--images", type=int, default=15)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    if args.reduced:
        args.images, args.timeout, args.mnist_timeout = min(args.images, 3), min(args.timeout, 5.0), 5.0
    import torch
    torch.set_num_threads(1)
    t0 = time.time()
    rows = run(args)
    summary(rows)
    print(f"total {time.time() - t0:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
