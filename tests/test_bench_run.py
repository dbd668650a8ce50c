"""Running grids: resume after a kill, one process per cell, probes measured on warm caches, Ray, and reports."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from bench_helpers import TINY_BASE, write_grid

from l2lzo.bench.grid import load_grid
from l2lzo.bench.runner import RunSummary, check_summary, run_grid
from l2lzo.bench.store import OK, RECORD, ResultStore, grid_summary, make_record
from l2lzo.bench.worker import run_cell
from l2lzo.cli import main
from l2lzo.errors import L2LZOError

ONE_OFF_MIB = 1536


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_killed_grid_reruns_only_the_missing_cells(tmp_path):
    grid_path = write_grid(tmp_path, "[axes]\nseed = [0, 1]\n")
    out = tmp_path / "out"
    results = out / "results.jsonl"
    driver = subprocess.Popen([sys.executable, "-m", "l2lzo.cli", "bench", "run", str(grid_path), "--output",
                               str(out), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not _lines(results) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    # The second cell's process, orphaned mid-start, goes too: it would race the rerun for the cell's files.
    deadline = time.monotonic() + 30
    while _cell_processes(out) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _cell_processes(out)
    first = _lines(results)
    assert len(first) == 1 and first[0]["status"] == OK, driver.stderr.read().decode()[-2000:]
    summary = run_grid(load_grid(grid_path), out, progress=False, say=lambda _: None)
    assert (summary.skipped, summary.ran, summary.failed) == (1, 1, [])
    lines = _lines(results)
    assert lines[0] == first[0] and len(lines) == 2 and lines[1]["labels"] == {"seed": "1"}
    assert lines[1]["metrics"]["threads"] == 1 and lines[1]["evals"][-1]["step"] == 2
    # Nothing left to do: a third run starts no cell.
    assert run_grid(load_grid(grid_path), out, progress=False, say=lambda _: None).ran == 0


def _cell_processes(out: Path) -> list[int]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(out).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue  # gone meanwhile
    return found


def test_one_output_folder_takes_one_run_at_a_time(tmp_path):
    grid = load_grid(write_grid(tmp_path, "[axes]\nseed = [0]\n"))
    out = tmp_path / "out"
    out.mkdir()
    with (out / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(L2LZOError, match="in use by another `l2lzo bench run`"):
            run_grid(grid, out, progress=False, say=lambda _: None)


def test_a_result_whose_line_never_landed_is_not_run_again(tmp_path):
    grid = load_grid(write_grid(tmp_path, "[axes]\nseed = [0]\n"))
    store = ResultStore(tmp_path / "out")
    cell = grid.cells[0]
    store.cell_dir(cell.key).mkdir(parents=True)
    record = make_record(cell, grid.name, OK, metrics={"test_accuracy_after": 0.5})
    (store.cell_dir(cell.key) / RECORD).write_text(json.dumps(record))
    summary = run_grid(grid, store.folder, progress=False, say=lambda _: None)
    assert (summary.skipped, summary.ran) == (1, 0) and store.records() == [record]


def test_a_torn_last_line_is_cut_off(tmp_path):
    store = ResultStore(tmp_path)
    store.append({"key": "a", "status": OK})
    with store.path.open("a") as f:
        f.write('{"key": "b", "sta')  # a writer killed mid-line
    assert store.records() == [{"key": "a", "status": OK}]
    store.append({"key": "b", "status": OK})
    assert [r["key"] for r in store.records()] == ["a", "b"]


SITECUSTOMIZE = f"""
import os
from pathlib import Path

marker = os.environ.get("L2LZO_TEST_ONE_OFF_MARKER")
if marker:
    import numpy as np

    import l2lzo.models as models

    real_load_model = models.load_model
    held = []

    def load_model(name, *args, **kwargs):
        # A first-use cost (like smollm2's GGUF conversion) whose memory the process keeps afterwards.
        if not Path(marker).exists():
            held.append(np.ones({ONE_OFF_MIB} * 2**20, dtype=np.uint8))
            Path(marker).touch()
        return real_load_model(name, *args, **kwargs)

    models.load_model = load_model
