"""ReLU-split branching heuristics side by side: per instance, every heuristic in turn
(the order rotates from one instance to the next, so load drifts hit each alike),
in one process, with the same timeout.

    python benchmarks/relu_branching_benchmark.py --timeout 60 \\
        mnistfc:256x2:prop_0_0.03 int4:256x2:prop_0_0.03 mnistfc:256x4:prop_3_0.03 \\
        eran:8098@120

An instance is ``mnistfc:<net>:<prop>`` (VNN-COMP 2021 MNIST-FC), ``int4:<net>:<prop>``
(the same on the network's int4 variant, made with ``compress``, as the reuse
benchmark's mnistfc family makes it), ``ball:<net>:<image>:<eps>`` (an L-inf ball
around the centre of MNIST-FC image's box, labelled by the network, as the reuse
benchmark's hard family makes them), ``eran:<image index>`` (mnist_relu_9_200,
eps 0.015) or ``resnet:<2b|4b>:<property index>`` (cifar10_resnet, a graph network: it
knows ``gap`` and ``deepsplit``); ``@T`` sets its timeout.  Heuristics: ``gap``, ``babsr``, ``deepsplit`` (the
default), ``deepsplitB`` (deepsplit with BaBSR's score as the direct impact), ``fsbK``
(filtered smart branching over the top K by BaBSR; ``fsbKL``: its look-ahead re-tightens the
layers after the split; ``fsbKaN``: N alpha steps from the parent's slopes); any of them with
``-adaptive`` appended runs with ``branch_layer_slopes=False`` (the branches
back-substitute their intermediate neurons with the adaptive slopes, not the root's kept
ones; on graph networks the kept ones are used only with ``-kept`` appended, as
``GraphBoundOptions.branch_layer_slopes`` is off by default).  Prints one row per (instance, heuristic):
verdict, wall time, branches, bound evaluations; then per heuristic the decided count,
the total time and the geometric mean of the time ratio against the first heuristic
on the instances both decide.  ``--jsonl`` writes the rows too.
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

from compress import compress  # noqa: E402
from verify.api import load_network, load_property, local_robustness  # noqa: E402
from verify.options import GraphBoundOptions, ReluBranchOptions, VerifyOptions  # noqa: E402
from verify.verifier import verify_property  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def instance(spec: str):
    """(name, network, property, timeout or None) of an instance spec."""
    spec, _, t = spec.partition("@")
    timeout = float(t) if t else None
    kind, *rest = spec.split(":")
    if kind in ("mnistfc", "int4"):
        net = load_network(DATA / "mnistfc" / f"mnist-net_{rest[0]}.onnx")
        if kind == "int4":
            net = compress(net, "int4").network
        return spec, net, load_property(DATA / "mnistfc" / f"{rest[1]}.vnnlib", net), timeout
    if kind == "ball":  # ball:<net>:<image>:<eps>: robustness around an MNIST-FC image
        net = load_network(DATA / "mnistfc" / f"mnist-net_{rest[0]}.onnx")
        r = load_property(DATA / "mnistfc" / f"prop_{rest[1]}_0.03.vnnlib", net).regions[0]
        label = int(np.argmax(net.forward((r.lower + r.upper) / 2)))
        return spec, net, local_robustness((r.lower + r.upper) / 2, float(rest[2]), label,
                                           net.n_outputs), timeout
    if kind == "eran":
        net = load_network(DATA / "eran" / "nets" / "mnist_relu_9_200.onnx")
        prop = DATA / "eran" / "specs" / "mnist" / f"mnist_spec_idx_{rest[0]}_eps_0.01500.vnnlib.gz"
        return spec, net, load_property(prop, net), timeout
    if kind == "resnet":  # resnet:<2b|4b>:<property index> (cifar10_resnet, a graph network)
        eps = {"2b": "0.008", "4b": "0.004"}[rest[0]]
        net = load_network(DATA / "cifar10_resnet" / "onnx" / f"resnet_{rest[0]}.onnx")
        prop = DATA / "cifar10_resnet" / "vnnlib_properties_pgd_filtered" / \
            f"resnet{rest[0]}_pgd_filtered" / f"prop_{rest[1]}_eps_{eps}.vnnlib.gz"
        return spec, net, load_property(prop, net), timeout
    raise SystemExit(f"unknown instance kind {kind!r} in {spec!r}")


def heuristic(name: str) -> ReluBranchOptions:
    if name.startswith("fsb") and name != "fsb":  # fsbK; fsbKL: look-ahead re-tightens
        # later layers; fsbKaN: N alpha steps from the parent's slopes (else the defaults)
        body, _, steps = name[3:].partition("a")
        default = ReluBranchOptions()
        return ReluBranchOptions("fsb", fsb_candidates=int(body.rstrip("L") or default.fsb_candidates),
                                 lookahead="layers" if body.endswith("L") else "spec",
                                 lookahead_alpha_iterations=int(steps or default.lookahead_alpha_iterations))
    if name == "deepsplitB":  # deepsplit with BaBSR's direct score
        return ReluBranchOptions("deepsplit", deepsplit_direct="babsr")
    return ReluBranchOptions(name)


def options(name: str, timeout: float) -> VerifyOptions:
    """The verifier's options for heuristic ``name`` (``-adaptive``, ``-kept``: see above)."""
    base = name.removesuffix("-adaptive").removesuffix("-kept")
    return VerifyOptions(timeout=timeout, relu_branching=heuristic(base),
                         branch_layer_slopes=not name.endswith("-adaptive"),
                         graph_bounds=GraphBoundOptions(branch_layer_slopes=name.endswith("-kept")))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("instances", nargs="+")
    ap.add_argument("--heuristics", default="babsr,deepsplit,fsb")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--jsonl", type=Path)
    args = ap.parse_args(argv)
    names = args.heuristics.split(",")
    rows = []
    for n, spec in enumerate(args.instances):
        name, net, prop, timeout = instance(spec)
        order = names[n % len(names):] + names[:n % len(names)]
        for h in order:
            opts = options(h, timeout or args.timeout)
            t0 = time.monotonic()
            res = verify_property(net, prop, opts)
            row = dict(instance=name, heuristic=h, status=res.status.value,
                       time_s=round(time.monotonic() - t0, 2), branches=res.statistics.branches,
                       bound_evaluations=res.statistics.bound_evaluations)
            rows.append(row)
            print(f"{name:32s} {h:18s} {row['status']:9s} {row['time_s']:7.2f} s "
                  f"{row['branches']:7d} branches {row['bound_evaluations']:8d} bounds", flush=True)
            if args.jsonl:
                with args.jsonl.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print()
    by = {(r["instance"], r["heuristic"]): r for r in rows}
    base = names[0]
    for h in names:
        mine = [r for r in rows if r["heuristic"] == h]
        decided = [r for r in mine if r["status"] != "unknown"]
        both = [(by[(r["instance"], base)]["time_s"], r["time_s"]) for r in decided
                if by[(r["instance"], base)]["status"] != "unknown"]
        ratio = np.exp(np.mean([np.log(max(b, 1e-3) / max(t, 1e-3)) for b, t in both])) if both else float("nan")
        print(f"{h:18s} decided {len(decided)}/{len(mine)}  total {sum(r['time_s'] for r in mine):8.1f} s  "
              f"branches {sum(r['branches'] for r in mine):8d}  speedup vs {base} (geo-mean, both "
              f"decided, {len(both)}): {ratio:.2f}x")


if __name__ == "__main__":
    main()
