"""Read and write the ACAS Xu ``.nnet`` text format.

Layout: ``//`` comment lines; ``numLayers,inputSize,outputSize,maxLayerSize``;
the ``numLayers + 1`` layer sizes; an unused flag; input mins; input maxes;
means and ranges (``inputSize + 1`` values, the last for the outputs); then per
layer one line per weight row and one line per bias value.

:func:`load_nnet` returns the network on the *raw* weights: the input
normalisation ``(x - mean) / range`` and output scaling are not folded in, so
the network takes normalised inputs (as the VNN-COMP ACAS Xu ONNX models do).
:func:`load_nnet_normalisation` gives the normalisation values separately.
"""
from __future__ import annotations

import math

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .network import Affine, Network

_BIG = float(np.finfo(np.float64).max)


@dataclass(frozen=True)
class NnetNormalisation:
    """Input bounds and the normalisation of an ``.nnet`` file (means/ranges: inputs + output)."""

    mins: tuple[float, ...]
    maxes: tuple[float, ...]
    means: tuple[float, ...]
    ranges: tuple[float, ...]

    @classmethod
    def identity(cls, n_inputs: int) -> "NnetNormalisation":
        """No normalisation and unbounded inputs."""
        return cls((-_BIG,) * n_inputs, (_BIG,) * n_inputs, (0.0,) * (n_inputs + 1),
                   (1.0,) * (n_inputs + 1))

    def input_box(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The recorded input bounds in the units the raw network takes
        ((x - mean) / range), or None when the file records no finite bounds."""
        n = len(self.mins)
        mins, maxes = np.array(self.mins), np.array(self.maxes)
        means, ranges = np.array(self.means[:n]), np.array(self.ranges[:n])
        if not (np.all(np.abs(mins) < 1e300) and np.all(np.abs(maxes) < 1e300)
                and np.all(ranges > 0) and np.all(np.isfinite(means))):
            return None
        lo, hi = (mins - means) / ranges, (maxes - means) / ranges
        return (lo, hi) if np.all(lo <= hi) and np.all(np.isfinite(hi - lo)) else None


class _Lines:
    """Non-comment lines of a file with their 1-based line numbers."""

    def __init__(self, path: Path):
        self.path = str(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise InputError("no such file", path=self.path) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read: {exc}", path=self.path,
                             expected="an .nnet text file") from None
        self.rows = [(k + 1, line) for k, line in enumerate(text.splitlines())]
        self.pos = 0
        while self.pos < len(self.rows) and self.rows[self.pos][1].lstrip().startswith("//"):
            self.pos += 1

    def numbers(self, count: int, what: str, integer: bool = False) -> list:
        """The next line, parsed as exactly ``count`` comma-separated numbers."""
        while self.pos < len(self.rows) and not self.rows[self.pos][1].strip():
            self.pos += 1
        if self.pos >= len(self.rows):
            line = self.rows[-1][0] + 1 if self.rows else 1
            raise InputError("unexpected end of file", path=self.path, line=line,
                             expected=f"{count} value(s): {what}")
        lineno, line = self.rows[self.pos]
        self.pos += 1
        items = [t.strip() for t in line.split(",") if t.strip()]
        try:
            values = [int(t) if integer else float(t) for t in items]
        except ValueError:
            raise InputError(f"not a number in {line.strip()[:60]!r}", path=self.path,
                             line=lineno, expected=f"{count} value(s): {what}") from None
        if len(values) != count:
            raise InputError(f"found {len(values)} value(s)", path=self.path, line=lineno,
                             expected=f"{count} value(s): {what}")
        if not integer and not all(math.isfinite(v) for v in values):
            raise InputError(f"{what} holds NaN or Inf", path=self.path, line=lineno,
                             expected="finite numbers")
        return values

    def check_end(self) -> None:
        for lineno, line in self.rows[self.pos:]:
            if line.strip():
                raise InputError("unexpected data after the last layer", path=self.path,
                                 line=lineno, expected="end of file")


def _parse(path) -> tuple[Network, NnetNormalisation]:
    path = Path(path)
    if path.exists() and not path.is_file():
        raise InputError("not a regular file", path=str(path), expected="an .nnet file")
    lines = _Lines(path)
    n_layers, n_in, n_out, _ = lines.numbers(
        4, "numLayers, inputSize, outputSize, maxLayerSize", integer=True)
    if n_layers < 1 or n_in < 1 or n_out < 1:
        raise InputError("sizes must be positive", path=str(path), line=lines.rows[lines.pos - 1][0],
                         expected="numLayers, inputSize, outputSize >= 1")
    sizes = lines.numbers(n_layers + 1, "layer sizes", integer=True)
    if sizes[0] != n_in or sizes[-1] != n_out or min(sizes) < 1:
        raise InputError(f"layer sizes {sizes} do not match inputSize {n_in} / outputSize "
                         f"{n_out}", path=str(path), line=lines.rows[lines.pos - 1][0],
                         expected="positive sizes from inputSize to outputSize")
    lines.numbers(1, "the unused flag")
    norm = NnetNormalisation(tuple(lines.numbers(n_in, "input minimums")),
                             tuple(lines.numbers(n_in, "input maximums")),
                             tuple(lines.numbers(n_in + 1, "means (inputs, then output)")),
                             tuple(lines.numbers(n_in + 1, "ranges (inputs, then output)")))
    affines = []
    for k in range(n_layers):
        rows = [lines.numbers(sizes[k], f"layer {k} weight row {r}") for r in range(sizes[k + 1])]
        bias = [lines.numbers(1, f"layer {k} bias {r}")[0] for r in range(sizes[k + 1])]
        affines.append(Affine(np.array(rows, dtype=np.float64), np.array(bias)))
    lines.check_end()
    return Network(tuple(affines), (n_in,), path.stem), norm


def load_nnet(path) -> Network:
    """Load an ``.nnet`` network on its raw weights (normalisation not applied)."""
    return _parse(path)[0]


def load_nnet_normalisation(path) -> NnetNormalisation:
    """The input mins/maxes and the means/ranges stored in an ``.nnet`` file."""
    return _parse(path)[1]


def _row(values) -> str:
    return ",".join(repr(float(v)) for v in values) + ","


def save_nnet(network: Network, path, normalisation: NnetNormalisation | None = None) -> None:
    """Write ``network`` as ``.nnet`` (exact float repr; identity normalisation by default)."""
    n = network.n_inputs
    norm = normalisation or NnetNormalisation.identity(n)
    if (len(norm.mins), len(norm.maxes), len(norm.means), len(norm.ranges)) != (n, n, n + 1, n + 1):
        raise ValueError("normalisation sizes do not match the network inputs")
    sizes = network.layer_sizes()
    out = [f"// {network.name}, written by coreproof",
           f"{network.n_layers},{n},{network.n_outputs},{max(sizes)},",
           ",".join(str(s) for s in sizes) + ",", "0,",
           _row(norm.mins), _row(norm.maxes), _row(norm.means), _row(norm.ranges)]
    for a in network.affines:
        out.extend(_row(r) for r in a.weight)
        out.extend(_row([b]) for b in a.bias)
    try:
        from .atomic import atomic_write
        atomic_write(path, "\n".join(out) + "\n")
    except OSError as exc:
        raise InputError(f"cannot write: {exc.strerror or exc}", path=str(path)) from None
