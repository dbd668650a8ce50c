"""Shared matplotlib plumbing for l2lzo's PNGs: a grid of panels and an atomic save."""

from __future__ import annotations

import os
from pathlib import Path


def subplots(count: int, width: float = 6.5, height: float = 4.0):
    """``count`` panels, two per row; the figure and its visible axes in order (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(count, 2)
    rows = (count + cols - 1) // cols
    fig, axs = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axs.flat[count:]:
        ax.set_visible(False)
    return fig, list(axs.flat)[:count]


def save_png(fig, path: Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically (a reader never sees half a PNG) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path
