"""``l2lzo bench report DIR [DIR ...]``: RESULTS.md (tables, mean ± std over seeds, provenance) and PNG plots.

Rows are the grid's axes except ``seed``; every number over seeds is their mean ± sample std (one seed: the
value). Only the cells of the grid as last run (``grid.json``) count; failed and missing cells are listed.
Plots (matplotlib, Agg): ``accuracy.png`` and ``dev_loss.png`` for fine-tune cells; ``memory.png``,
``step_time.png`` and, where the grid varies them, ``growth_seq_len.png`` and ``growth_model.png`` for probes.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
from collections import defaultdict
from pathlib import Path

from l2lzo.bench.cells import FINETUNE, PROBE
from l2lzo.bench.store import GRID_JSON, OK, ResultStore, now
from l2lzo.errors import L2LZOError
from l2lzo.files import atomic_write_text
from l2lzo.plotting import distinct_colors, save_png, subplots

REPORT = "RESULTS.md"
SEED = "seed"
# Config fields that place a cell in a plot (panels, x axes); the other axes name its series.
PLACED = ("seed", "scheme", "model", "task", "max_length")

FINETUNE_COLUMNS = [  # (header, metric, format)
    ("test acc before", "test_accuracy_before", ".3f"), ("test acc after", "test_accuracy_after", ".3f"),
    ("dev acc best", "dev_accuracy_best", ".3f"), ("dev loss start", "dev_loss_start", ".3f"),
    ("dev loss end", "dev_loss_end", ".3f"), ("steps done", "steps_done", ",.0f"),
    ("median step (s)", "step_seconds", ".3f"), ("peak RSS (MiB)", "peak_rss_mib", ",.0f"),
    ("wall (s)", "wall_seconds", ",.0f"),
]
PROBE_COLUMNS = [
    ("peak RSS (MiB)", "peak_rss_mib", ",.0f"), ("x inference", "peak_over_inference", ".3f"),
    ("median step (s)", "step_seconds", ".3f"), ("step / 2 forwards", "step_over_two_forwards", ".3f"),
    ("inference peak (MiB)", "inference_peak_rss_mib", ",.0f"), ("forward (s)", "forward_seconds", ".3f"),
    ("perturbed fwd / fwd", "perturbed_forward_over_forward", ".3f"),
    ("update sweep (s)", "update_sweep_seconds", ".3f"), ("trainable params", "trainable_parameters", ",.0f"),
]


def write_report(folders: list[str | Path], output: str | Path | None = None, includes: list[str | Path] = (),
                 command: str | None = None) -> Path:
    """Write the report of one or more ``bench run`` output folders; returns its path.

    One folder and no ``output``: ``FOLDER/RESULTS.md``. Otherwise one markdown file at ``output`` (default
    ``RESULTS.md`` here) with a section per grid. Plots are written into each grid's folder and linked from it.
    ``includes``: markdown files of benchmarks a grid cannot declare (the service load test), appended as
    sections with their headings one level down. ``command``: the one command that regenerates the whole report
    (a script that also writes the included files); by default, the grids' run commands and this report.
    """
    folders = [Path(f) for f in folders]
    for folder in folders:
        if not (folder / GRID_JSON).exists():
            raise L2LZOError(f"{folder} holds no grid results ({GRID_JSON} is missing): run `l2lzo bench run` first")
    for include in map(Path, includes):
        if not include.is_file():
            raise L2LZOError(f"--include {include}: no such file")
    grids = [json.loads((f / GRID_JSON).read_text()) for f in folders]
    if output is None and len(folders) == 1 and not includes:
        path = folders[0] / REPORT
        command = command or f"{grids[0]['command']} && l2lzo bench report {folders[0]}"
        lines = [f"# {grids[0]['name']}", "", f"Regenerate: `{command}`", "", *_section(folders[0], grids[0], path, 2)]
    else:
        path = Path(output or REPORT)
        report = shlex.join(["l2lzo", "bench", "report", *map(str, folders), "--output", str(path),
                             *(a for i in includes for a in ("--include", str(i)))])
        command = command or " && ".join([*(g["command"] for g in grids), report])
        lines = ["# Benchmark results", "", f"Regenerate: `{command}`", ""]
        for folder, grid in zip(folders, grids, strict=True):
            lines += [f"## {grid['name']}", "", *_section(folder, grid, path, 3)]
        for include in map(Path, includes):
            lines += [("#" + line) if line.startswith("#") else line for line in include.read_text().splitlines()]
            lines.append("")
    atomic_write_text(path, "\n".join(lines))
    return path


def _section(folder: Path, grid: dict, report: Path, level: int) -> list[str]:
    """One grid's part of a report (``level``: the markdown heading level of its subsections)."""
    latest = ResultStore(folder).latest()
    cells = grid["cells"]
    # Labels come from the grid as last run: an axis added since then labels older results too.
    ran = [{**latest[c["key"]], "labels": c["labels"]} for c in cells if c["key"] in latest]
    records = [r for r in ran if r["status"] == OK]
    failed = [r for r in ran if r["status"] != OK]
    missing = [c for c in cells if c["key"] not in latest]
    axes = [a for a in grid["axes"] if a != SEED]
    # Settings no axis sets but that differ between cells (a per-product model or step count, a default lr per
    # optimizer kind) get columns too, so rows never mix cells that differ in more than their seed.
    varying = [k for k in _varying([c["config"] for c in cells]) if k not in grid["axis_settings"] and k != SEED]
    plots = _plots(folder, records, grid["kind"])
    heading = "#" * level
    lines = [grid["description"].strip(), ""] if grid["description"] else []
    lines += _provenance(grid, records, cells)
    columns = FINETUNE_COLUMNS if grid["kind"] == FINETUNE else PROBE_COLUMNS
    lines += [f"{heading} Results", "", _table(records, varying, axes, columns), ""]
    if grid["kind"] == FINETUNE:
        lines += _zero_shot(records)
    if plots:
        lines += [*(f"![{p.stem}]({os.path.relpath(p, report.parent)})" for p in plots), ""]
    if failed or missing:
        lines += [f"{heading} Not in the tables", ""]
        lines += [f"- failed: {_where(r, varying)}: {r['error']}" for r in failed]
        lines += [f"- not run yet: {_where(c, varying)}" for c in missing]
        lines.append("")
    return lines


