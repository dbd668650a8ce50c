"""Memory/speed probes: peak RSS and median step time of one optimizer and scheme on one fixed real batch.

A probe measures in a process of its own, after every one-off cost is paid:

1. *Warm* (``warm``, run in an earlier process by the runner): load the model and the task and encode the batch,
   so first-use work (smollm2's one-time GGUF -> safetensors conversion, task caches) happens there. Memory that
   such work frees is often kept by the allocator, so a process that paid it carries it into any later peak,
   even one reset after loading; on a fresh cache, smollm2's conversion once lifted an inference peak from
   1,079 to 1,372 MiB. A separate, earlier process is the only warm-up that cannot leak into the measurement.
2. *Measure* (``measure``, a fresh process): load again (from warm caches), build the batch (``batch_size`` rows
   that fill the ``max_length`` window with the task's training text, no padding), then
   - inference: one warm-up forward, reset the peak (``/proc/self/clear_refs``), ``steps`` timed forwards;
   - the optimizer (built by the fine-tune loop's own ``build_run_optimizer``; hybrid profiling is measured
     apart): one warm-up step, reset the peak, then ``steps`` pairs of (timed step, timed forward), so the step
     and the two-forward reference share the process, its allocator state and the machine's drift.

Reported: peak RSS of the steps and of inference (MiB) and their ratio; median step and median forward (s) and
step / (2 forwards); for ZO optimizers also the engine's sweeps (``engine_sweeps``), after the peak is read.
``optimizer = "inference"`` reports the forwards alone (ratios 1 and 0.5).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from l2lzo.bench.cells import INFERENCE
from l2lzo.errors import L2LZOError
from l2lzo.finetune import FinetuneConfig


def peak_rss_mib() -> float:
    """Peak resident set size of this process since start or the last ``reset_peak_rss`` (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise L2LZOError("no VmHWM in /proc/self/status: memory probes need Linux")


def reset_peak_rss() -> None:
    """Reset this process's peak RSS to its current RSS (Linux: write 5 to ``/proc/self/clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def warm(config: FinetuneConfig) -> None:
    """Pay every one-off cost of loading ``config``'s model, task and batch (run this in an earlier process)."""
    _setup(config)


def measure(config: FinetuneConfig) -> dict:
    """Measure ``config``'s optimizer step against forwards in this process; see the module docstring."""
    import torch

    from l2lzo.finetune import build_run_optimizer

    scorer, train, batch, policy = _setup(config)
    timed = config.plan(policy).steps  # the flag, else the policy's, else the default (one rule everywhere)

    def forward() -> None:
        with torch.no_grad():
            scorer.loss(batch)

    model = scorer.loaded.model
    out = {"batch_size": config.batch_size, "tokens_per_row": int(batch.inputs["input_ids"].shape[-1]),
           "timed_steps": timed,
           "threads": torch.get_num_threads(),
           "total_parameters": sum(p.numel() for p in model.parameters()),
           "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    forward()  # warm-up: lazy initialisation and allocator pools
    reset_peak_rss()
    forwards = _timed(forward, timed)
    out["inference_peak_rss_mib"] = peak_rss_mib()
    if config.optimizer == INFERENCE:
        steps = forwards
        out["peak_rss_mib"] = out["inference_peak_rss_mib"]
    else:
        reset_peak_rss()
        optimizer, structure, _ = build_run_optimizer(config, scorer, train, policy)
        if "fo_groups" in structure:  # hybrid: the profiling pass's peak, apart from the steps'
            out["profile_peak_rss_mib"] = peak_rss_mib()
            out["fo_groups"] = structure["fo_groups"]
            out["fo_parameters"] = structure["fo_parameters"]

        def step() -> None:
            optimizer.step(lambda: scorer.loss(batch))

        step()  # warm-up: optimizer state (Adam moments, momentum, masks) is allocated on the first step
        reset_peak_rss()
        pairs = [(_timed(step, 1)[0], _timed(forward, 1)[0]) for _ in range(timed)]
        out["peak_rss_mib"] = peak_rss_mib()
        steps, forwards = [p[0] for p in pairs], [p[1] for p in pairs]
        engine = getattr(getattr(optimizer, "zo", optimizer), "engine", None)  # ZO, or hybrid's ZO half
        if engine is not None:
            out.update(engine_sweeps(engine, lambda: scorer.loss(batch)))
    out["step_seconds"] = statistics.median(steps)
    out["forward_seconds"] = statistics.median(forwards)
    out["step_times"] = steps
    out["forward_times"] = forwards
    out["peak_over_inference"] = out["peak_rss_mib"] / out["inference_peak_rss_mib"]
    out["step_over_two_forwards"] = out["step_seconds"] / (2 * out["forward_seconds"])
    if "perturbed_forward_seconds" in out:
        out["perturbed_forward_over_forward"] = out["perturbed_forward_seconds"] / out["forward_seconds"]
    return out


def engine_sweeps(engine, loss, runs: int = 3) -> dict:
    """Where a ZO step's time goes (medians of ``runs``): drawing z for every block, one update sweep
    (theta += 0 * z: the memory traffic of an update) and one perturbed forward of ``loss``."""
    import torch

    from l2lzo.perturbation import Direction

    def perturbed_forward() -> None:
        with torch.no_grad(), engine.perturbed([Direction(1, 1e-3)]):
            loss()

    return {"noise_sweep_seconds": statistics.median(_timed(lambda: [engine.noise(1, b) for b in engine.blocks],
                                                            runs)),
            "update_sweep_seconds": statistics.median(_timed(lambda: engine.add_([Direction(1, 0.0)]), runs)),
            "perturbed_forward_seconds": statistics.median(_timed(perturbed_forward, runs))}


def _setup(config: FinetuneConfig):
    import torch

    from l2lzo.finetune import resolve_run_policy
    from l2lzo.models import load_model
    from l2lzo.schemes import apply_scheme
    from l2lzo.scoring import Scorer
    from l2lzo.tasks import load_task

    torch.manual_seed(config.seed)
    splits = load_task(config.task, seed=config.seed, train_size=config.train_size, dev_size=config.dev_size,
                       test_size=config.test_size)
    loaded = load_model(config.model)
    policy = resolve_run_policy(config, loaded)  # the base model's fingerprint, before the scheme
    scorer = Scorer(apply_scheme(loaded, config.scheme, config.scheme_config()), max_length=config.max_length)
    return scorer, splits.train, fixed_batch(scorer, splits.train, config.batch_size), policy


def fixed_batch(scorer, pool: list, batch_size: int):
    """``batch_size`` examples whose prompts fill the whole ``scorer.max_length`` window, from ``pool``'s text.

    Each prompt joins consecutive training prompts (cycling through the pool) until it is longer than the
    window; the scorer keeps the window's worth of tokens (``max_length``, less the answer's slot where the
    answer is one token), so every row is real text and the batch has no padding. Options and label are the
    first joined example's.
    """
    from l2lzo.tasks import Example

    if not pool:
        raise L2LZOError("the task has no training examples to build a probe batch from")
    examples, cursor = [], 0
    for _ in range(batch_size):
        first, parts = pool[cursor % len(pool)], []
        while len(scorer.tokenizer(" ".join(parts), add_special_tokens=False)["input_ids"]) <= scorer.max_length:
            parts.append(pool[cursor % len(pool)].prompt)
            cursor += 1
        examples.append(Example(" ".join(parts), first.options, first.label))
    batch = scorer.encode(examples)
    if not bool(batch.inputs["attention_mask"].all()):
        raise L2LZOError(f"the probe batch has padding: its prompts are shorter than {scorer.max_length} tokens")
    return batch


def _timed(fn, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times
