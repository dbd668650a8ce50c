"""The fine-tune loop: one model, one task, one optimizer; periodic dev eval, best checkpoint, results JSON."""

from __future__ import annotations

import json
import os
import random
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from l2lzo.blocks import GROUP_LEVELS, discover_blocks, group_blocks
from l2lzo.errors import L2LZOError, check_choice
from l2lzo.export import check_save_target, save_weights
from l2lzo.files import write_json
from l2lzo.indexed_perturbation import IndexedPerturbationEngine
from l2lzo.models import LoadedModel, fingerprint, load_model
from l2lzo.noise import check_noise
from l2lzo.optim import HYBRID_FO, ZERO_ORDER, build_optimizer, optimizer_class
from l2lzo.optim.hyperparameters import check_eps, check_lr, check_n_queries, check_unit_interval
from l2lzo.optim.zeroth_order import SigmaHook
from l2lzo.policy.artifact import PolicyArtifact
from l2lzo.policy.network import LearnedSigma
from l2lzo.policy.plan import OptimizerPlan, resolve_plan
from l2lzo.policy.sensitivity import SensitivityMask
from l2lzo.policy.source import parse_policy_spec, resolve_policy
from l2lzo.profiling import METRICS, GroupImportance, choose_fo_groups, profile_layers, profile_records
from l2lzo.schemes import SchemeConfig, apply_scheme, check_scheme
from l2lzo.scoring import Scorer
from l2lzo.sparsity import SENSITIVE, SparsityConfig
from l2lzo.tasks import Example, TaskSplits, load_task

# ZO needs a small lr on full fine-tuning and larger ones when few parameters train. Measured: ("zo", "full")
# best of 1e-5, 5e-5, 2e-4 on minilm-l6 polarity (150 steps); ("zo", "lora") on smollm2-135m polarity, 150
# steps: 5e-4 and 1e-3 barely move, 3e-3 learns. Prefix/prompt values are MeZO's, not tuned here.
DEFAULT_LR = {
    ("zo", "full"): 5e-5, ("zo", "lora"): 3e-3, ("zo", "prefix"): 1e-2, ("zo", "prompt"): 1e-2,
    ("fo", "full"): 1e-4, ("fo", "lora"): 1e-3, ("fo", "prefix"): 1e-2, ("fo", "prompt"): 1e-2,
}
DEFAULT_EPS = 1e-3
DEFAULT_STEPS = 400


SCHEME_KNOBS = ("lora_r", "lora_alpha", "lora_dropout", "lora_targets", "num_virtual_tokens")


def scheme_knobs(scheme: str, config: SchemeConfig | None = None) -> dict:
    """``FinetuneConfig``'s peft knobs for ``scheme`` from ``config`` (default: the defaults); knobs of other
    schemes are None. ``lora_targets`` stays None when not given (the attention projections the model names)."""
    c = config or SchemeConfig()
    knobs = dict.fromkeys(SCHEME_KNOBS)
    if scheme == "lora":
        knobs.update(lora_r=c.lora_rank, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                     lora_targets=None if c.lora_targets is None else ",".join(c.lora_targets))
    elif scheme in ("prefix", "prompt"):
        knobs["num_virtual_tokens"] = c.prefix_tokens if scheme == "prefix" else c.prompt_tokens
    return knobs


def default_lr(optimizer: str, scheme: str) -> float:
    """``DEFAULT_LR`` for the optimizer's kind (ZO or FO) and the scheme."""
    kind = "zo" if optimizer.lower() in ZERO_ORDER else "fo"
    return DEFAULT_LR[(kind, scheme)]