def _provenance(grid: dict, records: list[dict], cells: list[dict]) -> list[str]:
    shared = _shared_settings(cells)
    finished = sorted(r["finished_at"] for r in records)
    lines = [f"- cells: {len(records)} of {len(cells)} with results ({grid['kind']} cells); "
             f"compute {sum(r['seconds'] for r in records) / 3600:.2f} h in cell processes",
             f"- measured: {finished[0]} to {finished[-1]} (UTC); report written {now()}" if finished else
             "- measured: nothing yet"]
    for m in _distinct(r["machine"] for r in records):
        lines.append(f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, "
                     f"Python {m['python']} (host {m['host']})")
    for v in _distinct(r["versions"] for r in records):
        lines.append("- versions: " + ", ".join(f"{k} {x}" for k, x in v.items() if x))
    lines.append("- settings of every cell: " + ", ".join(f"{k}={_fmt_value(v)}" for k, v in shared.items()))
    if "train_size" in shared or any("train_size" in c["config"] for c in cells):
        lines.append("- train_size is k-shot: k examples per class (classification) or k in total (multiple "
                     "choice); dev and test splits are fixed by content hash, the same for every seed")
    if grid["kind"] == PROBE:
        lines.append("- each probe: its own process after a warm-up process (caches warm); peak RSS after a reset "
                     "past one warm-up step; `steps` timed (step, forward) pairs, medians; ratios are to "
                     "inference and to two forwards measured in the same process")
    return [*lines, ""]


def _shared_settings(cells: list[dict]) -> dict:
    configs = [c["config"] for c in cells]
    if not configs:
        return {}
    return {k: v for k, v in configs[0].items() if all(c.get(k) == v for c in configs[1:])}


