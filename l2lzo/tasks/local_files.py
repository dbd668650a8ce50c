"""Tasks from the user's own ``.jsonl`` / ``.csv`` files.

Classification rows have ``text``, optional ``text_pair`` and ``label`` (string or int). The label
set is the sorted set of labels seen (numerically if they are all integers); options are
``" " + label``; the prompt is ``text`` [``"\\n" + text_pair``] ``+ "\\nAnswer:"``.

Multiple-choice rows (recognised by a ``choices`` column) have ``question`` (or ``text``),
``choices`` (a list; in a CSV cell, a JSON list) and ``label`` (an int index or the choice string).
The prompt is ``question + "\\nAnswer:"``, options are ``" " + choice``.

Anything malformed raises :class:`~l2lzo.errors.L2LZOError` naming the file and line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..errors import L2LZOError
from .base import CLASSIFICATION, MULTIPLE_CHOICE, Example

ANSWER_CUE = "\nAnswer:"
SUFFIXES = (".jsonl", ".csv")


def looks_like_local_file(name: str) -> bool:
    """True when ``name`` names a local data file (by suffix) rather than a task."""
    return Path(name).suffix.lower() in SUFFIXES


def _read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Rows of the file with their 1-based line numbers."""
    if not path.is_file():
        raise L2LZOError(f"data file {path} does not exist")
    rows: list[tuple[int, dict[str, Any]]] = []
    try:
        if path.suffix.lower() == ".jsonl":
            with path.open(encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise L2LZOError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                    if not isinstance(row, dict):
                        raise L2LZOError(f"{path}:{lineno}: expected a JSON object per line")
                    rows.append((lineno, row))
        else:
            with path.open(encoding="utf-8-sig", newline="") as f:
                reader = csv.DictReader(f)
                for row in reader:
                    if None in row or any(v is None for v in row.values()):
                        raise L2LZOError(f"{path}:{reader.line_num}: wrong number of fields")
                    rows.append((reader.line_num, dict(row)))
    except UnicodeDecodeError as e:
        raise L2LZOError(f"{path}: not UTF-8 text ({e.reason})") from None
    except csv.Error as e:
        raise L2LZOError(f"{path}: malformed CSV ({e})") from None
    if not rows:
        raise L2LZOError(f"{path}: no examples in file")
    return rows


def _text(path: Path, lineno: int, row: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = row.get(key)
    if value is None or value == "":
        if required:
            raise L2LZOError(f"{path}:{lineno}: missing column {key!r}")
        return None
    if not isinstance(value, str):
        raise L2LZOError(f"{path}:{lineno}: column {key!r} must be a string")
    return value


def _label_sort_key(labels: set[str]) -> list[str]:
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


def _classification(path: Path, rows: list[tuple[int, dict[str, Any]]]) -> list[Example]:
    parsed: list[tuple[str, str]] = []
    for lineno, row in rows:
        text = _text(path, lineno, row, "text")
        pair = _text(path, lineno, row, "text_pair", required=False)
        label = row.get("label")
        if label is None or label == "":
            raise L2LZOError(f"{path}:{lineno}: missing column 'label'")
        if isinstance(label, bool) or not isinstance(label, str | int):
            raise L2LZOError(f"{path}:{lineno}: label must be a string or an integer, got {label!r}")
        prompt = text if pair is None else f"{text}\n{pair}"
        parsed.append((prompt + ANSWER_CUE, str(label).strip()))
    labels = _label_sort_key({lab for _, lab in parsed})
    if len(labels) < 2:
        raise L2LZOError(f"{path}: classification needs at least 2 distinct labels, found {labels}")
    options = tuple(" " + lab for lab in labels)
    index = {lab: i for i, lab in enumerate(labels)}
    return [Example(prompt, options, index[lab]) for prompt, lab in parsed]


def _multiple_choice(path: Path, rows: list[tuple[int, dict[str, Any]]]) -> list[Example]:
    out = []
    for lineno, row in rows:
        question = _text(path, lineno, row, "question", required=False)
        if question is None:
            question = _text(path, lineno, row, "text", required=False)
        if question is None:
            raise L2LZOError(f"{path}:{lineno}: missing column 'question' (or 'text')")
        choices = row.get("choices")
        if isinstance(choices, str):
            try:
                choices = json.loads(choices)
            except json.JSONDecodeError:
                raise L2LZOError(f"{path}:{lineno}: 'choices' must be a JSON list") from None
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) and c for c in choices)
        ):
            raise L2LZOError(f"{path}:{lineno}: 'choices' must be a list of at least 2 non-empty strings")
        label = row.get("label")
        if isinstance(label, str) and label.strip().lstrip("-").isdigit() and label not in choices:
            label = int(label)
        if isinstance(label, bool) or label is None or label == "":
            raise L2LZOError(f"{path}:{lineno}: missing or invalid 'label'")
        if isinstance(label, int):
            if not 0 <= label < len(choices):
                raise L2LZOError(f"{path}:{lineno}: label {label} out of range for {len(choices)} choices")
            index = label
        elif isinstance(label, str):
            if label not in choices:
                raise L2LZOError(f"{path}:{lineno}: label {label!r} is not one of the choices")
            index = choices.index(label)
        else:
            raise L2LZOError(f"{path}:{lineno}: label must be an index or a choice string, got {label!r}")
        out.append(Example(question + ANSWER_CUE, tuple(" " + c for c in choices), index))
    return out


def load_local_file(path: str | Path) -> tuple[str, list[Example]]:
    """Parse a local ``.jsonl``/``.csv`` file into ``(kind, examples)``."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        raise L2LZOError(f"{path}: unsupported file type (use .jsonl or .csv)")
    rows = _read_rows(path)
    if "choices" in rows[0][1]:
        return MULTIPLE_CHOICE, _multiple_choice(path, rows)
    return CLASSIFICATION, _classification(path, rows)
