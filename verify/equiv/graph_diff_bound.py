"""The differential bound of ``g - f`` for graph networks (CNNs) of one architecture.

:class:`verify.reuse.graph_difference.GraphDiff` bounds the change of every node of a
variant ``g`` against its original ``f`` (same nodes, operators and shapes; only
Conv / Gemm / Scale parameters differ: quantized or magnitude-pruned) by interval
arithmetic in centre/radius form, given the original's bounds of every ReLU input.
Here those come from the original's own CROWN bound on the same boxes (the one
:class:`verify.equiv.search.PairBounder` computes anyway for its class rows), so the
bound of ``rows @ (g - f)`` costs about three interval passes more.  It is sound on
its own (every step is interval arithmetic over sound bounds of ``f``, widened for
float64 rounding), so its elementwise best with the product-graph bound is too.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeMismatchError
from ..graph import GraphNetwork
from ..reuse.graph_difference import GraphDiff
from .bounds import Separate


def graph_diff(f, g) -> GraphDiff | None:
    """The node-by-node change of ``g`` against ``f`` when both are graph networks of
    one architecture, else None (the product-graph bound alone applies)."""
    if not (isinstance(f, GraphNetwork) and isinstance(g, GraphNetwork)):
        return None
    try:
        return GraphDiff(f, g)
    except ShapeMismatchError:
        return None


def graph_diff_lower(diff: GraphDiff, bf: Separate, lo: np.ndarray, hi: np.ndarray,
                     rows: np.ndarray) -> np.ndarray:
    """Lower bounds (B, m) of ``rows @ (g - f)`` over the boxes ``[lo[b], hi[b]]``,
    from ``bf``: the original's CROWN bounds on the same boxes (its ReLU input bounds)."""
    lowers = [l for l, _ in bf.layers]
    uppers = [u for _, u in bf.layers]
    _, low = diff.deviation(lowers, uppers, lo, hi, np.asarray(rows, dtype=np.float64))
    return low
