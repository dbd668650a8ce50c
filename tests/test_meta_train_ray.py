"""The meta-trainer on Ray: a 2-worker run that publishes a policy `finetune --policy` runs; a killed worker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from test_meta_train import write_tasks

from l2lzo.cli import main
from registry import Registry


def tiny_meta_train_args(tmp_path, model_dir, tasks, **extra) -> list[str]:
    settings = {"--model": str(model_dir), "--workers": "2", "--threads": "1", "--meta-steps": "4",
                "--inner-steps": "2", "--reset-every": "2", "--batch-size": "4", "--heldout-batch-size": "6",
                "--train-size": "12", "--validate-every": "2", "--validation-steps": "2", "--final-steps": "2",
                "--checkpoint-every": "2", "--lr": "5e-3", "--train-tasks": ",".join(tasks[:2]),
                "--validation-tasks": tasks[2], "--registry": str(tmp_path / "registry"),
                "--output": str(tmp_path / "run")}
    settings.update(extra)
    return ["meta-train", *[x for item in settings.items() for x in item]]


def test_two_workers_meta_train_publish_and_finetune_runs_the_policy(tmp_path, tiny_causal_dir, monkeypatch):
    monkeypatch.setenv("L2LZO_CACHE_DIR", str(tmp_path / "cache"))
    tasks = write_tasks(tmp_path)
    assert main(tiny_meta_train_args(tmp_path, tiny_causal_dir, tasks)) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    model, version = summary["published"].split("@")
    record = Registry(tmp_path / "registry").get(model, version)
    training = json.loads(record.metadata["training_config"])
    assert training["workers"] == 2 and training["meta_steps"] == 4
    validation = json.loads(record.metadata["metrics"])["validation"]
    assert validation["tasks"] == 1 and float(record.metadata["recommended_lr_sigma1"]) == validation[
        "recommended_lr_sigma1"]
    assert (tmp_path / "run" / "meta_training.png").stat().st_size > 0
    out = tmp_path / "ft.json"
    assert main(["finetune", "--model", str(tiny_causal_dir), "--task", tasks[2], "--steps", "2", "--eval-every", "2",
                 "--batch-size", "4", "--train-size", "8", "--dev-size", "8", "--test-size", "8",
                 "--policy", summary["published"], "--registry", str(tmp_path / "registry"),
                 "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["policy"]["sha256"] == record.sha256 and results["final_sigma"]


@pytest.mark.slow
def test_a_killed_worker_restarts_from_the_last_checkpoint(tmp_path, tiny_causal_dir):
    """SIGKILL one Ray Train worker mid-run: the run finishes, redoing at most one checkpoint interval."""
    tasks = write_tasks(tmp_path)
    env = {**os.environ, "L2LZO_CACHE_DIR": str(tmp_path / "cache")}
    args = tiny_meta_train_args(tmp_path, tiny_causal_dir, tasks, **{"--meta-steps": "16", "--no-push": None})
    args = [a for a in args if a is not None]
    proc = subprocess.Popen([sys.executable, "-m", "l2lzo.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.time() + 600
    while not any("checkpoint at meta-step 6" in line for line in lines):
        assert proc.poll() is None and time.time() < deadline, "".join(lines[-30:])
        time.sleep(0.5)
    killed_after = max(int(m.group(1)) for line in lines if (m := re.search(r"checkpoint at meta-step (\d+)", line)))
    workers = subprocess.run(["pgrep", "-f", "RayTrainWorker"], capture_output=True, text=True).stdout.split()
    assert workers, "no Ray Train worker process found"
    os.kill(int(workers[-1]), signal.SIGKILL)
    assert proc.wait(timeout=900) == 0, "".join(lines[-40:])
    reader.join(timeout=10)
    resumed = [int(m.group(1)) for line in lines if (m := re.search(r"resumed at meta-step (\d+)", line))]
    assert resumed, "".join(lines[-40:])
    # No checkpoint is lost, so at most the steps since the last one (--checkpoint-every 2) are redone.
    assert resumed[0] >= killed_after
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["meta_step"] for h in history] == list(range(1, 17))
