"""Compression table: size and fidelity of pruned / quantized variants.

Run:  .venv/bin/python benchmarks/compression_table.py [--out docs/compression_table.md]

Networks: ACAS Xu 1_1 (5-50x6-5), MNIST-FC 256x2 (784-256-256-10) and, as a
stand-in for test accuracy (MNIST itself is not available offline), a small
MLP (64-32-32-10) trained here on scikit-learn's 8x8 digits; then CNNs (a digits CNN
trained here and verivital's Convnet_avgpool) with each variant written as a deployable
ONNX file and its real size on disk.  Everything is seeded; the table is deterministic
on a given machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compress import (Recipe, agreement, output_deviation, parameter_counts,  # noqa: E402
                      sample_box, storage_bytes)
from compress.metrics import accuracy  # noqa: E402
from verify.loading import load_network  # noqa: E402

DATA = Path("/work/shared/data")
ACAS = DATA / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx"
MNIST = DATA / "mnistfc" / "mnist-net_256x2.onnx"
N_POINTS = 1000
SEED = 0
RECIPES = ["magnitude:0.1", "magnitude:0.3", "magnitude:0.5", "magnitude:0.7",
           "neurons:0.1", "neurons:0.25", "neurons:0.5",
           "int8", "int4", "int8:channel", "int4:channel"]


def digits_mlp():
    """64-32-32-10 ReLU MLP on sklearn digits (pixels / 16), 300 full-batch Adam steps."""
    import torch
    from sklearn.datasets import load_digits
    from verify.torch_io import from_torch

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    perm = np.random.default_rng(SEED).permutation(len(x))
    train, test = perm[:1400], perm[1400:]
    torch.manual_seed(SEED)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt = torch.tensor(x[train], dtype=torch.float32)
    yt = torch.tensor(y[train])
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    net = from_torch(model)
    return net.with_affines(net.affines, "digits-mlp"), x[test], y[test]


def mnist_near_data(n: int):
    """``n`` random points in the 15 MNIST-FC eps=0.05 property boxes (around real
    test images), split evenly over the boxes."""
    from verify.vnnlib import load_vnnlib
    boxes = [load_vnnlib(DATA / "mnistfc" / f"prop_{i}_0.05.vnnlib", 784, 10).regions[0]
             for i in range(15)]
    per = -(-n // len(boxes))
    pts = [sample_box(r.lower, r.upper, per, seed=SEED + i) for i, r in enumerate(boxes)]
    return np.concatenate(pts)[:n]


def majority(y_advisory_scores: np.ndarray) -> int:
    return int(np.bincount(y_advisory_scores.argmin(1)).argmax())


def margin(network, x: np.ndarray) -> np.ndarray:
    s = np.sort(network.forward(x), axis=1)
    return s[:, -1] - s[:, -2]


def fmt_int(n: int) -> str:
    return f"{n:,}"


def fmt_dev(x: float) -> str:
    return "0" if x == 0 else f"{x:.3g}"


def table(parent, points, extra_cols, extra_fn) -> list[str]:
    """Markdown rows: the original and one row per recipe."""
    cols = ["variant", "params", "non-zero", "bytes", "max dev", "mean dev"] + extra_cols
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(
        [":--"] + ["--:"] * (len(cols) - 1)) + "|"]
    total, nnz = parameter_counts(parent)
    lines.append("| original | " + " | ".join(
        [fmt_int(total), fmt_int(nnz), fmt_int(storage_bytes(parent)), "0", "0"]
        + extra_fn(parent)) + " |")
    for r in RECIPES:
        v = Recipe.parse(r).apply(parent)
        total, nnz = parameter_counts(v.network)
        dmax, dmean = output_deviation(parent, v.network, points)
        lines.append(f"| `{r}` | " + " | ".join(
            [fmt_int(total), fmt_int(nnz), fmt_int(storage_bytes(v.network, v.record)),
             fmt_dev(dmax), fmt_dev(dmean)] + extra_fn(v.network)) + " |")
    return lines


def cnn_table(parent, original: Path, points, tmp: Path, x_test=None, y_test=None) -> list[str]:
    """Markdown rows of :func:`compress.graph_cli.graph_rows`: each recipe's variant
    written as a deployable ONNX file (the original's signature, float32, int8 QDQ
    weights) and measured."""
    from cnn_families import CNN_RECIPES
    from compress.graph_cli import graph_rows
    rows = graph_rows(parent, original.stat().st_size, CNN_RECIPES, points, tmp,
                      original.stem, like=str(original), x_cal=x_test, y_cal=y_test)
    cols = ["variant", "params", "non-zero", "bytes on disk", "max dev", "mean dev",
            "top-1 agreement (random)"] + (["test accuracy"] if y_test is not None else [])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join([":--"] + ["--:"] * (len(cols) - 1))
             + "|"]
    for r in rows:
        name = r["variant"] if r["variant"] == "original" else f"`{r['variant']}`"
        lines.append("| " + " | ".join(
            [name, fmt_int(r["params"]), fmt_int(r["nonzero"]), fmt_int(r["bytes"]),
             fmt_dev(r["max_dev"]), fmt_dev(r["mean_dev"]), pct(r["top1"])]
            + ([pct(r["accuracy"])] if y_test is not None else [])) + " |")
    return lines


def cnn_sections() -> list[str]:
    """The digits CNN (trained here) and verivital's Convnet_avgpool."""
    import tempfile

    from cnn_families import digits_cnn
    out = ["## CNNs: deployable variants", "",
           "Each variant is written by `compress` as an ONNX file with the original's input "
           "and output names, shapes and float32 type, quantized weights as int8 "
           "initializers with DequantizeLinear; **bytes on disk** is that file's size "
           f"(the original: its own file). Deviation and top-1 agreement over {N_POINTS} "
           "random points uniform in [0, 1]^n (the image domain). Recipes: `channels:R` "
           "removes the fraction R of each prunable channel group (L1 norm of the "
           "filters; the consumers' input channels too), `magnitude:R` zeroes the "
           "smallest weights of every Conv / Gemm, `int8` / `int4` per-output-channel "
           "symmetric weight quantization. No fine-tuning.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _, data, net, x_test, y_test = digits_cnn()
        path = tmp / "digits-cnn.onnx"
        path.write_bytes(data)
        pts = sample_box(np.zeros(net.n_inputs), np.ones(net.n_inputs), N_POINTS, SEED)
        out += [f"### Digits CNN ({net.describe()})", "",
                "Conv 1->10 3x3, Conv 10->10 3x3 stride 2, Linear 160->10, trained here (80 "
                "full-batch Adam steps, seed 0) on scikit-learn's 8x8 digits and exported "
                f"with `torch.onnx.export`; test accuracy on the {len(y_test)} held-out "
                "images.", ""]
        out += cnn_table(net, path, pts, tmp, x_test, y_test)
        avg = DATA / "verivital" / "Convnet_avgpool.onnx"
        if avg.exists():
            net = load_network(avg)
            pts = sample_box(np.zeros(net.n_inputs), np.ones(net.n_inputs), N_POINTS, SEED)
            out += ["", f"### Convnet_avgpool (verivital; {net.describe()})", ""]
            out += cnn_table(net, avg, pts, tmp)
    return out


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "compression_table.md"))
    args = ap.parse_args(argv)
    t0 = time.time()
    out: list[str] = [
        "# Compression table",
        "",
        "Generated by `benchmarks/compression_table.py` (seeded; "
        f"{N_POINTS} random points per measurement).",
        "",
        "Columns: **params** = all weights and biases; **non-zero** = parameters that are "
        "not zero; **bytes** = storage at the stored bit width: non-zero weights only "
        "(sparse index overhead not counted) at the quantization bit width, or 4 bytes "
        "(float32) when not quantized, plus one float32 scale per layer (per tensor) or "
        "per row (`:channel`), plus float32 biases; **max dev / mean dev** = max and mean "
        "over the random points of the largest absolute output difference "
        "`max_j |f(x)_j - g(x)_j|` between original `f` and variant `g`.",
        "",
        "Recipes: `magnitude:R` zeroes the fraction R of smallest-magnitude weights in "
        "every layer (biases kept, output layer included); `neurons:R` deletes the "
        "fraction R of hidden neurons of every hidden layer with the lowest "
        "`||w_in|| * ||w_out||`; `int8` / `int4` = symmetric uniform weight quantization "
        "with one scale per layer, `:channel` with one scale per output row.  No "
        "retraining or fine-tuning is applied after any step.",
        "",
    ]

    # ---- ACAS Xu -----------------------------------------------------------------------
    acas = load_network(ACAS)
    lo, hi = -0.5 * np.ones(5), 0.5 * np.ones(5)
    pts = sample_box(lo, hi, N_POINTS, SEED)
    out += [f"## ACAS Xu 1_1 ({'-'.join(map(str, acas.layer_sizes()))})", "",
            f"Random points uniform in the normalised input box [-0.5, 0.5]^5.  "
            f"Advisory agreement = fraction of those points where the variant gives the "
            f"same advisory as the original (ACAS Xu advises the *minimal* output).  For "
            f"scale: the mean absolute output of the original on these points is "
            f"{np.abs(acas.forward(pts)).mean():.3g} (max "
            f"{np.abs(acas.forward(pts)).max():.3g}).  Baseline: "
            f"{pct(np.mean(acas.forward(pts).argmin(1) == majority(acas.forward(pts))))} "
            "of the points get the most common advisory (COC), so a variant that has "
            "collapsed to a near-constant network scores about that much (this is what "
            "`int4` does: most weights round to zero).  ACAS Xu weights span a wide range "
            "(max |w| per layer up to about 20, most weights far below 1), which is why "
            "one scale per layer (`int8`, `int4`) does poorly and deviations are not "
            "monotone in the pruning ratio.", ""]
    out += table(acas, pts, ["advisory agreement"],
                 lambda net: [pct(agreement(acas, net, pts, argmin=True))])
    out.append("")

    # dead-neuron removal on property boxes (exact)
    from verify.vnnlib import load_vnnlib
    out += ["### Dead-neuron removal on ACAS Xu 1_1 (exact on the box)", "",
            "`dead` removes hidden neurons whose pre-activation upper bound over the "
            "property's input box (from `verify.bounds.layer_bounds`) is <= 0; the variant "
            "computes the same function on the box (deviation measured on "
            f"{N_POINTS} random points of the box).", "",
            "| box | hidden neurons | params | bytes | max dev on box |",
            "|:--|--:|--:|--:|--:|"]
    for i in (1, 2, 3, 4):
        prop = load_vnnlib(DATA / "acasxu" / f"prop_{i}.vnnlib", 5, 5)
        blo = np.min([r.lower for r in prop.regions], axis=0)
        bhi = np.max([r.upper for r in prop.regions], axis=0)
        v = Recipe.parse("dead").apply(acas, box=(blo, bhi))
        bpts = sample_box(blo, bhi, N_POINTS, SEED)
        dmax, _ = output_deviation(acas, v.network, bpts)
        out.append(f"| property {i} | {v.network.n_relus} / {acas.n_relus} | "
                   f"{fmt_int(parameter_counts(v.network)[0])} | "
                   f"{fmt_int(storage_bytes(v.network, v.record))} | {fmt_dev(dmax)} |")
    out.append("")

    # ---- MNIST-FC 256x2 -----------------------------------------------------------------
    mnist = load_network(MNIST)
    pts = sample_box(np.zeros(784), np.ones(784), N_POINTS, SEED)
    near = mnist_near_data(N_POINTS)
    out += [f"## MNIST-FC 256x2 ({'-'.join(map(str, mnist.layer_sizes()))})", "",
            "Deviation and *top-1 agreement (random)* on points uniform in [0, 1]^784 "
            "(noise images, far from the data: a weak test).  *Top-1 agreement (near "
            f"data)* on {N_POINTS} random points inside the 15 VNN-COMP MNIST-FC "
            "eps = 0.05 property boxes, which surround real MNIST test images.  No "
            "accuracy is reported: the MNIST data set is not available offline.  For "
            "scale: on the near-data points the original's top-1 margin (largest minus "
            f"second-largest output) is at least {margin(mnist, near).min():.3g} (median "
            f"{np.median(margin(mnist, near)):.3g}).", ""]
    out += table(mnist, pts, ["top-1 agreement (random)", "top-1 agreement (near data)"],
                 lambda net: [pct(agreement(mnist, net, pts)), pct(agreement(mnist, net, near))])
    out.append("")

    # ---- digits MLP -------------------------------------------------------------------
    digits, x_test, y_test = digits_mlp()
    pts = sample_box(np.zeros(64), np.ones(64), N_POINTS, SEED)
    out += [f"## Digits MLP ({'-'.join(map(str, digits.layer_sizes()))}), accuracy stand-in",
            "",
            "A stand-in for test accuracy (MNIST is not available offline): a 64-32-32-10 "
            "ReLU MLP trained here for 300 full-batch Adam steps on scikit-learn's 8x8 "
            f"digits (1,400 training images); accuracy on the {len(y_test)} held-out "
            "images.  Deviation on points uniform in [0, 1]^64.  (`neurons:0.1` happens "
            "to remove only neurons that never fire on the sampled inputs nor on the test "
            "images -- low-norm \"dying\" ReLUs of the trained model -- hence no deviation; "
            "interval/linear bounds over the whole box cannot prove them dead, so `dead` "
            "does not remove them.)", ""]
    out += table(digits, pts, ["test accuracy"],
                 lambda net: [pct(accuracy(net, x_test, y_test))])
    out.append("")
    out += cnn_sections()
    out += ["", f"_Runtime: {time.time() - t0:.1f} s._", ""]

    text = "\n".join(out)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
