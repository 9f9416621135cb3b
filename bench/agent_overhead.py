"""Agent overhead: CPU (% of one core) and RSS of `dsagent run` at 1 Hz with 8 simulated GPUs and the
sidecar running, next to two baselines measured in the same window on the same machine:

  idle-imports    a python process that imports the agent's modules and sleeps (the floor for RSS)
  collector-only  the same sources (8 simulated GPUs, host, engine scrape of the same sidecar) and the
                  store, collected every second in a plain loop: no API, scheduler, export or supervisor

Targets (issue 5): agent < 0.5 % of one core, < 80 MB RSS. Only the agent process is measured, not the
sidecar it supervises. A light request load (--request-rate per second) keeps the OTLP path busy.

The agent row runs without rules (the collection tick alone). --rules loads the shipped default packs plus
generated alerting rules, 100 in all, over the same series (the rules issue's load). --with-page-client
adds a second window on the same agent with the live page open: one client doing what the page does
(the page's query_range backfill once, then its event stream at 1 Hz), measured against the first window.

    .venv/bin/python bench/agent_overhead.py [--seconds 60] [--full] [--rules] [--with-page-client] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
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


RULE_COUNT = 100
GENERATED_RULES = [  # expressions over the series the agent collects; thresholds vary with the index
    'avg_over_time(dsagent_gpu_utilization_ratio{{gpu_index="{gpu}"}}[5m]) > 0.{digit}',
    'max by (gpu_index) (dsagent_gpu_temperature_celsius) > {threshold}',
    'histogram_quantile(0.99, sum by (le) (rate(inference_latency_seconds_bucket[5m]))) > 0.{digit}',
    'sum(rate(inference_requests_total[1m])) > {threshold}',
    'dsagent_engine_requests_waiting > {digit}',
    'increase(dsagent_gpu_xid_errors_total{{gpu_index="{gpu}"}}[10m]) > 0',
    'avg(dsagent_gpu_memory_used_bytes / dsagent_gpu_memory_total_bytes) > 0.{digit}',
    'inference_latency_p99_seconds > 0.{digit} and inference_qps > {digit}',
]


def write_rule_files(directory: Path) -> list[str]:
    """The default packs plus generated rules up to RULE_COUNT; returns the rules.paths entries."""
    from dsagent.rules.config import default_pack_paths

    packs = default_pack_paths()
    shipped = sum(len(re.findall(r"^\s*- (?:alert|record):", path.read_text(), re.M))
                  for pattern in packs for path in Path(pattern).parent.glob(Path(pattern).name))
    lines = ["groups:", "  - name: generated", "    interval: 15s", "    rules:"]
    for index in range(max(0, RULE_COUNT - shipped)):
        expr = GENERATED_RULES[index % len(GENERATED_RULES)].format(
            gpu=index % 8, digit=1 + index % 9, threshold=50 + index)
        lines += [f"      - alert: Generated{index}", f"        expr: '{expr}'", "        for: 1m"]
    generated = directory / "generated-rules.yaml"
    generated.write_text("\n".join(lines) + "\n")
    return [*packs, str(generated)]


def page_queries() -> tuple[list[str], list[str]]:
    """(chart selectors backfilled with query_range, every selector on the page's stream), read from page.js."""
    script = (REPO_ROOT / "agent" / "dsagent" / "page" / "static" / "page.js").read_text()
    charts = sorted(set(re.findall(r'\{q: "([a-zA-Z_:][a-zA-Z0-9_:]*)"', script)))
    stream = sorted(set(re.findall(r'"((?:inference|dsagent)_[^"]+)"', script)))
    return charts, stream


def page_client(api_url: str, stop: threading.Event, counts: dict[str, int]) -> None:
    """What an open page costs the agent: the static files, one backfill, then the event stream."""
    charts, stream = page_queries()
    with httpx.Client(timeout=30) as client:
        for path in ("/", "/page/static/page.js", "/page/static/uPlot.iife.min.js", "/page/static/page.css"):
            client.get(api_url + path).raise_for_status()
        end = time.time()
        for query in charts:
            client.get(api_url + "/api/v1/query_range",
                       params={"query": query, "start": end - 330, "end": end, "step": 1}).raise_for_status()
        with client.stream("GET", api_url + "/api/page/events", params=[("query", q) for q in stream]) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith("event: tick"):
                    counts["events"] += 1
                if stop.is_set():
                    break


def measure(meters: dict[str, Meter], seconds: float) -> dict[str, dict[str, float]]:
    for meter in meters.values():
        meter.begin()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for meter in meters.values():
            meter.sample()
        time.sleep(1.0)
    return {name: meter.result() for name, meter in meters.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window after warm-up")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds after the engine is ready")
    parser.add_argument("--request-rate", type=float, default=1.0, help="requests per second to the sidecar")
    parser.add_argument("--full", action="store_true", help="10-minute window")
    parser.add_argument("--rules", action="store_true",
                        help=f"load the default rule packs plus generated rules, {RULE_COUNT} in all")
    parser.add_argument("--with-page-client", action="store_true",
                        help="a second window with the live page open (backfill + event stream at 1 Hz)")
    parser.add_argument("--json", type=Path, default=None, help="write {figures, env} here")
    args = parser.parse_args()
    seconds = 600.0 if args.full else args.seconds

    data_dir = Path(tempfile.mkdtemp(prefix="dsagent-overhead-"))
    engine_port, api_port = free_port(), free_port()
    api_url, engine_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{engine_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSAGENT_", "DSSIDECAR_"))}
    env.update({"DSAGENT_SOURCES__GPU__BACKEND": "fake", "DSAGENT_SOURCES__GPU__FAKE_GPU_COUNT": "8",
                "DSAGENT_ENGINE__EXTRA_ARGS": "[--num-threads, '1']", "DSAGENT_LOG_LEVEL": "WARNING"})
    if args.rules:
        rule_paths = write_rule_files(data_dir)
        env["DSAGENT_RULES__PATHS"] = "[" + ", ".join(f"'{path}'" for path in rule_paths) + "]"
    else:
        env["DSAGENT_RULES__ENABLED"] = "false"  # the collection tick alone
    dsagent = Path(sys.executable).parent / "dsagent"
    agent_log = open(data_dir / "agent.out", "wb")
    print(f"starting the agent + sidecar (data in {data_dir}) ...", flush=True)
    agent = subprocess.Popen([str(dsagent), "run", "--data-dir", str(data_dir), "--model", str(tiny_model()),
                              "--engine-port", str(engine_port), "--api-port", str(api_port)],
                             env=env, stdout=agent_log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    baselines: list[subprocess.Popen[str]] = []
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    page_counts = {"events": 0}
    try:
        wait_ready(api_url, 300, agent)
        baselines = [start_python(IDLE_IMPORTS), start_python(COLLECTOR_ONLY, engine_url)]
        loader = threading.Thread(target=request_load, args=(engine_url, args.request_rate, stop, counts), daemon=True)
        loader.start()
        time.sleep(args.warmup)
        agent_row = "agent (dsagent run, " + (f"{RULE_COUNT} rules)" if args.rules else "no rules)")
        meters = {agent_row: Meter(agent.pid), "baseline: idle-imports": Meter(baselines[0].pid),
                  "baseline: collector-only": Meter(baselines[1].pid)}
        print(f"measuring for {seconds:g} s ...", flush=True)
        results = measure(meters, seconds)
        if args.with_page_client:
            page_stop = threading.Event()
            client = threading.Thread(target=page_client, args=(api_url, page_stop, page_counts), daemon=True)
            client.start()
            time.sleep(5.0)  # backfill done, stream running
            print(f"measuring for {seconds:g} s with the page open ...", flush=True)
            results["agent with the page open"] = measure({"page": Meter(agent.pid)}, seconds)["page"]
            page_stop.set()
            client.join(5.0)
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
    agent_figures = results[agent_row]
    print(f"\nwindow {seconds:g} s; requests ok {counts['ok']} failed {counts['failed']}; "
          f"agent received {status['agent']['requests_received_total']} request records; "
          f"GPUs seen {len(status['gpus']['devices'])}; store series {status['store']['series']}")
    if status.get("rules"):
        print(f"rules: {json.dumps(status['rules'])[:300]}")
    for row in [agent_row] + (["agent with the page open"] if args.with_page_client else []):
        figures = results[row]
        print(f"targets ({row}): CPU < 0.5 % -> {'met' if figures['cpu_percent_of_one_core'] < 0.5 else 'NOT met'}; "
              f"RSS < 80 MB -> {'met' if figures['rss_mb_max'] < 80 else 'NOT met'}")
    if args.with_page_client:
        print(f"page client: {page_counts['events']} stream events received")
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
            "rules_loaded": RULE_COUNT if args.rules else 0,
        }
        if args.with_page_client:
            page = results["agent with the page open"]
            figures["agent_with_page_cpu_percent_of_one_core"] = page["cpu_percent_of_one_core"]
            figures["agent_with_page_rss_mb_max"] = page["rss_mb_max"]
            figures["page_stream_events"] = page_counts["events"]
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
