"""The agent's rule manager: loads rule files, evaluates due groups on the evaluate job, writes recording
rules and ALERTS into the store, tells event sinks (the actions runtime) what fires, and reports state.

Why one owner: reload must be all-or-nothing (a bad file keeps the whole previous rule set running, the
error logged, counted and shown), alert state must survive a reload for unchanged rules, and /api/status,
/api/v1/rules and /api/v1/alerts must describe the same rules the evaluator runs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dsagent.rules.config import RulesConfig
from dsagent.rules.engine import Group, RuleState, longest_window_seconds
from dsagent.rules.events import RuleEvent
from dsagent.rules.rulefile import RuleFileError, expand_paths, load_files
from dsagent.samples import Sample, make_labels
from dsagent.store import STALE_MARKER, TimeSeriesStore

log = logging.getLogger(__name__)
EventSink = Callable[[list[RuleEvent]], None]


class StoreAppender:
    """Rule outputs into the agent's store (seconds, gauge kind); stale markers end vanished series."""

    def __init__(self, store: TimeSeriesStore) -> None:
        self.store = store

    def append(self, labels: dict[str, str], t_ms: int, value: float) -> None:
        rest = {k: v for k, v in labels.items() if k != "__name__"}
        self.store.append([Sample(labels.get("__name__", ""), make_labels(rest), value, t_ms / 1000.0)])

    def append_stale(self, labels: dict[str, str], t_ms: int) -> None:
        self.append(labels, t_ms, STALE_MARKER)


def _iso(ms: int) -> str:
    if not ms:
        return "0001-01-01T00:00:00Z"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def _go_float(value: float) -> str:
    from dsagent.rules.template import go_float

    return go_float(value) if not (isinstance(value, float) and math.isnan(value)) else "NaN"


