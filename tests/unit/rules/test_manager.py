"""The rule manager: evaluation on the store, ALERTS, events to sinks, all-or-nothing reload with alert state
kept for unchanged rules, retention sized to the rules, status and Prometheus API shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsagent.rules.config import RulesConfig
from dsagent.rules.events import RuleEvent
from dsagent.rules.manager import RuleManager
from dsagent.rules.promql import query_instant
from dsagent.samples import Sample
from dsagent.store import TimeSeriesStore

RULES = """
groups:
  - name: temps
    interval: 10s
    rules:
      - record: temp:max
        expr: max(temp)
      - alert: Hot
        expr: temp > 80
        for: 30s
        labels: {severity: page}
        annotations: {summary: "at {{ $value }}"}
        actions:
          - set_power_limit: {fraction_of_default: 0.8}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


def setup(tmp_path: Path, text: str = RULES) -> tuple[RuleManager, TimeSeriesStore, Clock, Path]:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    store = TimeSeriesStore(330, 400)
    clock = Clock()
    manager = RuleManager(store, RulesConfig(paths=[str(path)], reload_check_seconds=0), clock=clock)
    assert manager.load()
    return manager, store, clock, path


def tick(manager: RuleManager, store: TimeSeriesStore, clock: Clock, value: float, seconds: float = 10) -> list[RuleEvent]:
    clock.now += seconds
    store.append([Sample("temp", (("gpu", "0"),), value, clock.now)])
    return manager.evaluate_due(clock.now)


def test_pending_then_firing_then_resolved_with_events_and_alerts_series(tmp_path: Path) -> None:
    manager, store, clock, _ = setup(tmp_path)
    seen: list[RuleEvent] = []
    manager.add_event_sink(seen.extend)
    assert tick(manager, store, clock, 90) == []
    [rule] = [r for r in manager.all_rules() if r.name == "Hot"]
    assert rule.state() == "pending"
    status_rule = manager.status()["groups"][0]["rules"][1]
    assert status_rule["state"] == "pending" and status_rule["pending_seconds_left"] == 30
    assert status_rule["actions"] == [{"set_power_limit": {"fraction_of_default": 0.8}}]
    for _ in range(3):
        events = tick(manager, store, clock, 90)
    assert rule.state() == "firing"
    [event] = events
    assert event.state == "firing" and event.rule == "Hot" and event.labels == {"gpu": "0", "severity": "page",
                                                                                "alertname": "Hot"}
    assert event.value == 90 and event.annotations == {"summary": "at 90"} and event.actions[0].kind == "set_power_limit"
    alerts = query_instant(store, "ALERTS", clock.now)["result"]
    assert alerts == [{"metric": {"__name__": "ALERTS", "alertname": "Hot", "alertstate": "firing", "gpu": "0",
                                  "severity": "page"}, "value": [clock.now, "1"]}]
    assert query_instant(store, "temp:max", clock.now)["result"][0]["value"][1] == "90"
    [resolved] = tick(manager, store, clock, 50)
    assert resolved.state == "resolved" and seen[-1] is resolved
    assert query_instant(store, "ALERTS", clock.now)["result"] == []  # stale marker: gone at once
    assert manager.prometheus_alerts() == {"alerts": []}


def test_group_interval_is_respected(tmp_path: Path) -> None:
    manager, store, clock, _ = setup(tmp_path)
    tick(manager, store, clock, 90, seconds=10)
    first = manager.groups[0].last_evaluation_ms
    tick(manager, store, clock, 90, seconds=4)
    assert manager.groups[0].last_evaluation_ms == first
    tick(manager, store, clock, 90, seconds=6)
    assert manager.groups[0].last_evaluation_ms > first


def test_bad_reload_keeps_the_previous_rules_and_says_why(tmp_path: Path) -> None:
    manager, store, clock, path = setup(tmp_path)
    tick(manager, store, clock, 90)
    path.write_text(RULES.replace("temp > 80", "temp >"))
    assert not manager.load()
    assert manager.reload_failures_total == 1 and "r.yaml:" in manager.last_reload_error
    assert [r.name for r in manager.all_rules()] == ["temp:max", "Hot"]
    assert manager.status()["last_reload_error"]
    tick(manager, store, clock, 90)
    assert [r for r in manager.all_rules() if r.name == "Hot"][0].state() == "pending"


