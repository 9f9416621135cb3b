"""`dsagent run`: wires config, store, sources, export pipeline, supervisor, scheduler and the local API.

Why it exists: each part is small and testable alone; this is the one place that decides their order.
Start: data dir -> store -> export pipeline (the spool opens first so nothing is lost) -> local API (so
the engine has an OTLP endpoint) -> supervisor (spawns the engine) -> sources -> scheduler.
Stop (SIGTERM/SIGINT): scheduler -> supervisor drains the engine -> sources -> flush the pipeline -> API.

Every tick the collection job reads each source once, appends the samples (plus the supervisor's and the
SLO signals) to the store and hands them to the pipeline. A failing source is logged once when it starts
failing and once when it recovers, not every second.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsagent import __version__
from dsagent.api import ApiServer, build_api
from dsagent.api_access import require_token_beyond_loopback
from dsagent.config import AgentConfig, strip_url_credentials
from dsagent.data_dir_lock import DataDirLock
from dsagent.otlp_listener import OtlpReceiverServer, engine_otlp_headers, is_loopback
from dsagent.samples import RequestRecord, Sample, make_labels
from dsagent.scheduler import AgentScheduler
from dsagent.slo import RequestStats
from dsagent.sources.base import Source, SourceError
from dsagent.store import LabelMatcher, TimeSeriesStore
from dsagent.supervisor import EngineState, EngineSupervisor

log = logging.getLogger("dsagent")

RECENT_REQUEST_IDS = 20_000
SHUTDOWN_DRAIN_SECONDS = 5.0
# pipeline.stats() fields that are levels, not cumulative counts
EXPORT_GAUGES = {"spool_depth_documents", "spool_bytes"}


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """glibc gives each thread its own malloc arena (up to 8 per core); for a small, many-threaded agent
    that mostly adds resident memory. Capping them before the threads start keeps RSS down (same effect as
    MALLOC_ARENA_MAX=2). Returns False where it does not apply (not glibc)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False  # the operator chose
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-8, arenas))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


class _SourceHealth:
    """Remembers whether each source failed last tick so a failure is logged once per state change."""

    def __init__(self) -> None:
        self.errors: dict[str, str | None] = {}

    def ok(self, name: str) -> None:
        if self.errors.get(name):
            log.info("source %s recovered", name)
        self.errors[name] = None

    def failed(self, name: str, error: str, expected: bool = False) -> None:
        """expected: the failure follows from a known state (engine still starting): info, not warning."""
        if not self.errors.get(name):
            log.log(logging.INFO if expected else logging.WARNING,
                    "source %s failing: %s (logged once; retried every tick)", name, error)
        self.errors[name] = error


