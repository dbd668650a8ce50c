"""PNG of a meta-training run: the meta-loss per meta-step and the held-out gap at each validation."""

from __future__ import annotations

from pathlib import Path

from l2lzo.plotting import pyplot, save_png


def plot_history(history: list[dict], path: Path, title: str) -> None:
    """Two panels: meta-loss (raw and smoothed) and held-out gap (policy vs sigma = 1, relative)."""
    plt = pyplot()

    steps = [h["meta_step"] for h in history]
    losses = [h["meta_loss"] for h in history]
    window = max(1, len(losses) // 20)
    smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
              for i in range(len(losses))]
    validated = [h for h in history if "policy_loss" in h]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(steps, losses, color="0.75", lw=0.8, label="episode")
    top.plot(steps, smooth, color="C0", label=f"mean of {window}")
    top.set(ylabel="held-out loss after K steps", title=title)
    top.legend()
    top.grid(alpha=0.3)
    bottom.axhline(0, color="0.5", lw=0.8)
    bottom.plot([h["meta_step"] for h in validated], [h["heldout_gap"] for h in validated], marker="o", color="C1")
    bottom.set(xlabel="meta-step", ylabel="held-out gap (policy / sigma=1 - 1)")
    bottom.grid(alpha=0.3)
    save_png(fig, path)
