"""The fine-tune loop and the CLI: results JSON, best checkpoint, one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from l2lzo.cli import main
from l2lzo.finetune import FinetuneConfig, finetune
from l2lzo.models import CAUSAL, ENCODER, tiny_model
from l2lzo.tasks import load_task


def write_task(path: Path, n: int = 40) -> Path:
    rows = [{"text": f"{'good' if i % 2 else 'bad'} thing number {i}", "label": "ab"[i % 2]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("optimizer", ["zo-sgd", "fo-adam"])
def test_finetune_writes_results_and_checkpoint(tmp_path, optimizer):
    task = write_task(tmp_path / "toy.jsonl")
    config = FinetuneConfig(model="tiny", task=str(task), optimizer=optimizer, steps=6, eval_every=3,
                            batch_size=4, lr=1e-3, train_size=8, dev_size=8, test_size=8,
                            output=str(tmp_path / "run.json"))
    splits = load_task(str(task), train_size=8, dev_size=8, test_size=8)
    result = finetune(config, loaded=tiny_model(CAUSAL), splits=splits, progress=False)
    saved = json.loads((tmp_path / "run.json").read_text())
    assert [e["step"] for e in saved["evals"]] == [0, 3, 6]
    assert saved["config"]["optimizer"] == optimizer and saved["config"]["lr"] == 1e-3
    assert saved["final_test"]["examples"] == 8 and saved["initial_test"]["examples"] == 8
    assert saved["median_step_seconds"] > 0 and saved["peak_rss_mb"] > 0
    assert saved["best_step"] == result.best_step
    assert Path(saved["checkpoint"]).is_file()
    best = max(e["dev_accuracy"] for e in saved["evals"])
    assert saved["evals"][[e["step"] for e in saved["evals"]].index(result.best_step)]["dev_accuracy"] == best


def test_fo_adam_learns_a_separable_toy_task(tmp_path):
    task = write_task(tmp_path / "toy.jsonl", n=60)
    config = FinetuneConfig(model="tiny", task=str(task), optimizer="fo-adam", steps=40, eval_every=40,
                            batch_size=8, lr=3e-3, train_size=16, dev_size=12, test_size=12,
                            output=str(tmp_path / "run.json"))
    splits = load_task(str(task), train_size=16, dev_size=12, test_size=12)
    result = finetune(config, loaded=tiny_model(CAUSAL), splits=splits, progress=False)
    assert result.final_test["loss"] < result.initial_test["loss"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(("argv", "message"), [
    (["--optimizer", "adamw"], "unknown optimizer 'adamw'"),
    (["--scheme", "qlora"], "unknown scheme 'qlora'"),
    (["--lr", "0"], "lr must be in (0, 1]"),
    (["--lr", "5"], "lr must be in (0, 1]"),
    (["--eps", "-1"], "eps must be in (0, 1]"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--task", "no_such_task"], "unknown task 'no_such_task'"),
    (["--model", "no-such-org/no-such-model"], "cannot be loaded"),
])
def test_bad_finetune_input_is_one_line(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.setenv("L2LZO_CACHE_DIR", str(tmp_path / "cache"))
    task = write_task(tmp_path / "toy.jsonl")
    base = ["finetune", "--task", str(task), "--model", "no-such-org/no-such-model", "--output",
            str(tmp_path / "r.json")]
    if "--model" not in argv and "--task" not in argv:
        base[base.index("--model") + 1] = str(tmp_path / "missing-model")
    code, err = run_cli(capsys, *base, *argv)
    assert code == 2
    assert err.startswith("l2lzo: error:") and message in err and "\n" not in err


def test_unprepared_task_and_malformed_file(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("L2LZO_CACHE_DIR", str(tmp_path / "empty-cache"))
    code, err = run_cli(capsys, "finetune", "--task", "polarity")
    assert code == 2 and "l2lzo data prepare polarity" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "label": "a"}\n{not json\n')
    code, err = run_cli(capsys, "finetune", "--task", str(bad))
    assert code == 2 and "bad.jsonl:2:" in err


def test_tasks_and_models_listing(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("L2LZO_CACHE_DIR", str(tmp_path))
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "polarity" in out and "commonsense_qa" in out and "not prepared" in out
    assert main(["models"]) == 0
    assert "smollm2-135m" in capsys.readouterr().out


def test_cli_error_has_no_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "l2lzo.cli", "finetune", "--optimizer", "nope"],
                          capture_output=True, text=True, env={"L2LZO_CACHE_DIR": str(tmp_path), "PATH": ""})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_time_budget_stops_early_with_a_final_eval(tmp_path):
    task = write_task(tmp_path / "toy.jsonl")
    config = FinetuneConfig(model="tiny", task=str(task), steps=50, eval_every=20, batch_size=4, lr=1e-3,
                            train_size=8, dev_size=8, test_size=8, time_budget=1e-9,
                            output=str(tmp_path / "run.json"))
    splits = load_task(str(task), train_size=8, dev_size=8, test_size=8)
    result = finetune(config, loaded=tiny_model(CAUSAL), splits=splits, progress=False)
    assert result.steps_done == 1 and [e["step"] for e in result.evals] == [0, 1]
    # The budget counts optimizer steps (and profiling), not evals: one step's time, part of the run's wall time.
    assert result.train_seconds == result.median_step_seconds > 0
    assert result.train_seconds < result.wall_seconds


@pytest.mark.parametrize("family", [CAUSAL, ENCODER])
def test_forward_grad_finetunes_both_model_families(tmp_path, family):
    task = write_task(tmp_path / "toy.jsonl")
    config = FinetuneConfig(model="tiny", task=str(task), optimizer="forward-grad", steps=3, eval_every=3,
                            batch_size=4, lr=1e-3, train_size=8, dev_size=8, test_size=8,
                            output=str(tmp_path / "run.json"))
    splits = load_task(str(task), train_size=8, dev_size=8, test_size=8)
    result = finetune(config, loaded=tiny_model(family), splits=splits, progress=False)
    assert result.steps_done == 3 and result.final_test["examples"] == 8
