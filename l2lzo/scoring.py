"""Scoring examples with a model: option scores, the loss ZO optimizes, and accuracy.

Every task is cast as "pick one of the options" (MeZO-style prompts; ZO-Bench found prompt alignment
decides whether ZO works). An option's score is a function of its example alone, never of the batch:

* causal LM: the mean log-likelihood of the option's tokens given the prompt. When every option in the
  batch is a single token (a verbalizer such as " terrible" / " great"), the same number is read from one
  forward per example (the log-softmax at the last prompt position) instead of one per (example, option);
* encoder (sentence embedder): cosine similarity between the mean-pooled embeddings of the prompt
  and of each option, divided by a temperature.

Causal rows are left-padded, so every row ends at the last position; position ids count real tokens only,
so models with absolute position embeddings (GPT-2 style) see the same positions whatever the padding.
(peft's prompt and prefix tuning ignore position ids: with those schemes on such models, padding still
shifts positions.) The loss is cross-entropy over the option scores. Logits are computed only at the
positions that are scored (``logits_to_keep``), so the vocabulary projection costs a few rows.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from l2lzo.models import CAUSAL, LoadedModel
from l2lzo.tasks import Example

ENCODER_TEMPERATURE = 0.05


@dataclass
class EncodedBatch:
    """Tensors for one batch of examples; ``labels`` index each example's option."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    mode: str  # "single_token", "candidate" or "similarity"
    option_count: int = 0  # options per example
    option_inputs: dict[str, torch.Tensor] | None = None  # similarity mode: the distinct options' tokens
    option_index: torch.Tensor | None = None  # similarity mode: (examples, options) rows of option_inputs
    option_token_ids: torch.Tensor | None = None  # single-token mode: (examples, options) token ids
    candidate_mask: torch.Tensor | None = None  # candidate mode: which kept positions score the option
    candidate_targets: torch.Tensor | None = None  # candidate mode: the token to predict at each


