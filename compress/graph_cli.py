"""``coreproof compress`` on a convolutional / residual network (a GraphNetwork)."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from verify.errors import OptionError

from .graph_compress import compress_graph

#: the family written by ``--sweep`` on a graph network when no step is given
DEFAULT_GRAPH_SWEEP = ("channels:0.1", "channels:0.25", "magnitude:0.3", "int8", "int4")


def graph_family(prunes, quantizes, recipes, sweep: bool, factorizes=()) -> list[str]:
    """The recipes of a graph network's family: ``recipes``, then with ``sweep`` each
    step on its own, else one variant of the prunings, the factorization and the
    quantization in that order (a factorised layer's two nodes are quantized apart)."""
    steps_p, steps_q = [p.strip() for p in prunes], [q.strip() for q in quantizes]
    steps_q = [f"int{q}" if q.isdigit() else q for q in steps_q]
    steps_f = [f.strip() for f in factorizes]
    out = [r.strip() for r in recipes]
    if sweep:
        out += steps_p + steps_f + steps_q
        if not out:
            out = list(DEFAULT_GRAPH_SWEEP)
    else:
        if len(steps_q) > 1 or len(steps_f) > 1:
            raise OptionError("give at most one --quantize and one --factorize (or use "
                              "--sweep for a family)")
        if steps_p or steps_f or steps_q:
            out.append(",".join(steps_p + steps_f + steps_q))
    if not out:
        raise OptionError("nothing to do: give --prune, --quantize, --factorize, --recipe "
                          "or --sweep")
    return out


def graph_rows(parent, original_bytes: int, family: list[str], points: np.ndarray, out_dir,
               stem0: str, like=None, x_cal=None, y_cal=None) -> list[dict]:
    """Write every recipe's variant of the graph ``parent`` (deployable ONNX) and measure
    it: parameters, non-zero parameters, bytes of the written file, max / mean output
    deviation and top-1 agreement with the original on ``points`` (accuracy on labelled
    calibration data).  The first row is the original (``original_bytes`` on disk)."""
    y0 = parent.forward(points)

    def nonzero(g):
        return sum(int(np.count_nonzero(a)) for n in g.nodes[1:] for a in n.op.arrays().values())

    def row(name, net, size, path):
        y = net.forward(points)
        d = np.abs(y - y0).max(axis=1)
        return {"variant": name, "params": net.n_parameters, "nonzero": nonzero(net),
                "bytes": size, "max_dev": float(d.max()), "mean_dev": float(d.mean()),
                "top1": float(np.mean(y.argmax(axis=1) == y0.argmax(axis=1))),
                "accuracy": None if y_cal is None else
                float(np.mean(net.forward(x_cal).argmax(axis=1) == y_cal)), "file": path}
    rows = [row("original", parent, original_bytes, "")]
    for recipe in family:
        variant = compress_graph(parent, recipe, calibration=x_cal)
        slug = recipe.replace(":", "-").replace(",", "_")
        onnx_path, _ = variant.save(out_dir, f"{stem0}.{slug}", like=like)
        rows.append(row(recipe, variant.network, onnx_path.stat().st_size, str(onnx_path)))
    return rows


def run_graph(parent, net: str, stem0: str, out_dir, family: list[str], points: np.ndarray,
              box_text: str, x_cal=None, y_cal=None) -> None:
    """Write every recipe's variant of the graph ``parent`` and print one table row each
    (:func:`graph_rows`)."""
    like = net if str(net).lower().endswith((".onnx", ".onnx.gz")) else None
    click.echo(f"network: {parent.describe()}  digest {parent.digest()[:12]}")
    click.echo(f"deviation and top-1 agreement over {len(points)} random points in {box_text}; "
               "bytes = size of the written ONNX file (float32, int8 QDQ weights)")
    header = ["variant", "params", "non-zero", "bytes", "max dev", "mean dev", "top-1 agree"]
    if y_cal is not None:
        header.append("accuracy")
    header.append("file")
    rows = []
    for r in graph_rows(parent, Path(net).stat().st_size, family, points, out_dir, stem0,
                        like, x_cal, y_cal):
        dev = [f"{r['max_dev']:.3g}", f"{r['mean_dev']:.3g}"] if r["file"] else ["0", "0"]
        rows.append([r["variant"], f"{r['params']:,}", f"{r['nonzero']:,}", f"{r['bytes']:,}",
                     *dev, f"{100 * r['top1']:.1f}%"]
                    + ([f"{100 * r['accuracy']:.2f}%"] if y_cal is not None else [])
                    + [r["file"]])
    from .cli import echo_table
    echo_table(header, rows)
