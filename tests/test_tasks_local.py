"""Local .jsonl/.csv task files: parsing and every malformed case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from l2lzo.errors import L2LZOError
from l2lzo.tasks import load_task
from l2lzo.tasks.local_files import load_local_file


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_classification(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": ["neg", "pos"][i % 2]} for i in range(10)]
    kind, examples = load_local_file(write_jsonl(tmp_path / "d.jsonl", rows))
    assert kind == "classification"
    assert examples[0].prompt == "t0\nAnswer:" and examples[0].options == (" neg", " pos")
    assert [e.label for e in examples[:3]] == [0, 1, 0]


def test_int_labels_sorted_numerically(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": lab} for i, lab in enumerate([10, 2, 1, 2])]
    _, examples = load_local_file(write_jsonl(tmp_path / "d.jsonl", rows))
    assert examples[0].options == (" 1", " 2", " 10") and [e.label for e in examples] == [2, 1, 0, 1]


def test_csv_classification_with_pair(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('text,text_pair,label\n"a, b",c,yes\nd,,no\n', encoding="utf-8")
    kind, examples = load_local_file(path)
    assert kind == "classification"
    assert examples[0].prompt == "a, b\nc\nAnswer:" and examples[0].label == 1
    assert examples[1].prompt == "d\nAnswer:" and examples[1].options == (" no", " yes")


def test_jsonl_multiple_choice(tmp_path: Path) -> None:
    rows = [
        {"question": "Sky?", "choices": ["blue", "red"], "label": 0},
        {"text": "Grass?", "choices": ["blue", "green", "red"], "label": "green"},
    ]
    kind, examples = load_local_file(write_jsonl(tmp_path / "mc.jsonl", rows))
    assert kind == "multiple_choice"
    assert examples[0].prompt == "Sky?\nAnswer:" and examples[0].options == (" blue", " red")
    assert examples[1].label == 1 and len(examples[1].options) == 3


def test_csv_multiple_choice(tmp_path: Path) -> None:
    path = tmp_path / "mc.csv"
    path.write_text(
        'question,choices,label\nQ1,"[""x"", ""y""]",1\nQ2,"[""x"", ""y""]",x\n', encoding="utf-8"
    )
    kind, examples = load_local_file(path)
    assert kind == "multiple_choice" and [e.label for e in examples] == [1, 0]


def test_load_task_on_file(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": ["a", "b"][i % 2]} for i in range(40)]
    splits = load_task(
        str(write_jsonl(tmp_path / "mine.jsonl", rows)), test_size=10, dev_size=10, train_size=3
    )
    assert splits.info.name == "mine" and splits.info.prepared and "local file" in splits.info.source
    assert len(splits.test) == 10 and len(splits.dev) == 10 and len(splits.train) == 6


BAD_JSONL = [
    ('{"text": "a", "label": "x"}\n{"text": "b", "label": \n', r"bad\.jsonl:2: not valid JSON"),
    ('{"text": "a", "label": "x"}\n[1, 2]\n', r":2: expected a JSON object"),
    ('{"text": "a", "label": "x"}\n{"label": "y"}\n', r":2: missing column 'text'"),
    ('{"text": "a", "label": "x"}\n{"text": "b"}\n', r":2: missing column 'label'"),
    ('{"text": "a", "label": "x"}\n{"text": 3, "label": "y"}\n', r":2: column 'text' must be a string"),
    (
        '{"text": "a", "label": "x"}\n{"text": "b", "label": [1]}\n',
        r":2: label must be a string or an integer",
    ),
    ('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n', r"at least 2 distinct labels"),
    ("", r"bad\.jsonl: no examples"),
    ("\n  \n", r"no examples"),
    ('{"question": "q", "choices": ["a", "b"], "label": 2}\n', r":1: label 2 out of range"),
    ('{"question": "q", "choices": ["a", "b"], "label": -1}\n', r":1: label -1 out of range"),
    ('{"question": "q", "choices": ["a", "b"], "label": "c"}\n', r":1: label 'c' is not one of the choices"),
    ('{"question": "q", "choices": ["a", "b"]}\n', r":1: missing or invalid 'label'"),
    ('{"question": "q", "choices": ["a", "b"], "label": true}\n', r":1: missing or invalid 'label'"),
    ('{"question": "q", "choices": "a", "label": 0}\n', r":1: 'choices' must be a JSON list"),
    ('{"question": "q", "choices": ["a"], "label": 0}\n', r":1: 'choices' must be a list of at least 2"),
    ('{"choices": ["a", "b"], "label": 0}\n', r":1: missing column 'question'"),
    (
        '{"question": "q", "choices": ["a", "b"], "label": 0}\n{"question": "r", "label": 0}\n',
        r":2: 'choices'",
    ),
]


@pytest.mark.parametrize(("content", "message"), BAD_JSONL)
def test_malformed_jsonl(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(L2LZOError, match=message) as err:
        load_task(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


BAD_CSV = [
    ("text,label\na,x\nb,y,extra\n", r"bad\.csv:3: wrong number of fields"),
    ("text,label\na,x\nb\n", r"bad\.csv:3: wrong number of fields"),
    ("text,label\na,x\n,y\n", r":3: missing column 'text'"),
    ("sentence,label\na,x\n", r":2: missing column 'text'"),
    ("text,label\n", r"no examples"),
    ("", r"no examples"),
    ('question,choices,label\nq,"[""a"",""b""]",5\n', r":2: label 5 out of range"),
    ("question,choices,label\nq,a|b,0\n", r":2: 'choices' must be a JSON list"),
]


@pytest.mark.parametrize(("content", "message"), BAD_CSV)
def test_malformed_csv(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(L2LZOError, match=message):
        load_task(str(path))


def test_missing_file_and_bad_encoding(tmp_path: Path) -> None:
    with pytest.raises(L2LZOError, match="does not exist"):
        load_task(str(tmp_path / "nope.jsonl"))
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"text": "caf\xe9", "label": "x"}\n')
    with pytest.raises(L2LZOError, match="not UTF-8"):
        load_task(str(path))
    other = tmp_path / "data.txt"
    other.write_text("x")
    with pytest.raises(L2LZOError, match="unsupported file type"):
        load_local_file(other)