"""


def test_a_probe_measures_after_one_off_costs_were_paid_elsewhere(tmp_path, monkeypatch):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    marker = tmp_path / "converted"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("L2LZO_TEST_ONE_OFF_MARKER", str(marker))
    grid = load_grid(write_grid(tmp_path, '[axes]\noptimizer = ["zo-sgd"]\n', base='kind = "probe"' + TINY_BASE))
    summary = run_grid(grid, tmp_path / "out", progress=False, say=lambda _: None)
    # The hook ran (the marker exists) and its one-off stayed out of the measuring process: without the warm-up
    # process, the measuring process would pay it and hold ONE_OFF_MIB more at every peak.
    assert summary.failed == [] and marker.exists()
    metrics = ResultStore(tmp_path / "out").records()[0]["metrics"]
    assert metrics["inference_peak_rss_mib"] < ONE_OFF_MIB and metrics["peak_rss_mib"] < ONE_OFF_MIB
    assert metrics["timed_steps"] == 2 and metrics["threads"] == 1 and metrics["tokens_per_row"] == 32
    assert metrics["step_seconds"] > 0 and metrics["peak_over_inference"] > 0.9


def test_cells_run_as_ray_tasks_with_their_cpus(tmp_path):
    grid = load_grid(write_grid(tmp_path, "cpus = 1\n[axes]\nseed = [0, 1]\n"))
    summary = run_grid(grid, tmp_path / "out", ray=True, progress=False, say=lambda _: None)
    assert (summary.ran, summary.failed) == (2, [])
    records = ResultStore(tmp_path / "out").records()
    assert sorted(r["labels"]["seed"] for r in records) == ["0", "1"]
    assert all(r["status"] == OK and r["metrics"]["threads"] == 1 for r in records)


def test_a_failing_cell_is_recorded_in_one_line_and_the_run_says_so(tmp_path):
    grid = load_grid(write_grid(tmp_path, '[axes]\noptimizer = [{ label = "broken", optimizer = "zo-sgd", '
                                          'hybrid_fo_budget = 0.001 }]\n'))
    threads = torch.get_num_threads()
    try:
        record = run_cell(grid.cells[0], tmp_path, grid.name)  # in this process: the error path alone
    finally:
        torch.set_num_threads(threads)
    assert record["status"] == "error" and "fits no layer" in record["error"] and "\n" not in record["error"]
    with pytest.raises(L2LZOError) as caught:
        check_summary(RunSummary(cells=3, skipped=1, ran=2, failed=[record]))
    assert str(caught.value).startswith("1 of 2 cells failed (first: optimizer=broken: --hybrid-fo-budget 0.001")


def _finetune_record(cell, grid_name: str, accuracy: float, loss: float) -> dict:
    metrics = {"test_accuracy_before": 0.5, "test_accuracy_after": accuracy, "dev_accuracy_best": accuracy,
               "dev_loss_start": 0.7, "dev_loss_end": loss, "steps_done": 2, "step_seconds": 0.1,
               "peak_rss_mib": 400.0, "wall_seconds": 5.0}
    evals = [{"step": 0, "dev_loss": 0.7}, {"step": 2, "dev_loss": loss}]
    return make_record(cell, grid_name, OK, metrics=metrics, evals=evals, seconds=5.0)


def _finetune_results(tmp_path: Path) -> Path:
    """A fine-tune grid's output folder: 3 seeds of zo-sgd, one fo-adam result, one failure, one missing."""
    grid = load_grid(write_grid(tmp_path, '[axes]\noptimizer = ["zo-sgd", "fo-adam"]\nseed = [0, 1, 2]\n'))
    out = tmp_path / "out"
    out.mkdir()
    store = ResultStore(out)
    (out / "grid.json").write_text(json.dumps(grid_summary(grid, "l2lzo bench run grid.toml --output out")))
    zo = [c for c in grid.cells if c.labels["optimizer"] == "zo-sgd"]
    for cell, accuracy in zip(zo, (0.5, 0.6, 0.7), strict=True):
        store.append(_finetune_record(cell, grid.name, accuracy, loss=accuracy))
    fo = [c for c in grid.cells if c.labels["optimizer"] == "fo-adam"]
    store.append(_finetune_record(fo[0], grid.name, 0.9, loss=0.3))
    store.append(make_record(fo[1], grid.name, "error", error="diverged"))
    return out


