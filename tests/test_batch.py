"""Batch fine-tuning: one plan for many tasks, results table and plot, resume, Ray, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import l2lzo.batch as batch
from l2lzo.batch import BatchConfig, finetune_batch
from l2lzo.cli import main
from l2lzo.errors import L2LZOError

SMALL = {"batch_size": 4, "train_size": 8, "dev_size": 8, "test_size": 8, "eval_every": 2, "max_length": 32}


def write_tasks(folder: Path, names=("alpha", "beta", "gamma")) -> list[str]:
    paths = []
    for k, name in enumerate(names):
        rows = [{"text": f"{name} {'good' if i % 2 else 'bad'} item {i + k}", "label": "ab"[i % 2]}
                for i in range(40)]
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(path))
    return paths


def config(model_dir, tasks, out, **overrides) -> BatchConfig:
    values = {"model": str(model_dir), "tasks": tasks, "steps": 4, "lr": 1e-3, "output_dir": str(out),
              "finetune": dict(SMALL)}
    return BatchConfig(**{**values, **overrides})


def test_batch_trains_every_task_and_writes_table_and_plot(tiny_causal_dir, tmp_path):
    tasks = write_tasks(tmp_path)
    lines = []
    summary = finetune_batch(config(tiny_causal_dir, tasks, tmp_path / "out"), progress=False, say=lines.append)
    out = tmp_path / "out"
    assert [r["task"] for r in summary["rows"]] == tasks
    assert all(r["status"] == "trained" and r["steps"] == 4 and r["lr"] == 1e-3 for r in summary["rows"])
    assert all([e["step"] for e in r["evals"]] == [0, 2, 4] for r in summary["rows"])
    assert json.loads((out / "results.json").read_text()) == summary
    table = (out / "results.md").read_text()
    assert all(f"| {t} | trained | 4 |" in table for t in tasks)
    assert (out / "dev_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "tasks").glob("*.json")) == ["alpha.json", "beta.json", "gamma.json"]
    plan = summary["plan"]
    assert plan["policy"] is None and plan["perturbation"] == "sigma = 1 (MeZO)"
    assert plan["sources"] == {"lr": "flag", "eps": "default", "steps": "flag"}
    assert lines[0].startswith("plan: zo-sgd: lr=0.001") and any("[3/3]" in line for line in lines)


def test_rerun_skips_finished_tasks_and_trains_only_new_ones(tiny_causal_dir, tmp_path, monkeypatch):
    tasks = write_tasks(tmp_path)
    finetune_batch(config(tiny_causal_dir, tasks[:2], tmp_path / "out"), progress=False, say=lambda _: None)
    trained = []
    real = batch.finetune
    monkeypatch.setattr(batch, "finetune", lambda cfg, progress: trained.append(cfg.task) or real(cfg, progress))
    summary = finetune_batch(config(tiny_causal_dir, tasks, tmp_path / "out"), progress=False, say=lambda _: None)
    assert trained == [tasks[2]]
    assert [r["status"] for r in summary["rows"]] == ["skipped (done)", "skipped (done)", "trained"]


def test_rerun_with_other_settings_is_refused_not_mixed(tiny_causal_dir, tmp_path):
    tasks = write_tasks(tmp_path, names=("alpha",))
    finetune_batch(config(tiny_causal_dir, tasks, tmp_path / "out"), progress=False, say=lambda _: None)
    with pytest.raises(L2LZOError, match=r"different settings \(lr\)"):
        finetune_batch(config(tiny_causal_dir, tasks, tmp_path / "out", lr=2e-3), progress=False,
                       say=lambda _: None)


def test_an_interrupted_task_is_retrained(tiny_causal_dir, tmp_path, monkeypatch):
    tasks = write_tasks(tmp_path, names=("alpha", "beta"))
    real = batch.finetune

    def dies_on_beta(cfg, progress):
        if cfg.task == tasks[1]:
            raise KeyboardInterrupt
        return real(cfg, progress)

    monkeypatch.setattr(batch, "finetune", dies_on_beta)
    with pytest.raises(KeyboardInterrupt):
        finetune_batch(config(tiny_causal_dir, tasks, tmp_path / "out"), progress=False, say=lambda _: None)
    monkeypatch.setattr(batch, "finetune", real)
    summary = finetune_batch(config(tiny_causal_dir, tasks, tmp_path / "out"), progress=False, say=lambda _: None)
    assert [r["status"] for r in summary["rows"]] == ["skipped (done)", "trained"]


def test_batch_on_ray_matches_the_local_run(tiny_causal_dir, tmp_path):
    tasks = write_tasks(tmp_path, names=("alpha", "beta"))
    local = finetune_batch(config(tiny_causal_dir, tasks, tmp_path / "local"), progress=False, say=lambda _: None)
    remote = finetune_batch(config(tiny_causal_dir, tasks, tmp_path / "ray", ray=True), progress=False,
                            say=lambda _: None)
    # Same seeds, same data: Ray changes where a task runs, not what it computes.
    for a, b in zip(local["rows"], remote["rows"], strict=True):
        assert a["task"] == b["task"] and a["evals"] == b["evals"]
        assert a["test_accuracy_after"] == b["test_accuracy_after"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--tasks", " , "], "--tasks is empty"),
    (["--tasks", "a.jsonl,b/a.jsonl"], "names a task twice: a"),
    (["--tasks", "polarity", "--optimizer", "zo-nope"], "unknown optimizer"),
    (["--tasks", "polarity", "--lr", "5"], "lr must be in (0, 1]"),
    (["--tasks", "polarity", "--server", "ftp://x"], "--server must be an http(s) URL"),
])
def test_bad_batch_input_is_one_line(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code = main(["finetune-batch", "--model", "minilm-l6", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