class Scorer:
    """Turns examples into option scores and a loss, for one model and one task."""

    def __init__(self, loaded: LoadedModel, max_length: int = 64):
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.max_length = max_length
        self._position_ids = loaded.family == CAUSAL and _takes_position_ids(loaded.model)

    # ---- encoding ----------------------------------------------------------------------------------

    def encode(self, examples: Sequence[Example]) -> EncodedBatch:
        """Tokenize a batch. All examples of a batch must have the same number of options."""
        counts = {len(e.options) for e in examples}
        if len(counts) != 1:
            raise ValueError(f"examples in one batch must have the same number of options, got {sorted(counts)}")
        labels = torch.tensor([e.label for e in examples])
        if self.loaded.family != CAUSAL:
            return self._encode_similarity(examples, labels)
        prompts = [self._prompt_ids(e.prompt) for e in examples]
        options = [[self._option_ids(o) for o in e.options] for e in examples]
        if all(len(ids) == 1 for row in options for ids in row):
            # Exactly what candidate mode computes for one-token options, from one row per example.
            rows = [p[-(self.max_length - 1):] for p in prompts]
            token_ids = torch.tensor([[ids[0] for ids in row] for row in options])
            return EncodedBatch(self._left_padded(rows), labels, "single_token", token_ids.shape[1],
                                option_token_ids=token_ids)
        return self._encode_candidates(prompts, options, labels)

    def _prompt_ids(self, prompt: str) -> list[int]:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        # Tokenizers that want a BOS (Llama's) get it; the continuation must never follow an EOS.
        return [bos, *ids] if getattr(self.tokenizer, "add_bos_token", False) and bos is not None else ids

    def _option_ids(self, option: str) -> list[int]:
        return self.tokenizer(option, add_special_tokens=False)["input_ids"][: self.max_length - 1] or [
            self.tokenizer.eos_token_id]

    def _left_padded(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """Rows left-padded to one width: every row ends at the last position."""
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        inputs = {"input_ids": input_ids, "attention_mask": attention}
        if self._position_ids:
            inputs["position_ids"] = (attention.cumsum(-1) - 1).clamp(min=0)
        return inputs

    def _encode_candidates(self, prompts: list[list[int]], options: list[list[list[int]]],
                           labels: torch.Tensor) -> EncodedBatch:
        rows, cand_lengths = [], []
        for prompt_ids, option_ids in zip(prompts, options, strict=True):
            for ids in option_ids:
                # Cut the prompt's start, never the answer.
                rows.append(prompt_ids[-(self.max_length - len(ids)):] + ids)
                cand_lengths.append(len(ids))
        inputs = self._left_padded(rows)
        keep = max(cand_lengths) + 1
        # Position t of the kept window predicts token t+1; the last kept position predicts nothing.
        targets = inputs["input_ids"][:, -keep + 1:]
        positions = torch.arange(keep - 1).unsqueeze(0)
        mask = positions >= (keep - 1 - torch.tensor(cand_lengths)).unsqueeze(1)
        return EncodedBatch(inputs, labels, "candidate", len(options[0]), candidate_mask=mask,
                            candidate_targets=targets)

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                   max_length=self.max_length))

    def _encode_similarity(self, examples: Sequence[Example], labels: torch.Tensor) -> EncodedBatch:
        # Each distinct option is embedded once per batch: classification labels repeat in every example.
        distinct: dict[str, int] = {}
        index = [[distinct.setdefault(o.strip(), len(distinct)) for o in e.options] for e in examples]
        return EncodedBatch(
            self._tokenize([e.prompt for e in examples]), labels, "similarity", len(examples[0].options),
            option_inputs=self._tokenize(list(distinct)), option_index=torch.tensor(index),
        )

    # ---- scoring -----------------------------------------------------------------------------------

    def option_scores(self, batch: EncodedBatch) -> torch.Tensor:
        """Scores of shape (examples, options); higher means more likely."""
        model = self.loaded.model
        if batch.mode == "single_token":
            logp = model(**batch.inputs, logits_to_keep=1).logits[:, -1, :].float().log_softmax(-1)
            return torch.gather(logp, 1, batch.option_token_ids)
        if batch.mode == "candidate":
            keep = batch.candidate_mask.shape[1] + 1
            logits = model(**batch.inputs, logits_to_keep=keep).logits[:, :-1, :].float()
            token_logp = torch.gather(logits.log_softmax(-1), 2, batch.candidate_targets.unsqueeze(-1)).squeeze(-1)
            mask = batch.candidate_mask
            mean_logp = (token_logp * mask).sum(1) / mask.sum(1)
            return mean_logp.view(-1, batch.option_count)
        prompts = F.normalize(_mean_pool(model, batch.inputs), dim=-1)
        options = F.normalize(_mean_pool(model, batch.option_inputs), dim=-1)[batch.option_index]
        return torch.einsum("bh,boh->bo", prompts, options) / ENCODER_TEMPERATURE

    def loss(self, batch: EncodedBatch) -> torch.Tensor:
        """Mean cross-entropy of the correct option."""
        return F.cross_entropy(self.option_scores(batch), batch.labels)

    @torch.no_grad()
    def evaluate(self, examples: Sequence[Example], batch_size: int = 32) -> dict[str, float]:
        """Accuracy and mean loss over ``examples`` (batched by equal option count)."""
        correct, total_loss, n = 0, 0.0, 0
        for batch in self.batches(examples, batch_size):
            scores = self.option_scores(batch)
            correct += int((scores.argmax(-1) == batch.labels).sum())
            total_loss += float(F.cross_entropy(scores, batch.labels, reduction="sum"))
            n += len(batch.labels)
        return {"accuracy": correct / max(n, 1), "loss": total_loss / max(n, 1), "examples": n}

    def batches(self, examples: Sequence[Example], batch_size: int):
        """Encoded batches in order, each holding examples with the same number of options."""
        groups: dict[int, list[Example]] = {}
        for e in examples:
            groups.setdefault(len(e.options), []).append(e)
        for group in groups.values():
            for start in range(0, len(group), batch_size):
                yield self.encode(group[start:start + batch_size])


def _mean_pool(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    hidden = model(**inputs).last_hidden_state
    # Prompt tuning prepends virtual tokens to the output; pool over the real tokens only.
    hidden = hidden[:, hidden.shape[1] - inputs["attention_mask"].shape[1]:]
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def _takes_position_ids(model) -> bool:
    """Whether ``model`` uses the position ids it is given (peft's prompt learning drops them with a warning)."""
    peft_config = getattr(model, "peft_config", None)
    if peft_config is not None:
        if peft_config[model.active_adapter].is_prompt_learning:
            return False
        model = model.get_base_model()
    return "position_ids" in inspect.signature(model.forward).parameters
