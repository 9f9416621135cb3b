"""Every metric a source emits is described in metric_metadata (integrations-core habit), units agree."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
from dsagent.samples import Sample
from dsagent.sources.engine_scrape import EngineScrapeSource
from dsagent.sources.gpu import GpuSource
from dsagent.sources.gpu_fake import GpuLoad, ReplayGpuBackend, SimulatedGpuBackend
from dsagent.sources.host import HostSource
from dsagent.sources.metric_metadata import ALL_METRICS, METRICS_BY_NAME, is_described, metadata_for


def emitted_samples(two_gpu_trace: Path, real_h100_trace: Path, vllm_text: str) -> list[Sample]:
    samples: list[Sample] = []
    for backend in (ReplayGpuBackend(two_gpu_trace), ReplayGpuBackend(real_h100_trace)):
        source = GpuSource(backend)
        for _ in range(60):
            samples += source.collect()
    samples += GpuSource(SimulatedGpuBackend(2, load=lambda: GpuLoad(1.0, 0.5), process_pid=1)).collect()
    host = HostSource(lambda: os.getpid())
    time.sleep(0.1)
    samples += host.collect() + host.collect()
    engine = EngineScrapeSource(
        "http://127.0.0.1:9", transport=httpx.MockTransport(lambda r: httpx.Response(200, text=vllm_text))
    )
    samples += engine.collect()
    return samples


def test_every_emitted_metric_is_in_the_metadata_table(two_gpu_trace: Path, real_h100_trace: Path, vllm_metrics_text: str) -> None:
    samples = emitted_samples(two_gpu_trace, real_h100_trace, vllm_metrics_text)
    undescribed = sorted({s.name for s in samples if not is_described(s.name)})
    assert undescribed == []
    for sample in samples:
        meta = metadata_for(sample.name)
        if meta is None:
            continue  # engine_* pass-through
        if meta.kind == "histogram":
            assert sample.kind == "counter"
        else:
            assert sample.kind == meta.kind, sample.name
            assert sample.unit == meta.unit, sample.name
            if not sample.name.startswith("dsagent_engine_"):  # engine series keep the engine's own labels
                assert set(meta.labels) >= {k for k, _ in sample.labels}, sample.name


def test_the_table_covers_what_the_brief_names(two_gpu_trace: Path, real_h100_trace: Path, vllm_metrics_text: str) -> None:
    emitted = {s.name for s in emitted_samples(two_gpu_trace, real_h100_trace, vllm_metrics_text)}
    for name in (
        "dsagent_gpu_utilization_ratio",
        "dsagent_gpu_memory_used_bytes",
        "dsagent_gpu_memory_total_bytes",
        "dsagent_gpu_temperature_celsius",
        "dsagent_gpu_power_draw_watts",
        "dsagent_gpu_power_limit_watts",
        "dsagent_gpu_sm_clock_hertz",
        "dsagent_gpu_applications_sm_clock_hertz",
        "dsagent_gpu_clock_throttle_active",
        "dsagent_gpu_xid_errors_total",
        "dsagent_gpu_ecc_errors_total",
        "dsagent_gpu_process_memory_used_bytes",
        "dsagent_host_cpu_ratio",
        "dsagent_host_memory_available_bytes",
        "dsagent_sidecar_resident_memory_bytes",
        "dsagent_sidecar_threads",
        "dsagent_engine_up",
        "dsagent_engine_requests_running",
        "dsagent_engine_kv_cache_usage_ratio",
        "dsagent_engine_time_to_first_token_seconds_bucket",
    ):
        assert name in emitted, name


def test_names_carry_their_unit_and_counters_end_in_total() -> None:
    suffix_for_unit = {"bytes": "_bytes", "seconds": "_seconds", "watts": "_watts", "hertz": "_hertz", "ratio": "_ratio", "celsius": "_celsius", "joules": "_joules"}
    for meta in ALL_METRICS:
        assert meta.name.startswith("dsagent_")
        assert len(METRICS_BY_NAME) == len(ALL_METRICS)  # no duplicate names
        bare = meta.name.removesuffix("_total")
        if meta.unit:
            assert bare.endswith(suffix_for_unit[meta.unit]), meta.name
        if meta.kind == "counter":
            assert meta.name.endswith("_total"), meta.name
        assert meta.description.endswith((".", ")")), meta.name
