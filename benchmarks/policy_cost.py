"""What the learned policy costs per ZO step, as a fraction of the step, on a model of its own choosing.

The policy network does not depend on the model it perturbs (a role embedding and a shared MLP over per-block
features), so its cost on ``--model`` is measured with any trained network (``--policy``, e.g. minilm-l6's)
driving the sigma hook of a real ``finetune`` run: same blocks, features and forward as a policy meta-trained
for that model would have. Reported: the first call (it also reads every block once for the block features),
the median of the later calls, and that median as a fraction of the median ZO step (which contains it).

    .venv/bin/python benchmarks/policy_cost.py --model smollm2-135m --schemes full,lora \\
        --policy benchmarks/results/policy_eval/minilm-l6_full/policy.safetensors
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from l2lzo.files import atomic_write_text, write_json
from l2lzo.finetune import FinetuneConfig, finetune
from l2lzo.policy.network import LearnedSigma
from l2lzo.policy.source import open_policy


class TimedHook:
    """A sigma hook that records how long each call of the hook it wraps takes."""

    def __init__(self, hook):
        self.hook = hook
        self.seconds: list[float] = []

    def __call__(self, info) -> dict[str, float]:
        start = time.perf_counter()
        sigma = self.hook(info)
        self.seconds.append(time.perf_counter() - start)
        return sigma


def measure(model: str, scheme: str, policy_spec: str, steps: int, batch_size: int, task: str) -> dict:
    """One ``finetune`` of ``steps`` ZO-SGD steps with the policy's hook; its cost per step."""
    hook = TimedHook(LearnedSigma(open_policy(policy_spec).network(), scheme, steps))
    with tempfile.TemporaryDirectory(prefix="l2lzo-policy-cost-") as tmp:
        config = FinetuneConfig(model=model, task=task, scheme=scheme, steps=steps, eval_every=steps,
                                batch_size=batch_size, dev_size=16, test_size=16, output=str(Path(tmp) / "run.json"))
        result = finetune(config, progress=False, sigma_hook=hook)
    per_step = statistics.median(hook.seconds[1:])
    return {"model": model, "scheme": scheme, "steps": steps, "batch_size": batch_size, "task": task,
            "blocks": len(hook.hook.last_sigma), "median_step_seconds": result.median_step_seconds,
            "policy_first_call_seconds": hook.seconds[0], "policy_seconds_per_step": per_step,
            "fraction_of_step": per_step / result.median_step_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--schemes", default="full,lora")
    parser.add_argument("--policy", default="benchmarks/results/policy_eval/minilm-l6_full/policy.safetensors")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--task", default="polarity")
    parser.add_argument("--output", default="benchmarks/results/policy_cost")
    args = parser.parse_args()
    rows = [measure(args.model, s, args.policy, args.steps, args.batch_size, args.task)
            for s in args.schemes.split(",") if s]
    out = Path(args.output)
    write_json(out.with_suffix(".json"), {"rows": rows, "torch_threads": torch.get_num_threads(),
                                          "machine": platform.platform()})
    lines = [f"# Learned policy cost per ZO step ({args.model}, batch {args.batch_size} x 64 tokens, "
             f"{args.steps} steps, {torch.get_num_threads()} torch threads)", "",
             f"Command: `{' '.join(sys.argv)}`", "",
             "| scheme | blocks | median ZO step (s) | policy, first call (ms) | policy per step, median (ms) "
             "| fraction of a step |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['scheme']} | {r['blocks']} | {r['median_step_seconds']:.3f} | "
              f"{1000 * r['policy_first_call_seconds']:.1f} | {1000 * r['policy_seconds_per_step']:.2f} | "
              f"{r['fraction_of_step']:.3%} |" for r in rows]
    lines += ["", f"median fraction: {statistics.median(r['fraction_of_step'] for r in rows):.3%}"]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
