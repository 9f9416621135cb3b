"""Per-request measurements and their summary with vLLM bench's definitions and JSON keys.

Why exactly vLLM's: operators compare `dsagent bench` against `vllm bench serve` runs, so the same words
must mean the same numbers. TPOT of one request is (e2e - TTFT) / (output tokens - 1) and only requests
with more than one output token enter the TPOT statistics; for goodput a request with <= 1 output token
counts TPOT 0. A request is "good" when every SLO given (ttft, tpot, e2el) holds (value <= SLO), and
request_goodput is good requests per second of the benchmark duration. Percentiles are linear-interpolated
like numpy's default. Latency keys are milliseconds (`*_ms`), as vLLM writes them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SLO_METRICS = ("ttft", "tpot", "e2el")
PERCENTILE_METRICS = ("ttft", "tpot", "itl", "e2el")


@dataclass
class RequestResult:
    """What one request did, as the client saw it (seconds since the run's start and durations in seconds)."""

    index: int
    success: bool
    start_seconds: float = 0.0
    end_seconds: float = 0.0
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft_seconds: float = 0.0
    latency_seconds: float = 0.0
    itl_seconds: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def tpot_seconds(self) -> float:
        """(e2e - TTFT) / (output tokens - 1); 0 when the request produced at most one token (vLLM's rule)."""
        return tpot_seconds(self.latency_seconds, self.ttft_seconds, self.output_tokens)


def tpot_seconds(latency_seconds: float, ttft_seconds: float, output_tokens: int) -> float:
    """Time per output token after the first: (e2e - TTFT) / (output_tokens - 1), or 0 for <= 1 token."""
    if output_tokens <= 1:
        return 0.0
    return (latency_seconds - ttft_seconds) / (output_tokens - 1)


class SloError(ValueError):
    """A --goodput / SLO specification that cannot be read."""


@dataclass(frozen=True)
class Slo:
    """Per-request latency objectives in seconds; None = not part of the objective."""

    ttft_seconds: float | None = None
    tpot_seconds: float | None = None
    e2el_seconds: float | None = None

    def given(self) -> dict[str, float]:
        pairs = {"ttft": self.ttft_seconds, "tpot": self.tpot_seconds, "e2el": self.e2el_seconds}
        return {name: value for name, value in pairs.items() if value is not None}

    def is_empty(self) -> bool:
        return not self.given()

    def met_by(self, result: RequestResult) -> bool:
        """vLLM's is_good_req: every given SLO >= the request's value (TPOT 0 for <= 1 output token)."""
        values = {"ttft": result.ttft_seconds, "tpot": result.tpot_seconds, "e2el": result.latency_seconds}
        return all(values[name] <= limit for name, limit in self.given().items())

    def to_goodput_args(self) -> list[str]:
        """The same SLO as vLLM's --goodput arguments (milliseconds)."""
        return [f"{name}:{limit * 1000:g}" for name, limit in self.given().items()]

    @classmethod
    def from_goodput_args(cls, items: Sequence[str]) -> Slo:
        """Parse vLLM's `--goodput ttft:MS tpot:MS e2el:MS` (milliseconds, each at most once)."""
        seen: dict[str, float] = {}
        for item in items:
            for part in item.replace(",", " ").split():
                name, sep, raw = part.partition(":")
                name = name.strip().lower()
                if not sep or name not in SLO_METRICS:
                    raise SloError(f"goodput SLO {part!r}: expected NAME:MILLISECONDS with NAME one of "
                                   f"{', '.join(SLO_METRICS)} (e.g. ttft:500 tpot:50 e2el:2000)")
                try:
                    milliseconds = float(raw)
                except ValueError:
                    raise SloError(f"goodput SLO {part!r}: {raw!r} is not a number of milliseconds") from None
                if not math.isfinite(milliseconds) or milliseconds < 0:
                    raise SloError(f"goodput SLO {part!r}: milliseconds must be a finite number >= 0")
                if name in seen:
                    raise SloError(f"goodput SLO {name} given twice")
                seen[name] = milliseconds / 1000.0
        return cls(seen.get("ttft"), seen.get("tpot"), seen.get("e2el"))


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile like numpy.percentile's default; 0 for an empty list (as vLLM's `or 0`)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def summarize(results: Sequence[RequestResult], duration_seconds: float, slo: Slo | None = None,
              percentiles: Sequence[float] = (50.0, 90.0, 99.0)) -> dict[str, Any]:
    """vLLM bench's result keys for the successful requests in `results` over `duration_seconds`."""
    completed = [result for result in results if result.success]
    failed = len(results) - len(completed)
    duration = max(duration_seconds, 1e-9)
    ttfts = [result.ttft_seconds for result in completed]
    tpots = [result.tpot_seconds for result in completed if result.output_tokens > 1]
    itls = [gap for result in completed for gap in result.itl_seconds]
    e2els = [result.latency_seconds for result in completed]
    total_input = sum(result.prompt_tokens for result in completed)
    total_output = sum(result.output_tokens for result in completed)
    summary: dict[str, Any] = {
        "duration": duration_seconds,
        "completed": len(completed),
        "failed": failed,
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(completed) / duration,
        "output_throughput": total_output / duration,
        "total_token_throughput": (total_input + total_output) / duration,
    }
    if slo is not None and not slo.is_empty():
        good = sum(1 for result in completed if slo.met_by(result))
        summary["request_goodput"] = good / duration
        summary["good_completed"] = good
    else:
        summary["request_goodput"] = None
    for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        milliseconds = [value * 1000.0 for value in values]
        summary[f"mean_{name}_ms"] = statistics.fmean(milliseconds) if milliseconds else 0.0
        summary[f"median_{name}_ms"] = statistics.median(milliseconds) if milliseconds else 0.0
        summary[f"std_{name}_ms"] = statistics.pstdev(milliseconds) if milliseconds else 0.0
        for value in percentiles:
            summary[f"p{value:g}_{name}_ms"] = percentile(milliseconds, value / 100.0)
    return summary
