"""End to end: a live policy server, a pushed artifact, and `l2lzo finetune-batch` on real tasks.

1. starts `l2lzo serve` on loopback with a fresh registry and an upload token;
2. pushes a policy artifact for minilm-l6 over HTTP. This version has no learned policy network, so the
   artifact says so: its feature spec is ``{"kind": "uniform"}`` (sigma = 1, MeZO) and its recommended
   lr / eps / steps are the measured ones from the README's minilm-l6 runs;
3. runs `l2lzo finetune-batch --model minilm-l6 --tasks ... --server URL`: the plan comes from the policy;
4. runs it again to show that finished tasks are skipped.

    .venv/bin/python benchmarks/finetune_batch_e2e.py [--tasks polarity,tweet_sentiment,bbc_news] [--steps 100]

Needs `l2lzo data prepare` for the tasks. Writes benchmarks/results/finetune_batch_e2e/ (the batch's
results.json, results.md, dev_accuracy.png) and prints the wall time of each phase.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from l2lzo.models import fingerprint, load_model
from registry import build_artifact

RESULTS = Path(__file__).parent / "results" / "finetune_batch_e2e"


def uniform_policy(model: str, steps: int) -> bytes:
    """The MeZO policy as an artifact: one scale per role, all 1, and measured hyperparameters."""
    roles = ["embed", "q", "k", "v", "o", "up", "down", "norm", "head", "other"]
    metadata = {
        "base_model": model,
        "fingerprint": fingerprint(load_model(model).model),
        "feature_spec": json.dumps({"kind": "uniform", "roles": roles,
                                    "note": "sigma = 1 for every block (MeZO); no learned network"}),
        "recommended_lr": "5e-5",
        "recommended_eps": "1e-3",
        "recommended_steps": str(steps),
        "training_config": json.dumps({"source": "README sweep: minilm-l6 full ZO-SGD, lr in {1e-5, 5e-5, 2e-4}"}),
        "metrics": json.dumps({"polarity_test_accuracy": [0.562, 0.636], "bb_multiemo_test_accuracy": [0.126, 0.384]}),
    }
    return build_artifact({"role_sigma": np.ones(len(roles), dtype=np.float32)}, metadata)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--tasks", default="polarity,tweet_sentiment,bbc_news")
    parser.add_argument("--steps", type=int, default=100, help="the policy's recommended steps")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="l2lzo-e2e-"))
    token = work / "token"
    token.write_text("e2e-secret\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    l2lzo = [sys.executable, "-m", "l2lzo.cli"]
    server = subprocess.Popen([*l2lzo, "serve", "--port", str(port), "--registry", str(work / "registry"),
                               "--token-file", str(token), "--log-level", "warning"])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("server did not start")
            time.sleep(0.2)
        pushed = httpx.post(f"{url}/v1/models/{args.model}/versions", content=uniform_policy(args.model, args.steps),
                            headers={"Authorization": "Bearer e2e-secret",
                                     "Content-Type": "application/octet-stream"}, timeout=30)
        pushed.raise_for_status()
        print(f"pushed {args.model}@{pushed.json()['version']} sha256 {pushed.json()['sha256'][:12]}", flush=True)
        out = work / "batch"
        batch = [*l2lzo, "finetune-batch", "--model", args.model, "--tasks", args.tasks, "--server", url,
                 "--output-dir", str(out)]
        timings = {}
        for phase in ("first run", "rerun (resume)"):
            t0 = time.perf_counter()
            subprocess.run(batch, check=True)
            timings[phase] = time.perf_counter() - t0
            print(f"{phase}: {timings[phase]:.0f} s", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    if RESULTS.exists():
        shutil.rmtree(RESULTS)
    RESULTS.mkdir(parents=True)
    for name in ("results.json", "results.md", "dev_accuracy.png"):
        shutil.copy(out / name, RESULTS / name)
    (RESULTS / "timings.json").write_text(json.dumps(timings, indent=2))
    print((RESULTS / "results.md").read_text())
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
