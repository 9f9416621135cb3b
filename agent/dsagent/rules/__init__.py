"""Rules over the agent's store: a PromQL evaluator, Prometheus rule files, alert state, promtool-style tests.

`instant_query(store, expr, at_seconds)` -> [(labels, value)] is the small entry point other packages use
(the actions runtime re-reads a rule's signal with it).
"""

from __future__ import annotations

from typing import Any


def instant_query(store: Any, expr: str, at_seconds: float, lookback_seconds: float = 300.0) -> list[tuple[dict[str, str], float]]:
    """The expression's value at one instant as (labels, value) pairs (a scalar is one unlabelled pair)."""
    from dsagent.rules.promql import instant_vector

    return instant_vector(store, expr, at_seconds, lookback_seconds)
