"""Agent overhead: CPU (% of one core) and RSS of `dsagent run` at 1 Hz with 8 simulated GPUs and the
sidecar running, next to two baselines measured in the same window on the same machine:

  idle-imports    a python process that imports the agent's modules and sleeps (the floor for RSS)
  collector-only  the same sources (8 simulated GPUs, host, engine scrape of the same sidecar) and the
                  store, collected every second in a plain loop: no API, scheduler, export or supervisor

Targets (issue 5): agent < 0.5 % of one core, < 80 MB RSS. Only the agent process is measured, not the
sidecar it supervises. A light request load (--request-rate per second) keeps the OTLP path busy.

    .venv/bin/python bench/agent_overhead.py [--seconds 60] [--full] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

IDLE_IMPORTS = """
import time, dsagent.app, dsagent.api, dsagent.supervisor, dsagent.export, dsagent.sources.factory
print("ready", flush=True)
time.sleep(10**6)
"""

COLLECTOR_ONLY = """
import sys, time
from dsagent.sources.config import SourcesConfig
from dsagent.sources.factory import build_sources
from dsagent.store import TimeSeriesStore
engine_url = sys.argv[1]
config = SourcesConfig.model_validate({"gpu": {"backend": "fake", "fake_gpu_count": 8}})
sources = build_sources(config, engine_url, lambda: None)
store = TimeSeriesStore(900, 1000)
print("ready", flush=True)
next_tick = time.monotonic()
while True:
    samples = []
    for source in sources:
        try:
            samples += source.collect()
        except Exception as exc:
            samples += getattr(exc, "samples", [])
    store.append(samples)
    next_tick += 1.0
    time.sleep(max(0.0, next_tick - time.monotonic()))
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tiny_model() -> Path:
    from tests.conftest import build_demo_model

    return build_demo_model("qwen2", "tiny", seed=0, train_steps=0)


