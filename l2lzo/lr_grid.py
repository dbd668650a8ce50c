"""Learning-rate grids that grow past an edge while the best lr sits there.

A best lr at the end of its grid says only that the optimum may lie beyond it. ``extend_at_edges`` adds points
past that edge at the grid's outer spacing (a log-spaced grid stays log-spaced) until every best lr is inside,
or ``max_extensions`` points were added on that side, or the next point leaves (0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

MAX_EXTENSIONS = 2


def scaled_grid(centre: float, factors: Sequence[float] = (0.5, 1.0, 2.0)) -> list[float]:
    """``centre`` times each factor (``{0.5, 1, 2} x`` a recommended lr), rounded to 6 significant digits."""
    return sorted(_round(centre * f) for f in factors)


def extend_at_edges(grid: Sequence[float], run: Callable[[float], None], bests: Callable[[list[float]], list[float]],
                    *, max_extensions: int = MAX_EXTENSIONS, say: Callable[[str], None] = lambda _: None,
                    ) -> tuple[list[float], dict[str, int]]:
    """Grow ``grid`` (already run) while one of ``bests(grid)`` sits at an edge; ``run(lr)`` runs a new point.

    Grids of fewer than 3 points are taken as given (there is no interior to find). Returns the final grid and
    the number of points added on each side.
    """
    grid = sorted(grid)
    added = {"low": 0, "high": 0}
    while len(grid) >= 3:
        best = bests(grid)
        side = next((s for s, lr in (("low", grid[0]), ("high", grid[-1]))
                     if lr in best and added[s] < max_extensions), None)
        if side is None:
            break
        new = _round(grid[0] ** 2 / grid[1] if side == "low" else grid[-1] ** 2 / grid[-2])
        if not 0 < new <= 1:
            break
        say(f"a best lr sits at the grid's {side} edge; extending it to {new:.3g}")
        run(new)
        added[side] += 1
        grid = sorted([*grid, new])
    return grid, added


def _round(lr: float) -> float:
    return float(f"{lr:.6g}")  # 4e-4, not 3.9999999999999996e-4: lrs name files and artifact fields
