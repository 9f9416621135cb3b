"""Rule files: Prometheus's format, dsagent's actions, the short form, and file:line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from dsagent.rules.rulefile import RuleFileError, load_text, parse_duration, resolve_aliases

GOOD = """
groups:
  - name: g
    interval: 30s
    rules:
      - record: job:rate:5m
        expr: sum by (job) (rate(x_total[5m]))
      - alert: A
        expr: job:rate:5m > 1
        for: 2m
        keep_firing_for: 1m
        labels: {severity: page}
        annotations: {summary: "{{ $value | humanize }} on {{ $labels.job }}"}
        actions:
          - set_knob: {knob: max_batch_size, factor: 0.5, min: 1}
            cooldown: 2m
          - reset_power_limit: {}
            on: resolved
"""


def problems(text: str) -> list[str]:
    with pytest.raises(RuleFileError) as error:
        load_text(text, "r.yaml")
    return error.value.problems


def test_a_good_file_loads_with_actions() -> None:
    [group] = load_text(GOOD, "r.yaml")
    assert group.name == "g" and group.interval_seconds == 30
    record, alert = group.rules
    assert record.kind == "record" and alert.kind == "alert"
    assert alert.for_seconds == 120 and alert.keep_firing_for_seconds == 60
    assert [a.kind for a in alert.actions] == ["set_knob", "reset_power_limit"]
    assert alert.actions[1].on == "resolved"  # YAML 1.1 would read `on:` as true; kept as the key
    assert alert.longest_range_seconds() == 0 and record.longest_range_seconds() == 300


@pytest.mark.parametrize(("text", "fragment"), [
    ("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        bogus: 1\n", "r.yaml:6: field bogus"),
    ("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: nope(up)\n", "r.yaml:5: alert A: could not parse"),
    ("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: mad_over_time(up[5m])\n",
     "r.yaml:5: alert A: could not parse expression: function mad_over_time() is not supported"),
    ("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: rate(up)\n", "r.yaml:5: alert A: could not parse"),
    ("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n        for: 5 minutes\n", "r.yaml:6: alert A: for:"),
    ("groups:\n  - name: g\n    rules:\n      - record: r\n        expr: up\n        for: 1m\n", "invalid field 'for'"),
    ("groups:\n  - name: g\n    rules:\n      - record: bad name\n        expr: up\n", "invalid recording rule name"),
    ("groups:\n  - name: g\n    rules:\n      - expr: up\n", "one of 'record' or 'alert' must be set"),
    ("groups:\n  - name: g\n    rules: []\n  - name: g\n    rules: []\n", 'groupname: "g" is repeated'),
    ("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n        actions:\n          - set_knob: {knob: max_batch, value: 3}\n",
     "r.yaml:6: alert A: actions[0]: set_knob: "),
    ("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n        actions:\n          - scale: {replicas: '+1', min: 9, max: 2}\n",
     "bounds inverted"),
    ("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n        annotations: {x: '{{ if $value }}'}\n",
     "template"),
    ("groups:\n  - name: g\n   rules: [\n", "r.yaml:3: YAML"),
    ("groups:\n  - name: g\n    name: h\n", "r.yaml:3: duplicate key 'name'"),
])
def test_bad_files_are_refused_with_file_and_line(text: str, fragment: str) -> None:
    found = problems(text)
    assert any(fragment in p for p in found), found


def test_every_problem_is_reported_not_only_the_first() -> None:
    found = problems("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: nope(x)\n"
                     "      - alert: B\n        expr: up\n        for: soon\n")
    assert len(found) == 2 and found[0].startswith("r.yaml:5") and found[1].startswith("r.yaml:8")


def test_unknown_knob_names_the_known_ones() -> None:
    [problem] = problems("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n        actions:\n"
                         "          - set_knob: {knob: warp_speed, value: 9}\n")
    assert "unknown knob 'warp_speed'" in problem and "max_batch_size" in problem


def test_short_form_is_accepted_verbatim() -> None:
    text = """
metrics:
  - {name: inference_latency, type: histogram, buckets: [0.1, 0.5, 1.0, 2.0, 5.0]}
  - {name: gpu_utilization, type: gauge}
alerts:
  - condition: "avg(inference_latency) > 1.5"
    action: "scale_out"
  - condition: "avg(gpu_utilization) < 20"
    action: reduce_batch_size
    for: 5m
"""
    [group] = load_text(text, "short.yaml")
    first, second = group.rules
    assert first.expr == ("avg((rate(inference_latency_seconds_sum[1m]) / rate(inference_latency_seconds_count[1m])))"
                          " > 1.5")
    assert [a.kind for a in first.actions] == ["scale"] and first.actions[0].action.replicas == "+1"
    assert second.expr == "avg((dsagent_gpu_utilization_ratio * 100)) < 20" and second.for_seconds == 300
    assert second.actions[0].action.knob == "max_batch_size"


def test_short_form_refuses_unknown_actions_and_metrics() -> None:
    found = problems("metrics:\n  - {name: warp, type: gauge}\nalerts:\n  - condition: 'warp > 1'\n    action: jump\n")
    assert any("r.yaml:2: metric warp: no alias" in p for p in found)
    assert any("r.yaml:5: alert jump_0: unknown action 'jump'" in p for p in found)


def test_aliases_replace_whole_identifiers_only() -> None:
    assert resolve_aliases('gpu_utilization > 5') == "(dsagent_gpu_utilization_ratio * 100) > 5"
    assert resolve_aliases('my_gpu_utilization{a="gpu_utilization"}') == 'my_gpu_utilization{a="gpu_utilization"}'


def test_durations() -> None:
    assert parse_duration("1h30m") == 5400 and parse_duration("500ms") == 0.5 and parse_duration("0") == 0
    with pytest.raises(ValueError):
        parse_duration("5 minutes")


def test_the_shipped_packs_load() -> None:
    from dsagent.rules.config import default_pack_paths
    from dsagent.rules.rulefile import expand_paths, load_files

    paths = default_pack_paths()
    assert paths and Path(paths[0]).parent.name == "rules"
    groups = load_files(expand_paths(paths))
    assert {g.name for g in groups} >= {"slo", "gpu", "batching", "engine"}


def test_installed_packs_are_found_without_a_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dsagent.rules import config

    installed = tmp_path / "share" / "dsagent" / "rules"
    installed.mkdir(parents=True)
    (installed / "slo.yaml").write_text("groups: []\n")
    monkeypatch.setattr(config, "REPO_PACK_DIR", tmp_path / "no-checkout" / "rules")
    monkeypatch.setattr(config, "INSTALLED_PACK_DIR", installed)
    assert config.RulesConfig().resolved_paths() == [str(installed / "*.yaml")]
    monkeypatch.setattr(config, "INSTALLED_PACK_DIR", tmp_path / "nothing")
    assert config.RulesConfig().resolved_paths() == []
    assert config.RulesConfig(paths=["/etc/x/*.yaml"]).resolved_paths() == ["/etc/x/*.yaml"]
