"""Throughput, latency and memory of the policy service's download endpoint under concurrent clients.

Setup: a temporary local registry holding one realistic policy artifact (3,969 float32 numbers: role embedding
and a two-layer MLP, 16.9 KB on disk) and one large artifact near the registry's 16 MiB limit (3,900,000 float32
numbers, 15.6 MB). The server (``python -m service``: uvicorn, one worker process) runs in
its own process; the load generator runs in this one: ``--clients`` concurrent keep-alive HTTP/1.1 connections
(asyncio, a minimal raw client so that the client side costs as little CPU as possible on a small machine), each
sending ``GET /v1/models/<model>/versions/latest`` back to back for ``--duration`` seconds after a warm-up.
Two modes: ``full`` (no validator: 200 with the file) and ``conditional`` (``If-None-Match`` with the current
ETag: 304, no body). Every response is checked (status, and body size for 200).

Reported per run and mode: requests/s, p50 and p99 latency, errors, and CPU use of the server, of the load
generator and of everything else on the machine during the measurement (from /proc), so a run distorted by
other load shows it.

Then, per run, the memory test: ``--clients`` connections each download the large artifact once, all at the same
time. Reported: the server's resident memory before, its peak during the burst (VmHWM, reset through
/proc/PID/clear_refs just before) and after, and the wall time of the burst.

    .venv/bin/python benchmarks/service_load.py [--duration 10] [--runs 3] [--clients 50] [--output service_load]

Writes benchmarks/results/<output>.{json,md}. Only the registry's ``push`` and ``python -m service`` are used, so
the script also measures older checkouts: copy it into one and run it there.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from registry import Registry, build_artifact, parse_artifact  # noqa: E402 -- needs the repository root on sys.path

RESULTS = Path(__file__).parent / "results"
MODEL = "smollm2-135m"
LARGE_MODEL = "large-policy"
LARGE_NUMBERS = 3_900_000
MODES = ("full", "conditional")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def policy_artifact() -> bytes:
    """A policy shaped like the design's: role embedding + MLP over per-block features, a few thousand numbers."""
    rng = np.random.default_rng(0)
    tensors = {
        "role_embedding": rng.standard_normal((16, 16)).astype(np.float32),
        "mlp.0.weight": rng.standard_normal((64, 56)).astype(np.float32),
        "mlp.0.bias": np.zeros(64, np.float32),
        "mlp.1.weight": rng.standard_normal((1, 64)).astype(np.float32),
        "mlp.1.bias": np.zeros(1, np.float32),
    }
    metadata = {
        "base_model": MODEL, "fingerprint": "ab" * 32,
        "feature_spec": json.dumps({"features": ["role", "depth", "log_size", "theta_mean", "theta_std", "loss_plus",
                                                 "loss_minus", "prev_sigma", "step_fraction"]}),
        "recommended_lr": "0.0001", "recommended_eps": "0.001", "recommended_steps": "1000",
        "training_config": json.dumps({"tasks": ["polarity", "bb_multiemo"], "meta_lr": 0.001, "episodes": 2000}),
        "metrics": json.dumps({"heldout_loss_gap": -0.031, "heldout_acc_gap": 0.012}),
    }
    return build_artifact(tensors, metadata)


def large_artifact() -> bytes:
    """An artifact near the registry's size limit: the memory test downloads it."""
    rng = np.random.default_rng(1)
    metadata = {
        "base_model": LARGE_MODEL, "fingerprint": "cd" * 32, "feature_spec": "{}", "recommended_lr": "0.0001",
        "recommended_eps": "0.001", "recommended_steps": "1000", "training_config": "{}", "metrics": "{}",
    }
    return build_artifact({"weights": rng.standard_normal(LARGE_NUMBERS).astype(np.float32)}, metadata)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime + stime


