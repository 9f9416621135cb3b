"""The records that flow through the agent: metric samples from sources and request records.

Every source returns `Sample`s in base units (seconds, bytes, ratios 0-1, watts, hertz); the collection
job writes them into the one store and hands them to the exporters. A value that could not be read is
never turned into a Sample (omitted, not 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Labels = tuple[tuple[str, str], ...]


def make_labels(labels: dict[str, str] | None = None) -> Labels:
    """Labels as a sorted tuple so equal label sets hash equal."""
    return tuple(sorted((labels or {}).items()))


@dataclass(frozen=True)
class Sample:
    """One observation of one series.

    name: Prometheus-style metric name with the unit in it (`dsagent_gpu_memory_used_bytes`).
    kind: "gauge" or "counter" (monotonic total; rate() applies) - exporters need to know.
    """

    name: str
    labels: Labels
    value: float
    timestamp_seconds: float
    kind: str = "gauge"
    unit: str = ""

    def label(self, key: str, default: str = "") -> str:
        for k, v in self.labels:
            if k == key:
                return v
        return default


@dataclass
class RequestRecord:
    """One finished inference request, as received from the engine's OTLP logs (or traces).

    Field names follow the per-request log record in DESIGN.md; times in seconds.
    """

    request_id: str
    timestamp_seconds: float
    model: str = ""
    prompt_length: int | None = None
    tokens_generated: int | None = None
    generation_time_seconds: float | None = None
    time_to_first_token_seconds: float | None = None
    time_per_output_token_seconds: float | None = None
    finish_reason: str | None = None
    status_code: int | None = None
    knobs: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
