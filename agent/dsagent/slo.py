"""Service-level signals computed from the engine's per-request records (the OTLP receiver's output).

Why it exists: autoscalers (HPA/KEDA) and the status view need a few plain numbers - requests per second,
p50/p99 end-to-end latency, time to first token - not raw request logs. This module keeps a sliding window
of finished requests plus cumulative histograms with explicit buckets, and turns them into Samples that go
into the store (so rules can use rate()/histogram_quantile() on them) and onto the agent's /metrics.

Names (all base units):
  inference_requests_total                 counter, finished requests (label finish_reason)
  inference_qps                            gauge, finished requests per second over the SLO window
  inference_latency_seconds_{bucket,sum,count}  histogram of end-to-end request duration
  inference_ttft_seconds_{bucket,sum,count}     histogram of time to first token
  inference_latency_p50_seconds / _p99_seconds  gauges over the window (omitted with no requests)
  inference_ttft_p50_seconds / _p99_seconds     gauges over the window (omitted with no requests)
  inference_tpot_p50_seconds                     time per output token, median over the window
  inference_output_tokens_per_second       gauge, generated tokens per second over the window
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from dsagent.samples import RequestRecord, Sample, make_labels

DEFAULT_LATENCY_BUCKETS_SECONDS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
)


@dataclass(frozen=True)
class _Finished:
    received_seconds: float
    latency_seconds: float | None
    ttft_seconds: float | None
    tpot_seconds: float | None
    tokens_generated: int | None


class _Histogram:
    """Cumulative explicit-bucket histogram (Prometheus semantics: le buckets, +Inf, sum, count)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = sorted(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # last = +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[index] += 1
                break
        else:
            self.counts[-1] += 1
        self.sum += value
        self.count += 1

    def samples(self, name: str, now_seconds: float) -> list[Sample]:
        out = []
        cumulative = 0
        for bound, count in zip([*self.bounds, math.inf], self.counts, strict=True):
            cumulative += count
            le = "+Inf" if math.isinf(bound) else _format_bound(bound)
            out.append(Sample(f"{name}_bucket", make_labels({"le": le}), float(cumulative), now_seconds, "counter",
                              "seconds"))
        out.append(Sample(f"{name}_sum", (), self.sum, now_seconds, "counter", "seconds"))
        out.append(Sample(f"{name}_count", (), float(self.count), now_seconds, "counter"))
        return out


def _format_bound(bound: float) -> str:
    return repr(float(bound))


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted values (numpy's default method)."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    position = (len(sorted_values) - 1) * q
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return float(sorted_values[low])
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low))


class RequestStats:
    """Thread-safe aggregator fed by the OTLP receiver and read by the collection job and the API."""

    def __init__(self, window_seconds: float = 60.0, buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        if window_seconds <= 0:
            raise ValueError(f"window_seconds must be > 0, got {window_seconds}")
        self.window_seconds = window_seconds
        self._clock = clock
        self._started_seconds = clock()
        self._lock = threading.Lock()
        self._recent: deque[_Finished] = deque()
        self._latency = _Histogram(buckets)
        self._ttft = _Histogram(buckets)
        self._finished_by_reason: dict[str, int] = {}

    def record(self, records: Iterable[RequestRecord]) -> None:
        now = self._clock()
        with self._lock:
            for record in records:
                finished = _Finished(now, record.generation_time_seconds, record.time_to_first_token_seconds,
                                     record.time_per_output_token_seconds, record.tokens_generated)
                self._recent.append(finished)
                reason = record.finish_reason or "unknown"
                self._finished_by_reason[reason] = self._finished_by_reason.get(reason, 0) + 1
                if finished.latency_seconds is not None:
                    self._latency.observe(finished.latency_seconds)
                if finished.ttft_seconds is not None:
                    self._ttft.observe(finished.ttft_seconds)
            self._trim(now)

    def _trim(self, now_seconds: float) -> None:
        cutoff = now_seconds - self.window_seconds
        while self._recent and self._recent[0].received_seconds < cutoff:
            self._recent.popleft()

    def snapshot(self, now_seconds: float | None = None) -> dict[str, float | int | None]:
        """The SLO signals over the window; a quantile with no data is None (never 0)."""
        now = self._clock() if now_seconds is None else now_seconds
        with self._lock:
            self._trim(now)
            recent = list(self._recent)
            total = sum(self._finished_by_reason.values())
        span_seconds = max(1.0, min(self.window_seconds, now - self._started_seconds))
        latencies = sorted(f.latency_seconds for f in recent if f.latency_seconds is not None)
        ttfts = sorted(f.ttft_seconds for f in recent if f.ttft_seconds is not None)
        tpots = sorted(f.tpot_seconds for f in recent if f.tpot_seconds is not None)
        tokens = sum(f.tokens_generated or 0 for f in recent)
        return {
            "window_seconds": self.window_seconds,
            "requests_in_window": len(recent),
            "requests_total": total,
            "qps": len(recent) / span_seconds,
            "output_tokens_per_second": tokens / span_seconds,
            "latency_p50_seconds": quantile(latencies, 0.5) if latencies else None,
            "latency_p99_seconds": quantile(latencies, 0.99) if latencies else None,
            "ttft_p50_seconds": quantile(ttfts, 0.5) if ttfts else None,
            "ttft_p99_seconds": quantile(ttfts, 0.99) if ttfts else None,
            "tpot_p50_seconds": quantile(tpots, 0.5) if tpots else None,
        }

    def samples(self, now_seconds: float) -> list[Sample]:
        snap = self.snapshot(now_seconds)
        out = [
            Sample("inference_qps", (), float(snap["qps"] or 0.0), now_seconds, "gauge", "requests_per_second"),
            Sample("inference_output_tokens_per_second", (), float(snap["output_tokens_per_second"] or 0.0),
                   now_seconds, "gauge", "tokens_per_second"),
        ]
        for key in ("latency_p50_seconds", "latency_p99_seconds", "ttft_p50_seconds", "ttft_p99_seconds",
                    "tpot_p50_seconds"):
            value = snap[key]
            if value is not None:
                out.append(Sample(f"inference_{key}", (), float(value), now_seconds, "gauge", "seconds"))
        with self._lock:
            for reason, count in sorted(self._finished_by_reason.items()):
                out.append(Sample("inference_requests_total", make_labels({"finish_reason": reason}), float(count),
                                  now_seconds, "counter"))
            out += self._latency.samples("inference_latency_seconds", now_seconds)
            out += self._ttft.samples("inference_ttft_seconds", now_seconds)
        return out
