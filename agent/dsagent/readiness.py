"""Health that tells the truth: how old each source's last good reading is, and a /readyz that says so.

Why: the DCGM exporter's most reported failures are stale metrics served while its health check says OK.
Here every source's last good reading is timed (`dsagent_source_last_success_age_seconds{source}`), the
agent's /healthz stays a liveness check (the process answers), and /readyz answers 503 naming each
required source whose last good reading is older than `server.readiness_max_source_age_seconds` (a source
that never succeeded counts from the agent's start). `dsagent status` shows the same verdict.

Series a source stops reporting (every series of the engine scrape when the engine is down) get a
staleness marker in the store, as Prometheus does, instead of repeating their last value: /metrics, rules
and the page then see them absent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from dsagent.samples import Sample, make_labels
from dsagent.store import STALE_MARKER

SeriesId = tuple[str, tuple[tuple[str, str], ...]]


class SourceFreshness:
    """Per source: when it last produced a good reading and which series it reported then."""

    def __init__(self, required: Iterable[str], max_age_seconds: float, started_seconds: float | None = None) -> None:
        self.required = tuple(required)
        self.max_age_seconds = max_age_seconds
        self.started_seconds = time.time() if started_seconds is None else started_seconds
        self.last_success_seconds: dict[str, float | None] = {}
        self._series: dict[str, dict[SeriesId, str]] = {}

    def saw(self, name: str) -> None:
        """The source exists (it may not have succeeded yet)."""
        self.last_success_seconds.setdefault(name, None)

    def succeeded(self, name: str, now_seconds: float) -> None:
        self.last_success_seconds[name] = now_seconds

    def stale_markers(self, name: str, samples: list[Sample], now_seconds: float) -> list[Sample]:
        """Markers for the series this source reported last time and not now (all of them on a failure)."""
        current = {(sample.name, sample.labels): sample.kind for sample in samples}
        previous = self._series.get(name, {})
        self._series[name] = current
        return [Sample(series[0], series[1], STALE_MARKER, now_seconds, kind)
                for series, kind in previous.items() if series not in current]

    def ages(self, now_seconds: float) -> dict[str, float]:
        return {name: now_seconds - (last if last is not None else self.started_seconds)
                for name, last in self.last_success_seconds.items()}

    def samples(self, now_seconds: float) -> list[Sample]:
        return [Sample("dsagent_source_last_success_age_seconds", make_labels({"source": name}), age, now_seconds,
                       "gauge", "seconds") for name, age in sorted(self.ages(now_seconds).items())]

    def verdict(self, now_seconds: float | None = None) -> dict[str, Any]:
        """{"ready": bool, "stale": ["engine: no good reading for 42 s (bound 30 s)", ...]}."""
        now = time.time() if now_seconds is None else now_seconds
        stale = []
        for name, age in sorted(self.ages(now).items()):
            if name.split(":", 1)[0] in self.required and age > self.max_age_seconds:
                stale.append(f"{name}: no good reading for {age:.0f} s (bound {self.max_age_seconds:g} s)")
        return {"ready": not stale, "stale": stale}


def add_readiness_route(app: FastAPI, verdict: Callable[[], dict[str, Any]]) -> None:
    """GET /readyz: 200 when every required source is fresh, else 503 naming the stale ones."""

    def readyz() -> JSONResponse:
        result = verdict()
        return JSONResponse({"status": "ready" if result["ready"] else "not ready", **result},
                            status_code=200 if result["ready"] else 503)

    app.add_api_route("/readyz", readyz, methods=["GET"])
