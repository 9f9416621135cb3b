"""The watched signal for verify-after-apply: the value of a PromQL expression over the agent's store.

Why: after a change settles the guard re-reads "the rule's signal" and compares it with the value that made
the rule fire. An alerting expression such as `inference_latency_p99_seconds > 1.5` only returns the
series that breach it, so its *comparison* is dropped and the left-hand side is read: the p99 itself,
which keeps a value after the rule stops firing and shows whether the change helped. The expression is
evaluated by the rules' PromQL evaluator (dsagent.rules) when it is installed; without it, a plain
selector (`name{label="v"}`) is read from the store directly.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from dsagent.store import LabelMatcher, TimeSeriesStore

_COMPARISON_TAIL = re.compile(r"\s*(>=|<=|>|<|==|!=)\s*(?:bool\s+)?[-+0-9.eE]+\s*$")
_SELECTOR = re.compile(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{([^}]*)\})?\s*$")
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
LOOKBACK_SECONDS = 300.0


def signal_expression(expr: str) -> str:
    """`expr` without a trailing comparison against a number: what the alert compares, not the filter."""
    stripped = _COMPARISON_TAIL.sub("", expr)
    return stripped if stripped.strip() else expr


def better_direction(expr: str) -> str | None:
    """Which way the signal should move after a fix: an alert on `x > N` wants x lower, on `x < N` higher.

    None when the expression ends in no comparison with a number (the caller keeps its default).
    """
    match = _COMPARISON_TAIL.search(expr)
    if match is None or match.group(1) in ("==", "!="):
        return None
    return "lower" if match.group(1).startswith(">") else "higher"


def _selector_value(store: TimeSeriesStore, expr: str, labels: Mapping[str, str]) -> float | None:
    match = _SELECTOR.match(expr)
    if match is None:
        raise ValueError(f"cannot evaluate {expr!r} without the rules' PromQL evaluator; use a selector")
    name, body = match.group(1), match.group(2) or ""
    matchers = [LabelMatcher(m.group(1), m.group(2), m.group(3)) for m in _MATCHER.finditer(body)]  # type: ignore[arg-type]
    found = [s for s in store.latest(name, matchers) if s.timestamp_seconds >= time.time() - LOOKBACK_SECONDS]
    return _pick(found, labels)


def _pick(found: list[Any], labels: Mapping[str, str]) -> float | None:
    """The value of the series that matches the alert's labels best (all of them if one is an exact match)."""
    if not found:
        return None
    for sample in found:
        sample_labels = dict(getattr(sample, "labels", ()) or ())
        if all(sample_labels.get(k) == v for k, v in labels.items() if k in sample_labels):
            return float(sample.value)
    return float(found[0].value)


def rule_signal(store: TimeSeriesStore, expr: str, labels: Mapping[str, str] | None = None,
                evaluate: Callable[[str, float], list[tuple[dict[str, str], float]]] | None = None,
                ) -> Callable[[], float | None]:
    """A zero-argument reader of the signal behind `expr` (None when it has no value now)."""
    watched = signal_expression(expr)
    wanted = dict(labels or {})
    evaluator = evaluate or _rules_evaluator(store)

    def read() -> float | None:
        if evaluator is None:
            return _selector_value(store, watched, wanted)
        series = evaluator(watched, time.time())
        if not series:
            return None
        for series_labels, value in series:
            if all(series_labels.get(k) == v for k, v in wanted.items() if k in series_labels):
                return float(value)
        return float(series[0][1])

    return read


def _rules_evaluator(store: TimeSeriesStore) -> Callable[[str, float], list[tuple[dict[str, str], float]]] | None:
    """The rules package's PromQL evaluator (dsagent.rules.promql.instant_vector) bound to `store`."""
    try:
        from dsagent.rules.promql import instant_vector
    except ImportError:
        return None

    def evaluate(expr: str, at_seconds: float) -> list[tuple[dict[str, str], float]]:
        return [(dict(labels), float(value)) for labels, value in instant_vector(store, expr, at_seconds)]

    return evaluate
