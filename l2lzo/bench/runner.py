"""Running a grid: skip cells whose result exists, run the rest one process each, here or as Ray tasks.

Resuming is by key (``l2lzo.bench.cells``): a cell with an ``ok`` line in ``results.jsonl`` is skipped, and so is
one whose worker finished (its ``record.json`` is there) but whose line was never appended because the grid was
killed in between. Failed cells run again on the next run. Cells run one at a time here; ``ray=True`` submits
them all as Ray tasks that each reserve ``cpus`` CPUs, so a machine runs as many at once as its CPUs allow.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from l2lzo.bench.cells import PROBE, Cell, finetune_config
from l2lzo.bench.grid import Grid
from l2lzo.bench.store import (
    CELL,
    ERROR,
    GRID_JSON,
    GRID_TOML,
    LOG,
    OK,
    RECORD,
    ResultStore,
    grid_summary,
    make_record,
)
from l2lzo.errors import L2LZOError
from l2lzo.files import atomic_write_text, write_json
from l2lzo.tasks import require_prepared


@dataclass
class RunSummary:
    """What a ``run_grid`` call did."""

    cells: int
    skipped: int
    ran: int
    failed: list[dict]  # the error records of this run


def default_output(grid: Grid) -> Path:
    return Path("results") / "bench" / grid.name


def run_grid(grid: Grid, output: Path, *, ray: bool = False, progress: bool = True, say=print) -> RunSummary:
    """Run every cell of ``grid`` that has no result in ``output`` yet; append each result as it lands."""
    output = Path(output)
    store = ResultStore(output)
    output.mkdir(parents=True, exist_ok=True)
    with _exclusive(output):
        return _run(grid, store, ray, progress, say)


@contextlib.contextmanager
def _exclusive(output: Path):
    """Hold ``output/.lock`` for the run: two runs into one folder would run cells twice and race for files."""
    with (output / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise L2LZOError(f"{output} is in use by another `l2lzo bench run`; wait for it or use another "
                             "--output") from exc
        yield  # the kernel drops the lock when this process ends, however it ends


def _run(grid: Grid, store: ResultStore, ray: bool, progress: bool, say) -> RunSummary:
    output = store.folder
    atomic_write_text(output / GRID_TOML, grid.path.read_text())
    command = ["l2lzo", "bench", "run", str(grid.path), "--output", str(output), *(["--ray"] if ray else [])]
    write_json(output / GRID_JSON, grid_summary(grid, shlex.join(command)))
    done = {key for key, r in store.latest().items() if r["status"] == OK}
    pending = []
    for cell in grid.cells:
        if cell.key in done:
            continue
        finished = _finished_record(store, cell)
        if finished is not None:
            store.append(finished)
            done.add(cell.key)
        else:
            pending.append(cell)
    require_prepared([finetune_config(c.settings).task for c in pending], f"grid {grid.name}")
    skipped = len(grid.cells) - len(pending)
    say(f"grid {grid.name}: {len(grid.cells)} cells, {skipped} done, {len(pending)} to run -> {store.path}")
    runner = _run_on_ray if ray else _run_here
    failed = []
    with tqdm(total=len(pending), desc=grid.name, unit="cell", disable=not progress) as bar:
        for cell, record in runner(pending, store, grid.name):
            store.append(record)
            bar.update(1)
            if record["status"] != OK:
                failed.append(record)
                bar.write(f"{cell.describe()}: {record['error']}")
            bar.set_postfix_str(f"last: {cell.describe()} ({record['status']}, {record['seconds']:.0f}s)")
    return RunSummary(cells=len(grid.cells), skipped=skipped, ran=len(pending), failed=failed)


def _finished_record(store: ResultStore, cell: Cell) -> dict | None:
    path = store.cell_dir(cell.key) / RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # written atomically, so only a foreign file can be unreadable: run the cell again
    return record if record.get("key") == cell.key and record.get("status") == OK else None


def _run_here(cells: list[Cell], store: ResultStore, grid: str):
    for cell in cells:
        yield cell, execute_cell(asdict(cell), str(store.folder), grid)


def _run_on_ray(cells: list[Cell], store: ResultStore, grid: str):
    import ray

    if not cells:
        return
    started_here = not ray.is_initialized()
    if started_here:
        # RAY_ADDRESS, when set, joins an existing cluster; otherwise a local one is started.
        ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("L2LZO_", "HF_"))}})
    try:
        remote = ray.remote(execute_cell)
        pending = {remote.options(num_cpus=cell.cpus, name=f"bench {cell.key}").remote(
            asdict(cell), str(store.folder), grid): cell for cell in cells}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ready[0])
            yield cell, ray.get(ready[0])
    finally:
        if started_here:
            ray.shutdown()


def execute_cell(cell_data: dict, output: str, grid: str) -> dict:
    """Run one cell in fresh processes (a probe: a warm-up process, then the measuring one); its record.

    Runs wherever it is called: in the driver, or inside a Ray task. Torch in the worker gets ``cpus`` threads.
    """
    cell = Cell(**cell_data)
    cell_dir = ResultStore(Path(output)).cell_dir(cell.key)
    cell_dir.mkdir(parents=True, exist_ok=True)
    (cell_dir / RECORD).unlink(missing_ok=True)
    write_json(cell_dir / CELL, {"grid": grid, "cell": cell_data})
    threads = str(cell.cpus)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    log_path = cell_dir / LOG
    with log_path.open("w") as log:
        for extra in ([["--warm"]] if cell.kind == PROBE else []) + [[]]:
            proc = subprocess.run([sys.executable, "-m", "l2lzo.bench.worker", *extra, "--parent", str(os.getpid()),
                                   str(cell_dir)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
            if (cell_dir / RECORD).exists():
                return json.loads((cell_dir / RECORD).read_text())
            if proc.returncode != 0:
                break
    how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with {proc.returncode}"
    return make_record(cell, grid, ERROR, error=f"cell process {how} without a result; log: {log_path} "
                                               f"({_last_line(log_path)})")


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else "empty"


def check_summary(summary: RunSummary) -> None:
    """``L2LZOError`` naming the first failure if any cell of this run failed (after all results are saved)."""
    if summary.failed:
        first = summary.failed[0]
        where = " ".join(f"{a}={v}" for a, v in first["labels"].items()) or first["key"]
        raise L2LZOError(f"{len(summary.failed)} of {summary.ran} cells failed (first: {where}: {first['error']}); "
                         "their errors are in results.jsonl and cells/<key>/log.txt; a rerun retries them")
