"""Run one cell in this (fresh) process: ``python -m l2lzo.bench.worker [--warm] CELL_DIR``.

Reads ``CELL_DIR/cell.json``, writes ``CELL_DIR/record.json``. Every cell gets a process of its own, so a
fine-tune's peak RSS is its own (the kernel's peak never goes down within a process) and a probe starts clean.
``--warm`` pays a probe's one-off loading costs and writes a record only if that fails (``l2lzo.bench.probe``).
With ``--parent PID`` the process dies with its parent (Linux ``PR_SET_PDEATHSIG``): a killed grid leaves no
cell running behind it to race the rerun for the cell's files. Heavy imports wait until that is set up.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from l2lzo.bench.cells import Cell

_PR_SET_PDEATHSIG = 1


def run_cell(cell: Cell, cell_dir: Path, grid: str, warm_only: bool = False) -> dict | None:
    """Run ``cell`` here with ``cell.cpus`` torch threads; its record (None after a successful warm-up)."""
    from dataclasses import asdict

    import torch

    from l2lzo.bench import probe
    from l2lzo.bench.cells import PROBE, finetune_config
    from l2lzo.bench.store import ERROR, FINETUNE_RESULTS, OK, make_record
    from l2lzo.errors import L2LZOError
    from l2lzo.finetune import finetune

    torch.set_num_threads(cell.cpus)
    config = finetune_config(cell.settings)
    start = time.perf_counter()
    evals = None
    try:
        if warm_only:
            probe.warm(config)
            return None
        if cell.kind == PROBE:
            metrics = probe.measure(config)
        else:
            config.output = str(cell_dir / FINETUNE_RESULTS)
            result = finetune(config, progress=False)
            # The best checkpoint only serves the run's final test; a grid of full fine-tunes would keep GBs.
            Path(result.checkpoint).unlink(missing_ok=True)
            metrics, evals = finetune_metrics(asdict(result)), result.evals
    except L2LZOError as exc:
        return make_record(cell, grid, ERROR, error=str(exc), seconds=time.perf_counter() - start)
    except Exception as exc:
        traceback.print_exc()  # into the cell's log; the record keeps one line
        first = (str(exc).strip().splitlines() or [""])[0]
        return make_record(cell, grid, ERROR, error=f"{type(exc).__name__}: {first}",
                           seconds=time.perf_counter() - start)
    metrics["threads"] = torch.get_num_threads()
    return make_record(cell, grid, OK, metrics=metrics, evals=evals, seconds=time.perf_counter() - start)


def finetune_metrics(result: dict) -> dict:
    """The flat numbers of a fine-tune's results (``FinetuneResult`` as a dict) that the report tabulates."""
    devs = [e["dev_accuracy"] for e in result["evals"]]
    return {"test_accuracy_before": result["initial_test"]["accuracy"],
            "test_loss_before": result["initial_test"]["loss"],
            "test_accuracy_after": result["final_test"]["accuracy"],
            "test_loss_after": result["final_test"]["loss"],
            "dev_accuracy_start": devs[0], "dev_accuracy_best": max(devs), "best_step": result["best_step"],
            "dev_loss_start": result["evals"][0]["dev_loss"], "dev_loss_end": result["evals"][-1]["dev_loss"],
            "steps_done": result["steps_done"], "train_seconds": result["train_seconds"],
            "step_seconds": result["median_step_seconds"], "peak_rss_mib": result["peak_rss_mb"],
            "wall_seconds": result["wall_seconds"], "trainable_parameters": result["trainable_parameters"],
            "lr": result["config"]["lr"]}


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when ``parent`` dies (Linux), and exit now if it already has."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before prctl took effect: nobody wants this cell any more
        sys.exit(f"parent process {parent} is gone")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m l2lzo.bench.worker", description=__doc__)
    parser.add_argument("--warm", action="store_true", help="only pay the one-off loading costs")
    parser.add_argument("--parent", type=int, default=None, help="exit with this process (its pid)")
    parser.add_argument("cell_dir", type=Path)
    args = parser.parse_args(argv)
    if args.parent is not None:
        die_with_parent(args.parent)  # first, before the slow imports a killed grid would otherwise wait out
    from l2lzo.bench.cells import Cell
    from l2lzo.bench.store import CELL, OK, RECORD
    from l2lzo.files import write_json

    data = json.loads((args.cell_dir / CELL).read_text())
    record = run_cell(Cell(**data["cell"]), args.cell_dir, data["grid"], warm_only=args.warm)
    if record is not None:
        write_json(args.cell_dir / RECORD, record)
    return 0 if record is None or record["status"] == OK else 1


if __name__ == "__main__":
    sys.exit(main())