def test_report_tables_mean_and_std_over_seeds_with_provenance_and_plots(tmp_path):
    out = _finetune_results(tmp_path)
    assert main(["bench", "report", str(out)]) == 0
    report = (out / "RESULTS.md").read_text()
    assert "Regenerate: `l2lzo bench run grid.toml --output out && l2lzo bench report" in report
    assert "| zo-sgd | 3 | 0.500 ± 0.000 | 0.600 ± 0.100 | 0.600 ± 0.100 |" in report
    assert "| fo-adam | 1 | 0.500 | 0.900 | 0.900 |" in report
    assert "- failed: optimizer=fo-adam seed=1: diverged" in report
    assert "- not run yet: optimizer=fo-adam seed=2" in report
    assert "| tiny | toy.jsonl | 0.500 |" in report  # zero-shot
    assert "- machine: " in report and "torch " in report and "steps=2" in report and "k-shot" in report
    for png in ("accuracy.png", "dev_loss.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"({png})" in report


def _probe_results(tmp_path: Path) -> Path:
    body = '[axes]\nmax_length = [16, 32]\noptimizer = ["inference", "zo-sgd"]\n'
    grid = load_grid(write_grid(tmp_path, body, base='kind = "probe"' + TINY_BASE))
    out = tmp_path / "out"
    out.mkdir()
    (out / "grid.json").write_text(json.dumps(grid_summary(grid, "l2lzo bench run g.toml")))
    for i, cell in enumerate(grid.cells):
        metrics = {"peak_rss_mib": 400.0 + i, "inference_peak_rss_mib": 400.0, "peak_over_inference": 1 + i / 400,
                   "step_seconds": 0.1 * (i + 1), "forward_seconds": 0.05, "step_over_two_forwards": i + 1,
                   "total_parameters": 1000, "trainable_parameters": 1000}
        ResultStore(out).append(make_record(cell, grid.name, OK, metrics=metrics))
    return out


def test_report_of_probes_draws_bars_and_growth_curves(tmp_path):
    out = _probe_results(tmp_path)
    assert main(["bench", "report", str(out)]) == 0
    report = (out / "RESULTS.md").read_text()
    assert "| 32 | zo-sgd | 1 | 403 | 1.008 | 0.400 | 4.000 | 400 | 0.050 |" in report
    assert {p.name for p in out.glob("*.png")} == {"memory.png", "step_time.png", "growth_seq_len.png"}


def test_one_report_of_several_grids_links_their_plots(tmp_path):
    finetunes, probes = _finetune_results(tmp_path / "a"), _probe_results(tmp_path / "b")
    report = tmp_path / "docs" / "RESULTS.md"
    assert main(["bench", "report", str(finetunes), str(probes), "--output", str(report)]) == 0
    text = report.read_text()
    assert text.startswith("# Benchmark results\n\nRegenerate: `l2lzo bench run grid.toml --output out && "
                           f"l2lzo bench run g.toml && l2lzo bench report {finetunes} {probes} --output {report}`")
    assert "## grid\n" in text and "### Results" in text and "(../a/out/accuracy.png)" in text
    assert "(../b/out/growth_seq_len.png)" in text and not (finetunes / "RESULTS.md").exists()


def test_included_sections_are_appended_one_level_down_under_the_stated_command(tmp_path, capsys):
    probes = _probe_results(tmp_path)
    service = tmp_path / "service_load.md"
    service.write_text("# Policy service load test\n\n## Runs\n\n| mode | requests/s |\n|---|---|\n| full | 1500 |\n")
    report = tmp_path / "RESULTS.md"
    assert main(["bench", "report", str(probes), "--output", str(report), "--include", str(service),
                 "--command", "benchmarks/regenerate"]) == 0
    text = report.read_text()
    assert text.startswith("# Benchmark results\n\nRegenerate: `benchmarks/regenerate`\n")
    assert text.index("### Results") < text.index("## Policy service load test\n") < text.index("### Runs\n")
    assert "| full | 1500 |" in text
    assert main(["bench", "report", str(probes), "--include", str(tmp_path / "missing.md")]) == 2
    assert "--include" in capsys.readouterr().err


def test_report_of_a_folder_without_results_is_one_line(tmp_path, capsys):
    assert main(["bench", "report", str(tmp_path)]) == 2
    assert "holds no grid results" in capsys.readouterr().err


def test_cells_not_in_the_tables_name_the_settings_that_differ_without_an_axis(tmp_path):
    # Two products that differ in a setting no axis names (like a per-model product): the missing cells of each
    # must be told apart in the report, and failures too.
    body = '[[axes]]\noptimizer = ["zo-sgd"]\nsteps = 2\n\n[[axes]]\noptimizer = ["zo-sgd"]\nsteps = 3\n'
    grid = load_grid(write_grid(tmp_path, body))
    out = tmp_path / "out"
    out.mkdir()
    (out / "grid.json").write_text(json.dumps(grid_summary(grid, "l2lzo bench run grid.toml --output out")))
    ResultStore(out).append(make_record(grid.cells[0], grid.name, "error", error="diverged"))
    assert main(["bench", "report", str(out)]) == 0
    report = (out / "RESULTS.md").read_text()
    assert "- failed: steps=2 optimizer=zo-sgd: diverged" in report
    assert "- not run yet: steps=3 optimizer=zo-sgd" in report


@pytest.mark.parametrize("count", [1, 10, 11, 20])
def test_bar_colours_stay_distinct_past_the_default_cycle(count):
    from l2lzo.plotting import distinct_colors

    assert len(set(distinct_colors(count))) == count  # the default cycle repeats after 10 (memory_speed has 12)
