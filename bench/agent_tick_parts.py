"""Where the agent's CPU goes: the real Agent in-process (8 simulated GPUs, the sidecar on the tiny demo
model, a light request load), with the CPU time of each job and each part of the collection tick
accounted by thread CPU clocks, plus each thread's share from /proc, and what one page event costs.

Why: bench/agent_overhead.py says how much the agent costs; this says where, so a change to the tick can
be judged part by part (figures are thread CPU, so other load on the machine inflates them little).

    .venv/bin/python bench/agent_tick_parts.py [--seconds 60] [--request-rate 1] [--rules] [--json FILE]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def thread_cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system) of each thread of this process, from /proc (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    result = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        result[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window")
    parser.add_argument("--request-rate", type=float, default=1.0, help="requests per second to the sidecar")
    parser.add_argument("--rules", action="store_true", help="the default rule packs on (else rules off)")
    parser.add_argument("--json", type=Path, default=None, help="write {figures, env} here")
    args = parser.parse_args()

    from tests.conftest import build_demo_model, free_port

    os.environ.update({"DSAGENT_SOURCES__GPU__BACKEND": "fake", "DSAGENT_SOURCES__GPU__FAKE_GPU_COUNT": "8",
                       "DSAGENT_ENGINE__EXTRA_ARGS": "[--num-threads, '1']",
                       "DSAGENT_RULES__ENABLED": "true" if args.rules else "false"})
    from dsagent.app import Agent, limit_malloc_arenas
    from dsagent.config import load_config
    from dsagent.page.routes import page_event

    data_dir = Path(tempfile.mkdtemp(prefix="dsagent-tick-parts-"))
    config = load_config(None, overrides={"data_dir": str(data_dir), "server.port": free_port(),
                                          "engine.model": str(build_demo_model("qwen2", "tiny", 0, 0)),
                                          "engine.port": free_port()})
    limit_malloc_arenas()
    agent = Agent(config)
    cpu: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()

    def accounted(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def run(*arguments: Any, **keywords: Any) -> Any:
            started = time.thread_time()
            try:
                return function(*arguments, **keywords)
            finally:
                cpu[name] += time.thread_time() - started
                calls[name] += 1
        return run

    print(f"starting the agent + sidecar (data in {data_dir}) ...", flush=True)
    agent.start()
    for job in ("collect_once", "evaluate_once", "export_once"):
        setattr(agent, job, accounted(job, getattr(agent, job)))
    intervals = config.intervals
    agent.scheduler.add_interval_job("collect", agent.collect_once, intervals.collect_seconds)
    agent.scheduler.add_interval_job("evaluate", agent.evaluate_once, intervals.evaluate_seconds)
    agent.scheduler.add_interval_job("export", agent.export_once, config.export_interval_seconds())
    for source in agent.sources:
        source.collect = accounted(f"tick: source {source.name}", source.collect)  # type: ignore[method-assign]
    for owner, attribute, name in ((agent.store, "append", "tick: store.append"),
                                   (agent.pipeline, "record_samples", "tick: pipeline.record_samples"),
                                   (agent.request_stats, "samples", "tick: slo samples"),
                                   (agent, "_pipeline_samples", "tick: export counters as samples")):
        setattr(owner, attribute, accounted(name, getattr(owner, attribute)))
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 300
        while agent.status()["engine"].get("state") != "ready":
            if time.monotonic() > deadline:
                raise RuntimeError("engine not ready within 300 s")
            time.sleep(0.5)
        engine_url = agent.supervisor.engine_url if agent.supervisor is not None else ""

        def load() -> None:
            with httpx.Client(timeout=30) as client:
                model = client.get(engine_url + "/v1/models").json()["data"][0]["id"]
                while args.request_rate > 0 and not stop.wait(1.0 / args.request_rate):
                    client.post(engine_url + "/v1/completions",
                                json={"model": model, "prompt": "hello agent", "max_tokens": 8})

        loader = threading.Thread(target=load, name="load", daemon=True)
        loader.start()
        time.sleep(10)
        cpu.clear()
        calls.clear()
        before, wall_start = thread_cpu_seconds(), time.monotonic()
        print(f"measuring for {args.seconds:g} s ...", flush=True)
        time.sleep(args.seconds)
        after, wall = thread_cpu_seconds(), time.monotonic() - wall_start
        names = {thread.native_id: thread.name for thread in threading.enumerate()}
        excluded = {loader.native_id, threading.main_thread().native_id}
        threads = collections.Counter()
        for tid, seconds in after.items():
            if tid not in excluded:
                threads[names.get(tid, f"thread {tid}")] += seconds - before.get(tid, 0.0)
        jobs = {name: (100.0 * seconds / wall, calls[name]) for name, seconds in cpu.items()}

        script = (REPO_ROOT / "agent" / "dsagent" / "page" / "static" / "page.js").read_text()
        queries = sorted(set(re.findall(r'"((?:inference|dsagent)_[^"]+)"', script)))
        event_cpu, event_bytes = 0.0, 0
        for index in range(20):
            started = time.thread_time()
            body = json.dumps(page_event(agent.store, agent.status, lambda: getattr(agent, "rule_manager", None),
                                         queries, index % 5 == 0, time.time()), separators=(",", ":"))
            event_cpu += time.thread_time() - started
            event_bytes = len(body)
    finally:
        stop.set()
        agent.stop()

    total = sum(threads.values())
    print(f"\nagent threads: {100 * total / wall:.3f} % of one core over {wall:.0f} s "
          f"({args.request_rate:g} requests/s, rules {'on' if args.rules else 'off'})")
    for name, seconds in threads.most_common():
        if seconds > 0:
            print(f"  {100 * seconds / wall:7.3f} %  thread {name}")
    print(f"{'job or tick part':40} {'% of one core':>14} {'calls':>6} {'ms per call':>12}")
    for name, (percent, count) in sorted(jobs.items(), key=lambda item: -item[1][0]):
        print(f"{name:40} {percent:14.3f} {count:6d} {1000 * cpu[name] / max(1, count):12.2f}")
    print(f"page event (status + {len(queries)} instant queries + JSON): {1000 * event_cpu / 20:.2f} ms CPU, "
          f"{event_bytes} bytes")
    if args.json is not None:
        figures = {"agent_threads_cpu_percent_of_one_core": 100 * total / wall, "page_event_ms": 1000 * event_cpu / 20,
                   "page_event_bytes": event_bytes, "window_seconds": wall}
        for name, (percent, count) in jobs.items():
            key = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
            figures[f"{key}_cpu_percent_of_one_core"] = percent
            figures[f"{key}_ms_per_call"] = 1000 * cpu[name] / max(1, count)
        from bench.common import write_json

        write_json(args.json, figures)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
