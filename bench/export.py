"""Benchmark: documents/s into a (fake) Elasticsearch through the agent's exporter vs raw `helpers.bulk`.

Same documents, same cluster, same run: the fake Elasticsearch runs as a separate process on loopback
(tests/fakes/elasticsearch.py), the baseline is elasticsearch-py's `helpers.bulk` with op_type create and
the same ids, the project side is the agent's spool drainer (SQLite spool -> bulk create -> ack). Before
every run of either side the cluster gets the agent's index templates (untimed), so both write into the
same kind of data stream with the same mappings, as on a cluster the agent feeds. Runs alternate and
repeat; medians with min-max are printed, and the bench process's own CPU seconds per 1,000 documents
(the client side alone; steadier than wall time when other processes share the CPU). Then the time to drain a backlog: N minutes at
1 Hz of 8 GPUs x 20 metrics plus requests, recorded through the real pipeline (OTel SDK -> spool) while
the destination is down, drained when it comes back.

    .venv/bin/python bench/export.py [--documents N] [--repeats R] [--backlog-minutes M] [--full] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from dsagent.export.config import ElasticsearchConfig, ExportConfig  # noqa: E402
from dsagent.export.destination import DeadLetterFile  # noqa: E402
from dsagent.export.documents import Document, deterministic_id, iso_timestamp  # noqa: E402
from dsagent.export.drainer import Backoff, SpoolDrainer  # noqa: E402
from dsagent.export.elasticsearch import ElasticsearchDestination  # noqa: E402
from dsagent.export.pipeline import TelemetryPipeline  # noqa: E402
from dsagent.export.spool import METRIC, Spool, SpoolRecord  # noqa: E402
from dsagent.samples import RequestRecord, Sample, make_labels  # noqa: E402
from elasticsearch import Elasticsearch, helpers  # noqa: E402

GPU_METRICS = [
    "utilization_ratio", "memory_used_bytes", "memory_total_bytes", "temperature_celsius", "power_watts",
    "power_limit_watts", "sm_clock_hertz", "memory_clock_hertz", "app_sm_clock_hertz", "app_memory_clock_hertz",
    "throttle_reasons", "xid_errors_total", "ecc_errors_total", "encoder_utilization_ratio",
    "decoder_utilization_ratio", "pcie_tx_bytes", "pcie_rx_bytes", "fan_speed_ratio", "energy_joules_total",
    "process_memory_bytes",
]
BATCH_DOCUMENTS = 2000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_fake(port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.elasticsearch", "--port", str(port)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    process.stdout.readline()  # "listening on ..."
    return process


def metric_documents(count: int, seed_ns: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, dataset, document) like the pipeline produces for GPU gauges."""
    documents = []
    for number in range(count):
        gpu, metric = divmod(number % (8 * len(GPU_METRICS)), len(GPU_METRICS))
        time_ns = seed_ns + (number // (8 * len(GPU_METRICS))) * 1_000_000_000
        labels = {"gpu_index": str(gpu), "gpu_uuid": f"GPU-{gpu:08d}-aaaa-bbbb-cccc"}
        name = f"dsagent_gpu_{GPU_METRICS[metric]}"
        body = {"@timestamp": iso_timestamp(time_ns), "metric": {"name": name, "type": "gauge", "unit": "1"},
                "labels": labels, "value": 0.5 + number % 97, "resource": {"service.name": "dsagent",
                "host.name": "bench-node"}, "host": {"name": "bench-node"}}
        documents.append((deterministic_id("bench", name, str(time_ns), str(gpu)), "gpu", body))
    return documents


def install_templates(url: str) -> None:
    """The agent's index templates, as the agent installs them (the cluster state both sides write into)."""
    destination = ElasticsearchDestination(ElasticsearchConfig.model_validate({"url": url}))
    reason = destination.prepare()
    destination.close()
    assert reason is None, reason


def run_helpers_bulk(client: Elasticsearch, documents: list[tuple[str, str, dict[str, Any]]],
                     namespace: str) -> tuple[float, float]:
    """Documents/s and the client's CPU seconds per 1,000 documents."""
    index = f"metrics-dsagent.gpu-{namespace}"
    actions = ({"_op_type": "create", "_index": index, "_id": doc_id, "_source": body} for doc_id, _, body in documents)
    started, cpu_started = time.perf_counter(), time.process_time()
    success, errors = helpers.bulk(client, actions, chunk_size=BATCH_DOCUMENTS, max_retries=0, raise_on_error=True)
    elapsed, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    assert success == len(documents) and not errors, (success, errors)
    return len(documents) / elapsed, 1000 * cpu_seconds / len(documents)


def run_agent_exporter(url: str, documents: list[tuple[str, str, dict[str, Any]]], namespace: str,
                       work_dir: Path) -> tuple[float, float, float]:
    """Documents/s (serialize + spool append + drain, and the drain alone): the spool append is the
    recording side's cost, paid while collecting; the drain is what runs when the destination is up.
    Serializing uses the agent's own document encoder (`Document.encoded`), as the pipeline does.
    Third: the client's CPU seconds per 1,000 documents (serialize + spool + drain)."""
    config = ElasticsearchConfig.model_validate({"url": url, "namespace": namespace})
    destination = ElasticsearchDestination(config)
    assert destination.prepare() is None
    spool = Spool(work_dir / f"bench-{namespace}.sqlite3", max_bytes=10**10)
    stream = f"metrics-dsagent.gpu-{namespace}"
    drainer = SpoolDrainer(destination, spool, DeadLetterFile(work_dir / "dead.ndjson"), BATCH_DOCUMENTS,
                           Backoff(0.05, 0.5))
    append_started, cpu_started = time.perf_counter(), time.process_time()
    spool.append([SpoolRecord(METRIC, stream, doc_id, Document(METRIC, "metrics", dataset, doc_id, body).encoded)
                  for doc_id, dataset, body in documents])
    append_seconds = time.perf_counter() - append_started
    started = time.perf_counter()
    while spool.depth_documents:
        drainer.drain_once()
    drain_seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    assert drainer.sent_documents == len(documents) and drainer.dead_lettered_documents == 0
    spool.close()
    destination.close()
    return (len(documents) / (append_seconds + drain_seconds), len(documents) / drain_seconds,
            1000 * cpu_seconds / len(documents))


def run_backlog(url: str, minutes: float, requests_per_second: float, work_dir: Path) -> dict[str, float]:
    """Record `minutes` of 1 Hz telemetry while the destination is unreachable, then time the drain."""
    config = ExportConfig.model_validate({
        "elasticsearch": {"url": url, "namespace": "backlog"},
        "file": {"enabled": False},
        "spool": {"batch_documents": BATCH_DOCUMENTS, "retry_initial_seconds": 0.05, "retry_max_seconds": 0.5},
        "metric_export_interval_seconds": 3600,
    })
    pipeline = TelemetryPipeline(config, work_dir / "backlog", {"host.name": "bench-node"})
    seconds = int(minutes * 60)
    started = time.perf_counter()
    request_number = 0
    for second in range(seconds):  # not started: nothing drains, the backlog builds up in the spool
        now = time.time()
        pipeline.record_samples([
            Sample(f"dsagent_gpu_{metric}", make_labels({"gpu_index": str(gpu), "gpu_uuid": f"GPU-{gpu}"}),
                   float(second), now)
            for gpu in range(8) for metric in GPU_METRICS
        ])
        due = int((second + 1) * requests_per_second) - request_number
        if due:
            pipeline.record_requests([RequestRecord(f"req-{request_number + i}", now, model="demo", prompt_length=64,
                                                    tokens_generated=64, generation_time_seconds=0.4,
                                                    time_to_first_token_seconds=0.05,
                                                    time_per_output_token_seconds=0.005) for i in range(due)])
            request_number += due
        pipeline.collect_metrics()
    fill_seconds = time.perf_counter() - started
    stats = pipeline.stats()
    backlog_documents = stats["elasticsearch.spool_depth_documents"]
    backlog_bytes = stats["elasticsearch.spool_bytes"]
    started = time.perf_counter()
    pipeline.start()
    drained = pipeline.force_flush(timeout_seconds=600)
    drain_seconds = time.perf_counter() - started
    pipeline.shutdown()
    assert drained, "the backlog did not drain within 600 s"
    return {
        "backlog_minutes": minutes,
        "backlog_documents": backlog_documents,
        "backlog_spool_bytes": backlog_bytes,
        "backlog_record_seconds": fill_seconds,
        "backlog_record_seconds_per_simulated_second": fill_seconds / seconds,
        "backlog_drain_seconds": drain_seconds,
        "backlog_drain_documents_per_second": backlog_documents / drain_seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=40_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backlog-minutes", type=float, default=10.0)
    parser.add_argument("--requests-per-second", type=float, default=5.0)
    parser.add_argument("--full", action="store_true", help="200k documents, 5 repeats, 60-minute backlog")
    parser.add_argument("--json", type=Path, help="write {'figures': ..., 'env': ...} here")
    args = parser.parse_args()
    if args.full:
        args.documents, args.repeats, args.backlog_minutes = 200_000, 5, 60.0

    port = free_port()
    fake = start_fake(port)
    url = f"http://127.0.0.1:{port}"
    figures: dict[str, float] = {}
    try:
        client = Elasticsearch(url, request_timeout=60)
        documents = metric_documents(args.documents, time.time_ns())
        baseline: list[float] = []
        agent: list[float] = []
        agent_drain: list[float] = []
        baseline_cpu: list[float] = []
        agent_cpu: list[float] = []
        with tempfile.TemporaryDirectory() as work:
            for repeat in range(args.repeats):
                order = ("agent", "baseline") if repeat % 2 == 0 else ("baseline", "agent")
                for side in order:
                    namespace = f"{side}{repeat}"
                    install_templates(url)
                    if side == "baseline":
                        rate, cpu_per_thousand = run_helpers_bulk(client, documents, namespace)
                        baseline.append(rate)
                        baseline_cpu.append(cpu_per_thousand)
                    else:
                        with_append, drain_only, cpu_per_thousand = run_agent_exporter(
                            url, documents, namespace, Path(work))
                        agent.append(with_append)
                        agent_drain.append(drain_only)
                        agent_cpu.append(cpu_per_thousand)
                client.perform_request("POST", "/_fake/reset", headers={"content-type": "application/json"})
                print(f"repeat {repeat + 1}/{args.repeats}: agent {agent[-1]:,.0f} docs/s "
                      f"(drain {agent_drain[-1]:,.0f}), helpers.bulk {baseline[-1]:,.0f} docs/s", file=sys.stderr)
            figures["export_documents_per_second"] = statistics.median(agent)
            figures["export_documents_per_second_min"] = min(agent)
            figures["export_documents_per_second_max"] = max(agent)
            figures["helpers_bulk_documents_per_second"] = statistics.median(baseline)
            figures["helpers_bulk_documents_per_second_min"] = min(baseline)
            figures["helpers_bulk_documents_per_second_max"] = max(baseline)
            figures["export_drain_documents_per_second"] = statistics.median(agent_drain)
            figures["export_client_cpu_seconds_per_1000_documents"] = statistics.median(agent_cpu)
            figures["helpers_bulk_client_cpu_seconds_per_1000_documents"] = statistics.median(baseline_cpu)
            figures["export_vs_helpers_bulk_ratio"] = statistics.median(a / b for a, b in zip(agent, baseline, strict=True))
            figures["export_drain_vs_helpers_bulk_ratio"] = statistics.median(
                a / b for a, b in zip(agent_drain, baseline, strict=True))
            figures.update(run_backlog(url, args.backlog_minutes, args.requests_per_second, Path(work)))
    finally:
        fake.terminate()
        fake.wait(10)

    rows = [
        ("documents per run", f"{args.documents:,}", ""),
        ("helpers.bulk (baseline)", f"{figures['helpers_bulk_documents_per_second']:,.0f} docs/s",
         f"{figures['helpers_bulk_documents_per_second_min']:,.0f}-{figures['helpers_bulk_documents_per_second_max']:,.0f}"),
        ("agent exporter (serialize + spool + drain)", f"{figures['export_documents_per_second']:,.0f} docs/s",
         f"{figures['export_documents_per_second_min']:,.0f}-{figures['export_documents_per_second_max']:,.0f}"),
        ("agent exporter, drain only (spool -> bulk -> ack)",
         f"{figures['export_drain_documents_per_second']:,.0f} docs/s", ""),
        ("agent / helpers.bulk (with spool append)", f"{figures['export_vs_helpers_bulk_ratio']:.2f}x",
         "target >= 0.8x"),
        ("agent / helpers.bulk (drain only)", f"{figures['export_drain_vs_helpers_bulk_ratio']:.2f}x", ""),
        ("client CPU per 1,000 docs: agent (serialize + spool + drain)",
         f"{1000 * figures['export_client_cpu_seconds_per_1000_documents']:.1f} ms", "bench process CPU time"),
        ("client CPU per 1,000 docs: helpers.bulk",
         f"{1000 * figures['helpers_bulk_client_cpu_seconds_per_1000_documents']:.1f} ms", "bench process CPU time"),
        (f"backlog: {args.backlog_minutes:g} min at 1 Hz, 8 GPUs x {len(GPU_METRICS)} metrics "
         f"+ {args.requests_per_second:g} req/s", f"{figures['backlog_documents']:,.0f} docs",
         f"{figures['backlog_spool_bytes'] / 1e6:,.1f} MB spooled"),
        ("backlog recording cost (OTel SDK -> spool)", f"{figures['backlog_record_seconds']:.1f} s",
         f"{1000 * figures['backlog_record_seconds_per_simulated_second']:.1f} ms per simulated second"),
        ("backlog drain time", f"{figures['backlog_drain_seconds']:.1f} s",
         f"{figures['backlog_drain_documents_per_second']:,.0f} docs/s"),
    ]
    width = max(len(row[0]) for row in rows)
    print(f"{'measure':<{width}}  {'median':>18}  range / note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>18}  {note}")
    if args.json:
        run = {"fake_elasticsearch": "tests/fakes/elasticsearch.py (separate process)",
               "documents": args.documents, "repeats": args.repeats, "batch_documents": BATCH_DOCUMENTS}
        try:
            from bench.common import environment, write_json  # the shared shape (helper B)
        except ImportError:  # running with only the export dependencies (e.g. a bare benchmark host)
            env = {"python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
                   "platform": platform.platform(), **run}
            args.json.write_text(json.dumps({"figures": figures, "env": env}, indent=2))
        else:
            write_json(args.json, figures, {**environment(), **run})
    return 0


if __name__ == "__main__":
    sys.exit(main())