@dataclass
class FinetuneConfig:
    """Everything that defines a run; defaults are the embedded main job (real model, real data)."""

    model: str = "minilm-l6"
    task: str = "polarity"
    optimizer: str = "zo-sgd"
    scheme: str = "full"
    # lr, eps and steps: None (not given) means the policy's recommendation, else the default (DEFAULT_LR for
    # the optimizer kind and scheme, DEFAULT_EPS, DEFAULT_STEPS); see ``plan``.
    steps: int | None = None
    lr: float | None = None
    eps: float | None = None
    batch_size: int = 16
    seed: int = 0
    n_queries: int = 1
    noise: str = "pool"  # ZO noise source (l2lzo.noise): pool or gaussian
    train_size: int | None = 256  # k-shot per class (classification) or total (multiple choice)
    dev_size: int = 200
    test_size: int = 500
    eval_every: int = 100
    max_length: int = 64
    time_budget: float | None = None  # seconds of training (steps + profiling) after which the run stops early
    output: str | None = None  # results JSON path; default results/<model>_<task>_<optimizer>_<scheme>_s<seed>.json
    # Structured ZO (ZO optimizers only): block-wise estimates, sparse z, hybrid ZO/FO.
    zo_blocks: str | None = None  # None: one estimate for all blocks; else one per group at this level
    sparsity: float = 0.0  # fraction of z set to zero
    sparse_mode: str = "random"
    sparse_scope: str = "layer"
    sparse_resample: int = 100
    sparse_mask: str | None = None  # a sensitivity mask file (l2lzo profile-sensitivity): static sparse z
    hybrid_fo_budget: float = 0.0  # > 0: the most important layers within this fraction of parameters train FO
    hybrid_fo_optimizer: str = "adam"
    hybrid_fo_lr: float | None = None  # None: DEFAULT_LR for (fo, scheme)
    profile_batches: int = 4
    profile_metric: str = "taylor"
    # The learned perturbation policy (l2lzo.policy.source): FILE, MODEL[@VERSION] or auto; None: sigma = 1.
    policy: str | None = None
    server: str | None = None  # policy service URL (else the local registry)
    registry: str | None = None  # local registry root (default: $L2LZO_REGISTRY, else the XDG data dir)
    # peft knobs (l2lzo.schemes.SchemeConfig); None: the scheme's default. Each applies to its schemes only.
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    lora_targets: str | None = None  # comma-separated module names; None: the attention query/value projections
    num_virtual_tokens: int | None = None  # prefix and prompt
    # Where the best-dev weights go (l2lzo.export): a save_pretrained folder (full) or a peft adapter folder.
    save: str | None = None
    overwrite: bool = False  # replace a non-empty ``save`` folder

    def scheme_config(self) -> SchemeConfig:
        """The peft knobs as ``apply_scheme`` takes them (checked there: one-line errors)."""
        given = {"lora_rank": self.lora_r, "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout,
                 "lora_targets": None if self.lora_targets is None
                 else tuple(t.strip() for t in self.lora_targets.split(",")),
                 "prefix_tokens": self.num_virtual_tokens, "prompt_tokens": self.num_virtual_tokens}
        return SchemeConfig(**{k: v for k, v in given.items() if v is not None})

    def with_scheme_knobs(self) -> FinetuneConfig:
        """This config with the knobs of its scheme resolved (given, else the default), as results record them."""
        return replace(self, **scheme_knobs(self.scheme, self.scheme_config()))

    def plan(self, policy: PolicyArtifact | None = None) -> OptimizerPlan:
        """This run's lr, eps and steps with ``policy`` and where each came from (``l2lzo.policy.plan.resolve_plan``:
        the flag, else the policy's recommendation, else l2lzo's default)."""
        return resolve_plan(self.optimizer, lr=self.lr, eps=self.eps, steps=self.steps, policy=policy,
                            default_lr=default_lr(self.optimizer, self.scheme), default_eps=DEFAULT_EPS,
                            default_steps=DEFAULT_STEPS)

    def resolved_fo_lr(self) -> float:
        return self.hybrid_fo_lr if self.hybrid_fo_lr is not None else DEFAULT_LR[("fo", self.scheme)]

    def sparsity_config(self, policy: PolicyArtifact | None = None) -> SparsityConfig | None:
        """The sparse-z settings, checked (its own one-line errors); None when z is dense.

        The mask is ``--sparse-mask``'s, else the policy's (when it carries one): an explicit ``--sparse-mask``
        or ``--sparsity`` replaces the policy's mask, which the run then does not use.
        """
        mask = SensitivityMask.from_file(self.sparse_mask) if self.sparse_mask else None
        if mask is None and not self.sparsity and policy is not None:
            mask = policy.mask()
        config = SparsityConfig(self.sparsity, SENSITIVE if mask is not None else self.sparse_mode,
                                self.sparse_scope, self.sparse_resample, mask=mask)
        return config if config.active else None

    def output_path(self) -> Path:
        if self.output:
            return Path(self.output)
        stem = f"{self.model}_{Path(self.task).stem}_{self.optimizer}_{self.scheme}_s{self.seed}".replace("/", "-")
        return Path("results") / f"{stem}.json"

    def validate(self) -> None:
        """Names and ranges, checked before anything slow is loaded; one-line errors.

        Each rule lives with the code that owns the setting (optimizers, noise, sparsity, groups, profiling);
        only the loop's own settings are checked here.
        """
        optimizer_class(self.optimizer)
        check_scheme(self.scheme)
        plan = self.plan()  # a policy's own recommendations are checked when it loads
        check_lr(plan.lr)
        check_eps(plan.eps)
        check_n_queries(self.n_queries)
        check_noise(self.noise)
        self.sparsity_config()  # its own checks
        if self.zo_blocks is not None:
            check_choice("group level", self.zo_blocks, GROUP_LEVELS)
        if self.policy is not None:
            parse_policy_spec(self.policy)
            zo = ZERO_ORDER.get(self.optimizer.lower())
            if zo is None:
                raise L2LZOError(f"--policy shapes ZO perturbations; {self.optimizer} is a first-order optimizer")
            if zo.sigma_meaning is not None:
                raise L2LZOError(f"--policy does not apply to {self.optimizer}: {zo.sigma_meaning}")
        check_choice("hybrid FO optimizer", self.hybrid_fo_optimizer, HYBRID_FO)
        check_unit_interval("hybrid FO lr", self.resolved_fo_lr())
        check_choice("importance metric", self.profile_metric, METRICS)
        self.scheme_config()  # its own checks
        knobs = {"lora": ("lora_r", "lora_alpha", "lora_dropout", "lora_targets"),
                 "prefix": ("num_virtual_tokens",), "prompt": ("num_virtual_tokens",)}.get(self.scheme, ())
        stray = [k for k in SCHEME_KNOBS if getattr(self, k) is not None and k not in knobs]
        if stray:
            owner = "prefix and prompt" if stray[0] == "num_virtual_tokens" else "lora"
            raise L2LZOError(f"--{stray[0].replace('_', '-')} applies to --scheme {owner}, not {self.scheme}")
        checks = [
            (plan.steps >= 1, f"--steps must be >= 1, got {plan.steps}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.eval_every >= 1, f"--eval-every must be >= 1, got {self.eval_every}"),
            (self.max_length >= 8, f"--max-length must be >= 8, got {self.max_length}"),
            (self.time_budget is None or self.time_budget > 0, f"--time-budget must be > 0, got {self.time_budget}"),
            (self.train_size is None or self.train_size >= 1, f"--train-size must be >= 1, got {self.train_size}"),
            (self.dev_size >= 1 and self.test_size >= 1, "--dev-size and --test-size must be >= 1"),
            (0 <= self.hybrid_fo_budget < 1, f"--hybrid-fo-budget must be in [0, 1), got {self.hybrid_fo_budget}"),
            (self.profile_batches >= 1, f"--profile-batches must be >= 1, got {self.profile_batches}"),
            (self.optimizer.lower() in ZERO_ORDER
             or not (self.zo_blocks or self.sparsity or self.sparse_mask or self.hybrid_fo_budget),
             f"--zo-blocks, --sparsity, --sparse-mask and --hybrid-fo-budget apply to ZO optimizers, not "
             f"{self.optimizer}"),
        ]
        for ok, message in checks:
            if not ok:
                raise L2LZOError(message)


@dataclass
class FinetuneResult:
    """What a run writes to its results JSON."""

    config: dict
    model_fingerprint: str
    trainable_parameters: int
    task_source: str
    evals: list[dict] = field(default_factory=list)
    best_step: int = 0
    initial_test: dict = field(default_factory=dict)
    final_test: dict = field(default_factory=dict)
    median_step_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    wall_seconds: float = 0.0
    checkpoint: str | None = None
    structure: dict = field(default_factory=dict)  # FO set and profile (hybrid), mask memory (sparse)
    steps_done: int = 0
    train_seconds: float = 0.0  # optimizer steps plus profiling, without evals
    policy: dict | None = None  # the learned policy used (model, version, sha256, ...); None: sigma = 1
    policy_seconds_per_step: float = 0.0  # time the policy took per step (features and network)
    final_sigma: dict[str, float] = field(default_factory=dict)  # the policy's sigma at the last step, by block
    peft: dict | None = None  # the peft config the scheme ran with (type, r, alpha, targets, virtual tokens)
    saved: dict | None = None  # where --save wrote the best-dev weights: path, format (l2lzo.export)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def grouped_loss(scorer: Scorer, examples: list[Example]):
    """A closure over one training batch: its mean loss, batches split by option count, encoded once."""
    batches = list(scorer.batches(examples, len(examples)))
    total = len(examples)

    def closure() -> torch.Tensor:
        return sum(scorer.loss(b) * (len(b.labels) / total) for b in batches)

    return closure


class BestCheckpoint:
    """Keeps the trainable tensors of the best dev step on disk (safetensors, atomic), not in RAM.

    Holding a copy in memory would double the footprint of full fine-tuning, which ZO exists to avoid.
    """

    def __init__(self, path: Path):
        self.path = path

    def save(self, model: torch.nn.Module) -> None:
        from safetensors.torch import save_file

        tensors = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}-", dir=self.path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def restore(self, model: torch.nn.Module) -> None:
        from safetensors.torch import load_file

        saved = load_file(self.path)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in saved:
                    param.copy_(saved[name])


