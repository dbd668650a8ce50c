"""Tiny grids for the ``l2lzo bench`` tests: a local task file and grid files around it (no real model or data)."""

from __future__ import annotations

import json
from pathlib import Path

# Two steps on the tiny random model with 8-example splits: a cell is mostly process start-up.
TINY_BASE = """
[base]
model = "tiny"
task = "toy.jsonl"
steps = 2
eval_every = 1
batch_size = 4
train_size = 4
dev_size = 4
test_size = 4
max_length = 32
lr = 1e-3
"""


def write_toy_task(folder: Path, n: int = 40) -> Path:
    rows = [{"text": f"{'good' if i % 2 else 'bad'} thing number {i}", "label": "ab"[i % 2]} for i in range(n)]
    path = folder / "toy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_grid(folder: Path, body: str, name: str = "grid.toml", base: str = TINY_BASE) -> Path:
    """A grid file next to a toy task: ``base`` (the tiny settings) followed by ``body``."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "toy.jsonl").exists():
        write_toy_task(folder)
    path = folder / name
    path.write_text(base + body)
    return path