class Agent:
    """The running agent. `start()` then `stop()`; `run_until_signal()` does both for the CLI."""

    def __init__(self, config: AgentConfig, config_file: Path | None = None,
                 evaluate_hooks: list[Callable[[float], None]] | None = None) -> None:
        self.config = config
        self.config_file = config_file
        self.data_dir = Path(config.data_dir).expanduser()
        self.store = TimeSeriesStore(config.store.retention_seconds, config.store.max_samples_per_series)
        self.request_stats = RequestStats(config.server.slo_window_seconds)
        self.evaluate_hooks = list(evaluate_hooks or [])
        self.recent_actions: list[dict[str, Any]] = []
        self.started_seconds = time.time()
        self.pipeline: Any = None
        self.api: ApiServer | None = None
        self.receiver: OtlpReceiverServer | None = None
        self._api_token: str | None = None
        self.supervisor: EngineSupervisor | None = None
        self.actions: Any = None  # dsagent.actions.runtime.ActionRuntime, built in start()
        self.sources: list[Source] = []
        self.scheduler = AgentScheduler(misfire_grace_seconds=max(1.0, config.intervals.collect_seconds))
        self._health = _SourceHealth()
        self._seen_request_ids: OrderedDict[str, None] = OrderedDict()
        self._records_lock = threading.Lock()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._data_dir_lock = DataDirLock(self.data_dir)
        self.requests_received_total = 0
        self.duplicate_requests_dropped = 0

    # ---- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        from dsagent.export import TelemetryPipeline  # E's facade
        from dsagent.otlp_listener import build_otlp_receiver
        from dsagent.sources.factory import build_sources

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._data_dir_lock.acquire()  # a second agent on this data dir is refused before it touches anything
        # The agent's scheduler owns every periodic job, so the pipeline starts without its own metric ticker
        # and the "export" job below collects the meters (once per interval, never twice).
        self.pipeline = TelemetryPipeline(self.config.export, self.data_dir, self._resource_attributes())
        self.pipeline.start(collect_periodically=False)

        # The OTLP receiver is its own listener (loopback by default), with a bearer token handed to the
        # engine the agent spawns, so a forged record cannot move the SLO signals (dsagent.otlp_listener).
        self.receiver = build_otlp_receiver(self.config.sources.otlp_receiver, self.on_request_records,
                                            self._receiver_token())
        if self.receiver is not None:
            self.receiver.start()
        app = build_api(self.store, self.status, None,
                        metrics_lookback_seconds=max(60.0, 5 * self.config.intervals.collect_seconds),
                        rule_manager=lambda: getattr(self, "rule_manager", None))  # set by the rules runtime
        from dsagent.actions.runtime import ActionRuntime

        self.actions = ActionRuntime(self.config.actions, self.config.engine, self.data_dir, self.record_action)
        app.include_router(self.actions.router())  # POST /api/actions: `dsagent act`
        self.api = ApiServer(app, self.config.server.host, self.config.server.port)
        if not is_loopback(self.config.server.host):
            token = self.config.server.token
            self._api_token = token.get_secret_value() if token is not None else secrets.token_urlsafe(24)
            require_token_beyond_loopback(app, self._api_token, self.api.url)
        self.api.start()
        self._write_api_file()
        log.info("agent API on %s (/metrics, /api/status, /healthz); OTLP receiver at %s", self.api.url,
                 f"{self.receiver.endpoint}/v1/logs" if self.receiver is not None else "(off)")
        log.info("telemetry goes to %s", self._destinations_text())

        self.supervisor = EngineSupervisor(
            self._with_receiver_token(self.actions.engine_config()), self.config.supervisor, self.data_dir,
            otlp_endpoint=self.receiver.endpoint if self.receiver is not None else None,
        )
        self.sources = build_sources(self.config.sources, self.supervisor.engine_url, self.supervisor.pid)
        self.supervisor.start()
        self.actions.attach_to_agent(self)

        intervals = self.config.intervals
        self.scheduler.add_interval_job("collect", self.collect_once, intervals.collect_seconds, run_immediately=True)
        self.scheduler.add_interval_job("evaluate", self.evaluate_once, intervals.evaluate_seconds)
        self.scheduler.add_interval_job("export", self.export_once, self.config.export_interval_seconds())
        self.scheduler.start()

    def stop(self) -> None:
        """Stop everything in order; safe to call twice."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
        log.info("stopping: draining the engine and flushing telemetry")
        self.scheduler.shutdown(wait=True)
        if self.actions is not None:
            self.actions.stop()
        if self.supervisor is not None:
            self.supervisor.stop()
        for source in self.sources:
            try:
                source.close()
            except Exception:
                log.exception("closing source %s failed", getattr(source, "name", source))
        if self.pipeline is not None:
            try:
                self.collect_once(include_sources=False)  # the last engine state and counters
            except Exception:
                log.exception("final collection failed")
            # Everything recorded is committed to the durable spool by shutdown(); waiting for remote
            # acknowledgement is only a courtesy (a few seconds): the next start ships the rest in order.
            self.pipeline.shutdown(drain_timeout_seconds=SHUTDOWN_DRAIN_SECONDS)
        if self.api is not None:
            self.api.stop()
        if self.receiver is not None:  # after the pipeline: records keep arriving (or get 503) until it flushed
            self.receiver.stop()
        if self._data_dir_lock.held:
            (self.data_dir / "agent.json").unlink(missing_ok=True)
        self._data_dir_lock.release()
        log.info("stopped")

    def run_until_signal(self) -> int:
        """Start, block until SIGTERM/SIGINT, stop; returns the exit code."""
        wake = threading.Event()

        def _on_signal(signum: int, _frame: object) -> None:
            log.info("received %s", signal.Signals(signum).name)
            wake.set()

        limit_malloc_arenas()
        previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not wake.wait(1.0):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    # ---- jobs ----------------------------------------------------------------------------------------

    def collect_once(self, include_sources: bool = True) -> list[Sample]:
        """One collection tick: every source once, plus supervisor, SLO and pipeline self-metrics."""
        samples: list[Sample] = []
        for source in self.sources if include_sources else ():
            try:
                samples += source.collect()
                self._health.ok(source.name)
            except SourceError as exc:
                samples += exc.samples
                engine_starting = source.name == "engine" and self.supervisor is not None and \
                    self.supervisor.state not in (EngineState.READY, EngineState.ATTACHED_READY)
                self._health.failed(source.name, str(exc), expected=engine_starting)
            except Exception as exc:  # a bug in one source must not stop the others
                self._health.failed(source.name, f"{type(exc).__name__}: {exc}")
        now = time.time()
        if self.supervisor is not None:
            samples += self.supervisor.samples(now)
        samples += self.request_stats.samples(now)
        if self.actions is not None:
            samples += self.actions.samples(now)
        samples += self._pipeline_samples(now)
        samples.append(Sample("dsagent_up", (), 1.0, now))
        self.store.append(samples)
        self.store.expire(now)
        if self.pipeline is not None:
            self.pipeline.record_samples(samples)
        return samples

    def evaluate_once(self) -> None:
        now = time.time()
        for hook in self.evaluate_hooks:
            hook(now)

    def export_once(self) -> None:
        """Collect the meters into the spools now (never waits for a destination: drainers ship on their own)."""
        if self.pipeline is not None:
            self.pipeline.collect_metrics(timeout_seconds=max(1.0, self.config.export_interval_seconds() / 2))

    def on_request_records(self, records: list[RequestRecord]) -> None:
        """OTLP receiver callback: the same request may come as a log and as a span; keep it once."""
        fresh = []
        with self._records_lock:
            for record in records:
                if record.request_id in self._seen_request_ids:
                    self.duplicate_requests_dropped += 1
                    continue
                self._seen_request_ids[record.request_id] = None
                if len(self._seen_request_ids) > RECENT_REQUEST_IDS:
                    self._seen_request_ids.popitem(last=False)
                fresh.append(record)
            self.requests_received_total += len(fresh)
        if not fresh:
            return
        if self.pipeline is not None:
            try:
                self.pipeline.record_requests(fresh)  # durable first: a failure is answered 503, sent again
            except Exception:
                with self._records_lock:
                    for record in fresh:
                        self._seen_request_ids.pop(record.request_id, None)
                    self.requests_received_total -= len(fresh)
                raise
        self.request_stats.record(fresh)

    def record_action(self, event: dict[str, Any]) -> None:
        """Actions (from rules, later) go to the status view and the audit stream."""
        self.recent_actions = [*self.recent_actions[-49:], event]
        if self.pipeline is not None:
            self.pipeline.record_action(event)

    # ---- views ---------------------------------------------------------------------------------------

    def _pipeline_samples(self, now_seconds: float) -> list[Sample]:
        if self.pipeline is None:
            return []
        try:
            stats = self.pipeline.stats()
        except Exception as exc:
            log.debug("pipeline stats failed: %s", exc)
            return []
        samples = []
        for key, value in sorted(stats.items()):
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            destination, _, field = key.rpartition(".")
            field = "".join(ch if ch.isalnum() else "_" for ch in field.lower())
            labels = make_labels({"destination": destination} if destination else {"destination": "all"})
            if field in EXPORT_GAUGES:
                samples.append(Sample(f"dsagent_export_{field}", labels, float(value), now_seconds, "gauge"))
            else:  # cumulative counts (sent, dropped, dead-lettered, retries, failed exports)
                samples.append(Sample(f"dsagent_export_{field}_total", labels, float(value), now_seconds, "counter"))
        return samples

    def _resource_attributes(self) -> dict[str, str]:
        return {
            "service.name": "dsagent",
            "service.version": __version__,
            "host.name": socket.gethostname(),
            "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
        }

    def _destinations_text(self) -> str:
        export = self.config.export
        parts = []
        if export.file.enabled:
            parts.append(f"NDJSON files in {export.file.directory or self.data_dir / 'export'}")
        if export.elasticsearch is not None:
            parts.append(f"Elasticsearch {strip_url_credentials(export.elasticsearch.url)}")
        if export.otlp is not None:
            parts.append(f"OTLP {strip_url_credentials(export.otlp.endpoint)}")
        spool = export.spool.directory or self.data_dir / "spool"
        return ", ".join(parts or ["nowhere (all exporters off)"]) + f" (durable spool in {spool})"

    def _write_api_file(self) -> None:
        """data_dir/agent.json tells `dsagent status` where this agent's API listens."""
        import json

        assert self.api is not None
        pointer: dict[str, Any] = {"url": self.api.url, "pid": os.getpid()}
        if self.receiver is not None:
            pointer["otlp_endpoint"] = self.receiver.endpoint
        if self._api_token is not None:
            pointer["token"] = self._api_token  # the file is owner-only: `dsagent status` reads it
        path = self.data_dir / "agent.json"
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(json.dumps(pointer))

    def _receiver_token(self) -> str | None:
        """The configured receiver token, else a fresh one when the agent spawns the engine (it hands it over)."""
        configured = self.config.sources.otlp_receiver.token
        if configured is not None:
            return configured.get_secret_value()
        return None if self.config.engine.kind == "external" else secrets.token_urlsafe(24)

    def _with_receiver_token(self, engine: Any) -> Any:
        """The engine config plus OTEL_EXPORTER_OTLP_HEADERS carrying the receiver's token (the standard
        variable the OpenTelemetry exporters of the sidecar and vLLM read), unless the operator set it."""
        token = self.receiver.bearer_token if self.receiver is not None else None
        if token is None or engine.kind == "external" or "OTEL_EXPORTER_OTLP_HEADERS" in engine.environment:
            return engine
        return engine.model_copy(update={"environment": {**engine.environment,
                                                         "OTEL_EXPORTER_OTLP_HEADERS": engine_otlp_headers(token)}})

    def receiver_headers(self) -> dict[str, str]:
        """What a client of the OTLP receiver must send (tests, tools on the node)."""
        token = self.receiver.bearer_token if self.receiver is not None else None
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _latest_value(self, name: str, **labels: str) -> float | None:
        matchers = [LabelMatcher(k, "=", v) for k, v in labels.items()]
        found = self.store.latest(name, matchers)
        return found[0].value if found else None

    def status(self) -> dict[str, Any]:
        """The JSON behind /api/status and `dsagent status`."""
        now = time.time()
        engine: dict[str, Any] = dict(self.supervisor.status()) if self.supervisor else {}
        for key, names in ENGINE_STATUS_METRICS.items():
            for name in names:
                value = self._latest_value(name)
                if value is not None:
                    engine[key] = value
                    break
        return {
            "agent": {
                "version": __version__,
                "pid": os.getpid(),
                "uptime_seconds": now - self.started_seconds,
                "api_url": self.api.url if self.api else None,
                "data_dir": str(self.data_dir),
                "config_file": str(self.config_file) if self.config_file else None,
                "telemetry_destinations": self._destinations_text(),
                "requests_received_total": self.requests_received_total,
            },
            "engine": engine,
            "gpus": self._gpu_status(),
            "slo": self.request_stats.snapshot(now),
            "sources": {name: {"ok": error is None, "error": error} for name, error in dict(self._health.errors).items()},
            "export": self._safe_pipeline_stats(),
            "store": self.store.stats(),
            "actions": list(self.recent_actions[-10:]),
        }

    def _safe_pipeline_stats(self) -> dict[str, Any]:
        try:
            if self.pipeline is None:
                return {}
            # per destination "state: refused" (and why) beside the counters: credentials to fix show here
            return {**self.pipeline.stats(), **{f"{name}.state": f"{entry['state']}" + (
                f": {entry['last_error']}" if entry["last_error"] else "") for name, entry in
                self.pipeline.destination_status().items()}}
        except Exception as exc:
            return {"error": str(exc)}

    def _gpu_status(self) -> dict[str, Any]:
        gpus: dict[str, dict[str, Any]] = {}
        for key, name in GPU_STATUS_METRICS.items():
            for sample in self.store.latest(name):
                index = sample.label("gpu_index") or sample.label("gpu", "?")
                entry = gpus.setdefault(index, {"index": index, "uuid": sample.label("gpu_uuid"),
                                                "name": sample.label("gpu_name")})
                entry[key] = sample.value
        if gpus:
            return {"devices": [gpus[k] for k in sorted(gpus, key=lambda i: (len(i), i))], "none_reason": None}
        backend = self.config.sources.gpu.backend
        reason = None
        for source in self.sources:
            name = getattr(source, "name", "")
            if name.startswith("gpu"):
                reason = getattr(source, "unavailable_reason", None) or self._health.errors.get(name) or reason
        if backend == "off":
            reason = "GPU source off (sources.gpu.backend: off)"
        return {"devices": [], "none_reason": reason or f"no GPU samples (sources.gpu.backend: {backend})"}


# status key -> metric names tried in order (the builtin sidecar's and vLLM's, as the engine scrape maps them)
ENGINE_STATUS_METRICS: dict[str, tuple[str, ...]] = {
    "requests_running": ("dsagent_engine_requests_running", "vllm:num_requests_running", "vllm_num_requests_running"),
    "requests_waiting": ("dsagent_engine_requests_waiting", "vllm:num_requests_waiting", "vllm_num_requests_waiting"),
    "kv_cache_usage_ratio": ("dsagent_engine_kv_cache_usage_ratio", "vllm:kv_cache_usage_perc",
                             "vllm_kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "up": ("dsagent_engine_up",),
}

GPU_STATUS_METRICS: dict[str, str] = {
    "utilization_ratio": "dsagent_gpu_utilization_ratio",
    "memory_used_bytes": "dsagent_gpu_memory_used_bytes",
    "memory_total_bytes": "dsagent_gpu_memory_total_bytes",
    "temperature_celsius": "dsagent_gpu_temperature_celsius",
    "power_draw_watts": "dsagent_gpu_power_draw_watts",
}

