"""Grid files: expansion into cells, one-line errors naming key and line, and the keys that identify results."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from bench_helpers import write_grid, write_toy_task

from l2lzo.bench.grid import GridError, load_grid
from l2lzo.cli import main

AXES = """
[axes]
scheme = ["full", "lora"]
optimizer = [
  "zo-sgd",
  { label = "hybrid", optimizer = "zo-sgd", hybrid_fo_budget = 0.5 },
]
seed = [0, 1]
"""


def test_axes_expand_to_their_product_with_bundles_labelled(tmp_path):
    grid = load_grid(write_grid(tmp_path, AXES))
    assert grid.name == "grid" and grid.kind == "finetune" and grid.axes == ["scheme", "optimizer", "seed"]
    assert [tuple(c.labels.values()) for c in grid.cells][:4] == [
        ("full", "zo-sgd", "0"), ("full", "zo-sgd", "1"), ("full", "hybrid", "0"), ("full", "hybrid", "1")]
    assert len(grid.cells) == 8 and len({c.key for c in grid.cells}) == 8
    hybrid = grid.cells[2]
    assert hybrid.settings["optimizer"] == "zo-sgd" and hybrid.settings["hybrid_fo_budget"] == 0.5
    # The relative task path is resolved against the grid's folder and counted by content.
    assert hybrid.settings["task"] == str((tmp_path / "toy.jsonl").resolve())
    assert set(hybrid.config["task"]) == {"file", "sha256"}
    # The full config has every FinetuneConfig default, the resolved lr and the cpus.
    assert hybrid.config["eps"] == 1e-3 and hybrid.config["noise"] == "pool" and hybrid.config["cpus"] == 1


def test_products_union_with_shared_cells_once_and_product_settings(tmp_path):
    body = """
[[axes]]
optimizer = ["zo-sgd", "fo-adam"]

