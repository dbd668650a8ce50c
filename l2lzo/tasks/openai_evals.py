"""Tasks from the ``evals==3.0.1.post1`` wheel (OpenAI's evals registry; MIT, per-dataset licences in its
``LICENSE.md``).

Rows of ``evals/registry/data/<task>/*.jsonl`` are ``{"input": [chat messages], "ideal": answer}``; the
question is the last user message and the answer needs light parsing (a letter, ``"Answer: neutral"``,
``"[claim]"``, ``["The final answer is: B"]``). Choices listed inside the question (``" A: increases"``,
``"A. ..."`` lines, ``"A) ... B) ..."`` runs) become the options, and the instructions meant for a chat
model (answer with a letter, explain your reasoning) are replaced by a cue that ends where the answer
starts. Rows that do not parse are dropped and counted in the task's metadata.

Left out: LogiQA 2.0 and ReClor as shipped here (``logiqa-logical-reasoning-plus``): every row's right
answer was replaced by "None of the other options are correct.", so the task is one constant choice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from .base import CLASSIFICATION, MULTIPLE_CHOICE
from .builtin_task import (
    COMMONSENSE_MC,
    NLI_PARAPHRASE,
    REASONING_MC,
    SENTIMENT_TOPIC,
    YES_NO_RC,
    BuiltinTask,
    Converted,
    Distribution,
    choice_row,
    finish,
    jsonl_records,
    lettered_lines,
    rendered_examples,
)

OPENAI_EVALS = Distribution("evals==3.0.1.post1", "MIT; per-dataset licences in the wheel's LICENSE.md")
DATA_ROOT = "evals/registry/data/"

Row = dict[str, Any]
Parse = Callable[[str, str], Row | None]  # (question, ideal) -> rendered row


def question_of(sample: Row) -> str:
    """The last user message of a sample's chat input."""
    users = [m["content"] for m in sample["input"] if m.get("role") == "user"]
    return users[-1] if users else ""


def ideal_of(sample: Row) -> str:
    """The sample's answer as one string (``ideal`` may be a list of accepted answers: the first)."""
    ideal = sample.get("ideal")
    return str(ideal[0] if isinstance(ideal, list) and ideal else ideal or "").strip()



def letter_index(letter: str, count: int) -> int:
    """``"C"`` -> 2; -1 when it is not one of the first ``count`` letters."""
    index = ord(letter.strip()[-1:].upper() or "?") - ord("A")
    return index if 0 <= index < count else -1


# ---- parsers: (question, ideal) -> row ------------------------------------------------------------------


def yes_no(cue: str) -> Parse:
    """A yes/no question: the question, then ``cue``; ideal ``1``/``Yes``/``true`` is yes."""
    def parse(question: str, ideal: str) -> Row | None:
        if ideal.lower() not in {"0", "1", "yes", "no", "true", "false"}:
            return None
        return choice_row(f"{question.strip()}\n{cue}", ["No", "Yes"], int(ideal.lower() in {"1", "yes", "true"}))

    return parse


def labelled(cue: str, labels: Sequence[str], ideal_pattern: str = r"(.*)") -> Parse:
    """A fixed label set: the question, then ``cue``; the label is ``ideal_pattern`` 's group in ``ideal``."""
    def parse(question: str, ideal: str) -> Row | None:
        match = re.fullmatch(ideal_pattern, ideal.strip(), flags=re.S)
        label = match.group(1).strip().lower() if match else ""
        if label not in labels:
            return None
        return choice_row(f"{question.strip()}\n{cue}", labels, labels.index(label))

    return parse


def lettered(separator: str, cue: str, clean: Callable[[str], str] = str.strip) -> Parse:
    """Choices listed one per line after the stem (``"A: x"`` or ``"A. x"``); the ideal is the letter."""
    def parse(question: str, ideal: str) -> Row | None:
        parsed = lettered_lines(question, separator)
        if parsed is None:
            return None
        stem, choices = parsed
        return choice_row(f"{stem}{cue}", [clean(c) for c in choices], letter_index(ideal, len(choices)))

    return parse


def inline_lettered(stem_end: str, cue: str, separator: str, tail: str | None = None) -> Parse:
    """Choices in one run after ``stem_end`` (``"A) x. B) y."`` or ``"A. x, B. y"``), cut at ``tail``."""
    def parse(question: str, ideal: str) -> Row | None:
        if tail is not None:
            question = question.split(tail)[0]
        stem, _, run = question.rpartition(stem_end)
        parts = re.split(rf"(?:^|\s)([A-Z]){re.escape(separator)}\s", run.strip())
        letters, choices = parts[1::2], [p.strip().rstrip(",").strip() for p in parts[2::2]]
        if not stem or letters != [chr(ord("A") + i) for i in range(len(letters))]:
            return None
        return choice_row(f"{stem.strip()}{cue}", choices, letter_index(ideal, len(choices)))

    return parse


def _logiqa_choice(text: str) -> str:
    # LogiQA's options repeat their letter ("A. A.Zhao chose to travel by car.").
    return re.sub(r"^[A-D]\.\s*", "", text.strip())


