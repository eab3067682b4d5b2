"""Certified functional equivalence benchmark (``coreproof equiv``, issue 16).

    python benchmarks/equivalence_benchmark.py [--reduced] [--timeout S] [--images N] [--json out.json]
        [--networks acasxu mnist] [--reverify-timeout S]

Pairs: ACAS Xu 1_1 on the input boxes of properties 1-4 (classes by argmin;
input-splitting branch and bound until the timeout), and mnist-net_256x2 on
L-inf balls of radius 0.02 (clipped to [0, 1]) around the images of the
MNIST-FC properties (recovered from the eps 0.03 boxes; 784 inputs: ReLU phase
splitting of the difference, :mod:`verify.equiv.relusplit`, until the timeout),
each against int8, int4, magnitude pruning 10 % and 30 %, low-rank
factorization keeping 90 % of the squared singular values (``energy:0.9``) and
``merge-linear`` on the pair's own box (made here with :mod:`compress`).

Per pair: the certified delta (max over outputs of the bound on |g - f|),
the best deviation found by PGD on |g - f| (the equiv run's own search, then
a stronger PGD with 12 restarts x 100 steps and 20,000 samples), their ratio
(certified / found: 1 is exact; target <= 3 on int8 and magnitude 10 %), the
naive bounds -- the difference of the two networks' separate interval (IBP)
bounds, the textbook baseline, and of their separate CROWN bounds, a stronger
one -- and naive / certified for each (target >= 10), the top-1 verdict and the time, the variant's
parameters, packed bytes (:func:`compress.storage_bytes`) and the size of its
deployable ONNX file.  A summary per (network, variant) gives the median and worst
ratios.

Equivalence transfer: per pair, ``reverify`` of the variant from the original's proof
(built once per region, not timed) of the region's property -- ACAS Xu property
``p`` itself, and for MNIST local robustness of the original's class on the pair's
box -- with ``--reverify-timeout`` seconds; the summary gives the share of pairs settled
by the original's margin plus a certified deviation of the variant
(:data:`verify.reuse.results.DEVIATION_TRANSFER_METHODS`: ``equivalence-transfer``, and
the difference tier that ``reverify`` tries first on a related variant), and how the
others were decided.
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

import tempfile  # noqa: E402
import warnings  # noqa: E402

from compress import compress, parameter_counts, save_variant, storage_bytes  # noqa: E402
from verify.api import load_network, load_property  # noqa: E402
from verify.equiv.api import EquivOptions, certify_equivalence, property_box  # noqa: E402
from verify.equiv.bounds import interval_naive_bound  # noqa: E402
from verify.equiv.attack import max_deviation  # noqa: E402
from verify.options import VerifyOptions  # noqa: E402
from verify.properties import local_robustness  # noqa: E402
from verify.reuse import build_proof, reverify  # noqa: E402
from verify.reuse.results import DEVIATION_TRANSFER_METHODS  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
#: name -> recipe; merge-linear is made on each pair's own box
VARIANTS = {
    "int8": "int8",
    "int4": "int4",
    "magnitude 10 %": "magnitude:0.1",
    "magnitude 30 %": "magnitude:0.3",
    "svd energy 0.9": "energy:0.9",
    "merge-linear": "merge-linear",
}


def sizes(variant, like) -> dict:
    """Parameters, packed bytes and the deployable file's bytes of a variant."""
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float64 fallback of merged weights: reported as bytes
        path, _ = save_variant(variant.network, variant.record, d, "v", like=like,
                               factors=variant.factors)
        file_bytes = path.stat().st_size
    return {"params": parameter_counts(variant.network, variant.record)[0],
            "packed_bytes": storage_bytes(variant.network, variant.record),
            "file_bytes": file_bytes}


def mnist_image(box_lo: np.ndarray, box_hi: np.ndarray, eps: float = 0.03) -> np.ndarray:
    """The image of an MNIST-FC property box [clip(x - eps), clip(x + eps)]."""
    return np.where(box_lo <= 0, box_hi - eps, np.where(box_hi >= 1, box_lo + eps, (box_lo + box_hi) / 2))


