"""verify-after-apply's signal: the alert expression without its threshold, evaluated over the store."""

from __future__ import annotations

import time

import pytest
from dsagent.actions.signal import rule_signal, signal_expression
from dsagent.samples import Sample, make_labels
from dsagent.store import TimeSeriesStore


@pytest.mark.parametrize(("expr", "watched"), [
    ("inference_latency_p99_seconds > 1.5", "inference_latency_p99_seconds"),
    ("max(dsagent_gpu_temperature_celsius) >= 85", "max(dsagent_gpu_temperature_celsius)"),
    ("rate(x_total[1m]) < bool 0.5", "rate(x_total[1m])"),
    ("up == 0 and on() vector(1)", "up == 0 and on() vector(1)"),  # not a trailing number: kept
])
def test_signal_expression_drops_the_trailing_threshold(expr: str, watched: str) -> None:
    assert signal_expression(expr) == watched


def test_rule_signal_reads_the_value_even_when_the_rule_no_longer_fires() -> None:
    store = TimeSeriesStore(600, 100)
    now = time.time()
    store.append([Sample("inference_latency_p99_seconds", make_labels({"model": "m"}), 0.4, now - 1)])
    read = rule_signal(store, 'inference_latency_p99_seconds{model="m"} > 1.5', {"model": "m"})
    assert read() == pytest.approx(0.4)
    assert rule_signal(store, "absent_metric > 1")() is None