def finetune(config: FinetuneConfig, loaded: LoadedModel | None = None, splits: TaskSplits | None = None,
             progress: bool = True, sigma_hook: SigmaHook | None = None, say=None) -> FinetuneResult:
    """Run one fine-tune and write its results JSON (and best checkpoint beside it).

    ``loaded`` / ``splits`` may be given to reuse an already loaded model or task (tests, batch jobs).
    ``sigma_hook`` (instead of ``config.policy``) perturbs with any per-step sigma, e.g. a static baseline.
    ``say``, when given, is called with the resolved plan (lr, eps, steps and where each came from) before
    training; the results JSON records the resolved values in ``config``.
    """
    if sigma_hook is not None and config.policy:
        raise L2LZOError("give a policy or a sigma hook, not both")
    config.validate()
    if config.save:
        check_save_target(config.save, config.overwrite)
    start = time.perf_counter()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    splits = splits or load_task(config.task, seed=config.seed, train_size=config.train_size,
                                 dev_size=config.dev_size, test_size=config.test_size)
    if not splits.train or not splits.dev:
        raise L2LZOError(f"task {config.task!r} has too few examples for train and dev splits")
    loaded = loaded or load_model(config.model)
    policy = resolve_run_policy(config, loaded)
    plan = config.plan(policy)
    if say is not None:
        say(f"plan: {plan.describe()}")
    config = replace(config, lr=plan.lr, eps=plan.eps, steps=plan.steps).with_scheme_knobs()
    if config.sparse_mask:  # made for the base model: its fingerprint is checked before the scheme applies
        SensitivityMask.from_file(config.sparse_mask).check_fingerprint(fingerprint(loaded.model))
    loaded = apply_scheme(loaded, config.scheme, config.scheme_config())
    model = loaded.model
    scorer = Scorer(loaded, max_length=config.max_length)
    optimizer, structure, sigma_policy = build_run_optimizer(config, scorer, splits.train, policy, sigma_hook)
    profile_seconds = structure.get("profile_seconds", 0.0)
    out_path = config.output_path()
    checkpoint = BestCheckpoint(out_path.with_suffix(".best.safetensors"))
    result = FinetuneResult(
        config=asdict(config),
        model_fingerprint=fingerprint(model),
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        task_source=splits.info.source,
        checkpoint=str(checkpoint.path),
        structure=structure,
        peft=peft_summary(model),
    )
    if policy is not None:  # learned, or hyperparameters only (then sigma = 1)
        result.policy = policy.summary()
    elif sigma_hook is not None:
        result.policy = {"kind": "sigma hook", "hook": getattr(sigma_hook, "__qualname__", repr(sigma_hook))}
    result.initial_test = scorer.evaluate(splits.test)
    best_dev = _record_eval(result, scorer, splits, step=0, train_loss=None)
    checkpoint.save(model)

    order = _epoch_order(len(splits.train), config.seed)
    step_times, recent = [], []
    bar = tqdm(range(1, config.steps + 1), desc=f"{config.optimizer} {config.task}", disable=not progress)
    for step in bar:
        batch = [splits.train[next(order)] for _ in range(min(config.batch_size, len(splits.train)))]
        closure = grouped_loss(scorer, batch)
        t0 = time.perf_counter()
        try:
            loss = optimizer.step(closure)
        except FloatingPointError as exc:
            raise L2LZOError(f"training diverged at step {step} ({exc}): try a smaller --lr") from exc
        step_times.append(time.perf_counter() - t0)
        recent.append(loss)
        out_of_time = config.time_budget is not None and profile_seconds + sum(step_times) >= config.time_budget
        if step % config.eval_every == 0 or step == config.steps or out_of_time:
            dev = _record_eval(result, scorer, splits, step=step, train_loss=statistics.fmean(recent))
            recent = []
            if dev > best_dev:
                best_dev, result.best_step = dev, step
                checkpoint.save(model)
            bar.set_postfix(loss=f"{loss:.3f}", dev_acc=f"{dev:.3f}", best=f"{best_dev:.3f}")
        if out_of_time:
            break
    result.steps_done = len(step_times)
    result.train_seconds = profile_seconds + sum(step_times)
    checkpoint.restore(model)
    result.final_test = scorer.evaluate(splits.test)
    zo = getattr(optimizer, "zo", optimizer)
    if isinstance(getattr(zo, "engine", None), IndexedPerturbationEngine):
        result.structure.update(mask_bytes=zo.engine.nbytes, perturbed_coordinates=zo.engine.kept)
    elif getattr(zo, "mask", None) is not None:
        result.structure["mask_bytes"] = zo.mask.nbytes
    if config.zo_blocks:
        result.structure["zo_groups"] = len(zo.groups)
    result.median_step_seconds = statistics.median(step_times)
    if sigma_policy is not None:
        result.policy_seconds_per_step = sigma_policy.seconds / max(len(step_times), 1)
        result.final_sigma = sigma_policy.last_sigma
    if config.save:
        result.saved = save_weights(loaded, config.save, overwrite=config.overwrite)
    result.peak_rss_mb = peak_rss_mb()
    result.wall_seconds = time.perf_counter() - start
    write_json(out_path, asdict(result))
    return result


