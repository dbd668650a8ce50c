"""``l2lzo bench``: declared benchmark grids (TOML) of fine-tune runs and memory/speed probes, run resumably
(here or on Ray) into one JSONL results file per grid, and reported as RESULTS.md with plots.

Modules, one job each: ``grid`` (TOML -> validated cells: ``load_grid``), ``cells`` (settings, keys), ``store``
(the output folder and its records), ``runner`` (what to run, where: ``run_grid``), ``worker`` (one cell in its
own process), ``probe`` (memory/speed measurement), ``report`` (tables and plots: ``write_report``), ``cli``.
This package imports nothing itself, so a cell's worker process starts without loading torch first.
"""
