"""Dev loss of structured ZO variants against plain ZO-SGD, on real models and data (same seeds).

Two suites, each run is a fresh ``l2lzo finetune`` process:

* ``hybrid``: smollm2-135m, full fine-tuning, equal wall-clock (``--time-budget`` seconds of training,
  profiling included, evals excluded): ZO-SGD vs hybrid ZO/FO (Adam on the most important layers within
  ``--fo-budget`` of the parameters, ZO-SGD on the rest) vs FO-Adam on everything.
* ``sparse``: minilm-l6, full fine-tuning, equal number of forward passes (``--forwards``): ZO-SGD vs
  sparse z (random and magnitude, 90% sparsity) vs block-wise ZO (one estimate per layer).

Reports the dev loss and accuracy at the end, steps done, and the run's peak RSS. For peak memory at a
fixed batch without loading and evaluation in the way, see the hybrid rows of ``grids/memory_speed.toml``.

    .venv/bin/python benchmarks/structured_zo.py [--suite hybrid|sparse|all] [--time-budget 240] [--forwards 400]

Needs `l2lzo data prepare polarity`. Writes benchmarks/results/structured_zo_<suite>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def hybrid_runs(args) -> list[tuple[str, list[str]]]:
    base = ["--model", "smollm2-135m", "--task", args.task, "--scheme", "full", "--steps", "100000",
            "--time-budget", str(args.time_budget), "--eval-every", "100000", "--dev-size", str(args.dev_size),
            "--test-size", "100"]
    return [
        ("zo-sgd", [*base, "--optimizer", "zo-sgd", "--lr", args.zo_lr]),
        (f"hybrid (FO-Adam on {args.fo_budget:.0%})",
         [*base, "--optimizer", "zo-sgd", "--lr", args.zo_lr, "--hybrid-fo-budget", str(args.fo_budget),
          "--hybrid-fo-lr", args.fo_lr]),
        ("fo-adam", [*base, "--optimizer", "fo-adam", "--lr", args.fo_lr]),
    ]


def sparse_runs(args) -> list[tuple[str, list[str]]]:
    base = ["--model", "minilm-l6", "--task", args.task, "--scheme", "full", "--lr", "5e-5",
            "--dev-size", str(args.dev_size), "--test-size", "100", "--eval-every", "100000"]
    from l2lzo.blocks import discover_blocks, group_blocks
    from l2lzo.models import load_model

    steps = args.forwards // 2
    layer_groups = len(group_blocks(discover_blocks(load_model("minilm-l6").model), "layer"))  # 2 forwards each
    return [
        ("zo-sgd", [*base, "--steps", str(steps)]),
        ("sparse random 90%", [*base, "--steps", str(steps), "--sparsity", "0.9"]),
        ("sparse magnitude 90% (layer)", [*base, "--steps", str(steps), "--sparsity", "0.9",
                                          "--sparse-mode", "magnitude"]),
        ("block-wise per layer", [*base, "--steps", str(max(1, steps // layer_groups)), "--zo-blocks", "layer"]),
    ]


def run(name: str, argv: list[str], workdir: Path) -> dict:
    out = workdir / ("".join(c if c.isalnum() else "_" for c in name) + ".json")
    cmd = [sys.executable, "-m", "l2lzo.cli", "finetune", *argv, "--output", str(out)]
    print(f"--- {name}: {' '.join(cmd[3:])}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)
    r = json.loads(out.read_text())
    last = r["evals"][-1]
    return {"name": name, "argv": argv, "steps_done": r["steps_done"], "train_seconds": r["train_seconds"],
            "dev_loss_start": r["evals"][0]["dev_loss"], "dev_loss_end": last["dev_loss"],
            "dev_accuracy_start": r["evals"][0]["dev_accuracy"], "dev_accuracy_end": last["dev_accuracy"],
            "peak_rss_mb": r["peak_rss_mb"], "median_step_s": r["median_step_seconds"],
            "structure": {k: v for k, v in r["structure"].items() if k != "profile"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=("hybrid", "sparse", "all"), default="all")
    parser.add_argument("--task", default="polarity")
    parser.add_argument("--time-budget", type=float, default=240.0, help="hybrid suite: training seconds per run")
    parser.add_argument("--forwards", type=int, default=400, help="sparse suite: forward passes per run")
    parser.add_argument("--dev-size", type=int, default=200)
    parser.add_argument("--fo-budget", type=float, default=0.05)
    parser.add_argument("--zo-lr", default="1e-6")
    parser.add_argument("--fo-lr", default="1e-5")
    args = parser.parse_args()
    suites = ("hybrid", "sparse") if args.suite == "all" else (args.suite,)
    RESULTS.mkdir(exist_ok=True)
    for suite in suites:
        with tempfile.TemporaryDirectory() as tmp:
            runs = hybrid_runs(args) if suite == "hybrid" else sparse_runs(args)
            rows = [run(name, argv, Path(tmp)) for name, argv in runs]
        what = (f"smollm2-135m full FT on {args.task}, {args.time_budget:.0f} s of training each" if suite == "hybrid"
                else f"minilm-l6 full FT on {args.task}, {args.forwards} forward passes each")
        (RESULTS / f"structured_zo_{suite}.json").write_text(json.dumps({"what": what, "rows": rows}, indent=2))
        lines = [f"# Structured ZO ({suite}): {what}, seed 0, dev {args.dev_size}", "",
                 "| run | steps | train s | dev loss start -> end | dev acc start -> end | peak RSS MiB |",
                 "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['name']} | {r['steps_done']} | {r['train_seconds']:.0f} | {r['dev_loss_start']:.4f} -> "
                         f"{r['dev_loss_end']:.4f} | {r['dev_accuracy_start']:.3f} -> {r['dev_accuracy_end']:.3f} "
                         f"| {r['peak_rss_mb']:.0f} |")
        (RESULTS / f"structured_zo_{suite}.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