def peft_summary(model: torch.nn.Module) -> dict | None:
    """The settings of the peft config ``model`` runs (None: not a peft model, i.e. full fine-tuning)."""
    configs = getattr(model, "peft_config", None)
    if not configs:
        return None
    config = configs[getattr(model, "active_adapter", "default")]
    summary = {"peft_type": _enum_value(config.peft_type), "task_type": _enum_value(config.task_type)}
    for name in ("r", "lora_alpha", "lora_dropout", "num_virtual_tokens"):
        if hasattr(config, name):
            summary[name] = getattr(config, name)
    if getattr(config, "target_modules", None) is not None:
        summary["target_modules"] = sorted(config.target_modules)
    return summary


def changed_settings(previous: dict, config: FinetuneConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """The settings (outside ``ignore``) in which a results file's ``config`` differs from ``config`` as a run of it
    records itself (peft knobs resolved). A setting the file lacks was made before it existed: it counts as what
    runs did then (the scheme's peft defaults, no --save)."""
    expected = json.loads(json.dumps(asdict(config.with_scheme_knobs())))
    previous = {**scheme_knobs(config.scheme), "save": None, "overwrite": False, **previous}
    return sorted(k for k in expected if k not in ignore and previous.get(k) != expected[k])


def resolve_run_policy(config: FinetuneConfig, loaded: LoadedModel | None = None) -> PolicyArtifact | None:
    """The policy ``config.policy`` names for ``loaded`` (the base model, before the scheme; loaded here when not
    given); None: sigma = 1.

    One-line errors for a bad name or a fingerprint mismatch; a ``PolicyWarning`` when ``auto`` finds none.
    """
    if not config.policy:
        return None
    loaded = loaded or load_model(config.model)
    # A local folder has no registry id: its policy can only be found by its architecture fingerprint.
    model_id = None if Path(config.model).expanduser().exists() else config.model
    return resolve_policy(config.policy, model_id=model_id, fingerprint=fingerprint(loaded.model),
                          server=config.server, registry_root=config.registry)


def build_run_optimizer(config: FinetuneConfig, scorer: Scorer, train: list[Example],
                        policy: PolicyArtifact | None = None, sigma_hook: SigmaHook | None = None
                        ) -> tuple[object, dict, LearnedSigma | None]:
    """The optimizer a run of ``config`` trains with, its structure record, and the learned policy it runs.

    Hybrid ZO/FO profiles layer importance on ``train`` first (``structure["profile_seconds"]``). A learned
    ``policy`` (from ``resolve_run_policy``) or a ``sigma_hook`` is attached to the optimizer here. The
    fine-tune loop and the benchmark probes (``l2lzo.bench.probe``) both build their optimizer here, so a
    probe measures exactly what a run steps with, policy included.
    """
    fo_blocks = None
    structure: dict = {}
    if config.hybrid_fo_budget:
        t0 = time.perf_counter()
        profile = profile_task(scorer, train, config)
        profile_seconds = time.perf_counter() - t0
        fo_groups = choose_fo_groups(profile, config.hybrid_fo_budget)
        if not fo_groups:
            smallest = min(profile, key=lambda g: g.parameters)
            raise L2LZOError(f"--hybrid-fo-budget {config.hybrid_fo_budget} fits no layer (the smallest group, "
                             f"{smallest.group}, has {smallest.parameters:,} parameters)")
        groups = group_blocks(discover_blocks(scorer.loaded.model), "layer")
        fo_blocks = [b for name in fo_groups for b in groups[name]]
        structure = {"fo_groups": fo_groups, "fo_parameters": sum(b.numel for b in fo_blocks),
                     "profile_seconds": profile_seconds, "profile": profile_records(profile)}
    plan = config.plan(policy)
    check_lr(plan.lr)
    optimizer = build_optimizer(config.optimizer, scorer.loaded.model, lr=plan.lr, eps=plan.eps,
                                n_queries=config.n_queries, seed=config.seed, group_level=config.zo_blocks,
                                sparsity=config.sparsity_config(policy), fo_blocks=fo_blocks,
                                fo_optimizer=config.hybrid_fo_optimizer, fo_lr=config.resolved_fo_lr(),
                                noise=config.noise)
    network = policy.network() if policy is not None else None
    sigma_policy = LearnedSigma(network, config.scheme, total_steps=plan.steps) if network is not None else None
    if sigma_policy is not None or sigma_hook is not None:
        optimizer.set_sigma_hook(sigma_policy or sigma_hook)
    return optimizer, structure, sigma_policy


def profile_task(scorer: Scorer, train: list[Example], config: FinetuneConfig) -> list[GroupImportance]:
    """Layer importance of the scorer's model on ``config.profile_batches`` seeded training batches."""
    order = _epoch_order(len(train), config.seed + 1)  # not the training order's first batches
    size = min(config.batch_size, len(train))
    closures = [grouped_loss(scorer, [train[next(order)] for _ in range(size)])
                for _ in range(config.profile_batches)]
    return profile_layers(scorer.loaded.model, closures, metric=config.profile_metric)


def _enum_value(value) -> str:
    return str(getattr(value, "value", value))


def _record_eval(result: FinetuneResult, scorer: Scorer, splits: TaskSplits, step: int,
                 train_loss: float | None) -> float:
    dev = scorer.evaluate(splits.dev)
    result.evals.append({"step": step, "train_loss": train_loss, "dev_accuracy": dev["accuracy"],
                         "dev_loss": dev["loss"]})
    return dev["accuracy"]


def _epoch_order(n: int, seed: int):
    """Endless stream of example indices: a fresh seeded shuffle every epoch."""
    rng = random.Random(seed)
    while True:
        order = list(range(n))
        rng.shuffle(order)
        yield from order
