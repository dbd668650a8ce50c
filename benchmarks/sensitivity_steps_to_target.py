"""Steps to target for the sensitive 0.1% mask against dense MeZO (issue 21 (c)), from stored grid results.

For each task and seed: the first eval step at which the mask's dev loss reaches dense MeZO's final dev loss, each
arm at the lr its own seed-0 grid picked (``benchmarks/grids/sensitivity.toml``); runs of
``benchmarks/results/bench/sensitivity`` and ``sensitivity_seeds`` (300 steps, evals every 25). Prints one line per
pair and the median ratio (a miss counts as infinitely many steps).

Run: python benchmarks/sensitivity_steps_to_target.py
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "bench"
# Each arm's own-best lr per task (the interior best of its seed-0 grid).
OWN_BEST_LR = {("polarity", "dense"): 5e-5, ("tweet_sentiment", "dense"): 5e-5, ("mrpc", "dense"): 2e-4,
               ("polarity", "mask"): 2e-4, ("tweet_sentiment", "mask"): 1e-4, ("mrpc", "mask"): 4e-4}


def arm_of(config: dict) -> str | None:
    if isinstance(config.get("sparse_mask"), dict):
        return "mask"
    return "dense" if not config.get("sparsity") else None  # random masks are another arm


def own_best_runs() -> dict[tuple[str, int, str], list[dict]]:
    runs = {}
    for grid in ("sensitivity", "sensitivity_seeds"):  # the seeds grid's seed-0 mask rerun replaces the first's
        for line in (RESULTS / grid / "results.jsonl").read_text().splitlines():
            row = json.loads(line)
            config, arm = row["config"], arm_of(row["config"])
            if row["status"] == "ok" and arm and math.isclose(config["lr"], OWN_BEST_LR[(config["task"], arm)]):
                runs[(config["task"], config["seed"], arm)] = row["evals"]
    return runs


def main() -> None:
    runs = own_best_runs()
    ratios = []
    for (task, seed, arm), evals in sorted(runs.items()):
        if arm != "mask":
            continue
        dense = runs[(task, seed, "dense")]
        target, final = dense[-1]["dev_loss"], dense[-1]["step"]
        hit = next((e["step"] for e in evals if e["step"] > 0 and e["dev_loss"] <= target), None)
        print(f"{task:16s} seed {seed}: dense MeZO's final dev loss {target:.3f} at step {final}; "
              f"the mask reaches it at step {hit if hit else 'never'}")
        ratios.append(hit / final if hit else math.inf)
    misses = sum(r == math.inf for r in ratios)
    print(f"median steps ratio (mask / MeZO): {statistics.median(ratios):.2f}; misses {misses} of {len(ratios)}")


if __name__ == "__main__":
    main()
