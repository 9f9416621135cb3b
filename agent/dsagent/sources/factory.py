"""Builds the agent's sources from `SourcesConfig`: the one place that knows which backend to pick.

`build_sources` returns the polled sources (GPU, host, engine scrape) in that order; the OTLP receiver
is pushed to, not polled, and serves HTTP, so it is built by `dsagent.otlp_listener.build_otlp_receiver`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dsagent.sources.base import Source
from dsagent.sources.config import SourcesConfig
from dsagent.sources.engine_scrape import EngineScrapeSource
from dsagent.sources.gpu import GpuSource
from dsagent.sources.gpu_fake import GpuLoad, ReplayGpuBackend, SimulatedGpuBackend, wave_load

log = logging.getLogger(__name__)

# Running requests that make a simulated GPU 100% busy when the engine does not expose max_batch_size.
DEFAULT_SATURATING_REQUESTS = 8.0


def engine_driven_load(engine: EngineScrapeSource) -> Callable[[], GpuLoad]:
    """Simulated GPU load from the engine's last scrape: running/max_batch_size busy, KV usage as memory."""

    def load() -> GpuLoad:
        snapshot = engine.last_load()
        if snapshot.requests_running is None:
            return GpuLoad(0.0, snapshot.kv_cache_usage_ratio or 0.0)
        capacity = snapshot.max_batch_size or DEFAULT_SATURATING_REQUESTS
        compute = min(1.0, snapshot.requests_running / max(1.0, capacity))
        memory = snapshot.kv_cache_usage_ratio if snapshot.kv_cache_usage_ratio is not None else compute
        return GpuLoad(compute, memory)

    return load


def build_sources(
    config: SourcesConfig,
    engine_url: str | None,
    sidecar_pid_getter: Callable[[], int | None],
) -> list[Source]:
    """The polled sources for this config. engine_url None: no engine scrape (and a wave-driven fake GPU)."""
    sources: list[Source] = []
    engine: EngineScrapeSource | None = None
    if config.engine.enabled and engine_url:
        engine = EngineScrapeSource(
            engine_url,
            metrics_path=config.engine.metrics_path,
            timeout_seconds=config.engine.timeout_seconds,
            keep_unmapped=config.engine.keep_unmapped,
        )

    gpu = config.gpu
    if gpu.backend in ("auto", "nvml"):
        from dsagent.sources.nvml_backend import NvmlBackend

        sources.append(GpuSource(NvmlBackend(collect_processes=gpu.collect_processes)))
    elif gpu.backend == "fake":
        if gpu.fake_trace is not None:
            sources.append(GpuSource(ReplayGpuBackend(gpu.fake_trace)))
        else:
            load = engine_driven_load(engine) if (gpu.simulate and engine is not None) else wave_load()
            backend = SimulatedGpuBackend(gpu.fake_gpu_count, load=load, process_pid=sidecar_pid_getter)
            sources.append(GpuSource(backend))

    if config.host.enabled:
        from dsagent.sources.host import HostSource

        sources.append(HostSource(sidecar_pid_getter))
    if engine is not None:
        sources.append(engine)
    log.info("telemetry sources: %s", ", ".join(source.name for source in sources) or "none")
    return sources
