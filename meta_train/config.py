"""What a meta-training run is: the base model, the task pools, the episodes, the meta-optimizer and Ray.

Task pools are disjoint and recorded in the artifact. ``META_TRAIN_TASKS`` give the episodes;
``VALIDATION_TASKS`` score the policy while it trains and pick the lr it recommends (their train and dev
splits only). ``EVALUATION_TASKS`` are never touched by meta-training: ``benchmarks/policy_eval.py`` and the
main job report on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from l2lzo.errors import ConfigError, check_choice
from l2lzo.finetune import default_lr
from l2lzo.noise import check_noise
from l2lzo.optim.hyperparameters import check_eps, check_lr
from l2lzo.policy.network import PolicyConfig
from l2lzo.schemes import check_scheme
from l2lzo.sparsity import SPARSE_SCOPES

# Disjoint by underlying dataset (`BuiltinTask.dataset`), not only by name: SST-2 and polarity are one dataset,
# so are ARC-Easy and ARC-Challenge, and the MMLU groups; tests/test_meta_train_pools.py checks it. Every pool
# spans several families; evaluation holds the two tasks with the most history here (polarity, bbc_news).
EVALUATION_TASKS = (
    "polarity", "sst2", "bbc_news", "tweet_sentiment", "mrpc", "boolq", "piqa", "arc_easy", "arc_challenge",
    "quartz",
)
VALIDATION_TASKS = ("sarcasm", "rte", "commonsense_qa", "sciq")
META_TRAIN_TASKS = (
    # nli/paraphrase, yes/no reading
    "cb", "corr2cause", "crepe", "pararule_plus", "moral_exceptqa", "causal_judgment", "pubmedqa",
    "privacy_policy_qa", "consumer_contracts_qa", "sciriff_yesno", "qasper_yesno",
    # sentiment/topic
    "bias_detection",
    # commonsense, reasoning
    "copa", "winogrande", "hellaswag", "social_iqa", "hitom", "disambiguation_qa", "bbq", "logiqa",
    "parable_to_moral", "abstract_narrative",
    # knowledge
    "openbookqa", "medmcqa", "medqa", "lab_bench", "mmlu_stem", "mmlu_humanities", "mmlu_social_sciences",
    "mmlu_other",
    # skills
    "basic_arithmetic", "basic_skills_arithmetic", "basic_skills_coding", "basic_skills_common_knowledge",
    "basic_skills_logical_reasoning", "basic_skills_pattern", "basic_skills_string_operations", "copycolors",
)


def shared_datasets(*pools: Sequence[str]) -> dict[str, list[str]]:
    """The underlying datasets that tasks of more than one pool come from, with those tasks (built-ins only:
    a local file or HF name has no recorded dataset)."""
    from l2lzo.tasks.builtin import BUILTIN_TASKS

    owners: dict[str, dict[int, list[str]]] = {}
    for index, pool in enumerate(pools):
        for name in pool:
            if name in BUILTIN_TASKS:
                owners.setdefault(BUILTIN_TASKS[name].dataset, {}).setdefault(index, []).append(name)
    return {d: [n for names in by_pool.values() for n in names] for d, by_pool in owners.items() if len(by_pool) > 1}


@dataclass
class MetaTrainConfig:
    """A meta-training run (defaults: the main job's, about 6 minutes of meta-training on 2 cores)."""

    model: str = "minilm-l6"
    scheme: str = "full"
    train_tasks: list[str] = field(default_factory=lambda: list(META_TRAIN_TASKS))
    validation_tasks: list[str] = field(default_factory=lambda: list(VALIDATION_TASKS))
    # Episodes: K ZO-SGD steps on train batches, then the loss on a different held-out batch of the same task.
    # K = 8 rather than 2: with K = 2 (and validation runs of 20 steps) the policies found were no better than
    # sigma = 1 on validation; the short horizon rewards the first steps' gain and misses the noise that
    # accumulates (see README, "The learned optimizer").
    meta_steps: int = 100
    inner_steps: int = 8
    reset_every: int = 10  # episodes on one trajectory (one task) before theta goes back to pretrained
    lr: float | None = None  # the ZO lr of the look-ahead; None: l2lzo's default for (zo, scheme)
    eps: float = 1e-3
    noise: str = "pool"
    batch_size: int = 8
    heldout_batch_size: int = 16
    train_size: int = 256
    max_length: int = 64
    meta_lr: float = 0.01
    seed: int = 0
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    # Scoring while training: ZO runs of validation_steps steps on the validation tasks (validation_seeds runs
    # each), policy vs sigma = 1; it also selects the policy that is shipped.
    validate_every: int = 20
    validation_steps: int = 60
    validation_seeds: int = 2
    # At the end: short fine-tunes on the validation tasks at each lr of lr_grid (default [lr]); the best
    # policy dev loss picks the recommended lr.
    final_steps: int = 60
    lr_grid: list[float] | None = None
    # The sensitivity mask (l2lzo.policy.sensitivity): before the first meta-step, squared gradients at the
    # pretrained weights over mask_batches train batches of batch_size, drawn in turn from every meta-train task
    # and split over the workers; one mask per density (global top fraction), each tried by the final
    # validation alone and under the shape, on a grid mask_lr_scale times lr_grid. Empty: no mask.
    mask_densities: list[float] = field(default_factory=list)
    mask_batches: int = 64
    mask_scope: str = "global"
    mask_lr_scale: float = 4.0
    # Ray
    workers: int = 1
    threads: int | None = None  # torch threads per worker (default: the CPUs Ray sees / workers)
    address: str | None = None
    checkpoint_every: int = 25
    max_failures: int = 2
    # Where it goes
    output: str | None = None  # run folder (default results/meta_train/<model>_<scheme>)
    registry: str | None = None
    server: str | None = None
    token_file: str | None = None
    push: bool = True

    def resolved_lr(self) -> float:
        """The look-ahead's ZO-SGD lr: ``lr``, else l2lzo's default for ZO-SGD on the scheme. There is no policy
        step here (meta-training is what makes the recommendation), so only the default is shared with
        ``FinetuneConfig.plan``."""
        return self.lr if self.lr is not None else default_lr("zo-sgd", self.scheme)

    def resolved_lr_grid(self) -> list[float]:
        return list(self.lr_grid) if self.lr_grid else [self.resolved_lr()]

    def output_path(self) -> Path:
        if self.output:
            return Path(self.output)
        return Path("results") / "meta_train" / f"{self.model}_{self.scheme}".replace("/", "-")

    def validate(self) -> None:
        """Ranges and names, before anything slow starts; one-line ``ConfigError``s."""
        check_scheme(self.scheme)
        check_noise(self.noise)
        check_lr(self.resolved_lr())
        for lr in self.resolved_lr_grid():
            check_lr(lr)
        check_eps(self.eps)
        if not self.train_tasks or not self.validation_tasks:
            raise ConfigError("meta-training needs at least one train task and one validation task")
        overlap = sorted(set(self.train_tasks) & set(self.validation_tasks))
        if overlap:
            raise ConfigError(f"train and validation task pools must be disjoint; both have {', '.join(overlap)}")
        shared = shared_datasets(self.train_tasks, self.validation_tasks)
        if shared:
            raise ConfigError("train and validation task pools must not share a dataset: "
                              + "; ".join(f"{d} ({', '.join(names)})" for d, names in shared.items()))
        positive = {"meta_steps": self.meta_steps, "inner_steps": self.inner_steps, "reset_every": self.reset_every,
                    "batch_size": self.batch_size, "heldout_batch_size": self.heldout_batch_size,
                    "train_size": self.train_size, "validate_every": self.validate_every,
                    "validation_steps": self.validation_steps, "validation_seeds": self.validation_seeds,
                    "final_steps": self.final_steps,
                    "workers": self.workers, "checkpoint_every": self.checkpoint_every}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name.replace('_', ' ')} must be >= 1, got {value}")
        if any(not 0 < d < 1 for d in self.mask_densities) or len(set(self.mask_densities)) != len(
                self.mask_densities):
            raise ConfigError(f"mask densities must be distinct and in (0, 1), got {self.mask_densities}")
        check_choice("mask scope", self.mask_scope, SPARSE_SCOPES)
        if self.mask_densities and self.mask_batches < self.workers:
            raise ConfigError(f"mask batches must be >= workers ({self.workers}), got {self.mask_batches}")
        if not self.mask_lr_scale > 0:
            raise ConfigError(f"mask lr scale must be > 0, got {self.mask_lr_scale}")
        if not self.meta_lr > 0:
            raise ConfigError(f"meta lr must be > 0, got {self.meta_lr}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> MetaTrainConfig:
        data = dict(data)
        data["policy"] = PolicyConfig(**data.get("policy", {}))
        return cls(**data)
