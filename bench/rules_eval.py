"""Cost of one rule-evaluation tick: 100 rules (the shipped packs plus generated ones) over one hour of data
for 8 GPUs at 1 Hz, in the agent's own store, through the same RuleManager the agent runs.

Why: rules run on the agent's evaluate job next to collection; the issue's target is < 20 ms per tick on
this machine. Data: per GPU utilization, temperature, memory ratio and power (8 x 4 series), the request
latency histogram (14 buckets + sum + count), QPS, the engine's queue and KV gauges, the sidecar's OOM and
fragmentation series - 3600 samples each. Generated rules use the windows real rules use (1m-10m
rate/avg_over_time/max_over_time, histogram_quantile over 5m, by-GPU aggregations, comparisons).

    python bench/rules_eval.py [--ticks 30] [--json FILE]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsagent.rules.config import RulesConfig  # noqa: E402
from dsagent.rules.manager import RuleManager  # noqa: E402
from dsagent.samples import Sample, make_labels  # noqa: E402
from dsagent.slo import DEFAULT_LATENCY_BUCKETS_SECONDS  # noqa: E402
from dsagent.store import TimeSeriesStore  # noqa: E402

from bench.common import REPO_ROOT, add_common_arguments, print_table, write_json  # noqa: E402

GPUS = 8
HOUR_SECONDS = 3600


def fill_store(store: TimeSeriesStore, end_seconds: float, seconds: int = HOUR_SECONDS) -> int:
    """One hour of 1 Hz data; returns the number of samples written."""
    rng = random.Random(16)
    start = end_seconds - seconds
    written = 0
    counts = [0.0] * (len(DEFAULT_LATENCY_BUCKETS_SECONDS) + 1)
    latency_sum = 0.0
    oom = 0.0
    for step in range(seconds + 1):
        t = start + step
        batch = []
        for gpu in range(GPUS):
            labels = make_labels({"gpu_index": str(gpu), "gpu_uuid": f"GPU-{gpu:04d}", "gpu_name": "bench"})
            phase = math.sin(step / 300 + gpu)
            batch += [
                Sample("dsagent_gpu_utilization_ratio", labels, 0.7 + 0.25 * phase, t),
                Sample("dsagent_gpu_temperature_celsius", labels, 70 + 12 * phase, t),
                Sample("dsagent_gpu_memory_used_ratio", labels, 0.6 + 0.1 * phase, t),
                Sample("dsagent_gpu_power_draw_watts", labels, 300 + 50 * phase, t),
            ]
        for _ in range(rng.randint(5, 15)):  # requests finished this second
            latency = rng.lognormvariate(-2.0, 0.8)
            latency_sum += latency
            for index, bound in enumerate(DEFAULT_LATENCY_BUCKETS_SECONDS):
                if latency <= bound:
                    for j in range(index, len(counts)):
                        counts[j] += 1
                    break
            else:
                counts[-1] += 1
        for bound, count in zip([*DEFAULT_LATENCY_BUCKETS_SECONDS, math.inf], counts, strict=True):
            le = "+Inf" if math.isinf(bound) else repr(bound)
            batch.append(Sample("inference_latency_seconds_bucket", make_labels({"le": le}), count, t, "counter"))
        batch += [
            Sample("inference_latency_seconds_sum", (), latency_sum, t, "counter"),
            Sample("inference_latency_seconds_count", (), counts[-1], t, "counter"),
            Sample("inference_qps", (), 10.0 + phase, t),
            Sample("dsagent_engine_requests_waiting", (), max(0.0, 5 * phase), t),
            Sample("dsagent_engine_kv_cache_usage_ratio", (), 0.5 + 0.3 * phase, t),
            Sample("engine_dssidecar_kv_cache_fragmentation_ratio", (), 0.1 + 0.05 * phase, t),
        ]
        if rng.random() < 0.001:
            oom += 1
        batch.append(Sample("engine_dssidecar_oom_events_total", (), oom, t, "counter"))
        written += store.append(batch)
    return written


def generated_rules(count: int) -> str:
    """`count` rules in the shapes real rule files use, as one extra rule file."""
    rng = random.Random(1600)
    shapes = [
        "avg_over_time(dsagent_gpu_utilization_ratio[{w}]) > {x}",
        "max by (gpu_index) (max_over_time(dsagent_gpu_temperature_celsius[{w}])) > {t}",
        "avg(dsagent_gpu_utilization_ratio) < {x}",
        "histogram_quantile(0.{q}, sum by (le) (rate(inference_latency_seconds_bucket[{w}]))) > 0.{q2}",
        "sum(rate(inference_latency_seconds_sum[{w}])) / sum(rate(inference_latency_seconds_count[{w}])) > 0.{q2}",
        "deriv(dsagent_engine_requests_waiting[{w}]) > 0 and dsagent_engine_requests_waiting > {n}",
        "increase(engine_dssidecar_oom_events_total[{w}]) > 0",
        "dsagent_gpu_power_draw_watts > on (gpu_index) group_left avg by (gpu_index) "
        "(avg_over_time(dsagent_gpu_power_draw_watts[{w}])) * 1.{n}",
        "max(dsagent_engine_kv_cache_usage_ratio) > 0.{q} and on () avg(dsagent_gpu_utilization_ratio) > {x}",
        "count(dsagent_gpu_temperature_celsius > {t}) >= {n}",
    ]
    lines = ["groups:", "  - name: generated", "    interval: 1s", "    rules:"]
    for index in range(count):
        shape = shapes[index % len(shapes)]
        expr = shape.format(w=rng.choice(["1m", "2m", "5m", "10m"]), x=round(rng.uniform(0.3, 0.9), 2),
                            t=rng.randint(70, 90), q=rng.choice([5, 9, 99]), q2=rng.randint(1, 9), n=rng.randint(1, 5))
        if index % 3 == 0:
            lines += [f"      - record: generated:r{index}", f"        expr: '{expr}'"]
        else:
            lines += [f"      - alert: Generated{index}", f"        expr: '{expr}'", f"        for: {rng.choice(['0s', '1m', '5m'])}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=30, help="evaluation ticks to time (each evaluates every rule)")
    parser.add_argument("--rules", type=int, default=100, help="rules in total (packs + generated)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)

    packs = sorted((REPO_ROOT / "rules").glob("*.yaml"))
    from dsagent.rules.rulefile import expand_paths, load_files

    pack_rules = sum(len(g.rules) for g in load_files(expand_paths([str(p) for p in packs])))
    with tempfile.TemporaryDirectory() as directory:
        extra = Path(directory) / "generated.yaml"
        extra.write_text(generated_rules(max(0, args.rules - pack_rules)))
        store = TimeSeriesStore(HOUR_SECONDS + 120, HOUR_SECONDS + 120)
        end = 1_800_000_000.0
        started = time.perf_counter()
        samples = fill_store(store, end)
        fill_seconds = time.perf_counter() - started
        config = RulesConfig(paths=[*map(str, packs), str(extra)], default_interval_seconds=1.0,
                             reload_check_seconds=0, max_retention_seconds=HOUR_SECONDS + 120,
                             max_samples_per_series=HOUR_SECONDS + 120)
        clock = [end]
        manager = RuleManager(store, config, clock=lambda: clock[0])
        assert manager.load(), manager.last_reload_error
        for group in manager.groups:
            group.interval_seconds = 1.0  # every tick evaluates every rule (the worst case)
        rules = len(manager.all_rules())
        durations, cpu_durations = [], []
        for tick in range(args.ticks + 2):
            clock[0] = end + tick * 1.0
            started, cpu_started = time.perf_counter(), time.process_time()
            manager.evaluate_due(clock[0])
            if tick >= 2:  # the first ticks create the output series
                durations.append(time.perf_counter() - started)
                cpu_durations.append(time.process_time() - cpu_started)
        errors = [f"{r.name}: {r.last_error}" for r in manager.all_rules() if r.last_error]
        per_rule = sorted(((r.evaluation_seconds, r.name) for r in manager.all_rules()), reverse=True)[:5]
    figures = {
        "rules": rules,
        "series": store.stats()["series"],
        "samples_in_store": store.stats()["samples"],
        "tick_cpu_median_ms": statistics.median(cpu_durations) * 1000,  # CPU time: what the tick costs
        "tick_median_ms": statistics.median(durations) * 1000,  # wall time: inflated when the machine is busy
        "tick_p90_ms": sorted(durations)[int(0.9 * (len(durations) - 1))] * 1000,
        "tick_min_ms": min(durations) * 1000,
        "per_rule_median_us": statistics.median(durations) / rules * 1e6,
        "fill_seconds": fill_seconds,
        "load_average_1m": os.getloadavg()[0],
        "rules_with_errors": len(errors),
    }
    print_table(f"Rule evaluation tick: {rules} rules over 1 h of data for {GPUS} GPUs at 1 Hz ({samples} samples)",
                ["figure", "value"], [[k, v] for k, v in figures.items()],
                caption="target: < 20 ms per tick (CPU time; wall time is higher on a loaded machine); slowest rules: "
                        + ", ".join(f"{name} {seconds * 1000:.2f} ms" for seconds, name in per_rule))
    if errors:
        print("rule errors:\n  " + "\n  ".join(errors), file=sys.stderr)
    if args.json:
        write_json(args.json, figures)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
