"""A grid's output folder: the results JSONL (one line per finished cell), per-cell folders, the grid as run.

Layout of ``DIR``::

    results.jsonl        one JSON record per finished cell attempt, appended; for a key, the last line wins
    grid.toml, grid.json the grid file as last run, and its expanded cells and the command that ran it
    cells/<key>/         cell.json (what the worker runs), log.txt, record.json, finetune.json (fine-tune cells)
    RESULTS.md, *.png    written by ``l2lzo bench report DIR``

A record: ``grid``, ``key``, ``kind``, ``labels`` (axis -> label), ``config`` (the full config the key hashes),
``status`` (``ok`` or ``error``), ``error`` (one line), ``metrics`` (flat numbers), ``evals`` (fine-tune cells:
step, train_loss, dev_accuracy, dev_loss), ``seconds``, ``finished_at`` (UTC, ISO 8601), ``machine`` and
``versions`` (where it ran).
"""

from __future__ import annotations

import json
import os
import platform
import socket
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from l2lzo.bench.cells import Cell
from l2lzo.errors import L2LZOError

RESULTS = "results.jsonl"
GRID_JSON = "grid.json"
GRID_TOML = "grid.toml"
CELL = "cell.json"  # in cells/<key>/: what the worker runs, the record it writes, its fine-tune results and log
RECORD = "record.json"
FINETUNE_RESULTS = "finetune.json"
LOG = "log.txt"
OK = "ok"
ERROR = "error"
VERSIONED = ("l2lzo", "torch", "transformers", "peft", "numpy", "ray")


class ResultStore:
    """The results JSONL of one output folder. Appends are whole lines, flushed and fsynced one at a time."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / RESULTS

    def records(self) -> list[dict]:
        """Every record, oldest first. A torn last line (a writer killed mid-append) is cut off the file."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
            os.truncate(self.path, len(data))
        records = []
        for number, line in enumerate(data.decode().splitlines(), 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise L2LZOError(f"{self.path}:{number}: not a JSON record ({exc.msg})") from exc
        return records

    def latest(self) -> dict[str, dict]:
        """The last record of every key."""
        return {r["key"]: r for r in self.records()}

    def append(self, record: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def cell_dir(self, key: str) -> Path:
        return self.folder / "cells" / key


def make_record(cell: Cell, grid: str, status: str, *, metrics: dict | None = None, evals: list | None = None,
                error: str | None = None, seconds: float = 0.0) -> dict:
    """A results line for ``cell``, stamped with the time, this machine and the package versions here."""
    return {"grid": grid, "key": cell.key, "kind": cell.kind, "labels": cell.labels, "config": cell.config,
            "status": status, "error": error, "metrics": metrics or {}, "evals": evals,
            "seconds": round(seconds, 3), "finished_at": now(), "machine": machine(), "versions": versions()}


def grid_summary(grid, command: str) -> dict:
    """What ``grid.json`` holds: the grid's identity, the command that ran it, and its cells."""
    return {"name": grid.name, "kind": grid.kind, "description": grid.description, "path": str(grid.path),
            "command": command, "base": grid.base, "axes": grid.axes, "axis_settings": grid.axis_settings,
            "cells": [asdict(c) for c in grid.cells]}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def machine() -> dict:
    """Host name, CPU model, core count, memory and OS of this machine."""
    cpu = platform.processor() or platform.machine()
    memory_gib = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory_gib = round(pages / 2**30, 1)
    except (OSError, ValueError):
        pass  # not Linux: the model name and memory stay unknown
    return {"host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory_gib,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def versions() -> dict:
    """Installed versions of the packages that decide the numbers."""
    found = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found