def _memory_mib(pid: int, field: str) -> float:
    """A /proc/PID/status memory field (VmRSS, VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def _machine_busy_seconds() -> float:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / _CLOCK_TICKS


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, int]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if status != 304 and length:
        await reader.readexactly(length)
    return status, length


async def _client(port: int, request: bytes, expect: tuple[int, int | None], start: float, stop: float,
                  latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            began = time.perf_counter()
            if began >= stop:
                return
            status, length = await _request(reader, writer, request)
            ended = time.perf_counter()
            ok = status == expect[0] and (expect[1] is None or length == expect[1])
            if began < start:
                continue  # the warm-up is not measured
            if ok:
                latencies.append(ended - began)
            else:
                errors.append(f"{status} ({length} bytes)")
    finally:
        writer.close()


async def _measure(port: int, etag: str, size: int, mode: str, clients: int, duration: float,
                   warmup: float) -> tuple[list[float], list[str]]:
    validator = f"If-None-Match: {etag}\r\n" if mode == "conditional" else ""
    request = (f"GET /v1/models/{MODEL}/versions/latest HTTP/1.1\r\nHost: 127.0.0.1\r\n{validator}\r\n").encode()
    expect = (304, None) if mode == "conditional" else (200, size)
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter() + warmup
    await asyncio.gather(*(_client(port, request, expect, start, start + duration, latencies, errors)
                           for _ in range(clients)))
    return latencies, errors


async def _download_once(port: int, request: bytes, size: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        began = time.perf_counter()
        status, length = await _request(reader, writer, request)
        if (status, length) != (200, size):
            raise RuntimeError(f"large download answered {status} with {length} bytes, expected 200 and {size}")
        return time.perf_counter() - began
    finally:
        writer.close()


async def _burst(port: int, size: int, clients: int) -> list[float]:
    request = f"GET /v1/models/{LARGE_MODEL}/versions/1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    return list(await asyncio.gather(*(_download_once(port, request, size) for _ in range(clients))))


def run_memory(server_pid: int, port: int, size: int, clients: int) -> dict:
    """``clients`` simultaneous full downloads of the large artifact; the server's memory around them."""
    before = _memory_mib(server_pid, "VmRSS")
    Path(f"/proc/{server_pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    began = time.perf_counter()
    latencies = sorted(asyncio.run(_burst(port, size, clients)))
    wall = time.perf_counter() - began
    return {"mode": "memory", "downloads": clients, "bytes": size, "rss_before_mib": before,
            "rss_peak_mib": _memory_mib(server_pid, "VmHWM"), "rss_after_mib": _memory_mib(server_pid, "VmRSS"),
            "wall_s": wall, "p50_ms": 1000 * _percentile(latencies, 0.50), "max_ms": 1000 * latencies[-1]}


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def run_mode(server_pid: int, port: int, etag: str, size: int, mode: str, args: argparse.Namespace) -> dict:
    """One measurement of one mode."""
    server_cpu, busy = _process_cpu_seconds(server_pid), _machine_busy_seconds()
    own = time.process_time()
    began = time.perf_counter()
    latencies, errors = asyncio.run(_measure(port, etag, size, mode, args.clients, args.duration, args.warmup))
    wall = time.perf_counter() - began
    server_cpu = _process_cpu_seconds(server_pid) - server_cpu
    client_cpu = time.process_time() - own
    other_cpu = max(0.0, _machine_busy_seconds() - busy - server_cpu - client_cpu)
    if not latencies:
        raise RuntimeError(f"no successful {mode} request; errors: {errors[:5]}")
    latencies.sort()
    return {
        "mode": mode, "requests": len(latencies), "errors": len(errors), "error_samples": errors[:5],
        "requests_per_s": len(latencies) / args.duration,
        "p50_ms": 1000 * _percentile(latencies, 0.50), "p99_ms": 1000 * _percentile(latencies, 0.99),
        # CPU in cores (1.0 = one core busy) over the whole call, warm-up included.
        "server_cores": server_cpu / wall, "loadgen_cores": client_cpu / wall, "other_cores": other_cpu / wall,
    }


def _wait_ready(port: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not become ready within 60 s")


def _markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Policy service load test",
        "",
        f"Command: `{report['command']}`",
        "",
        f"`GET /v1/models/{MODEL}/versions/latest`, {report['config']['clients']} concurrent keep-alive clients, "
        f"{report['config']['duration_s']:.0f} s per measurement after {report['config']['warmup_s']:.0f} s warm-up, "
        f"{report['config']['runs']} runs per mode. Policy file: {report['artifact']['numbers']:,} float32 numbers, "
        f"{report['artifact']['bytes']:,} bytes. Server: uvicorn {m['uvicorn']} (HTTP parser "
        f"{m['http_parser']}, event loop {m['event_loop']}), FastAPI {m['fastapi']}, one worker process; the load "
        f"generator is a separate process.",
        "",
        f"Machine: {m['cpu_count']} CPU cores, {m['platform']}, Python {m['python']}; load average before the "
        f"runs {m['loadavg_before']}.",
        "",
        "| mode | run | requests/s | p50 (ms) | p99 (ms) | errors | server cores | load-gen cores | other cores |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    throughput_runs = [run for run in report["runs"] if run["mode"] in MODES]
    for i, run in enumerate(throughput_runs):
        lines.append(f"| {run['mode']} | {i // len(MODES) + 1} | {run['requests_per_s']:.0f} | {run['p50_ms']:.1f} | "
                     f"{run['p99_ms']:.1f} | {run['errors']} | {run['server_cores']:.2f} | "
                     f"{run['loadgen_cores']:.2f} | {run['other_cores']:.2f} |")
    lines += ["", "Median over runs:", "", "| mode | requests/s | p50 (ms) | p99 (ms) |", "|---|---|---|---|"]
    for mode in MODES:
        summary = report["summary"][mode]
        lines.append(f"| {mode} | {summary['requests_per_s']:.0f} | {summary['p50_ms']:.1f} | "
                     f"{summary['p99_ms']:.1f} |")
    large = report["large_artifact"]
    lines += ["", f"Memory: {report['config']['clients']} simultaneous full downloads of "
                  f"`GET /v1/models/{LARGE_MODEL}/versions/1` ({large['bytes']:,} bytes), one burst per run; server "
                  "resident memory (VmRSS before and after, VmHWM peak reset just before the burst):", "",
              "| run | RSS before (MiB) | peak (MiB) | after (MiB) | burst wall (s) | p50 download (ms) | "
              "slowest (ms) |", "|---|---|---|---|---|---|---|"]
    memory_runs = [run for run in report["runs"] if run["mode"] == "memory"]
    for i, run in enumerate([*memory_runs, report["summary"]["memory"]]):
        label = str(i + 1) if i < len(memory_runs) else "median"
        lines.append(f"| {label} | {run['rss_before_mib']:.0f} | {run['rss_peak_mib']:.0f} | "
                     f"{run['rss_after_mib']:.0f} | {run['wall_s']:.2f} | {run['p50_ms']:.0f} | {run['max_ms']:.0f} |")
    lines += ["", "'other cores' is CPU used by every other process during the measurement; well above 0 means "
                  "the numbers are distorted by other load."]
    busiest = max(run["other_cores"] for run in throughput_runs)
    if busiest > 0.2:
        lines += ["", f"**Other load was present** (up to {busiest:.2f} cores used by other processes): the server, "
                      "bound to about one core by the GIL, competed with it for the CPU, so these numbers may "
                      "understate what an idle machine of this size gives."]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run and mode")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each measurement")
    parser.add_argument("--runs", type=int, default=3, help="runs per mode")
    parser.add_argument("--clients", type=int, default=50, help="concurrent connections")
    parser.add_argument("--output", default="service_load", help="results file stem under benchmarks/results/")
    args = parser.parse_args()

    data, large = policy_artifact(), large_artifact()
    etag = f'"{hashlib.sha256(data).hexdigest()}"'
    loadavg_before = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory(prefix="l2lzo-load-") as root:
        registry = Registry(root)
        registry.push(data, MODEL)
        registry.push(large, LARGE_MODEL)
        numbers = sum(int(np.prod(t.shape)) for t in parse_artifact(data).tensors)
        port = _free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("L2LZO_REGISTRY_TOKEN", None)  # read-only server: the token plays no part in downloads
        server = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port), "--registry", root,
                                   "--log-level", "error"], cwd=REPO, env=env)
        try:
            _wait_ready(port, server)
            runs = []
            for run in range(args.runs):
                for mode in MODES:
                    result = run_mode(server.pid, port, etag, len(data), mode, args)
                    runs.append(result)
                    print(f"run {run + 1} {mode:<11} {result['requests_per_s']:7.0f} req/s  p50 "
                          f"{result['p50_ms']:6.1f} ms  p99 {result['p99_ms']:6.1f} ms  errors {result['errors']}  "
                          f"cores: server {result['server_cores']:.2f} load-gen {result['loadgen_cores']:.2f} "
                          f"other {result['other_cores']:.2f}", flush=True)
            for run in range(args.runs):
                result = run_memory(server.pid, port, len(large), args.clients)
                runs.append(result)
                print(f"run {run + 1} memory      {args.clients} x {len(large):,} bytes: RSS "
                      f"{result['rss_before_mib']:.0f} -> peak {result['rss_peak_mib']:.0f} -> "
                      f"{result['rss_after_mib']:.0f} MiB, {result['wall_s']:.2f} s", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)

    summary = {mode: {key: statistics.median(r[key] for r in runs if r["mode"] == mode)
                      for key in ("requests_per_s", "p50_ms", "p99_ms")} for mode in MODES}
    summary["memory"] = {key: statistics.median(r[key] for r in runs if r["mode"] == "memory")
                         for key in ("rss_before_mib", "rss_peak_mib", "rss_after_mib", "wall_s", "p50_ms", "max_ms")}
    report = {
        "what": f"GET /v1/models/{MODEL}/versions/latest throughput and latency",
        "command": shlex.join(["python", "benchmarks/service_load.py", "--duration", f"{args.duration:g}",
                               "--warmup", f"{args.warmup:g}", "--runs", str(args.runs), "--clients",
                               str(args.clients), "--output", args.output]),
        "config": {"clients": args.clients, "duration_s": args.duration, "warmup_s": args.warmup, "runs": args.runs},
        "artifact": {"numbers": numbers, "bytes": len(data), "sha256": etag.strip('"')},
        "large_artifact": {"numbers": LARGE_NUMBERS, "bytes": len(large)},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "uvicorn": package_version("uvicorn"), "fastapi": package_version("fastapi"),
                    "http_parser": "httptools" if _installed("httptools") else "h11",
                    "event_loop": "uvloop" if _installed("uvloop") else "asyncio",
                    "loadavg_before": " ".join(loadavg_before)},
        "runs": runs,
        "summary": summary,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.output}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{args.output}.md").write_text(_markdown(report))
    print(f"wrote {RESULTS / args.output}.json and .md")


def _installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
