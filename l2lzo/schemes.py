"""Fine-tuning schemes: which tensors are trainable (full, LoRA, prefix, prompt), via ``peft``.

ZO optimizers perturb exactly the tensors a scheme leaves trainable (``requires_grad``), so the
scheme decides both memory and the dimension of the perturbation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from l2lzo.errors import ConfigError, L2LZOError, check_choice
from l2lzo.models import CAUSAL, LoadedModel

SCHEMES = ("full", "lora", "prefix", "prompt")


@dataclass(frozen=True)
class SchemeConfig:
    """Knobs of the parameter-efficient schemes (MeZO's defaults: LoRA r=8, alpha=16, no dropout, on the query and
    value projections; 5 prefix / 10 prompt virtual tokens). ``lora_targets`` None: the attention projections
    this architecture names (``_attention_targets``); else module names as peft matches them (a module's name or
    its last dotted parts)."""

    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] | None = None
    prefix_tokens: int = 5
    prompt_tokens: int = 10

    def __post_init__(self):
        checks = [
            (self.lora_rank >= 1, f"--lora-r must be >= 1, got {self.lora_rank}"),
            (self.lora_alpha >= 1, f"--lora-alpha must be >= 1, got {self.lora_alpha}"),
            (0 <= self.lora_dropout < 1, f"--lora-dropout must be in [0, 1), got {self.lora_dropout}"),
            (self.lora_targets is None or (len(self.lora_targets) > 0 and all(self.lora_targets)),
             f"--lora-targets must be a comma-separated list of module names, got {self.lora_targets}"),
            (self.prefix_tokens >= 1 and self.prompt_tokens >= 1,
             f"--num-virtual-tokens must be >= 1, got {min(self.prefix_tokens, self.prompt_tokens)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def check_scheme(scheme: str) -> None:
    """``L2LZOError`` listing the choices if ``scheme`` is not one of ``SCHEMES``."""
    check_choice("scheme", scheme, SCHEMES)


def apply_scheme(loaded: LoadedModel, scheme: str, config: SchemeConfig | None = None) -> LoadedModel:
    """Return ``loaded`` with its model wrapped for ``scheme`` (``full`` trains every parameter)."""
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    config = config or SchemeConfig()
    check_scheme(scheme)
    model = loaded.model
    if scheme == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return loaded
    task_type = TaskType.CAUSAL_LM if loaded.family == CAUSAL else TaskType.FEATURE_EXTRACTION
    if scheme == "lora":
        targets = (_attention_targets(model) if config.lora_targets is None
                   else _check_targets(model, config.lora_targets))
        peft_config = LoraConfig(task_type=task_type, r=config.lora_rank, lora_alpha=config.lora_alpha,
                                 lora_dropout=config.lora_dropout, target_modules=targets)
    elif scheme == "prefix":
        peft_config = PrefixTuningConfig(task_type=task_type, num_virtual_tokens=config.prefix_tokens)
    else:
        peft_config = PromptTuningConfig(task_type=task_type, num_virtual_tokens=config.prompt_tokens)
    wrapped = get_peft_model(model, peft_config)
    wrapped.eval()
    return LoadedModel(name=loaded.name, model=wrapped, tokenizer=loaded.tokenizer, family=loaded.family)


def _attention_targets(model) -> list[str]:
    """Query and value projections (MeZO's LoRA placement), by the names this architecture uses."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for pair in (("q_proj", "v_proj"), ("query", "value"), ("c_attn",)):
        if set(pair) <= names:
            return list(pair)
    raise L2LZOError("LoRA: no attention projections (q_proj/v_proj, query/value, c_attn) found in this model")


def _check_targets(model, targets: tuple[str, ...]) -> list[str]:
    """``targets`` as a list, or a one-line error naming the first that matches no module (peft's rule: a module
    whose name is the target or ends with ``.<target>``; peft itself proceeds when only some targets match)."""
    names = [name for name, _ in model.named_modules() if name]
    for target in targets:
        if not any(name == target or name.endswith(f".{target}") for name in names):
            leaves = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                             if name and not any(module.children()) and isinstance(getattr(module, "weight", None),
                                                                                    torch.Tensor)})
            raise L2LZOError(f"--lora-targets: {target!r} matches no module of this model (its layers with "
                             f"weights: {', '.join(leaves)})")
    return list(targets)