class Meter:
    """CPU seconds (user+system) and RSS of one process, sampled once a second."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.rss_bytes: list[int] = []
        self.cpu_start = 0.0
        self.wall_start = 0.0

    def begin(self) -> None:
        times = self.process.cpu_times()
        self.cpu_start = times.user + times.system
        self.wall_start = time.monotonic()

    def sample(self) -> None:
        self.rss_bytes.append(self.process.memory_info().rss)

    def result(self) -> dict[str, float]:
        times = self.process.cpu_times()
        wall = time.monotonic() - self.wall_start
        cpu = times.user + times.system - self.cpu_start
        return {
            "cpu_percent_of_one_core": 100.0 * cpu / wall,
            "rss_mb_last": self.rss_bytes[-1] / 1e6,
            "rss_mb_max": max(self.rss_bytes) / 1e6,
        }


def start_python(code: str, *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    assert process.stdout is not None
    line = process.stdout.readline()
    if "ready" not in line:
        raise RuntimeError(f"baseline process failed to start: {line!r}")
    return process


def wait_ready(api_url: str, timeout_seconds: float, agent: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise RuntimeError(f"agent exited with {agent.returncode}")
        try:
            if httpx.get(api_url + "/api/status", timeout=2).json()["engine"]["state"] == "ready":
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"engine not ready within {timeout_seconds} s")


def request_load(engine_url: str, rate_per_second: float, stop: threading.Event, counts: dict[str, int]) -> None:
    if rate_per_second <= 0:
        return
    with httpx.Client(timeout=30) as client:
        model = client.get(engine_url + "/v1/models").json()["data"][0]["id"]
        while not stop.wait(1.0 / rate_per_second):
            try:
                client.post(engine_url + "/v1/completions",
                            json={"model": model, "prompt": "hello agent", "max_tokens": 8}).raise_for_status()
                counts["ok"] += 1
            except httpx.HTTPError:
                counts["failed"] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window after warm-up")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds after the engine is ready")
    parser.add_argument("--request-rate", type=float, default=1.0, help="requests per second to the sidecar")
    parser.add_argument("--full", action="store_true", help="10-minute window")
    parser.add_argument("--json", type=Path, default=None, help="write {figures, env} here")
    args = parser.parse_args()
    seconds = 600.0 if args.full else args.seconds

    data_dir = Path(tempfile.mkdtemp(prefix="dsagent-overhead-"))
    engine_port, api_port = free_port(), free_port()
    api_url, engine_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{engine_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSAGENT_", "DSSIDECAR_"))}
    env.update({"DSAGENT_SOURCES__GPU__BACKEND": "fake", "DSAGENT_SOURCES__GPU__FAKE_GPU_COUNT": "8",
                "DSAGENT_ENGINE__EXTRA_ARGS": "[--num-threads, '1']", "DSAGENT_LOG_LEVEL": "WARNING"})
    dsagent = Path(sys.executable).parent / "dsagent"
    agent_log = open(data_dir / "agent.out", "wb")
    print(f"starting the agent + sidecar (data in {data_dir}) ...", flush=True)
    agent = subprocess.Popen([str(dsagent), "run", "--data-dir", str(data_dir), "--model", str(tiny_model()),
                              "--engine-port", str(engine_port), "--api-port", str(api_port)],
                             env=env, stdout=agent_log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    baselines: list[subprocess.Popen[str]] = []
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    try:
        wait_ready(api_url, 300, agent)
        baselines = [start_python(IDLE_IMPORTS), start_python(COLLECTOR_ONLY, engine_url)]
        loader = threading.Thread(target=request_load, args=(engine_url, args.request_rate, stop, counts), daemon=True)
        loader.start()
        time.sleep(args.warmup)
        meters = {"agent (dsagent run)": Meter(agent.pid), "baseline: idle-imports": Meter(baselines[0].pid),
                  "baseline: collector-only": Meter(baselines[1].pid)}
        for meter in meters.values():
            meter.begin()
        print(f"measuring for {seconds:g} s ...", flush=True)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for meter in meters.values():
                meter.sample()
            time.sleep(1.0)
        results = {name: meter.result() for name, meter in meters.items()}
        status = httpx.get(api_url + "/api/status", timeout=5).json()
    finally:
        stop.set()
        for process in baselines:
            process.kill()
            process.wait()
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(60)
        agent_log.close()

    print()
    print(f"{'process':28} {'CPU % of one core':>18} {'RSS MB (last)':>14} {'RSS MB (max)':>13}")
    for name, figures in results.items():
        print(f"{name:28} {figures['cpu_percent_of_one_core']:18.2f} {figures['rss_mb_last']:14.1f} "
              f"{figures['rss_mb_max']:13.1f}")
    agent_figures = results["agent (dsagent run)"]
    print(f"\nwindow {seconds:g} s; requests ok {counts['ok']} failed {counts['failed']}; "
          f"agent received {status['agent']['requests_received_total']} request records; "
          f"GPUs seen {len(status['gpus']['devices'])}; store series {status['store']['series']}")
    print(f"targets: CPU < 0.5 % -> {'met' if agent_figures['cpu_percent_of_one_core'] < 0.5 else 'NOT met'}; "
          f"RSS < 80 MB -> {'met' if agent_figures['rss_mb_max'] < 80 else 'NOT met'}")
    print(f"agent exit code on SIGTERM: {agent.returncode}")
    shutil.rmtree(data_dir, ignore_errors=True)

    if args.json is not None:
        figures = {
            "agent_cpu_percent_of_one_core": agent_figures["cpu_percent_of_one_core"],
            "agent_rss_mb_max": agent_figures["rss_mb_max"],
            "idle_imports_cpu_percent_of_one_core": results["baseline: idle-imports"]["cpu_percent_of_one_core"],
            "idle_imports_rss_mb_max": results["baseline: idle-imports"]["rss_mb_max"],
            "collector_only_cpu_percent_of_one_core":
                results["baseline: collector-only"]["cpu_percent_of_one_core"],
            "collector_only_rss_mb_max": results["baseline: collector-only"]["rss_mb_max"],
            "window_seconds": seconds,
            "requests_ok": counts["ok"],
        }
        try:  # the shared writer (same env block as every benchmark) when bench/common.py is present
            from bench.common import write_json
        except ImportError:
            env_info = {"python": platform.python_version(), "machine": platform.machine(),
                        "cpu_count": os.cpu_count(), "platform": platform.platform()}
            args.json.write_text(json.dumps({"figures": figures, "env": env_info}, indent=2))
        else:
            write_json(args.json, figures)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
