"""``coreproof compress`` on a convolutional / residual network (a GraphNetwork)."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from verify.errors import OptionError

from .graph_compress import compress_graph

#: the family written by ``--sweep`` on a graph network when no step is given
DEFAULT_GRAPH_SWEEP = ("channels:0.1", "channels:0.25", "magnitude:0.3", "int8", "int4")


def graph_family(prunes, quantizes, recipes, sweep: bool) -> list[str]:
    steps_p, steps_q = [p.strip() for p in prunes], [q.strip() for q in quantizes]
    steps_q = [f"int{q}" if q.isdigit() else q for q in steps_q]
    out = [r.strip() for r in recipes]
    if sweep:
        out += steps_p + steps_q
        if not out:
            out = list(DEFAULT_GRAPH_SWEEP)
    else:
        if len(steps_q) > 1:
            raise OptionError("give at most one --quantize (or use --sweep for a family)")
        if steps_p or steps_q:
            out.append(",".join(steps_p + steps_q))
    if not out:
        raise OptionError("nothing to do: give --prune, --quantize, --recipe or --sweep")
    return out


def run_graph(parent, net: str, stem0: str, out_dir, family: list[str], points: np.ndarray,
              box_text: str, x_cal=None, y_cal=None) -> None:
    """Write every recipe's variant of the graph ``parent`` and print one table row each:
    parameters, bytes on disk, max / mean output deviation, top-1 agreement with the
    original on the sample points (and accuracy on labelled calibration data)."""
    like = net if str(net).lower().endswith((".onnx", ".onnx.gz")) else None
    click.echo(f"network: {parent.describe()}  digest {parent.digest()[:12]}")
    click.echo(f"deviation and top-1 agreement over {len(points)} random points in {box_text}; "
               "bytes = size of the written ONNX file (float32, int8 QDQ weights)")
    y0 = parent.forward(points)
    header = ["variant", "params", "non-zero", "bytes", "max dev", "mean dev", "top-1 agree"]
    if y_cal is not None:
        header.append("accuracy")
    header.append("file")

    def nonzero(g):
        return sum(int(np.count_nonzero(a)) for n in g.nodes[1:] for a in n.op.arrays().values())
    rows = [["original", f"{parent.n_parameters:,}", f"{nonzero(parent):,}",
             f"{Path(net).stat().st_size:,}", "0", "0", "100.0%"]
            + ([_accuracy(parent, x_cal, y_cal)] if y_cal is not None else []) + [""]]
    for recipe in family:
        variant = compress_graph(parent, recipe, calibration=x_cal)
        slug = recipe.replace(":", "-").replace(",", "_")
        onnx_path, _ = variant.save(out_dir, f"{stem0}.{slug}", like=like)
        y = variant.network.forward(points)
        d = np.abs(y - y0).max(axis=1)
        agree = float(np.mean(y.argmax(axis=1) == y0.argmax(axis=1)))
        rows.append([recipe, f"{variant.network.n_parameters:,}", f"{nonzero(variant.network):,}",
                     f"{onnx_path.stat().st_size:,}", f"{d.max():.3g}", f"{d.mean():.3g}",
                     f"{100 * agree:.1f}%"]
                    + ([_accuracy(variant.network, x_cal, y_cal)] if y_cal is not None else [])
                    + [str(onnx_path)])
    from .cli import echo_table
    echo_table(header, rows)


def _accuracy(net, x, y) -> str:
    return f"{100 * float(np.mean(net.forward(x).argmax(axis=1) == y)):.2f}%"
