"""The on-disk cache of prepared task data: ``cache_dir()/data/<task>.jsonl`` plus ``<task>.meta.json``.

Files are written atomically (temp file in the same folder, fsync, ``os.replace``), data first and
metadata last, so a task counts as prepared only once both are complete.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import L2LZOError
from ..files import atomic_write_bytes
from ..paths import cache_dir

FORMAT_VERSION = 1


def data_dir() -> Path:
    """Folder holding prepared task data."""
    return cache_dir() / "data"


def data_path(task: str) -> Path:
    """Path of a task's normalised rows."""
    return data_dir() / f"{task}.jsonl"


def meta_path(task: str) -> Path:
    """Path of a task's metadata (source, licence note, count, sha256)."""
    return data_dir() / f"{task}.meta.json"


def write_task(task: str, rows: Iterable[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """Store a task's rows and metadata; returns the data path."""
    lines = [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in rows]
    payload = ("\n".join(lines) + "\n").encode("utf-8") if lines else b""
    full_meta = {
        **meta,
        "task": task,
        "count": len(lines),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "format_version": FORMAT_VERSION,
    }
    path = data_path(task)
    atomic_write_bytes(path, payload)
    atomic_write_bytes(meta_path(task), (json.dumps(full_meta, indent=2, sort_keys=True) + "\n").encode())
    return path


def is_prepared(task: str) -> bool:
    """Whether both the data and the metadata of ``task`` exist."""
    return data_path(task).is_file() and meta_path(task).is_file()


def read_task(task: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read a prepared task's rows and metadata, checking the stored sha256."""
    if not is_prepared(task):
        raise L2LZOError(f"task {task!r} has no data yet: run `l2lzo data prepare {task}`")
    meta = json.loads(meta_path(task).read_text(encoding="utf-8"))
    payload = data_path(task).read_bytes()
    if meta.get("format_version") != FORMAT_VERSION or hashlib.sha256(payload).hexdigest() != meta.get(
        "sha256"
    ):
        raise L2LZOError(
            f"cached data for task {task!r} is stale or damaged: run `l2lzo data prepare {task}` again"
        )
    rows = [json.loads(line) for line in payload.decode("utf-8").split("\n") if line]
    return rows, meta
