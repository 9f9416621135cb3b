"""Prometheus /metrics for the sidecar, under vLLM's metric names so anything that scrapes vLLM reads us.

Two kinds of numbers:
- engine state (requests running/waiting, KV-cache usage, token and preemption counters) is owned by the
  engine; a custom collector reads one `EngineStats` snapshot per scrape, so there is no second copy to
  drift. A value the engine cannot give is omitted, never reported as 0.
- per-request latencies (TTFT, inter-token, end-to-end) and finish reasons are observed by the server as
  requests finish, into histograms on a private CollectorRegistry (one per app; tests build many apps).

Knob values come from a `knob_values()` hook (set by the /control knobs code): numbers become
`dssidecar_knob_value{knob=...}`, strings (precision, backend) `dssidecar_knob_info{knob=...,value=...} 1`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dssidecar.engine.protocol import EngineStats

logger = logging.getLogger("dssidecar.api")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Latency buckets: 0.1, 0.5, 1, 2, 5 s as DESIGN.md asks, plus finer ones below 0.1 s (CPU decode steps
# take a few milliseconds) and a tail for long generations.
LATENCY_BUCKETS_SECONDS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0,
)  # fmt: skip
TOKEN_LATENCY_BUCKETS_SECONDS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
TOKEN_COUNT_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

KnobValues = Callable[[], Mapping[str, Any]]
StatsSource = Callable[[], EngineStats]


class _EngineStateCollector(Collector):
    """Reads the engine's counters and gauges at scrape time."""

    def __init__(self, owner: ServerMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        yield from self._owner.engine_families()
        yield from self._owner.knob_families()


class ServerMetrics:
    """The app's metrics: a private registry, request histograms, engine and knob collectors."""

    def __init__(
        self,
        model_name: str,
        stats: StatsSource,
        knob_values: KnobValues | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.model_name = model_name
        self._stats = stats
        self.knob_values: KnobValues | None = knob_values
        self.draining = False
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        labels = ["model_name"]
        self.time_to_first_token = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time from request arrival to its first generated token.",
            labels, registry=self.registry, buckets=LATENCY_BUCKETS_SECONDS,
        )  # fmt: skip
        self.inter_token_latency = Histogram(
            "vllm:inter_token_latency_seconds",
            "Time between two consecutive generated tokens of one request.",
            labels, registry=self.registry, buckets=TOKEN_LATENCY_BUCKETS_SECONDS,
        )  # fmt: skip
        self.time_per_output_token = Histogram(
            "vllm:time_per_output_token_seconds",
            "Mean time per generated token after the first, one observation per request.",
            labels, registry=self.registry, buckets=TOKEN_LATENCY_BUCKETS_SECONDS,
        )  # fmt: skip
        self.e2e_request_latency = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Time from request arrival to its last token.",
            labels, registry=self.registry, buckets=LATENCY_BUCKETS_SECONDS,
        )  # fmt: skip
        self.request_prompt_tokens = Histogram(
            "vllm:request_prompt_tokens", "Prompt length of finished requests, in tokens.",
            labels, registry=self.registry, buckets=TOKEN_COUNT_BUCKETS,
        )  # fmt: skip
        self.request_generation_tokens = Histogram(
            "vllm:request_generation_tokens", "Generated tokens of finished requests.",
            labels, registry=self.registry, buckets=TOKEN_COUNT_BUCKETS,
        )  # fmt: skip
        # prometheus_client appends _total: exposed as vllm:request_success_total.
        self.request_success = Counter(
            "vllm:request_success", "Finished requests by finish reason (stop, length, abort).",
            ["model_name", "finished_reason"], registry=self.registry,
        )  # fmt: skip
        self.requests_rejected = Counter(
            "dssidecar_requests_rejected",
            "Requests refused before reaching the engine, by reason (invalid, queue_full, draining, too_long).",
            ["model_name", "reason"], registry=self.registry,
        )  # fmt: skip
        self.registry.register(_EngineStateCollector(self))

    # ------------------------------------------------------------ observations

    def observe_finished(
        self,
        *,
        finish_reason: str,
        prompt_tokens: int,
        completion_tokens: int,
        e2e_seconds: float | None,
        ttft_seconds: float | None,
        inter_token_seconds: list[float],
    ) -> None:
        model = self.model_name
        self.request_success.labels(model, finish_reason).inc()
        self.request_prompt_tokens.labels(model).observe(prompt_tokens)
        self.request_generation_tokens.labels(model).observe(completion_tokens)
        if ttft_seconds is not None:
            self.time_to_first_token.labels(model).observe(ttft_seconds)
        if e2e_seconds is not None:
            self.e2e_request_latency.labels(model).observe(e2e_seconds)
        itl = self.inter_token_latency.labels(model)
        for gap in inter_token_seconds:
            itl.observe(gap)
        if ttft_seconds is not None and e2e_seconds is not None and completion_tokens > 1:
            per_token = max(0.0, e2e_seconds - ttft_seconds) / (completion_tokens - 1)
            self.time_per_output_token.labels(model).observe(per_token)

    def observe_rejected(self, reason: str) -> None:
        self.requests_rejected.labels(self.model_name, reason).inc()

    # ------------------------------------------------------------ collected at scrape

    def engine_families(self) -> Iterator[Metric]:
        try:
            stats = self._stats()
        except Exception:  # a broken engine must not break /metrics; its numbers are omitted
            logger.exception("engine stats unavailable for /metrics")
            stats = None
        labels = ["model_name"]
        values = [self.model_name]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        draining = GaugeMetricFamily("dssidecar_draining", "1 while the server refuses new requests (SIGTERM).")
        draining.add_metric([], 1.0 if self.draining else 0.0)
        yield draining
        if stats is None:
            return
        yield gauge("vllm:num_requests_running", "Requests in the running batch.", stats.num_requests_running)
        yield gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.", stats.num_requests_waiting)
        kv_doc = "KV-cache usage as a ratio 0-1 (1 = every block in use)."
        yield gauge("vllm:kv_cache_usage_perc", kv_doc, stats.kv_cache_usage_ratio)
        yield gauge("vllm:gpu_cache_usage_perc", kv_doc + " Older vLLM name.", stats.kv_cache_usage_ratio)
        yield counter("vllm:prompt_tokens", "Prompt tokens processed (prefill).", stats.prompt_tokens_total)
        yield counter("vllm:generation_tokens", "Tokens generated.", stats.generation_tokens_total)
        yield counter("vllm:num_preemptions", "Sequences preempted for lack of KV blocks.", stats.num_preemptions_total)
        yield gauge("dssidecar_kv_cache_blocks", "KV-cache pool size in blocks.", stats.kv_cache_blocks_total)
        yield gauge("dssidecar_kv_cache_free_blocks", "KV-cache blocks free.", stats.kv_cache_blocks_free)
        yield counter("dssidecar_engine_steps", "Engine steps run.", stats.steps_total)
        yield gauge("dssidecar_engine_loop_alive", "1 while the engine step loop runs.", 1.0 if stats.engine_loop_alive else 0.0)

    def knob_families(self) -> Iterator[Metric]:
        if self.knob_values is None:
            return
        try:
            knobs = dict(self.knob_values())
        except Exception:
            logger.exception("knob values unavailable for /metrics")
            return
        numeric = GaugeMetricFamily("dssidecar_knob_value", "Current value of a numeric engine knob.", labels=["knob"])
        textual = GaugeMetricFamily(
            "dssidecar_knob_info", "Current value of a textual engine knob (value label), always 1.", labels=["knob", "value"]
        )
        for name, value in sorted(knobs.items()):
            if isinstance(value, bool):
                numeric.add_metric([name], 1.0 if value else 0.0)
            elif isinstance(value, int | float):
                numeric.add_metric([name], float(value))
            elif value is not None:
                textual.add_metric([name, str(value)], 1.0)
        yield numeric
        yield textual

    def render(self) -> bytes:
        return generate_latest(self.registry)
