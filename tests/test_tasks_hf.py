"""MeZO templates on hand-written rows, and the fail-fast path when the HF hub is unreachable."""

from __future__ import annotations

import socket
import sys
import types

import pytest

from l2lzo.errors import L2LZOError
from l2lzo.hub import PROBE_TIMEOUT_S
from l2lzo.tasks import Example, hf, load_task


def test_sst2_template() -> None:
    ex = hf.sst2({"sentence": "a gripping film . ", "label": 1})
    assert ex == Example("a gripping film . It was", (" terrible", " great"), 1)


def test_copa_template() -> None:
    row = {
        "premise": "The man broke his toe.",
        "choice1": "He dropped a hammer.",
        "choice2": "He got a hole.",
        "question": "cause",
        "label": 0,
    }
    assert hf.copa(row) == Example(
        "The man broke his toe because", (" he dropped a hammer.", " he got a hole."), 0
    )
    assert hf.copa({**row, "question": "effect"}).prompt == "The man broke his toe so"


def test_yes_no_templates() -> None:
    assert hf.boolq({"passage": "P.", "question": "is it", "label": 1}) == Example(
        "P. is it?", (" No", " Yes"), 1
    )
    rte = hf.rte({"premise": "A.", "hypothesis": "B", "label": 1})
    assert rte == Example('A.\nDoes this mean that "B" is true? Yes or No?\nAnswer:', (" Yes", " No"), 1)
    cb = hf.cb({"premise": "A.", "hypothesis": "B", "label": 2})
    assert cb.prompt == 'Suppose A. Can we infer that "B"? Yes, No, or Maybe?\nAnswer:'
    assert cb.options == (" Yes", " No", " Maybe") and cb.label == 2
    wic = hf.wic({"word": "bank", "sentence1": "S1.", "sentence2": "S2.", "label": 0})
    assert wic.prompt.startswith('Does the word "bank" have the same meaning') and wic.prompt.endswith(
        "S1.\nS2.\nAnswer:"
    )
    wsc = hf.wsc({"text": "Tom hit Bob. He cried.", "span1_text": "Bob", "span2_text": "He", "label": 1})
    assert '"he" refer to Bob? Yes or No?\nAnswer:' in wsc.prompt and wsc.options == (" No", " Yes")
    mrc = hf.multirc({"paragraph": "P", "question": "Q", "answer": "A", "label": 0})
    assert mrc.prompt.endswith('I found this answer "A". Is that correct? Yes or No?\nAnswer:')


def test_winogrande_template() -> None:
    row = {
        "sentence": "Sarah gave Maria a gift because _ was kind.",
        "option1": "Sarah",
        "option2": "Maria",
        "answer": "1",
    }
    ex = hf.winogrande(row)
    assert ex == Example("Sarah gave Maria a gift because", (" Sarah was kind.", " Maria was kind."), 0)
    assert hf.HF_TASKS["hf_winogrande"].labelled(row) and not hf.HF_TASKS["hf_winogrande"].labelled(
        {**row, "answer": ""}
    )
    assert not hf.HF_TASKS["hf_rte"].labelled({"label": -1})


def test_unreachable_hub_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    # Fail fast is structural: one TCP probe bounded by PROBE_TIMEOUT_S, and the datasets library (whose hub
    # calls retry for minutes) is never reached. No wall-clock bound, which a loaded machine would break.
    connects: list[tuple[object, object]] = []
    real_connect = socket.create_connection

    def create_connection(address, timeout=None, *args, **kwargs):
        connects.append((address, timeout))
        return real_connect(address, timeout, *args, **kwargs)

    def load_dataset(*a: object, **k: object) -> object:
        raise AssertionError("the datasets library was called although the hub probe failed")

    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(
        L2LZOError, match=r"task 'hf_sst2' needs the Hugging Face hub, which is not reachable"
    ) as err:
        load_task("hf_sst2")
    assert connects == [(("127.0.0.1", 9), PROBE_TIMEOUT_S)]
    assert "127.0.0.1:9" in str(err.value) and "\n" not in str(err.value)


def test_offline_mode_load_failure_is_l2lzo_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def load_dataset(*a: object, **k: object) -> object:
        raise ConnectionError("Couldn't reach 'aps/super_glue' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(L2LZOError, match=r"needs the Hugging Face hub.*Couldn't reach") as err:
        load_task("hf_copa")
    assert "\n" not in str(err.value)


def test_hub_rows_are_templated_and_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf, "probe_hub", lambda timeout=None: None)
    rows = {
        "train": [{"sentence": f"s{i}", "label": i % 2} for i in range(20)],
        "validation": [{"sentence": f"v{i}", "label": i % 2} for i in range(6)]
        + [{"sentence": "x", "label": -1}],
    }
    calls: list[tuple[object, ...]] = []

    def load_dataset(path: str, config: str, split: str) -> list[dict[str, object]]:
        calls.append((path, config, split))
        return rows[split]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    splits = load_task("hf_sst2", test_size=4, dev_size=4, train_size=2)
    assert calls == [("nyu-mll/glue", "sst2", "train"), ("nyu-mll/glue", "sst2", "validation")]
    assert splits.info.kind == "classification" and splits.info.prepared
    assert len(splits.test) == 4 and len(splits.train) == 4
    assert all(e.prompt != "x It was" for e in splits.train + splits.dev + splits.test)
