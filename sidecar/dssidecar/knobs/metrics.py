"""Prometheus view of the knobs: change counters, current values, OOM events and memory figures.

Why this exists: a rule in the agent reacts to these series (fragmentation too high, OOM events rising,
a knob change that failed), so they must be in the sidecar's /metrics next to vLLM's names. A custom
collector reads the controller on each scrape instead of mirroring its state into gauges.

Series (all dssidecar_*): knob_changes_total{knob,result}, knob_value{knob} (numbers and booleans),
knob_info{knob,value} (precision, backend), oom_events_total, effective_max_batch_size,
memory_reserved_bytes, memory_allocated_bytes, memory_fragmentation_ratio (1 - allocated/reserved, 0..1),
kv_cache_fragmentation_ratio, kv_cache_blocks_pending_release, runner_swaps_total,
runner_swap_seconds (the last swap). A figure the engine cannot read is omitted, never reported as 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dssidecar.knobs.controller import KnobController

_STATUS_GAUGES: dict[str, str] = {
    "effective_max_batch_size": "max_batch_size the scheduler uses now (lowered after an out-of-memory)",
    "memory_reserved_bytes": "bytes reserved for the model's working memory (CUDA: allocator reserved; CPU: KV blocks held by sequences)",
    "memory_allocated_bytes": "bytes in use (CUDA: allocator allocated; CPU: KV slots holding tokens)",
    "memory_fragmentation_ratio": "1 - allocated/reserved, between 0 and 1",
    "kv_cache_fragmentation_ratio": "unused token slots inside the KV blocks held by sequences, 0..1",
    "kv_cache_blocks_pending_release": "KV blocks a shrink still waits to release until sequences finish",
    "kv_cache_pool_bytes": "bytes of the whole KV block pool",
}
_STATUS_COUNTERS: dict[str, str] = {
    "oom_events": "out-of-memory events during an engine step (each retried with a smaller batch)",
    "runner_swaps": "precision/backend runner swaps completed",
}


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    return None


class KnobMetricsCollector(Collector):
    """Register on the server's CollectorRegistry: `registry.register(KnobMetricsCollector(controller))`."""

    def __init__(self, controller: KnobController, *, include_values: bool = True) -> None:
        self.controller = controller
        # the server's own metrics already render knob_value/knob_info from a knob_values() hook
        self.include_values = include_values

    def collect(self) -> Iterator[Any]:
        changes = CounterMetricFamily(
            "dssidecar_knob_changes", "knob change requests by knob and result", labels=["knob", "result"]
        )
        for (knob, result), count in sorted(self.controller.change_counts.items()):
            changes.add_metric([knob, result], count)
        yield changes

        if self.include_values:
            values = GaugeMetricFamily("dssidecar_knob_value", "current value of each numeric knob", labels=["knob"])
            info = GaugeMetricFamily("dssidecar_knob_info", "current value of each choice knob (1)", labels=["knob", "value"])
            for knob, value in sorted(self.controller.values().items()):
                number = _number(value)
                if number is not None:
                    values.add_metric([knob], number)
                elif isinstance(value, str):
                    info.add_metric([knob, value], 1.0)
            yield values
            yield info

        status = self.controller.target.status()
        for key, help_text in _STATUS_GAUGES.items():
            number = _number(status.get(key))
            if number is not None:
                yield GaugeMetricFamily(f"dssidecar_{key}", help_text, value=number)
        for key, help_text in _STATUS_COUNTERS.items():
            number = _number(status.get(f"{key}_total"))
            if number is not None:
                yield CounterMetricFamily(f"dssidecar_{key}", help_text, value=number)
        if self.controller.last_swap_seconds is not None:
            yield GaugeMetricFamily(
                "dssidecar_runner_swap_seconds", "seconds the last runner swap took", value=self.controller.last_swap_seconds
            )