def _crepe_question(question: str) -> str:
    return re.sub(r"\s*Answer with 'more likely'.*$", "", question.strip(), flags=re.S)


def _moral_question(question: str) -> str:
    return re.sub(r"\s*\nYes\s*\nNo\s*\nAnswer:\s*$", "", question.strip())


def _hitom(question: str, ideal: str) -> Row | None:
    row = inline_lettered("\n", "\nAnswer:", ".")(question, ideal)
    return row and {**row, "choices": [c.replace("_", " ") for c in row["choices"]]}


# ---- the tasks ----------------------------------------------------------------------------------------


def _task(name: str, kind: str, family: str, dataset: str, files: Sequence[str], parse: Parse, description: str,
          licence: str, question: Callable[[str], str] = lambda q: q) -> BuiltinTask:
    members = {DATA_ROOT + f for f in files}

    def convert(data: dict[str, bytes]) -> Converted:
        rows = [parse(question(question_of(s)), ideal_of(s)) for f in files for s in jsonl_records(data[DATA_ROOT + f])]
        return finish(rows, members=sorted(members))

    return BuiltinTask(name, kind, family, dataset, OPENAI_EVALS, description, members.__contains__, convert,
                       rendered_examples, licence)


BIAS_LABELS = ("fact", "opinion", "claim", "argument", "data", "quote", "narrative", "sensationalism", "speculation")

OPENAI_EVALS_TASKS = [
    _task("sarcasm", CLASSIFICATION, SENTIMENT_TOPIC, "sarcasm-headlines", ["sarcasm/samples.jsonl"],
          yes_no("Is this headline sarcastic? Yes or No?\nAnswer:"),
          "news headlines, sarcastic (The Onion) or not (HuffPost); 28,614", "CC0 (Misra, sarcasm headlines)"),
    _task("quartz", MULTIPLE_CHOICE, COMMONSENSE_MC, "quartz", ["quartz/samples.jsonl"], lettered(":", ""),
          "QuaRTz qualitative relationships (3,860 two-choice completions)", "CC-BY-4.0 (QuaRTz)"),
    _task("corr2cause", CLASSIFICATION, NLI_PARAPHRASE, "corr2cause", ["corr2cause/corr2cause.jsonl"],
          labelled("Answer (entailment, contradiction or neutral):", ("entailment", "contradiction", "neutral"),
                   r"Answer:\s*(\w+)"),
          "Corr2Cause: does a causal hypothesis follow from correlations (2,246)", "see evals' LICENSE.md"),
    _task("pararule_plus", CLASSIFICATION, YES_NO_RC, "pararule-plus",
          ["pararule-plus-multi-step-deductive-reasoning/pararule-plus-multi-step-deductive-reasoning.jsonl"],
          labelled("True or false?\nAnswer:", ("false", "true")),
          "PARARULE-Plus multi-step deduction over rules (2,000 true/false)", "MIT (PARARULE-Plus)",
          question=lambda q: re.sub(r"\s*Answer:\s*$", "", q.strip())),
    _task("logiqa", MULTIPLE_CHOICE, REASONING_MC, "logiqa", ["logiqa/logiqa.jsonl"],
          lettered(".", "\nAnswer:", _logiqa_choice), "LogiQA logical reasoning (1,354 four-choice)",
          "see evals' LICENSE.md"),
    _task("crepe", CLASSIFICATION, NLI_PARAPHRASE, "crepe", ["crepe/samples.jsonl"],
          labelled("Answer:", ("more likely", "less likely", "equally likely")),
          "CREPE: how a step changes an event's likelihood (1,520, 3 classes)", "see evals' LICENSE.md",
          question=_crepe_question),
    _task("parable_to_moral", MULTIPLE_CHOICE, REASONING_MC, "parable-to-moral",
          ["parable-to-moral-match/parable-to-moral-match-en.jsonl"],
          inline_lettered("\nWhich moral is this story attempting to convey? Please respond with the correct "
                          "multiple-choice answer.\n", "\nThe moral of this story:", ")",
                          tail="\nThe output should look like"),
          "parables and the moral each conveys, five choices (1,632, English)", "see evals' LICENSE.md"),
    _task("hitom", MULTIPLE_CHOICE, COMMONSENSE_MC, "hi-tom",
          ["theory_of_mind/hitom/hitom-multiple-choice.jsonl"], _hitom,
          "Hi-ToM higher-order theory of mind (600 stories, 15 locations)", "see evals' LICENSE.md"),
    _task("bias_detection", CLASSIFICATION, SENTIMENT_TOPIC, "news-bias-detection", ["bias_detection/samples.jsonl"],
          labelled("This sentence is best described as", BIAS_LABELS, r"\[(\w+)\]"),
          "news sentences as fact, opinion, claim, ... (285, 9 classes)", "see evals' LICENSE.md"),
    _task("moral_exceptqa", CLASSIFICATION, YES_NO_RC, "moral-exceptqa", ["moral_exceptQA/samples.jsonl"],
          yes_no("Answer:"), "MoralExceptQA: is breaking a rule acceptable here (148 yes/no)",
          "see evals' LICENSE.md", question=_moral_question),
]