def pairs(args):
    acas = load_network(DATA / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx")
    for p in (1, 2, 3, 4) if "acasxu" in args.networks else ():
        prop = load_property(DATA / "acasxu" / f"prop_{p}.vnnlib", acas)
        lo, hi = property_box(prop)
        yield "acasxu_1_1", f"prop_{p}", acas, lo, hi, True, args.timeout, prop
    mnist = load_network(DATA / "mnistfc" / "mnist-net_256x2.onnx")
    images = args.image_list if args.image_list is not None else range(args.images)
    for i in (images if "mnist" in args.networks else ()):
        plo, phi = property_box(load_property(DATA / "mnistfc" / f"prop_{i}_0.03.vnnlib", mnist))
        x = mnist_image(plo, phi)
        prop = local_robustness(x, 0.02, int(mnist.forward(x).argmax()), mnist.n_outputs,
                                name=f"robust_image_{i}")
        yield "mnist-net_256x2", f"image_{i}", mnist, np.clip(x - 0.02, 0, 1), np.clip(x + 0.02, 0, 1), \
            True, args.mnist_timeout, prop


NET_FILES = {"acasxu_1_1": DATA / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx",
             "mnist-net_256x2": DATA / "mnistfc" / "mnist-net_256x2.onnx"}


def run(args) -> list[dict]:
    rows = []
    variants_of, size_of = {}, {}
    chosen = {k: r for k, r in VARIANTS.items() if not args.variants or k in args.variants}
    for net_name, region, net, lo, hi, split, timeout, prop in pairs(args):
        if net_name not in variants_of:
            variants_of[net_name] = {k: compress(net, r) for k, r in chosen.items()
                                     if r != "merge-linear"}
            for k, v in variants_of[net_name].items():
                size_of[net_name, k] = sizes(v, NET_FILES[net_name])
            size_of[net_name, "original"] = {
                "params": parameter_counts(net)[0], "packed_bytes": storage_bytes(net),
                "file_bytes": NET_FILES[net_name].stat().st_size}
        here = dict(variants_of[net_name])
        if "merge-linear" in chosen:
            here["merge-linear"] = compress(net, "merge-linear", box=(lo, hi))
        proof, t_proof = None, time.monotonic()
        if args.reverify_timeout > 0:
            proof = build_proof(net, prop, VerifyOptions(timeout=args.proof_timeout))
        t_proof = time.monotonic() - t_proof
        for vname, vobj in here.items():
            variant = vobj.network
            size = size_of.get((net_name, vname)) or sizes(vobj, NET_FILES[net_name])
            # split_by auto: input bisection on ACAS Xu (5 inputs), ReLU phases on MNIST
            opts = EquivOptions(timeout=timeout, argmin=net_name.startswith("acas"),
                                target_delta=0.0 if split else None, split=split,
                                slope_steps=args.slope_steps if net_name.startswith("mnist") else 0)
            res = certify_equivalence(net, variant, lo, hi, opts)
            pgd = max_deviation(net, variant, lo, hi, rng=np.random.default_rng(1), samples=20000,
                                restarts=12, steps=100).value
            found = float(max(pgd.max(), max(res.deviation_found)))
            delta, naive = res.max_delta, max(res.naive_delta)
            naive_ibp = float(interval_naive_bound(net, variant, lo, hi).max())
            row = {"network": net_name, "region": region, "variant": vname, "delta": delta,
                   "found": found, "ratio": delta / found if found > 0 else float("inf"),
                   "naive": naive, "naive_over_delta": naive / delta if delta > 0 else float("inf"),
                   "naive_interval": naive_ibp,
                   "interval_over_delta": naive_ibp / delta if delta > 0 else float("inf"),
                   "root_differential": max(res.root_differential or [float("nan")]),
                   "root_product": max(res.root_product or [float("nan")]),
                   "top1": res.top1, "leaves": res.leaves, "splitting": res.splitting,
                   "time_s": res.time_s,
                   "sound": bool(np.all(np.asarray(res.delta) >= np.maximum(pgd, res.deviation_found))),
                   "merged": vobj.record.n_removed_neurons, **size,
                   "original_params": size_of[net_name, "original"]["params"],
                   "original_file_bytes": size_of[net_name, "original"]["file_bytes"]}
            if proof is not None:
                rr = reverify(net, vobj, prop, VerifyOptions(timeout=args.reverify_timeout),
                              proof=proof)
                row.update({"proof_status": proof.status, "proof_time_s": t_proof,
                            "reverify_status": rr.status.value, "reverify_method": rr.method,
                            "reverify_time_s": rr.time_s,
                            "transfer_tried": rr.reuse.transfer_tried})
            rows.append(row)
            print(f"{net_name:16s} {region:9s} {vname:15s} delta {delta:10.4g}  found {found:10.4g}  "
                  f"ratio {row['ratio']:7.2f}  naive {naive:10.4g} ({row['naive_over_delta']:8.1f}x)  "
                  f"interval {naive_ibp:10.4g} ({row['interval_over_delta']:8.1f}x)  "
                  f"root {row['root_differential']:9.4g}  {res.top1:12s} {res.leaves:5d} {res.splitting} leaves "
                  f"{res.time_s:6.2f} s{'' if row['sound'] else '  UNSOUND'}  "
                  f"params {row['params']} file {row['file_bytes']} B"
                  + (f"  reverify {row['reverify_status']} {row['reverify_method']} "
                     f"{row['reverify_time_s']:.3f} s (proof {proof.status})" if proof else ""),
                  flush=True)
    return rows


def summary(rows: list[dict]) -> None:
    print("\n| network | variant | pairs | certified delta (median) | PGD found (median) | "
          "ratio median | ratio worst | interval naive (median) | interval naive / certified (median) | "
          "CROWN naive (median) | CROWN naive / certified (median) | "
          "differential before splitting (median) | top-1 certified | time (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    keys = sorted({(r["network"], r["variant"]) for r in rows}, key=lambda k: (k[0], list(VARIANTS).index(k[1])))
    for net, var in keys:
        rs = [r for r in rows if (r["network"], r["variant"]) == (net, var)]
        med = lambda k: float(np.median([r[k] for r in rs]))
        print(f"| {net} | {var} | {len(rs)} | {med('delta'):.4g} | {med('found'):.4g} | "
              f"{med('ratio'):.2f} | {max(r['ratio'] for r in rs):.2f} | {med('naive_interval'):.4g} | "
              f"{med('interval_over_delta'):.1f}x | {med('naive'):.4g} | "
              f"{med('naive_over_delta'):.1f}x | {med('root_differential'):.4g} | "
              f"{sum(r['top1'] == 'certified' for r in rs)}/{len(rs)} | {med('time_s'):.2f} s |")
    print(f"\nunsound rows (certified < found): {sum(not r['sound'] for r in rows)}")
    print("\n| network | variant | parameters (median) | packed bytes | ONNX file bytes | "
          "neurons merged (median) | certified delta (median) | PGD found (median) |")
    print("|---|---|---|---|---|---|---|---|")
    for net in sorted({r["network"] for r in rows}):
        r0 = next(r for r in rows if r["network"] == net)
        print(f"| {net} | original | {r0['original_params']:,} | | {r0['original_file_bytes']:,} "
              f"| | | |")
        for var in ("svd energy 0.9", "merge-linear"):
            rs = [r for r in rows if (r["network"], r["variant"]) == (net, var)]
            if rs:
                med = lambda k: float(np.median([r[k] for r in rs]))  # noqa: E731
                print(f"| {net} | {var} | {med('params'):,.0f} | {med('packed_bytes'):,.0f} | "
                      f"{med('file_bytes'):,.0f} | {med('merged'):.0f} | {med('delta'):.4g} | "
                      f"{med('found'):.4g} |")
    rv = [r for r in rows if "reverify_method" in r]
    if rv:
        by_transfer = lambda r: r["reverify_method"] in DEVIATION_TRANSFER_METHODS  # noqa: E731
        print("\n| network | variant | pairs | original proved | settled by margin + certified "
              "deviation (transfer / difference tier) | other methods |")
        print("|---|---|---|---|---|---|")
        for net, var in keys:
            rs = [r for r in rv if (r["network"], r["variant"]) == (net, var)]
            held = [r for r in rs if r["proof_status"] == "holds"]
            others: dict = {}
            for r in rs:
                if not by_transfer(r):
                    m = f"{r['reverify_method']} ({r['reverify_status']})"
                    others[m] = others.get(m, 0) + 1
            n_eq = sum(r["reverify_method"] == "equivalence-transfer" for r in rs)
            print(f"| {net} | {var} | {len(rs)} | {len(held)} | "
                  f"{sum(map(by_transfer, rs))} ({n_eq} / {sum(map(by_transfer, rs)) - n_eq}) | "
                  + ", ".join(f"{k}: {v}" for k, v in sorted(others.items())) + " |")
        n_t = sum(map(by_transfer, rv))
        n_eq = sum(r["reverify_method"] == "equivalence-transfer" for r in rv)
        n_h = sum(r["proof_status"] == "holds" for r in rv)
        print(f"\nsettled by the original's margin plus a certified deviation: {n_t} of {len(rv)} "
              f"pairs ({n_t / len(rv):.0%}; {n_t} of the {n_h} whose original holds): "
              f"{n_eq} by equivalence-transfer, {n_t - n_eq} by the difference tier")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reduced", action="store_true", help="3 MNIST images, 5 s per ACAS Xu pair")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per ACAS Xu pair")
    ap.add_argument("--mnist-timeout", type=float, default=10.0)
    ap.add_argument("--images", type=int, default=15)
    ap.add_argument("--image-list", type=int, nargs="*", help="these MNIST images instead")
    ap.add_argument("--slope-steps", type=int, default=0,
                    help="MNIST: gradient steps on each branch's relaxation slopes")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--variants", nargs="*", help=f"a subset of: {', '.join(VARIANTS)}")
    ap.add_argument("--networks", nargs="*", choices=("acasxu", "mnist"), default=["acasxu", "mnist"],
                    help="which networks' pairs to run")
    ap.add_argument("--reverify-timeout", type=float, default=20.0,
                    help="seconds per reverify pair (0: no reverify)")
    ap.add_argument("--proof-timeout", type=float, default=60.0,
                    help="seconds for the original's proof of each region")
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
