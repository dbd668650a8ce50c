"""The meta-trainer on Ray: a 2-worker run that publishes a policy `finetune --policy` runs; a killed worker and a
stopped driver that resume to the uninterrupted run."""

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
import torch
from safetensors.torch import load_file
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
    assert main(tiny_meta_train_args(tmp_path, tiny_causal_dir, tasks, **{"--mask-densities": "0.05"})) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    model, version = summary["published"].split("@")
    record = Registry(tmp_path / "registry").get(model, version)
    training = json.loads(record.metadata["training_config"])
    assert training["workers"] == 2 and training["meta_steps"] == 4
    validation = json.loads(record.metadata["metrics"])["validation"]
    assert validation["tasks"] == 1 and float(record.metadata["recommended_lr_sigma1"]) == validation[
        "recommended_lr_sigma1"]
    assert (tmp_path / "run" / "meta_training.png").stat().st_size > 0
    # The mask phase ran over both workers; validation tried it alone and under the shape; what ships carries it
    # exactly when the chosen arm is masked.
    assert set(validation["arms"]) == {"policy", "mezo", "mask 0.05", "policy + mask 0.05"}
    assert ("mask" in record.metadata) == (validation["chosen_density"] == 0.05)
    assert (tmp_path / "run" / "mask_d0.05.safetensors").exists()
    out = tmp_path / "ft.json"
    assert main(["finetune", "--model", str(tiny_causal_dir), "--task", tasks[2], "--steps", "2", "--eval-every", "2",
                 "--batch-size", "4", "--train-size", "8", "--dev-size", "8", "--test-size", "8",
                 "--policy", summary["published"], "--registry", str(tmp_path / "registry"),
                 "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["policy"]["sha256"] == record.sha256 and results["final_sigma"]
    assert (results["policy"]["mask"] is not None) == ("mask" in record.metadata)


def start_cli(args: list[str], env: dict) -> tuple[subprocess.Popen, list[str]]:
    """``python -m l2lzo.cli ARGS`` in the background, its output collected line by line."""
    proc = subprocess.Popen([sys.executable, "-m", "l2lzo.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    return proc, lines


def wait_for(proc: subprocess.Popen, lines: list[str], text: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not any(text in line for line in lines):
        assert proc.poll() is None and time.time() < deadline, "".join(lines[-30:])
        time.sleep(0.2)


def run_outcome(folder) -> tuple:
    """What a finished meta-training run leaves: its history (timings aside), the artifact's weights, selection."""
    saved = json.loads((folder / "history.json").read_text())
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in saved]
    summary = json.loads((folder / "summary.json").read_text())
    weights = load_file(str(folder / "policy.safetensors"))
    return history, weights, summary["selected_meta_step"], summary["recommended_lr"]


def assert_same_run(a: tuple, b: tuple) -> None:
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    assert a[2:] == b[2:]


@pytest.mark.slow
def test_a_killed_worker_and_a_stopped_driver_resume_to_the_uninterrupted_run(tmp_path, tiny_causal_dir):
    """SIGKILL a Ray Train worker inside a trajectory; separately, stop the driver and ``--resume`` the run.

    Both end with the uninterrupted run's history (every meta-loss, gap and selection), policy weights and
    recommendation, bitwise: each worker replays its trajectory's logged steps (``meta_train.trajectory_log``).
    """
    tasks = write_tasks(tmp_path)
    env = {**os.environ, "L2LZO_CACHE_DIR": str(tmp_path / "cache")}

    def args(name: str) -> list[str]:
        return [a for a in tiny_meta_train_args(tmp_path, tiny_causal_dir, tasks, **{
            "--meta-steps": "12", "--reset-every": "5", "--output": str(tmp_path / name), "--no-push": None})
            if a is not None]

    proc, lines = start_cli(args("unbroken"), env)
    assert proc.wait(timeout=900) == 0, "".join(lines[-40:])

    proc, lines = start_cli(args("killed"), env)
    wait_for(proc, lines, "checkpoint at meta-step 6")  # trajectory 1 (steps 5-9) is one step in
    workers = subprocess.run(["pgrep", "-f", "RayTrainWorker"], capture_output=True, text=True).stdout.split()
    assert workers, "no Ray Train worker process found"
    os.kill(int(workers[-1]), signal.SIGKILL)
    assert proc.wait(timeout=900) == 0, "".join(lines[-40:])
    resumed = [int(m.group(1)) for line in lines if (m := re.search(r"resumed at meta-step (\d+)", line))]
    assert resumed and resumed[0] % 5, "".join(lines[-40:])  # restarted inside a trajectory
    assert_same_run(run_outcome(tmp_path / "unbroken"), run_outcome(tmp_path / "killed"))

    proc, lines = start_cli(args("stopped"), env)
    wait_for(proc, lines, "checkpoint at meta-step 4")
    name = next(m.group(1) for line in lines if (m := re.search(r"^run (\S+) in ", line)))
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) != 0
    proc, lines = start_cli([*args("stopped"), "--resume", name], env)
    assert proc.wait(timeout=900) == 0, "".join(lines[-40:])
    resumed = [int(m.group(1)) for line in lines if (m := re.search(r"resumed at meta-step (\d+)", line))]
    assert resumed and resumed[0] % 5, "".join(lines[-40:])
    assert_same_run(run_outcome(tmp_path / "unbroken"), run_outcome(tmp_path / "stopped"))