def _distinct(items) -> list[dict]:
    seen = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def _varying(configs: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


def _table(records: list[dict], varying: list[str], axes: list[str], columns: list) -> str:
    if not records:
        return "(no results yet)"
    header = [*varying, *axes, "seeds", *(c[0] for c in columns)]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        row = [_name(r["config"].get(k, "-")) for k in varying] + [r["labels"].get(a, "") for a in axes]
        groups[tuple(row)].append(r)
    for row, group in groups.items():
        cells = [mean_std([r["metrics"].get(metric) for r in group], fmt) for _, metric, fmt in columns]
        rows.append("| " + " | ".join([*row, str(len(group)), *cells]) + " |")
    return "\n".join(rows)


def _zero_shot(records: list[dict]) -> list[str]:
    by_task = defaultdict(list)
    for r in records:
        if r["config"]["scheme"] in ("full", "lora"):  # untrained: the base model itself (LoRA's B starts at 0)
            by_task[_panel_name(r, ("model", "task"))].append(r["metrics"]["test_accuracy_before"])
    if not by_task:
        return []
    lines = ["Zero-shot (the untrained model's test accuracy, from the full and LoRA cells):", "",
             "| model | task | zero-shot test acc |", "|---|---|---|"]
    lines += [f"| {m} | {t} | {statistics.fmean(v):.3f} |" for (m, t), v in by_task.items()]
    return [*lines, ""]


def mean_std(values: list, fmt: str) -> str:
    """``mean ± std`` (sample std) of the numbers among ``values`` in format ``fmt``; one number alone; ``-``
    for none."""
    numbers = [v for v in values if isinstance(v, int | float)]
    if not numbers:
        return "-"
    mean = format(statistics.fmean(numbers), fmt)
    return mean if len(numbers) == 1 else f"{mean} ± {format(statistics.stdev(numbers), fmt)}"


def _name(value) -> str:
    """A config value for people: a file reference or path as the file's name."""
    if isinstance(value, dict) and "file" in value:
        return value["file"]
    return Path(value).name if isinstance(value, str) and os.sep in value else str(value)


def _fmt_value(value) -> str:
    """Like ``_name``, with a file reference's short sha256."""
    if isinstance(value, dict) and "sha256" in value:
        return f"{value['file']} (sha256 {value['sha256'][:12]})"
    return _name(value)


def _where(cell: dict, varying: list[str]) -> str:
    """A cell for people: the settings that differ between cells without an axis (a per-product model), then
    its labels."""
    named = {**{k: _name(cell["config"].get(k, "-")) for k in varying}, **cell["labels"]}
    return " ".join(f"{a}={v}" for a, v in named.items())


# ---- plots -------------------------------------------------------------------------------------------------


def _plots(folder: Path, records: list[dict], kind: str) -> list[Path]:
    if not records:
        return []
    if kind == FINETUNE:
        made = [_bar_panels(folder / "accuracy.png", records, ("model", "task"), "test_accuracy_after",
                            "test accuracy after (mean ± std over seeds)", zero_shot=True),
                _dev_loss(folder / "dev_loss.png", records)]
    else:
        made = [_bar_panels(folder / "memory.png", records, ("model", "max_length"), "peak_over_inference",
                            "peak RSS / inference peak (same process)", reference=1.0),
                _bar_panels(folder / "step_time.png", records, ("model", "max_length"), "step_over_two_forwards",
                            "median step / (2 forwards) (same process)", reference=1.0),
                _growth(folder / "growth_seq_len.png", records, "max_length", "max_length (tokens per row)"),
                _growth(folder / "growth_model.png", records, "model", "model (parameters)")]
    return [p for p in made if p is not None]


def _series(record: dict) -> str:
    rest = [v for a, v in record["labels"].items() if a not in PLACED]
    return " ".join(rest) or record["config"]["optimizer"]


def _panel_name(record: dict, fields: tuple[str, ...]) -> tuple:
    return tuple(_name(record["config"].get(f, "")) for f in fields)


def _bar_panels(path: Path, records: list[dict], panel_fields: tuple[str, ...], metric: str, ylabel: str,
                reference: float | None = None, zero_shot: bool = False) -> Path:
    panels = defaultdict(list)
    for r in records:
        panels[_panel_name(r, panel_fields)].append(r)
    fig, axs = subplots(len(panels))
    for ax, (name, group) in zip(axs, panels.items(), strict=False):
        schemes = list(dict.fromkeys(r["config"]["scheme"] for r in group))
        series = list(dict.fromkeys(_series(r) for r in group))
        width = 0.8 / len(series)
        for i, (s, color) in enumerate(zip(series, distinct_colors(len(series)), strict=True)):
            values = [[r["metrics"][metric] for r in group if _series(r) == s and r["config"]["scheme"] == sc]
                      for sc in schemes]
            ax.bar([x + i * width for x in range(len(schemes))], [statistics.fmean(v) if v else 0 for v in values],
                   width, yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in values], label=s, capsize=2,
                   color=color)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(schemes))], schemes)
        if reference is not None:
            ax.axhline(reference, color="black", linewidth=0.8, linestyle="--")
        if zero_shot:
            before = [r["metrics"]["test_accuracy_before"] for r in group if r["config"]["scheme"] in ("full", "lora")]
            if before:
                ax.axhline(statistics.fmean(before), color="gray", linestyle=":", label="zero-shot")
        ax.set(title=" · ".join(f"{f}={v}" if f == "max_length" else v for f, v in zip(panel_fields, name,
                                                                                       strict=True)),
               ylabel=ylabel)
        ax.grid(axis="y", alpha=0.3)
        # Headroom above the tallest bar for the legend, so it never covers a bar.
        ax.set_ylim(top=ax.get_ylim()[1] * 1.4)
        ax.legend(fontsize=7, ncol=3, loc="upper center")
    return save_png(fig, path)


