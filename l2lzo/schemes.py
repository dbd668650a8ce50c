"""Fine-tuning schemes: which tensors are trainable (full, LoRA, prefix, prompt), via ``peft``.

ZO optimizers perturb exactly the tensors a scheme leaves trainable (``requires_grad``), so the
scheme decides both memory and the dimension of the perturbation.
"""

from __future__ import annotations

from dataclasses import dataclass

from l2lzo.errors import L2LZOError, check_choice
from l2lzo.models import CAUSAL, LoadedModel

SCHEMES = ("full", "lora", "prefix", "prompt")


@dataclass(frozen=True)
class SchemeConfig:
    """Knobs of the parameter-efficient schemes (MeZO's defaults: LoRA r=8, alpha=16; 5/10 virtual tokens)."""

    lora_rank: int = 8
    lora_alpha: int = 16
    prefix_tokens: int = 5
    prompt_tokens: int = 10


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
        peft_config = LoraConfig(task_type=task_type, r=config.lora_rank, lora_alpha=config.lora_alpha,
                                 lora_dropout=0.0, target_modules=_attention_targets(model))
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
