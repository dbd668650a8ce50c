"""Peak memory and step time of ZO-SGD full fine-tuning vs inference, hybrid ZO/FO, FO-SGD and FO-Adam.

Model: smollm2-135m (fp32, full fine-tuning: every one of its 134.5M parameters is trainable).
Batch: 16 real Pang & Lee polarity prompts, each truncated/padded to exactly 64 tokens; loss =
cross-entropy over the two label words (the fine-tune loop's own loss).

Each mode runs in a fresh process, so peak RSS is that mode's alone. The peak is reset after the
model is loaded and warmed up (``/proc/self/clear_refs``), so loading does not mask the step's peak.
``hybrid`` profiles layer importance (Taylor, on the batch) first, gives the most important layers within
``--fo-budget`` of the parameters to Adam and the rest to ZO-SGD; the profiling peak is reported apart.
``zo-sgd`` uses the default ``pool`` noise, ``zo-sgd-gaussian`` fresh ``normal_`` draws (MeZO's noise).

Step / (2 forwards) is reported two ways: against the inference process's forward, and against plain
forwards timed in the ZO process itself, interleaved with the steps (same allocator state, same drift).

    .venv/bin/python benchmarks/zo_memory_speed.py [--steps 8] [--model smollm2-135m] [--modes zo-sgd,hybrid]

Needs `l2lzo data prepare polarity`. Writes benchmarks/results/zo_memory_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = ("inference", "zo-sgd", "zo-sgd-gaussian", "hybrid", "fo-sgd", "fo-adam")
NOISE = {"zo-sgd": "pool", "zo-sgd-gaussian": "gaussian"}  # ZO-SGD with each noise source (l2lzo.noise)
RESULTS = Path(__file__).parent / "results"


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _batch(scorer, batch_size: int, seq_len: int):
    from l2lzo.tasks import Example, load_task

    pool = load_task("polarity", train_size=None).train
    prompts = []
    for i in range(batch_size):  # several sentences per prompt, so each is longer than seq_len tokens
        text = " ".join(e.prompt for e in pool[i * 8:(i + 1) * 8])
        prompts.append(Example(text, pool[0].options, pool[i].label))
    batch = scorer.encode(prompts)
    assert batch.mode == "single_token" and tuple(batch.inputs["input_ids"].shape) == (batch_size, seq_len)
    return batch


def _timed(fn, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def worker(mode: str, model_name: str, steps: int, batch_size: int, seq_len: int, fo_budget: float) -> dict:
    import torch

    from l2lzo.models import load_model
    from l2lzo.optim import build_optimizer
    from l2lzo.scoring import Scorer

    torch.manual_seed(0)
    loaded = load_model(model_name)
    scorer = Scorer(loaded, max_length=seq_len)
    batch = _batch(scorer, batch_size, seq_len)
    out = {"mode": mode, "model": model_name, "batch": batch_size, "seq_len": seq_len, "steps": steps,
           "threads": torch.get_num_threads()}
    if mode == "inference":
        def step():
            with torch.no_grad():
                scorer.loss(batch)
    elif mode == "hybrid":
        from l2lzo.blocks import discover_blocks, group_blocks
        from l2lzo.profiling import choose_fo_groups, profile_layers

        _reset_peak_rss()
        fo_groups = choose_fo_groups(profile_layers(loaded.model, [lambda: scorer.loss(batch)]), fo_budget)
        groups = group_blocks(discover_blocks(loaded.model), "layer")
        fo_blocks = [b for g in fo_groups for b in groups[g]]
        out.update(profile_peak_rss_mib=_peak_rss_mib(), fo_groups=fo_groups,
                   fo_parameters=sum(b.numel for b in fo_blocks))
        opt = build_optimizer("zo-sgd", loaded.model, lr=1e-6, eps=1e-3, fo_blocks=fo_blocks, fo_lr=1e-5)

        def step():
            opt.step(lambda: scorer.loss(batch))
    else:
        if mode in NOISE:
            opt = build_optimizer("zo-sgd", loaded.model, lr=1e-6, eps=1e-3, noise=NOISE[mode])
        else:
            opt = build_optimizer(mode, loaded.model, lr=1e-5, eps=1e-3)

        def step():
            opt.step(lambda: scorer.loss(batch))
    step()  # warm-up (allocator, lazy init)
    _reset_peak_rss()
    times = _timed(step, steps)
    out.update(peak_rss_mib=_peak_rss_mib(), median_s=statistics.median(times), times_s=times)
    if mode in NOISE:
        from l2lzo.perturbation import Direction

        def forward():
            with torch.no_grad():
                scorer.loss(batch)

        pairs = [(_timed(step, 1)[0], _timed(forward, 1)[0]) for _ in range(steps)]
        out["interleaved_step_s"] = statistics.median(p[0] for p in pairs)
        out["interleaved_forward_s"] = statistics.median(p[1] for p in pairs)
        engine = opt.engine
        out["noise_sweep_s"] = statistics.median(_timed(lambda: [engine.noise(1, b) for b in engine.blocks], 3))
        out["update_sweep_s"] = statistics.median(_timed(lambda: engine.add_([Direction(1, 0.0)]), 3))

        def perturbed_forward():
            with torch.no_grad(), engine.perturbed([Direction(1, 1e-3)]):
                scorer.loss(batch)

        out["perturbed_forward_s"] = statistics.median(_timed(perturbed_forward, 3))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per mode (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--fo-budget", type=float, default=0.05, help="hybrid: FO share of the parameters")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset (inference and zo-sgd "
                                                                   "are always run: the ratios need them)")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.steps, args.batch_size, args.seq_len,
                                args.fo_budget)))
        return
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {', '.join(sorted(unknown))}: choose from {', '.join(MODES)}")
    modes = [m for m in MODES if m in {"inference", "zo-sgd", *args.modes.split(",")}]
    rows = {}
    for mode in modes:
        cmd = [sys.executable, __file__, "--worker", mode, "--model", args.model, "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
               "--fo-budget", str(args.fo_budget)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{mode:>10}: peak RSS {rows[mode]['peak_rss_mib']:.0f} MiB, median {rows[mode]['median_s']:.3f} s",
              file=sys.stderr)
    inf = rows["inference"]
    summary = {
        "what": f"{args.model} fp32 full fine-tuning, batch {args.batch_size} x {args.seq_len} tokens, "
                f"label-word loss, {args.steps} timed steps per mode (median), {inf['threads']} threads",
        "rss_ratio_vs_inference": {m: rows[m]["peak_rss_mib"] / inf["peak_rss_mib"] for m in modes},
        "zo": {m: {"step_over_two_forwards": rows[m]["median_s"] / (2 * inf["median_s"]),
                   "step_over_two_forwards_same_process":
                       rows[m]["interleaved_step_s"] / (2 * rows[m]["interleaved_forward_s"]),
                   "perturbed_forward_over_forward": rows[m]["perturbed_forward_s"] / inf["median_s"],
                   "noise_sweep_s": rows[m]["noise_sweep_s"], "update_sweep_s": rows[m]["update_sweep_s"]}
               for m in modes if m in NOISE},
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "zo_memory_speed.json").write_text(json.dumps(summary, indent=2))
    lines = [f"# ZO memory and speed: {summary['what']}", "",
             "| mode | peak RSS (MiB) | x inference | median step (s) |", "|---|---|---|---|"]
    for m in modes:
        lines.append(f"| {m} | {rows[m]['peak_rss_mib']:.0f} | {summary['rss_ratio_vs_inference'][m]:.3f} "
                     f"| {rows[m]['median_s']:.3f} |")
    lines += ["", "| ZO mode | step / 2 forwards | same process, interleaved | perturbed forward / forward "
                  "| noise sweep, all weights (s) | update sweep (s) |", "|---|---|---|---|---|---|"]
    for m, z in summary["zo"].items():
        lines.append(f"| {m} ({NOISE[m]} noise) | {z['step_over_two_forwards']:.3f} "
                     f"| {z['step_over_two_forwards_same_process']:.3f} | {z['perturbed_forward_over_forward']:.3f} "
                     f"| {z['noise_sweep_s']:.3f} | {z['update_sweep_s']:.3f} |")
    if "hybrid" in rows:
        h = rows["hybrid"]
        lines.append(f"- hybrid: FO (Adam) on {', '.join(h['fo_groups'])} = {h['fo_parameters']:,} parameters "
                     f"(budget {args.fo_budget:.0%}), ZO-SGD on the rest; profiling peak "
                     f"{h['profile_peak_rss_mib']:.0f} MiB (one batch, gradients freed as they arrive)")
    (RESULTS / "zo_memory_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
