"""Meta-training throughput on Ray Train: 1 worker x N threads against N workers x 1 thread (same cores).

Each configuration is one ``l2lzo meta-train`` run of ``--meta-steps`` meta-steps (validation only at the end,
no final fine-tunes, nothing pushed); reported from the run's own history: the median seconds per meta-step
(after the first, which pays start-up), and episodes per second (a meta-step averages one episode per
worker). Ray's start-up is reported apart (wall time minus the meta-steps).

    .venv/bin/python benchmarks/meta_train_scaling.py [--model minilm-l6] [--meta-steps 12] [--cores 2]

Writes benchmarks/results/meta_train_scaling.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def run(model: str, workers: int, threads: int, meta_steps: int, inner_steps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="l2lzo-scaling-") as tmp:
        cmd = [sys.executable, "-m", "l2lzo.cli", "meta-train", "--model", model, "--workers", str(workers),
               "--threads", str(threads), "--meta-steps", str(meta_steps), "--inner-steps", str(inner_steps),
               "--batch-size", "8", "--heldout-batch-size", "16", "--validate-every", str(meta_steps),
               "--validation-steps", "1", "--final-steps", "1", "--lr-grid", "5e-5", "--no-push",
               "--validation-tasks", "sarcasm", "--output", tmp]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - start
        history = json.loads((Path(tmp) / "history.json").read_text())
    seconds = [h["seconds"] for h in history[1:]]
    per_step = statistics.median(seconds)
    return {"workers": workers, "threads_per_worker": threads, "meta_steps": meta_steps,
            "median_seconds_per_meta_step": per_step, "episodes_per_second": workers / per_step,
            "meta_steps_seconds": sum(h["seconds"] for h in history), "wall_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--meta-steps", type=int, default=12)
    parser.add_argument("--inner-steps", type=int, default=4)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    rows = [run(args.model, 1, args.cores, args.meta_steps, args.inner_steps),
            run(args.model, args.cores, 1, args.meta_steps, args.inner_steps)]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "meta_train_scaling.json").write_text(json.dumps({"model": args.model, "rows": rows}, indent=2))
    lines = [f"# Meta-training throughput, {args.model}, {args.cores} cores, K = {args.inner_steps} inner steps, "
             f"batch 8 + held-out 16, {args.meta_steps} meta-steps per run", "",
             "| workers x threads | s / meta-step (median) | episodes / s | run wall (s) |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workers']} x {r['threads_per_worker']} | {r['median_seconds_per_meta_step']:.2f} "
                     f"| {r['episodes_per_second']:.3f} | {r['wall_seconds']:.0f} |")
    lines.append(f"\nspeed-up of {args.cores} workers: "
                 f"{rows[1]['episodes_per_second'] / rows[0]['episodes_per_second']:.2f}x episodes per second")
    (RESULTS / "meta_train_scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
