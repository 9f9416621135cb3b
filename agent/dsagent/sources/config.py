"""Settings of the agent's telemetry sources, as one pydantic model the agent's config embeds.

Defaults run on any machine: the GPU source tries NVML and says once that there is none, the host source
reads psutil, the engine scrape reads the engine's /metrics, and the OTLP receiver listens on loopback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

GpuBackendName = Literal["auto", "nvml", "fake", "off"]


class GpuSourceConfig(BaseModel):
    """GPU telemetry.

    backend: auto = NVML when a driver answers, else nothing (said once); nvml = NVML only; fake = replay
    `fake_trace` (a JSONL trace) or, with no trace, simulate `fake_gpu_count` GPUs; off = no GPU source.
    simulate: with the fake backend, make the simulated GPUs' utilization and memory follow the engine's
    running requests (read from the engine scrape) instead of a fixed synthetic wave.
    """

    model_config = ConfigDict(extra="forbid")

    backend: GpuBackendName = "auto"
    fake_trace: Path | None = None
    fake_gpu_count: int = Field(default=1, ge=1, le=64)
    simulate: bool = True
    collect_processes: bool = True

    @model_validator(mode="after")
    def _trace_must_exist(self) -> GpuSourceConfig:
        if self.backend == "fake" and self.fake_trace is not None and not self.fake_trace.is_file():
            raise ValueError(
                f"fake_trace: file {str(self.fake_trace)!r} does not exist; "
                "give a JSONL GPU trace (see tests/fixtures/nvml/) or leave it empty to simulate GPUs"
            )
        return self


class HostSourceConfig(BaseModel):
    """Host CPU/memory/load and the sidecar process's CPU, RSS and threads (psutil)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True


class EngineSourceConfig(BaseModel):
    """Scrape of the engine's Prometheus endpoint (builtin sidecar or vLLM)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    metrics_path: str = "/metrics"
    timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    keep_unmapped: bool = True

    @model_validator(mode="after")
    def _path_is_absolute(self) -> EngineSourceConfig:
        if not self.metrics_path.startswith("/"):
            raise ValueError(f"metrics_path: {self.metrics_path!r} must start with '/', e.g. '/metrics'")
        return self


class OtlpReceiverConfig(BaseModel):
    """OTLP/HTTP receiver for the engine's per-request logs and traces: its own listener, loopback by default.

    port 0 picks a free port and the agent tells the engine it spawns; an external engine needs a fixed one.
    token: bearer token every request must carry; empty = the agent generates one for the engine it spawns
    (handed over in OTEL_EXPORTER_OTLP_HEADERS), and an external engine's receiver takes no token.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    token: SecretStr | None = None


class SourcesConfig(BaseModel):
    """All telemetry sources; `dsagent run` builds them with `dsagent.sources.factory.build_sources`."""

    model_config = ConfigDict(extra="forbid")

    gpu: GpuSourceConfig = Field(default_factory=GpuSourceConfig)
    host: HostSourceConfig = Field(default_factory=HostSourceConfig)
    engine: EngineSourceConfig = Field(default_factory=EngineSourceConfig)
    otlp_receiver: OtlpReceiverConfig = Field(default_factory=OtlpReceiverConfig)
