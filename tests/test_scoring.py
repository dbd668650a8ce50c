"""Scoring modes: label-word logits, candidate log-likelihood, encoder similarity."""

from __future__ import annotations

import pytest
import torch

from l2lzo.models import CAUSAL, tiny_model
from l2lzo.scoring import Scorer
from l2lzo.tasks import Example


def test_single_token_mode_reads_the_last_position(tiny_causal, label_word_examples, candidate_examples):
    scorer = Scorer(tiny_causal)
    batch = scorer.encode(label_word_examples)
    assert batch.mode == "single_token"
    with torch.no_grad():
        scores = scorer.option_scores(batch)
        tok = tiny_causal.tokenizer
        ids = tok(label_word_examples[0].prompt, return_tensors="pt")["input_ids"]
        logp = tiny_causal.model(input_ids=ids).logits[0, -1].log_softmax(-1)
    word_ids = [tok(w, add_special_tokens=False)["input_ids"][0] for w in ("n", "y")]
    torch.testing.assert_close(scores[0], logp[word_ids], rtol=1e-4, atol=1e-4)


def test_candidate_mode_is_mean_token_log_likelihood(tiny_causal, label_word_examples, candidate_examples):
    scorer = Scorer(tiny_causal)
    batch = scorer.encode(candidate_examples)
    assert batch.mode == "candidate"
    with torch.no_grad():
        scores = scorer.option_scores(batch)
        tok = tiny_causal.tokenizer
        example = candidate_examples[1]
        for j, option in enumerate(example.options):
            prompt = tok(example.prompt, add_special_tokens=False)["input_ids"]
            cand = tok(option, add_special_tokens=False)["input_ids"]
            logp = tiny_causal.model(input_ids=torch.tensor([prompt + cand])).logits[0].log_softmax(-1)
            want = torch.stack([logp[len(prompt) + i - 1, t] for i, t in enumerate(cand)]).mean()
            torch.testing.assert_close(scores[1, j], want, rtol=1e-4, atol=1e-4)


def test_candidate_truncation_keeps_the_answer(tiny_causal, label_word_examples, candidate_examples):
    scorer = Scorer(tiny_causal, max_length=16)
    long = [Example("x" * 200 + " Q?", (" yes it is", " no"), 0), Example("short", (" a", " bb"), 1)]
    batch = scorer.encode(long)
    assert batch.inputs["input_ids"].shape[1] <= 16
    assert int(batch.candidate_mask.sum()) == sum(
        len(scorer.tokenizer(o, add_special_tokens=False)["input_ids"]) for e in long for o in e.options
    )


def test_encoder_similarity_scores_are_bounded_cosines(tiny_encoder, label_word_examples):
    scorer = Scorer(tiny_encoder)
    batch = scorer.encode(label_word_examples)
    assert batch.mode == "similarity"
    with torch.no_grad():
        scores = scorer.option_scores(batch)
    assert scores.shape == (4, 2)
    assert scores.abs().max() <= 1 / 0.05 + 1e-4


def test_evaluate_groups_mixed_option_counts(tiny_causal, label_word_examples, candidate_examples):
    scorer = Scorer(tiny_causal)
    mixed = [*candidate_examples, Example("Q: pick\nA:", (" one", " two", " three"), 2)]
    metrics = scorer.evaluate(mixed, batch_size=2)
    assert metrics["examples"] == 3 and 0 <= metrics["accuracy"] <= 1 and metrics["loss"] > 0


# A multiple-choice example whose options start with different tokens but are several tokens long, and
# partners that change its batch: its scores must not depend on them (no batch-dependent scoring mode).
_ALONE = Example("Q: colour of the sky?\nA:", ("blue", "red sun"), 0)
_PARTNERS = [Example("Q: colour of grass?\nA:", ("green", "purple"), 1),
             Example("Q: a much longer question that makes this row the widest of its batch?\nA:", ("1", "2"), 1),
             Example("It was", ("a", "b"), 0)]


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_scores_do_not_depend_on_the_batch(architecture):
    """Same example alone and batched: same scores. Covers the scoring mode and left-padding positions
    (GPT-2's absolute position embeddings shift with padding unless position ids skip the pads)."""
    scorer = Scorer(tiny_model(CAUSAL, architecture=architecture))
    examples = [_ALONE, *_PARTNERS]
    with torch.no_grad():
        alone = [scorer.option_scores(scorer.encode([e]))[0] for e in examples]
        for i, example in enumerate(examples):
            for partner in examples[:i] + examples[i + 1:]:
                batched = scorer.option_scores(scorer.encode([partner, example]))[1]
                torch.testing.assert_close(batched, alone[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_evaluate_does_not_depend_on_the_batch_size(architecture):
    scorer = Scorer(tiny_model(CAUSAL, architecture=architecture))
    examples = [_ALONE, *_PARTNERS]
    one, many = scorer.evaluate(examples, batch_size=1), scorer.evaluate(examples, batch_size=3)
    assert one["accuracy"] == many["accuracy"]
    assert one["loss"] == pytest.approx(many["loss"], rel=1e-5)


def test_similarity_embeds_each_distinct_option_once_with_the_same_scores(tiny_encoder):
    scorer = Scorer(tiny_encoder)
    examples = [Example(f"text {i}", ("no", "yes"), i % 2) for i in range(6)] + [Example("odd", ("yes", "maybe"), 0)]
    batch = scorer.encode(examples)
    assert batch.option_inputs["input_ids"].shape[0] == 3  # no, yes, maybe
    with torch.no_grad():
        scores = scorer.option_scores(batch)
        for i, example in enumerate(examples):
            torch.testing.assert_close(scores[i], scorer.option_scores(scorer.encode([example]))[0],
                                       rtol=1e-5, atol=1e-5)
