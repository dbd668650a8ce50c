"""Shared matplotlib plumbing for l2lzo's PNGs: the headless backend, a grid of panels and an atomic save."""

from __future__ import annotations

import os
from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: l2lzo only writes files, and servers have no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def subplots(count: int, width: float = 6.5, height: float = 4.0):
    """``count`` panels, two per row; the figure and its visible axes in order."""
    cols = min(count, 2)
    rows = (count + cols - 1) // cols
    fig, axs = pyplot().subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axs.flat[count:]:
        ax.set_visible(False)
    return fig, list(axs.flat)[:count]


def distinct_colors(count: int) -> list:
    """``count`` colours, no two alike up to 20 (matplotlib's default cycle repeats after 10 series)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def save_png(fig, path: Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically (a reader never sees half a PNG) and close it."""
    path = Path(path)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    pyplot().close(fig)
    os.replace(tmp, path)
    return path
