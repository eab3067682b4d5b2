"""``coreproof compress``: write pruned / quantized variants with change records.

The lead registers :data:`compress_cmd` in the main click group.
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from verify.errors import CoreproofError, InputError, OptionError, ShapeMismatchError
from verify.network import Network

from .io import save_variant
from .metrics import (accuracy, output_deviation, parameter_counts, sample_box,
                      storage_bytes)
from .factorize import Factorize
from .merge import MergeLinear
from .recipe import DeadNeurons, NeuronPrune, MagnitudePrune, Quantize, Recipe, parse_step

#: the family written by ``--sweep`` when no step is given
DEFAULT_SWEEP = ("magnitude:0.1", "magnitude:0.3", "magnitude:0.5", "magnitude:0.7",
                 "neurons:0.1", "neurons:0.25", "neurons:0.5", "int8", "int4")
DEFAULT_DOMAIN = (0.0, 1.0)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _parse_domain(text: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise OptionError(f"--domain must be LO,HI, got {text!r}")
    try:
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise OptionError(f"--domain must be two numbers LO,HI, got {text!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise OptionError(f"--domain needs finite LO <= HI, got {text!r}")
    return lo, hi


def _load_box(path: str, network):
    try:
        from verify.vnnlib import load_vnnlib
    except ImportError:  # pragma: no cover - present in this project
        raise OptionError("--box needs verify.vnnlib, which is not available") from None
    prop = load_vnnlib(path, network.n_inputs, network.n_outputs)
    lo = np.min([r.lower for r in prop.regions], axis=0)
    hi = np.max([r.upper for r in prop.regions], axis=0)
    return lo, hi  # the hull of all regions (sound for dead-neuron removal)


def _recorded_box(net: str):
    """The input bounds the network file records (.nnet mins/maxes, in the raw
    network's normalised units), or None."""
    if not net.lower().endswith(".nnet"):
        return None  # ONNX has no standard place for input bounds
    from verify.nnet_io import load_nnet_normalisation
    return load_nnet_normalisation(net).input_box()


def _load_array(path: str, what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise InputError("no such file", path=path, expected=f"a .npy file of {what}")
    try:
        return np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"cannot read {what}: {exc}", path=path,
                         expected="a numpy .npy file") from None


def _prune_step(text: str):
    step = parse_step(text)
    if not isinstance(step, (MagnitudePrune, NeuronPrune, DeadNeurons)):
        raise OptionError(f"--prune {text!r} is not a pruning step "
                          "(expected magnitude:R, neurons:R, remove:K.I or dead)")
    return step


def _quant_step(text: str):
    t = text.strip()
    step = parse_step(f"int{t}" if t.isdigit() else t)
    if not isinstance(step, Quantize):
        raise OptionError(f"--quantize {text!r} is not a quantization "
                          "(expected intB, fixedB with B in 2..16, or none)")
    return step


def _factor_step(text: str):
    step = parse_step(text)
    if not isinstance(step, Factorize):
        raise OptionError(f"--factorize {text!r} is not a factorization "
                          "(expected svd:RANK or energy:SHARE)")
    return step


def _recipes(prunes, quantizes, recipes, per_channel: bool, sweep: bool,
             factorizes=(), merges=()) -> list[Recipe]:
    p_steps = [_prune_step(p) for p in prunes] + list(merges)
    q_steps = [_quant_step(q) for q in quantizes]
    f_steps = [_factor_step(f) for f in factorizes]
    out = [Recipe.parse(r) for r in recipes]
    if sweep:
        out += [Recipe((s,)) for s in p_steps + q_steps + f_steps]
        if not out:
            out = [Recipe.parse(r) for r in DEFAULT_SWEEP]
    else:
        if len(q_steps) > 1 or len(f_steps) > 1:
            raise OptionError("give at most one --quantize and one --factorize (or use "
                              "--sweep for a family)")
        if q_steps and f_steps:
            raise OptionError("--quantize and --factorize do not combine in one variant "
                              "(the factors are float32; use --sweep for one of each)")
        if p_steps or q_steps or f_steps:
            out.append(Recipe(tuple(p_steps + q_steps + f_steps)))
    if not out:
        raise OptionError("nothing to do: give --prune, --quantize, --factorize, --recipe "
                          "or --sweep")
    if per_channel:
        out = [r.with_per_channel(True) for r in out]
    return out


def _fmt_bytes(n: int) -> str:
    return f"{n:,}"


@click.command("compress")
@click.argument("net", metavar="NET")
@click.option("-o", "--out-dir", required=True, metavar="OUT_DIR",
              help="Directory for STEM.onnx and STEM.changes.json per variant.")
@click.option("--prune", "prunes", multiple=True, metavar="STEP",
              help="magnitude:R[:global][:nooutput], magnitude:t=T, neurons:R[:activation]"
                   "[:global] (0 <= R < 1: neurons:1 is an error, every hidden layer keeps "
                   "at least one neuron), remove:K.I[:K.I..], dead (needs --domain or --box). "
                   "Repeatable.")
@click.option("--quantize", "quantizes", multiple=True, metavar="Q",
              help="int8, int4, intB / fixedB (B in 2..16), none; add :bias to quantize "
                   "biases.")
@click.option("--factorize", "factorizes", multiple=True, metavar="F",
              help="Low-rank factorization of every Gemm/MatMul layer (and, in a CNN, "
                   "every Conv by its matrix form: a Conv of RANK channels then a 1x1 "
                   "Conv): svd:RANK, or energy:E (smallest rank keeping a share E of the "
                   "squared singular values, only where that saves parameters).  The "
                   "written ONNX holds the two thin factors.")
@click.option("--merge-linear", "merge_linear", is_flag=True,
              help="Merge hidden neurons proven active on the whole domain (--domain or "
                   "--box) into the next layer: exact on that domain up to float rounding.")
@click.option("--merge-linear-approx", "merge_approx", type=float, metavar="SHARE",
              help="Approximate merge: neurons active on at least SHARE of the --calibration "
                   "inputs are treated as linear (not lossless; verify the variant).")
@click.option("--recipe", "recipes", multiple=True, metavar="RECIPE",
              help='A whole recipe, steps joined by commas, e.g. "neurons:0.25,int8". '
                   "Each --recipe is one variant.")
@click.option("--per-channel", is_flag=True, help="Per-output-channel scales (default: "
                                                  "one scale per layer).")
@click.option("--calibration", metavar="DATA.npy",
              help="Inputs (N x n_inputs) for neurons:R:activation and for --labels.")
@click.option("--labels", metavar="LABELS.npy", help="Labels of the calibration inputs: "
                                                     "report top-1 accuracy.")
@click.option("--domain", metavar="LO,HI", help="Input domain [LO,HI] for every input "
                                                "(deviation sampling, dead neurons). "
                                                "Default for sampling: the input bounds "
                                                "NET records (.nnet), else 0,1 (said so).")
@click.option("--box", "box_file", metavar="PROP.vnnlib",
              help="Input box from a VNN-LIB property (hull of its regions).")
@click.option("--sweep", is_flag=True, help="One variant per --prune/--quantize step "
                                            "(default family when none is given).")
@click.option("--samples", default=1000, show_default=True, type=click.IntRange(1),
              help="Random points in the domain for the output deviation.")
@click.option("--seed", default=0, show_default=True, type=int)
def compress_cmd(net, out_dir, prunes, quantizes, factorizes, merge_linear, merge_approx,
                 recipes, per_channel, calibration, labels, domain, box_file, sweep, samples,
                 seed):
    """Write pruned, quantized, factorised or merged variants of NET, each with a
    change record.

    Steps given with --prune/--quantize are applied in order (pruning steps in
    the order given, quantization last) to make one variant; with --sweep each
    step makes its own variant.  For every variant the command prints the
    parameter count (all / non-zero), the storage size in bytes (non-zero
    weights at their bit width, 32-bit floats when not quantized, plus
    scales and biases; sparse index overhead not counted), the max and mean
    output deviation (L-inf over outputs) from NET on random points of the
    domain, and the top-1 accuracy when --labels is given.
    """
    try:
        _run(net, out_dir, prunes, quantizes, recipes, per_channel, calibration, labels,
             domain, box_file, sweep, samples, seed, factorizes,
             ([MergeLinear()] if merge_linear else [])
             + ([] if merge_approx is None else [MergeLinear(approx_share=merge_approx)]))
    except CoreproofError as exc:
        click.echo(f"error: {_one_line(exc)}", err=True)
        raise SystemExit(2)


def _run(net, out_dir, prunes, quantizes, recipes, per_channel, calibration, labels,
         domain, box_file, sweep, samples, seed, factorizes=(), merges=()):
    from verify.loading import load_network

    if domain is not None and box_file is not None:
        raise OptionError("give either --domain or --box, not both")
    if labels is not None and calibration is None:
        raise OptionError("--labels needs --calibration (the labelled inputs)")
    if not Path(net).is_file():
        raise InputError("no such file", path=str(net))
    parent = load_network(net)
    graph = not isinstance(parent, Network)  # a CNN / residual network
    if graph:
        if merges:
            raise OptionError("--merge-linear takes fully-connected networks (Gemm/MatMul "
                              "layers); this one is a graph network")
        from .graph_cli import graph_family
        family = graph_family(prunes, quantizes, recipes, sweep, factorizes)
        if any("bn-fold" in r.lower() for r in family):  # BatchNorms kept apart to fold them
            from verify.onnx_io import load_onnx
            parent = load_onnx(net, fold_batchnorm=False)
    else:
        family = _recipes(prunes, quantizes, recipes, per_channel, sweep, factorizes, merges)
    n_in = parent.n_inputs

    box = None
    if box_file is not None:
        box = _load_box(box_file, parent)
        box_text = f"box of {box_file}"
    elif domain is not None:
        lo, hi = _parse_domain(domain)
        box = (np.full(n_in, lo), np.full(n_in, hi))
        box_text = f"[{lo:g}, {hi:g}]^{n_in}"
    if not graph and any(r.needs_box for r in family) and box is None:
        raise OptionError("dead-neuron removal and --merge-linear need --domain LO,HI or "
                          "--box PROP.vnnlib")
    if box is not None:
        sample_lo, sample_hi = box
    else:
        recorded = _recorded_box(net)
        if recorded is not None:
            sample_lo, sample_hi = recorded
            box_text = f"the input bounds recorded in {Path(net).name}"
        else:
            sample_lo, sample_hi = np.full(n_in, DEFAULT_DOMAIN[0]), np.full(n_in, DEFAULT_DOMAIN[1])
            box_text = (f"[{DEFAULT_DOMAIN[0]:g}, {DEFAULT_DOMAIN[1]:g}]^{n_in} (sampling the "
                        f"default: no --domain or --box given and {Path(net).name} records no "
                        "input bounds)")

    x_cal = y_cal = None
    if calibration is not None:
        x_cal = _load_array(calibration, "calibration inputs").astype(np.float64)
        if x_cal.ndim == 0 or x_cal.shape[0] == 0:
            raise InputError("calibration data is empty", path=calibration)
        x_cal = x_cal.reshape(x_cal.shape[0], -1)
        if x_cal.shape[1] != n_in:
            raise ShapeMismatchError(f"calibration inputs have {x_cal.shape[1]} values, the "
                                     f"network takes {n_in}", path=calibration)
    if not graph and any(r.needs_calibration for r in family) and x_cal is None:
        raise OptionError("neuron pruning by activation and --merge-linear-approx need "
                          "--calibration DATA.npy")
    if labels is not None:
        y_cal = _load_array(labels, "labels").reshape(-1)
        if y_cal.shape[0] != x_cal.shape[0]:
            raise ShapeMismatchError(f"{y_cal.shape[0]} labels for {x_cal.shape[0]} "
                                     "calibration inputs", path=labels)

    points = sample_box(sample_lo, sample_hi, samples, seed)
    from verify.loading import network_name
    stem0 = network_name(net)
    if graph:
        from .graph_cli import run_graph
        return run_graph(parent, net, stem0, out_dir, family, points, box_text, x_cal, y_cal)

    click.echo(f"network: {parent.describe()}  digest {parent.digest()[:12]}")
    click.echo(f"deviation: max/mean over {samples} random points in {box_text}; "
               "bytes = size of the written ONNX file (float32, int8 QDQ weights); "
               "packed = non-zero weights at their bit width (float32 if not quantized) "
               "+ scales + biases")
    like = net if str(net).lower().endswith((".onnx", ".onnx.gz")) else None
    header = ["variant", "params", "non-zero", "bytes", "packed", "max dev", "mean dev"]
    if y_cal is not None:
        header.append("accuracy")
    rows = []
    total, nnz = parameter_counts(parent)
    base = ["original", f"{total:,}", f"{nnz:,}", _fmt_bytes(Path(net).stat().st_size),
            _fmt_bytes(storage_bytes(parent)), "0", "0"]
    if y_cal is not None:
        base.append(f"{100 * accuracy(parent, x_cal, y_cal):.2f}%")
    rows.append(base + [""])
    for recipe in family:
        variant = recipe.apply(parent, box=box, calibration=x_cal)
        stem = f"{stem0}.{recipe.slug}"
        onnx_path, _ = save_variant(variant.network, variant.record, out_dir, stem, like=like,
                                    factors=variant.factors)
        total, nnz = parameter_counts(variant.network, variant.record)
        dmax, dmean = output_deviation(parent, variant.network, points)
        row = [str(recipe), f"{total:,}", f"{nnz:,}", _fmt_bytes(onnx_path.stat().st_size),
               _fmt_bytes(storage_bytes(variant.network, variant.record)),
               f"{dmax:.3g}", f"{dmean:.3g}"]
        if y_cal is not None:
            row.append(f"{100 * accuracy(variant.network, x_cal, y_cal):.2f}%")
        rows.append(row + [str(onnx_path)])
    header.append("file")
    echo_table(header, rows)


def echo_table(header: list[str], rows: list[list[str]]) -> None:
    """Print left-aligned columns as wide as their longest cell."""
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