[[axes]]
steps = 3
optimizer = ["zo-sgd"]
max_length = [32, 48]
"""
    grid = load_grid(write_grid(tmp_path, body))
    assert grid.axes == ["optimizer", "max_length"]
    # [[axes]] 2 repeats nothing of [[axes]] 1 (steps = 3 there), so 2 + 2 cells; labels fill in from the config.
    assert [(c.labels["optimizer"], c.labels["max_length"], c.settings["steps"]) for c in grid.cells] == [
        ("zo-sgd", "32", 2), ("fo-adam", "32", 2), ("zo-sgd", "32", 3), ("zo-sgd", "48", 3)]
    twice = body.replace("steps = 3\n", "")
    assert len(load_grid(write_grid(tmp_path, twice, name="twice.toml")).cells) == 3


HEADER = 'kind = "finetune"\n[base]\nmodel = "tiny"\ntask = "toy.jsonl"\n'  # lines 1-4


@pytest.mark.parametrize(("text", "line", "message"), [
    (HEADER + "steps = \n", 5, "not valid TOML: Invalid value (column 9)"),
    ('bsae = 1\n' + HEADER, 1, "bsae: unknown key 'bsae' (did you mean 'base'?)"),
    (HEADER + "[axis]\nseed = [0]\n", 5, "axis: unknown key 'axis' (did you mean 'axes'?)"),
    (HEADER + "stpes = 3\n", 5, "base.stpes: unknown setting 'stpes' (did you mean 'steps'?)"),
    (HEADER + 'steps = "ten"\n', 5, "base.steps: expected int, got str 'ten'"),
    (HEADER + "lr = 5\n", 5, "base.lr: lr must be in (0, 1]"),
    (HEADER.replace('"toy.jsonl"', '"no_such_task"'), 4, "base.task: unknown task 'no_such_task'"),
    ('kind = "probee"\n', 1, "kind: unknown kind 'probee': choose one of finetune, probe"),
    (HEADER + '[axes]\noptimizer = [\n  "zo-sgd",\n  "fo-adam", "zo-sdg",\n]\n', 8,
     "axes.optimizer[2]: unknown optimizer 'zo-sdg'"),
    (HEADER + '[axes]\noptimizer = ["zo-sgd",\n  { label = "h", optimizr = "zo-sgd" }]\n', 7,
     "axes.optimizer[1].optimizr: unknown setting 'optimizr' (did you mean 'optimizer'?)"),
    (HEADER + '[axes]\nmethod = ["fast"]\n', 6, "axes.method[0]: 'method' is not a setting"),
    (HEADER + "[axes]\nseed = []\n", 6, "axes.seed: an axis is a non-empty list of values"),
    (HEADER + '[axes]\nseed = [0]\noptimizer = [{ label = "s", seed = 3 }]\n', 7,
     "axes.optimizer: sets 'seed', which axis 'seed' sets too"),
    (HEADER + '[axes]\noptimizer = ["fo-adam", "zo-sgd"]\nsparsity = [0.0, 0.5]\n', 5,
     "axes cell (optimizer=fo-adam, sparsity=0.5): --zo-blocks, --sparsity, --sparse-mask and --hybrid-fo-budget "
     "apply to ZO"),
    (HEADER + '[[axes]]\nseed = [0]\n\n[[axes]]\nsteps = 0\n', 9, "axes[1].steps: --steps must be >= 1, got 0"),
])
def test_bad_grid_is_one_line_naming_file_line_and_key(tmp_path, text, line, message):
    write_toy_task(tmp_path)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(GridError) as caught:
        load_grid(path)
    error = str(caught.value)
    assert error.startswith(f"{path}:{line}: ") and message in error and "\n" not in error


def test_bad_grid_on_the_command_line_exits_2_with_one_line(tmp_path, capsys):
    path = write_grid(tmp_path, '[axes]\noptimizer = ["zo-sgd", "adamw"]\n')
    assert main(["bench", "run", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"l2lzo: error: {path}:14: axes.optimizer[1]: unknown optimizer 'adamw': choose one of "
                   "zo-sgd, zo-sgd-sign, zo-sgd-mmt, zo-sgd-cons, zo-adam, forward-grad, fo-sgd, fo-adam")
    assert not (tmp_path / "out").exists()


def _keys(path) -> dict[tuple, str]:
    return {tuple(c.labels.values()): c.key for c in load_grid(path).cells}


def test_key_is_the_full_config_and_the_content_of_referenced_files(tmp_path):
    body = '[axes]\noptimizer = ["zo-sgd", "fo-adam"]\n'
    keys = _keys(write_grid(tmp_path, body))
    # Parsing is deterministic, and spelling out a default is the same config.
    assert _keys(write_grid(tmp_path, body)) == keys
    assert _keys(write_grid(tmp_path, body + "eps = 0.001\n")) == keys
    # A changed option changes exactly the cells it reaches.
    changed = _keys(write_grid(tmp_path, '[axes]\noptimizer = ["zo-sgd", "fo-adam"]\nnoise = ["gaussian"]\n'))
    assert len({*changed.values(), *keys.values()}) == 4
    assert _keys(write_grid(tmp_path, body.replace('"fo-adam"', '{ label = "fo-adam", optimizer = "fo-adam", '
                                                               'lr = 0.01 }')))[("fo-adam",)] != keys[("fo-adam",)]
    # The same task file elsewhere is the same cell; different content is a new one.
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(tmp_path / "toy.jsonl", moved / "toy.jsonl")
    assert _keys(write_grid(moved, body)) == keys
    with (moved / "toy.jsonl").open("a") as f:
        f.write('{"text": "one more", "label": "a"}\n')
    assert set(_keys(write_grid(moved, body)).values()).isdisjoint(keys.values())


def test_a_model_folder_counts_by_its_files(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights v1")
    grid = write_grid(tmp_path, '[axes]\noptimizer = ["zo-sgd"]\n', base=_base_with_model("my-model"))
    first = load_grid(grid).cells[0]
    assert first.config["model"]["file"] == "my-model" and first.settings["model"] == str(folder.resolve())
    (folder / "model.safetensors").write_bytes(b"weights v2")
    assert load_grid(grid).cells[0].key != first.key


def test_names_that_are_not_files_enter_the_key_as_written(tmp_path):
    grid = load_grid(write_grid(tmp_path, '[axes]\noptimizer = ["zo-sgd"]\n', base=_base_with_model("org/model-x")))
    assert grid.cells[0].config["model"] == "org/model-x"


def _base_with_model(model: str) -> str:
    return f'[base]\nmodel = "{model}"\ntask = "toy.jsonl"\n'


SHIPPED_GRIDS = sorted((Path(__file__).parents[1] / "benchmarks" / "grids").glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED_GRIDS, ids=lambda p: p.stem)
def test_shipped_grids_load_and_their_policy_files_exist(path):
    grid = load_grid(path)
    assert grid.cells and grid.name == path.stem
    for cell in grid.cells:
        if cell.settings.get("policy"):
            # A path that does not exist would enter the key as a registry name and fail only when the cell runs.
            assert set(cell.config["policy"]) == {"file", "sha256"}, cell.labels
