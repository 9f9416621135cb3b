"""The agent's local HTTP API on 127.0.0.1: /metrics, /api/status, /healthz and the OTLP receiver.

Why it exists: Kubernetes HPA/KEDA (through Prometheus) scale on the agent's `inference_qps` and SLO
signals, `dsagent status` reads /api/status instead of poking at the processes, and the engine exports its
request records by OTLP/HTTP to /v1/logs and /v1/traces here (D2's router, mounted as is).

/metrics renders the latest sample of every series in the store (fresh within a lookback) in the
Prometheus text format 0.0.4: counters as counters, *_bucket/_sum/_count triples as histograms, the rest
as gauges. The store is the single source, so /metrics, rules and status never disagree.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse

from dsagent.samples import Sample
from dsagent.store import TimeSeriesStore

log = logging.getLogger(__name__)

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _sanitize_name(name: str) -> str:
    """Prometheus metric names allow [a-zA-Z_:][a-zA-Z0-9_:]*; anything else becomes '_'."""
    cleaned = "".join(ch if (ch.isascii() and (ch.isalnum() or ch in "_:")) else "_" for ch in name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"_{cleaned}"


def render_prometheus(samples: list[Sample]) -> str:
    """Prometheus text exposition of the given samples, one family per metric (histograms grouped)."""
    by_name: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_name[_sanitize_name(sample.name)].append(sample)
    histogram_bases = {
        name[: -len("_bucket")]
        for name in by_name
        if name.endswith("_bucket") and all(s.label("le") for s in by_name[name])
    }
    lines: list[str] = []
    emitted: set[str] = set()
    for name in sorted(by_name):
        base = None
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] in histogram_bases:
                base = name[: -len(suffix)]
        if base is not None:
            if base in emitted:
                continue
            emitted.add(base)
            lines.append(f"# TYPE {base} histogram")
            for suffix in ("_bucket", "_sum", "_count"):
                family = by_name.get(base + suffix, [])
                if suffix == "_bucket":
                    family = sorted(family, key=lambda s: (tuple((k, v) for k, v in s.labels if k != "le"),
                                                           _le_sort_key(s.label("le"))))
                lines += [_sample_line(base + suffix, s) for s in family]
            continue
        family = by_name[name]
        kind = "counter" if all(s.kind == "counter" for s in family) else "gauge"
        lines.append(f"# TYPE {name} {kind}")
        lines += [_sample_line(name, s) for s in sorted(family, key=lambda s: s.labels)]
    return "\n".join(lines) + "\n"


def _le_sort_key(le: str) -> float:
    try:
        return float(le)
    except ValueError:
        return math.inf


def _sample_line(name: str, sample: Sample) -> str:
    if sample.labels:
        labels = ",".join(f'{_sanitize_name(k)}="{_escape_label_value(str(v))}"' for k, v in sample.labels)
        return f"{name}{{{labels}}} {_format_value(sample.value)}"
    return f"{name} {_format_value(sample.value)}"


def fresh_samples(store: TimeSeriesStore, now_seconds: float, lookback_seconds: float) -> list[Sample]:
    """The latest sample of every series that was updated within the lookback (vanished series drop out)."""
    return store.instant_query(None, (), now_seconds, lookback_seconds)


def build_api(
    store: TimeSeriesStore,
    status_provider: Callable[[], dict[str, Any]],
    otlp_router: APIRouter | None = None,
    metrics_lookback_seconds: float = 60.0,
    rule_manager: Callable[[], Any] | None = None,
) -> FastAPI:
    """The FastAPI app; status_provider builds /api/status's JSON (the Agent supplies it); rule_manager
    returns the rules' manager (or None) for /api/v1/rules, /api/v1/alerts and the page."""
    app = FastAPI(title="dsagent", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/status")
    def api_status() -> JSONResponse:
        return JSONResponse(status_provider())

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        text = render_prometheus(fresh_samples(store, time.time(), metrics_lookback_seconds))
        return PlainTextResponse(text, media_type=PROMETHEUS_CONTENT_TYPE)

    from dsagent.page import build_page_router
    from dsagent.prom_api import build_prom_router

    app.include_router(build_prom_router(store, rule_manager))  # Prometheus HTTP API over the store
    app.include_router(build_page_router(store, status_provider, rule_manager))  # the live page at /
    if otlp_router is not None:
        app.include_router(otlp_router)
    return app


class _QuietServer(uvicorn.Server):
    """uvicorn wakes every 0.1 s to check for shutdown; an idle agent needs that only twice a second."""

    async def main_loop(self) -> None:
        import asyncio

        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter += 1
            counter = counter % 864000
            await asyncio.sleep(0.5)
            should_exit = await self.on_tick(counter * 5)  # on_tick refreshes the Date header every 10th


class ApiServer:
    """uvicorn in a background thread on a socket bound here, so a busy port fails in the caller
    with a clear message and port 0 means any free port (read `.port` after `start()`)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        self._config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                      timeout_graceful_shutdown=2)
        self._server = _QuietServer(self._config)
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_seconds: float = 10.0) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(f"agent API could not listen on {self.host}:{self.port}: {exc.strerror or exc} "
                          "(set server.port / DSAGENT_SERVER__PORT / --api-port to a free port)") from exc
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="agent-api",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_seconds
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise TimeoutError(f"agent API did not start on {self.url} within {timeout_seconds:g} s")
            time.sleep(0.02)

    def stop(self, timeout_seconds: float = 5.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_seconds)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