class RuleManager:
    """Rule groups over one store. evaluate_due(now) runs the groups whose interval has passed."""

    def __init__(self, store: TimeSeriesStore, config: RulesConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config or RulesConfig()
        self.clock = clock
        self.groups: list[Group] = []
        self.files: list[Path] = []
        self._mtimes: dict[Path, float] = {}
        self._sinks: list[EventSink] = []
        self._lock = threading.RLock()
        self._reload_requested = threading.Event()
        self._last_file_check = 0.0
        self.reloads_total = 0
        self.reload_failures_total = 0
        self.last_reload_error = ""
        self.last_reload_seconds = 0.0
        self.evaluations_total = 0
        self.evaluation_failures_total = 0
        self.failures_by_group: dict[str, int] = {}
        self.last_tick_seconds = 0.0

    # ---- loading --------------------------------------------------------------------------------------

    def _file_mtimes(self, files: list[Path]) -> dict[Path, float]:
        mtimes = {}
        for path in files:
            try:
                mtimes[path] = path.stat().st_mtime
            except OSError:
                mtimes[path] = -1.0
        return mtimes

    def load(self) -> bool:
        """(Re)load every configured file; on any error keep the previous rule set. Returns success."""
        patterns = self.config.resolved_paths()
        try:
            files = expand_paths(patterns) if patterns else []
            specs = load_files(files)
        except RuleFileError as exc:
            with self._lock:
                self.reload_failures_total += 1
                self.last_reload_error = str(exc)
                self.last_reload_seconds = self.clock()
                self._mtimes = self._file_mtimes(self.files) | self._mtimes_of_patterns(patterns)
            log.error("rule files refused, the previous %d group(s) keep running:\n%s", len(self.groups), exc)
            return False
        with self._lock:
            old = {(g.source_file, g.name): g for g in self.groups}
            groups = [Group(spec, self.config.default_interval_seconds) for spec in specs]
            for group in groups:
                previous = old.get((group.source_file, group.name))
                if previous is not None:
                    group.adopt_state(previous)
            self.groups = groups
            self.files = files
            self._mtimes = self._file_mtimes(files)
            self.reloads_total += 1
            self.last_reload_error = ""
            self.last_reload_seconds = self.clock()
            self._size_store()
        log.info("rules: %d group(s), %d rule(s) from %d file(s)", len(groups),
                 sum(len(g.rules) for g in groups), len(files))
        return True

    def _mtimes_of_patterns(self, patterns: list[str]) -> dict[Path, float]:
        import glob

        files = [Path(m) for p in patterns for m in glob.glob(p)]
        return self._file_mtimes(files)

    def _size_store(self) -> None:
        """Retention follows the rules: longest range + for + lookback, within the configured bound."""
        needed = longest_window_seconds(self.groups) + self.config.lookback_seconds + 60.0
        bounded = min(needed, self.config.max_retention_seconds)
        if bounded > self.store.retention_seconds:
            log.info("store retention %.0f s -> %.0f s for the rules' windows", self.store.retention_seconds, bounded)
            self.store.retention_seconds = bounded
        if needed > self.config.max_retention_seconds:
            log.warning("rules need %.0f s of history; kept to rules.max_retention_seconds = %.0f s", needed,
                        self.config.max_retention_seconds)
        samples_needed = min(self.config.max_samples_per_series, int(bounded) + 60)
        if samples_needed > self.store.max_samples_per_series:
            self.store.max_samples_per_series = samples_needed  # new series; existing rings keep their capacity

    def request_reload(self) -> None:
        """SIGHUP: reload at the next evaluate tick (never inside a signal handler)."""
        self._reload_requested.set()

    def _files_changed(self, now: float) -> bool:
        if self.config.reload_check_seconds <= 0 or now - self._last_file_check < self.config.reload_check_seconds:
            return False
        self._last_file_check = now
        patterns = self.config.resolved_paths()
        current = self._mtimes_of_patterns(patterns)
        return current != self._mtimes

    # ---- evaluation -----------------------------------------------------------------------------------

    def add_event_sink(self, sink: EventSink) -> None:
        self._sinks.append(sink)

    def evaluate_due(self, now: float | None = None) -> list[RuleEvent]:
        """Evaluate every enabled group whose interval has passed; hand the events to the sinks."""
        now = self.clock() if now is None else now
        if self._reload_requested.is_set() or self._files_changed(now):
            self._reload_requested.clear()
            self.load()
        started = time.perf_counter()
        events: list[RuleEvent] = []
        appender = StoreAppender(self.store)
        cache: dict[Any, Any] = {}  # one tick: rules sharing a selector or range function compute it once
        with self._lock:
            for group in self.groups:
                if not group.enabled:
                    continue
                interval_ms = round(group.interval_seconds * 1000)
                ts_ms = round(now * 1000)
                if group.last_evaluation_ms and ts_ms - group.last_evaluation_ms < interval_ms - 500:
                    continue
                group_events = group.evaluate(self.store, appender, ts_ms, round(self.config.lookback_seconds * 1000),
                                              self.config.external_labels, cache)
                self.evaluations_total += 1
                failed = sum(1 for r in group.rules if r.last_error)
                self.evaluation_failures_total += failed
                if failed:
                    self.failures_by_group[group.name] = self.failures_by_group.get(group.name, 0) + failed
                if group_events:
                    events.extend(group_events)
                    for sink in list(self._sinks):
                        try:
                            sink(group_events)
                        except Exception:
                            log.exception("rule event sink failed")
        self.last_tick_seconds = time.perf_counter() - started
        return events

    def samples(self, now_seconds: float) -> list[Sample]:
        """The manager's own metrics for the collection job (/metrics and the exporters; agent_metrics.py)."""
        with self._lock:
            out = [Sample("dsagent_rules_loaded", (), float(sum(len(g.rules) for g in self.groups)), now_seconds),
                   Sample("dsagent_rules_reloads_total", (("result", "success"),), float(self.reloads_total),
                          now_seconds, "counter"),
                   Sample("dsagent_rules_reloads_total", (("result", "failure"),), float(self.reload_failures_total),
                          now_seconds, "counter")]
            states = {"pending": 0, "firing": 0}
            for group in self.groups:
                labels = (("group", group.name),)
                out.append(Sample("dsagent_rule_evaluation_failures_total", labels,
                                  float(self.failures_by_group.get(group.name, 0)), now_seconds, "counter"))
                out.append(Sample("dsagent_rule_group_last_duration_seconds", labels, group.evaluation_seconds,
                                  now_seconds, "gauge", "seconds"))
                for rule in group.rules:
                    for alert in rule.active.values():
                        if alert.state in states:
                            states[alert.state] += 1
            out += [Sample("dsagent_rule_alerts", (("state", state),), float(count), now_seconds)
                    for state, count in sorted(states.items())]
            return out

    # ---- groups on/off (schedules) ------------------------------------------------------------------------

    def _group(self, name: str) -> Group:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(f"no rule group named {name!r}; loaded: {', '.join(g.name for g in self.groups) or 'none'}")

    def group_enabled(self, name: str) -> bool:
        return self._group(name).enabled

    def set_group_enabled(self, name: str, enabled: bool) -> None:
        with self._lock:
            self._group(name).enabled = bool(enabled)

    # ---- views ----------------------------------------------------------------------------------------------

    def _would_do(self, rule: RuleState) -> list[Any]:
        described = []
        for spec in rule.spec.actions:
            describe = getattr(spec, "describe", None)
            described.append(describe() if callable(describe) else spec)
        return described

    def status(self) -> dict[str, Any]:
        """For /api/status (`dsagent status`): groups, rules, states, pending time left, errors."""
        now_ms = round(self.clock() * 1000)
        with self._lock:
            groups = []
            for group in self.groups:
                rules = []
                for rule in group.rules:
                    entry: dict[str, Any] = {
                        "name": rule.name, "type": "alerting" if rule.spec.kind == "alert" else "recording",
                        "expr": rule.spec.expr, "health": rule.health, "last_error": rule.last_error or None,
                        "last_evaluation_seconds": rule.last_evaluation_ms / 1000 if rule.last_evaluation_ms else None,
                        "evaluation_duration_seconds": rule.evaluation_seconds,
                    }
                    if rule.spec.kind == "alert":
                        entry["state"] = rule.state()
                        entry["for_seconds"] = rule.spec.for_seconds
                        pending = [a for a in rule.active.values() if a.state == "pending"]
                        entry["pending_seconds_left"] = (
                            min(max(0.0, rule.spec.for_seconds - (now_ms - a.active_at_ms) / 1000) for a in pending)
                            if pending else None)
                        entry["firing"] = len(rule.firing())
                        entry["pending"] = len(pending)
                        entry["actions"] = self._would_do(rule)
                    rules.append(entry)
                groups.append({"name": group.name, "file": group.source_file, "interval_seconds": group.interval_seconds,
                               "enabled": group.enabled,
                               "last_evaluation_seconds": group.last_evaluation_ms / 1000 if group.last_evaluation_ms else None,
                               "evaluation_duration_seconds": group.evaluation_seconds, "rules": rules})
            return {"groups": groups, "files": [str(f) for f in self.files], "dry_run": self.config.dry_run,
                    "reloads_total": self.reloads_total, "reload_failures_total": self.reload_failures_total,
                    "last_reload_error": self.last_reload_error or None,
                    "store_retention_seconds": self.store.retention_seconds}

    def _alert_json(self, rule: RuleState, alert: Any) -> dict[str, Any]:
        return {"labels": dict(alert.labels), "annotations": dict(alert.annotations), "state": alert.state,
                "activeAt": _iso(alert.active_at_ms), "value": _go_float(alert.value)}

    def prometheus_rules(self) -> dict[str, Any]:
        """Prometheus's /api/v1/rules data."""
        with self._lock:
            groups = []
            for group in self.groups:
                rules = []
                for rule in group.rules:
                    base = {"name": rule.name, "query": rule.spec.expr, "labels": dict(rule.spec.labels),
                            "health": rule.health, "lastError": rule.last_error,
                            "evaluationTime": rule.evaluation_seconds, "lastEvaluation": _iso(rule.last_evaluation_ms)}
                    if rule.spec.kind == "alert":
                        base.update({"state": rule.state(), "duration": rule.spec.for_seconds,
                                     "keepFiringFor": rule.spec.keep_firing_for_seconds,
                                     "annotations": dict(rule.spec.annotations),
                                     "alerts": [self._alert_json(rule, a) for a in rule.active.values()
                                                if a.state != "inactive"],
                                     "type": "alerting"})
                    else:
                        base["type"] = "recording"
                    rules.append(base)
                groups.append({"name": group.name, "file": group.source_file, "rules": rules,
                               "interval": group.interval_seconds, "limit": group.spec.limit,
                               "evaluationTime": group.evaluation_seconds,
                               "lastEvaluation": _iso(group.last_evaluation_ms)})
            return {"groups": groups}

    def prometheus_alerts(self) -> dict[str, Any]:
        """Prometheus's /api/v1/alerts data: every pending or firing instance."""
        with self._lock:
            alerts = [self._alert_json(rule, alert) for group in self.groups for rule in group.rules
                      for alert in rule.active.values() if alert.state != "inactive"]
            return {"alerts": alerts}

    def all_rules(self) -> list[RuleState]:
        with self._lock:
            return [rule for group in self.groups for rule in group.rules]
