"""Scoring examples with a model: option scores, the loss ZO optimizes, and accuracy.

Every task is cast as "pick one of the options" (MeZO-style prompts; ZO-Bench found prompt alignment
decides whether ZO works):

* causal LM, fixed single-token verbalizer (classification): logits of the label words at the
  last prompt position (one forward per example);
* causal LM, otherwise (multiple choice): mean log-likelihood of each candidate's tokens given the
  prompt (one forward per (example, option) pair);
* encoder (sentence embedder): cosine similarity between the mean-pooled embeddings of the prompt
  and of each option, divided by a temperature.

The loss is cross-entropy over the option scores. Logits are computed only at the positions that are
scored (``logits_to_keep``), so the vocabulary projection costs a few rows, not the whole sequence.
"""

from __future__ import annotations

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
    mode: str
    option_count: int = 0  # options per example (label-word and candidate modes)
    option_inputs: dict[str, torch.Tensor] | None = None  # encoder mode: the options' tokens
    option_token_ids: torch.Tensor | None = None  # label-word mode: first token of each option
    candidate_mask: torch.Tensor | None = None  # candidate mode: which kept positions score the option
    candidate_targets: torch.Tensor | None = None  # candidate mode: the token to predict at each


class Scorer:
    """Turns examples into option scores and a loss, for one model and one task."""

    def __init__(self, loaded: LoadedModel, max_length: int = 64):
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.max_length = max_length

    # ---- encoding ----------------------------------------------------------------------------------

    def encode(self, examples: Sequence[Example]) -> EncodedBatch:
        """Tokenize a batch. All examples of a batch must have the same number of options."""
        counts = {len(e.options) for e in examples}
        if len(counts) != 1:
            raise ValueError(f"examples in one batch must have the same number of options, got {sorted(counts)}")
        labels = torch.tensor([e.label for e in examples])
        if self.loaded.family != CAUSAL:
            return self._encode_similarity(examples, labels)
        word_ids = self._label_word_ids(examples)
        if word_ids is not None:
            inputs = self._tokenize([e.prompt for e in examples])
            return EncodedBatch(inputs, labels, "label_word", len(word_ids), option_token_ids=word_ids)
        return self._encode_candidates(examples, labels)

    def _tokenize(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                   max_length=max_length or self.max_length))

    def _label_word_ids(self, examples: Sequence[Example]) -> torch.Tensor | None:
        """First token of each option, if all examples share the options and those tokens differ."""
        options = examples[0].options
        if any(e.options != options for e in examples):
            return None
        ids = [self.tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
        firsts = [i[0] for i in ids if i]
        if len(firsts) != len(options) or len(set(firsts)) != len(firsts):
            return None
        return torch.tensor(firsts)

    def _encode_candidates(self, examples: Sequence[Example], labels: torch.Tensor) -> EncodedBatch:
        tok = self.tokenizer
        rows, cand_lengths = [], []
        for e in examples:
            prompt_ids = tok(e.prompt, add_special_tokens=False)["input_ids"]
            for option in e.options:
                option_ids = tok(option, add_special_tokens=False)["input_ids"][: self.max_length - 1] or [
                    tok.eos_token_id
                ]
                keep = self.max_length - len(option_ids)
                rows.append(prompt_ids[-keep:] + option_ids)  # cut the prompt's start, never the answer
                cand_lengths.append(len(option_ids))
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id
        # Left padding: every row ends at the last position, so candidates share the trailing positions.
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        keep = max(cand_lengths) + 1
        # Position t of the kept window predicts token t+1; the last kept position predicts nothing.
        targets = input_ids[:, -keep + 1:]
        positions = torch.arange(keep - 1).unsqueeze(0)
        mask = positions >= (keep - 1 - torch.tensor(cand_lengths)).unsqueeze(1)
        return EncodedBatch(
            {"input_ids": input_ids, "attention_mask": attention}, labels, "candidate",
            len(examples[0].options), candidate_mask=mask, candidate_targets=targets,
        )

    def _encode_similarity(self, examples: Sequence[Example], labels: torch.Tensor) -> EncodedBatch:
        options = [o.strip() for e in examples for o in e.options]
        return EncodedBatch(
            self._tokenize([e.prompt for e in examples]), labels, "similarity", len(examples[0].options),
            option_inputs=self._tokenize(options),
        )

    # ---- scoring -----------------------------------------------------------------------------------

    def option_scores(self, batch: EncodedBatch) -> torch.Tensor:
        """Scores of shape (examples, options); higher means more likely."""
        model = self.loaded.model
        if batch.mode == "label_word":
            logits = model(**batch.inputs, logits_to_keep=1).logits[:, -1, :]
            return logits[:, batch.option_token_ids].float()
        if batch.mode == "candidate":
            keep = batch.candidate_mask.shape[1] + 1
            logits = model(**batch.inputs, logits_to_keep=keep).logits[:, :-1, :].float()
            token_logp = torch.gather(logits.log_softmax(-1), 2, batch.candidate_targets.unsqueeze(-1)).squeeze(-1)
            mask = batch.candidate_mask
            mean_logp = (token_logp * mask).sum(1) / mask.sum(1)
            return mean_logp.view(-1, batch.option_count)
        prompts = F.normalize(_mean_pool(model, batch.inputs), dim=-1)
        options = F.normalize(_mean_pool(model, batch.option_inputs), dim=-1)
        options = options.view(prompts.shape[0], batch.option_count, -1)
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
