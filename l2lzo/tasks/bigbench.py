"""BIG-bench JSON tasks (from the ``bigbench==1.0.0`` sdist) as multiple-choice tasks ``bb_<name>``.

Prompt format, following BIG-bench's own ``json_task`` zero-shot format:
``task_prefix + example_input_prefix + input [+ choice_prefix + choice ...] + example_output_prefix``,
with BIG-bench's defaults (input prefix ``"\\nQ: "``, output prefix ``"\\nA: "``, choice prefix
``"\\n  choice: "``, choices appended unless ``append_choices_to_input`` is false). Deviations, so that
the prompt ends right before the answer and options are ``" " + choice``: leading and trailing
whitespace of the prompt are stripped; an empty ``choice_prefix`` falls back to the default; when
choices are appended and the output prefix is blank, ``"\\nA:"`` is used instead.

Caps: choices are whitespace-stripped; examples with a tie for the best score, fewer than 2 or more
than ``MAX_OPTIONS`` distinct choices, or a prompt longer than ``MAX_PROMPT_CHARS`` characters are
dropped; a task keeps at most ``MAX_EXAMPLES`` examples (those with the smallest content hash, so the
choice is stable). Tasks with subtasks use the subtask folders listed in ``BB_TASKS`` (merged when
several are listed).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

MAX_OPTIONS = 12
MAX_PROMPT_CHARS = 2000
MAX_EXAMPLES = 5000

#: task name -> folders under ``bigbench/benchmark_tasks`` whose ``task.json`` are merged.
BB_TASKS: dict[str, tuple[str, ...]] = {
    "cause_and_effect": ("cause_and_effect/one_sentence",),  # the other 2 subtasks re-word the same 51 items
    "winowhy": ("winowhy",),
    "strategyqa": ("strategyqa",),
    "sports_understanding": ("sports_understanding",),
    "navigate": ("navigate",),
    "epistemic_reasoning": ("epistemic_reasoning",),
    "fact_checker": ("fact_checker/covid19_scientific", "fact_checker/fever", "fact_checker/politifact"),
    "multiemo": ("multiemo/all_sentence_en",),  # English sentences only (all domains)
    "social_iqa": ("social_iqa",),
    "intent_recognition": ("intent_recognition",),
    "hyperbaton": ("hyperbaton",),
    "logical_fallacy_detection": ("logical_fallacy_detection",),
    "snarks": ("snarks",),
    "date_understanding": ("date_understanding",),
    "disambiguation_qa": ("disambiguation_qa",),
    "implicatures": ("implicatures",),
    "metaphor_boolean": ("metaphor_boolean",),
    "movie_recommendation": ("movie_recommendation",),
    "temporal_sequences": ("temporal_sequences",),
    "timedial": ("timedial",),
    "vitaminc_fact_verification": ("vitaminc_fact_verification",),
    "presuppositions_as_nli": ("presuppositions_as_nli",),
    "anachronisms": ("anachronisms",),
    "play_dialog_same_or_different": ("play_dialog_same_or_different",),
    "formal_fallacies_syllogisms_negation": ("formal_fallacies_syllogisms_negation",),
}

TASKS_ROOT = "bigbench/benchmark_tasks"


def member_path(folder: str) -> str:
    """Archive path (top folder stripped) of a task folder's ``task.json``."""
    return f"{TASKS_ROOT}/{folder}/task.json"


def _prefix(task: dict[str, Any], key: str, default: str) -> str:
    value = task.get(key)
    return default if value is None else str(value)


def render(task: dict[str, Any], example: dict[str, Any]) -> dict[str, Any] | None:
    """One BIG-bench example as a row ``{"prompt", "choices", "label"}``, or None if it is dropped."""
    scores = example.get("target_scores")
    if not isinstance(scores, dict) or not isinstance(example.get("input"), str):
        return None
    merged: dict[str, float] = {}
    for choice, score in scores.items():
        c = str(choice).strip()
        if not c or c in merged or not isinstance(score, int | float):
            return None
        merged[c] = float(score)
    choices = list(merged)
    if not 2 <= len(choices) <= MAX_OPTIONS:
        return None
    best = max(merged.values())
    if sum(1 for s in merged.values() if s == best) != 1:
        return None
    label = next(i for i, c in enumerate(choices) if merged[c] == best)
    append = task.get("append_choices_to_input")
    append = True if append is None else bool(append)
    choice_prefix = _prefix(task, "choice_prefix", "\n  choice: ") or "\n  choice: "
    out_prefix = _prefix(task, "example_output_prefix", "\nA: ")
    text = (
        _prefix(task, "task_prefix", "") + _prefix(task, "example_input_prefix", "\nQ: ") + example["input"]
    )
    if append:
        text += "".join(choice_prefix + c for c in choices)
        if not out_prefix.strip():
            out_prefix = "\nA: "
    prompt = (text + out_prefix).strip()
    if not prompt or len(prompt) > MAX_PROMPT_CHARS:
        return None
    return {"prompt": prompt, "choices": choices, "label": label}


def _row_hash(row: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def convert(name: str, files: dict[str, bytes]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows and extra metadata of ``bb_<name>`` from the archive members read for it."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    raw_count = 0
    for folder in BB_TASKS[name]:
        task = json.loads(files[member_path(folder)].decode("utf-8"))
        for example in task.get("examples", []):
            raw_count += 1
            row = render(task, example)
            if row is None:
                continue
            key = row["prompt"] + "\x1f" + "\x1f".join(row["choices"])
            if key not in seen:
                seen.add(key)
                rows.append(row)
    kept = len(rows)
    if len(rows) > MAX_EXAMPLES:
        rows = sorted(rows, key=_row_hash)[:MAX_EXAMPLES]
    meta = {
        "subtasks": list(BB_TASKS[name]),
        "raw_examples": raw_count,
        "usable_examples": kept,
        "caps": {
            "max_options": MAX_OPTIONS,
            "max_prompt_chars": MAX_PROMPT_CHARS,
            "max_examples": MAX_EXAMPLES,
        },
    }
    return rows, meta
