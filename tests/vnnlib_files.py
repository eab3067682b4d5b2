"""Writing small VNN-LIB files for tests."""
from pathlib import Path


def write_robustness_vnnlib(path: Path, lo, hi, label: int, n_out: int = 10) -> Path:
    """The box ``[lo, hi]`` with the unsafe region "some output j != label is >= output label"."""
    lines = [f"(declare-const X_{i} Real)" for i in range(len(lo))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, (a, b) in enumerate(zip(lo, hi)):
        lines += [f"(assert (>= X_{i} {float(a)!r}))", f"(assert (<= X_{i} {float(b)!r}))"]
    others = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(n_out) if j != label)
    lines.append(f"(assert (or {others}))")
    path.write_text("\n".join(lines) + "\n")
    return path
