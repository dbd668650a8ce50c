"""The ``l2lzo bench`` subcommands: ``run GRID.toml`` and ``report DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``bench`` and its subcommands to ``subparsers``; returns the ``bench`` parser."""
    parser = subparsers.add_parser(
        "bench", help="run a benchmark grid (fine-tunes, memory/speed probes) and report it",
        description="Benchmark grids: a TOML file declares cells (models x tasks x schemes x optimizers x seeds x "
                    "options), each a fine-tune run or a memory/speed probe; see benchmarks/grids/ and the README.")
    sub = parser.add_subparsers(dest="bench_command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run", help="run every cell of a grid that has no result yet",
        description="Run a grid's cells, one fresh process each, appending each result to DIR/results.jsonl as it "
                    "lands. Resumable: cells whose result exists (same full config, same file contents) are "
                    "skipped, so a killed run reruns only what is missing; failed cells are retried.")
    run.add_argument("grid", metavar="GRID.toml", help="the grid file")
    run.add_argument("--output", metavar="DIR", default=None, help="output folder (default: results/bench/<name>)")
    run.add_argument("--ray", action="store_true",
                     help="run cells as Ray tasks, each reserving its `cpus` (RAY_ADDRESS joins a cluster)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=_run)
    report = sub.add_parser("report", help="write RESULTS.md and PNG plots from grids' results",
                            description="Tables (mean ± std over seeds), provenance (machine, dates, versions, "
                                        "settings, the command that regenerates it) and plots. One DIR: "
                                        "DIR/RESULTS.md; several, or --output: one file with a section per grid.")
    report.add_argument("dirs", metavar="DIR", nargs="+", help="`bench run` output folders")
    report.add_argument("--output", metavar="FILE", default=None,
                        help="the report file (default: DIR/RESULTS.md for one DIR, else ./RESULTS.md)")
    report.add_argument("--include", metavar="FILE.md", action="append", default=[],
                        help="append this markdown file as a section (a benchmark no grid declares, such as "
                             "benchmarks/service_load.py's report); repeatable")
    report.add_argument("--command", default=None,
                        help="the one command that regenerates the whole report, stated at its top (default: the "
                             "grids' run commands and this report command)")
    report.set_defaults(func=_report)
    return parser


def _run(args) -> None:
    from l2lzo.bench.grid import load_grid
    from l2lzo.bench.runner import check_summary, default_output, run_grid

    grid = load_grid(args.grid)
    output = Path(args.output) if args.output else default_output(grid)
    summary = run_grid(grid, output, ray=args.ray, progress=not args.quiet)
    print(f"{summary.ran - len(summary.failed)} cells ran, {summary.skipped} were done; "
          f"results: {output / 'results.jsonl'}; report: l2lzo bench report {output}")
    check_summary(summary)


def _report(args) -> None:
    from l2lzo.bench.report import write_report

    print(f"written {write_report(args.dirs, args.output, args.include, args.command)}")