def _dev_loss(path: Path, records: list[dict]) -> Path:
    panels = defaultdict(lambda: defaultdict(list))
    for r in records:
        panels[_panel_name(r, ("model", "task"))][f"{_series(r)} · {r['config']['scheme']}"].append(r["evals"])
    fig, axs = subplots(len(panels))
    for ax, (name, lines) in zip(axs, panels.items(), strict=False):
        for label, runs in lines.items():
            steps = sorted(set.intersection(*({e["step"] for e in run} for run in runs)))
            losses = [statistics.fmean(next(e["dev_loss"] for e in run if e["step"] == s) for run in runs)
                      for s in steps]
            ax.plot(steps, losses, marker="o", markersize=3, label=label)
        ax.set(title=" · ".join(name), xlabel="step", ylabel="dev loss (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_png(fig, path)


def _growth(path: Path, records: list[dict], field: str, xlabel: str) -> Path | None:
    """Peak RSS and step time against ``field``, one line per series that has two or more points."""
    if len({r["config"][field] for r in records}) < 2:
        return None
    rest = [f for f in ("model", "max_length") if f != field]
    lines = defaultdict(lambda: defaultdict(list))
    for r in records:
        name = " · ".join([_series(r), r["config"]["scheme"], *(f"{f}={r['config'][f]}" for f in rest)])
        x = r["metrics"]["total_parameters"] if field == "model" else r["config"][field]
        lines[name][x].append(r)
    lines = {name: points for name, points in lines.items() if len(points) > 1}
    if not lines:
        return None
    fig, (mem, step) = subplots(2, width=6.0)
    for name, points in lines.items():
        xs = sorted(points)
        for ax, metric in ((mem, "peak_rss_mib"), (step, "step_seconds")):
            ax.plot(xs, [statistics.fmean(r["metrics"][metric] for r in points[x]) for x in xs], marker="o",
                    label=name)
    for ax, ylabel in ((mem, "peak RSS (MiB)"), (step, "median step (s)")):
        ax.set(xlabel=xlabel, ylabel=ylabel)
        if field == "model":
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if field == "model":
        names = {r["metrics"]["total_parameters"]: r["config"]["model"] for r in records}
        for ax in (mem, step):
            ax.set_xticks(sorted(names), [f"{names[x]}\n{x / 1e6:.1f}M" for x in sorted(names)], fontsize=7)
            ax.minorticks_off()
    return save_png(fig, path)