def test_reload_keeps_alert_state_of_unchanged_rules(tmp_path: Path) -> None:
    manager, store, clock, path = setup(tmp_path)
    for _ in range(4):
        tick(manager, store, clock, 90)
    path.write_text(RULES + "      - alert: Other\n        expr: temp > 1000\n")
    manager.request_reload()
    tick(manager, store, clock, 90)
    hot = [r for r in manager.all_rules() if r.name == "Hot"][0]
    assert hot.state() == "firing" and len(manager.all_rules()) == 3


def test_changed_rule_starts_over(tmp_path: Path) -> None:
    manager, store, clock, path = setup(tmp_path)
    for _ in range(4):
        tick(manager, store, clock, 90)
    path.write_text(RULES.replace("for: 30s", "for: 40s"))
    manager.request_reload()
    tick(manager, store, clock, 90)
    assert [r for r in manager.all_rules() if r.name == "Hot"][0].state() == "pending"


def test_file_change_is_noticed(tmp_path: Path) -> None:
    manager, store, clock, path = setup(tmp_path)
    manager.config.reload_check_seconds = 1
    path.write_text(RULES.replace("name: temps", "name: renamed"))
    import os

    os.utime(path, (clock.now + 5, clock.now + 5))
    tick(manager, store, clock, 70)
    assert [g.name for g in manager.groups] == ["renamed"]


def test_retention_follows_the_longest_window_within_the_bound(tmp_path: Path) -> None:
    text = RULES.replace("temp > 80", "max_over_time(temp[10m]) > 80").replace("for: 30s", "for: 5m")
    manager, store, _, _ = setup(tmp_path, text)
    assert store.retention_seconds >= 600 + 300 + 300  # range + for + lookback of the same rule
    assert store.max_samples_per_series >= 1200
    long = RULES.replace("max(temp)", "max(max_over_time(temp[7d]))")
    manager2, store2, _, _ = setup(tmp_path, long)
    assert store2.retention_seconds == manager2.config.max_retention_seconds


def test_prometheus_rules_shape_and_group_switch(tmp_path: Path) -> None:
    manager, store, clock, _ = setup(tmp_path)
    tick(manager, store, clock, 90)
    [group] = manager.prometheus_rules()["groups"]
    assert group["name"] == "temps" and group["interval"] == 10
    record, alert = group["rules"]
    assert record["type"] == "recording" and alert["type"] == "alerting" and alert["state"] == "pending"
    assert alert["alerts"][0]["labels"]["alertname"] == "Hot" and alert["duration"] == 30
    manager.set_group_enabled("temps", False)
    assert manager.group_enabled("temps") is False
    before = manager.groups[0].last_evaluation_ms
    tick(manager, store, clock, 90, seconds=20)
    assert manager.groups[0].last_evaluation_ms == before


def test_status_view_renders_rules(tmp_path: Path) -> None:
    from dsagent.status_view import render_rules
    from rich.console import Console

    manager, store, clock, _ = setup(tmp_path)
    tick(manager, store, clock, 90)
    console = Console(width=200, record=True)
    for part in render_rules(manager.status()):
        console.print(part)
    text = console.export_text()
    assert "Hot" in text and "pending (30 s left)" in text and "set_power_limit" in text


def test_a_rule_that_breaks_unexpectedly_is_contained(tmp_path: Path, monkeypatch: Any) -> None:
    from dsagent.rules import engine

    manager, store, clock, _ = setup(tmp_path)
    real = engine.promql.instant_vector

    def flaky(storage: Any, node: Any, *args: Any, **kwargs: Any) -> Any:
        if str(node).startswith("max("):
            raise RuntimeError("boom")
        return real(storage, node, *args, **kwargs)

    monkeypatch.setattr(engine.promql, "instant_vector", flaky)
    tick(manager, store, clock, 90)
    record, alert = manager.all_rules()
    assert record.health == "err" and "internal error: RuntimeError: boom" in record.last_error
    assert alert.health == "ok" and alert.state() == "pending"


def test_own_metrics_count_reloads_failures_and_alerts(tmp_path: Path) -> None:
    manager, store, clock, path = setup(tmp_path)
    tick(manager, store, clock, 90)
    path.write_text("groups: [")
    manager.load()
    values = {(s.name, s.labels): s.value for s in manager.samples(clock.now)}
    assert values[("dsagent_rules_loaded", ())] == 2
    assert values[("dsagent_rules_reloads_total", (("result", "success"),))] == 1
    assert values[("dsagent_rules_reloads_total", (("result", "failure"),))] == 1
    assert values[("dsagent_rule_alerts", (("state", "pending"),))] == 1
    assert values[("dsagent_rule_evaluation_failures_total", (("group", "temps"),))] == 0
