"""bench/common.py: percentiles, the --json result file and the workload builder the benchmarks share."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import LatencySummary, percentile, write_json  # noqa: E402


def test_percentile_interpolates_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0.5) == 2.5
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 1.0) == 4.0
    assert percentile([7.0], 0.99) == 7.0


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=50),
       st.floats(min_value=0, max_value=1))
def test_percentile_lies_within_the_values_and_is_monotone(values: list[float], fraction: float) -> None:
    value = percentile(values, fraction)
    assert min(values) <= value <= max(values)
    assert percentile(values, 0.5) <= percentile(values, 0.99)


def test_percentile_rejects_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 0.5)
    with pytest.raises(ValueError, match="0..1"):
        percentile([1.0], 50)


def test_latency_summary_orders_p50_below_p99() -> None:
    summary = LatencySummary.of([0.1] * 98 + [5.0, 9.0])
    assert summary.p50_seconds == pytest.approx(0.1)
    assert summary.p99_seconds > 5.0


def test_json_file_has_figures_and_env_and_drops_unmeasured(tmp_path: Path) -> None:
    target = tmp_path / "out" / "result.json"
    write_json(target, {"a.tokens_per_second": 12.5, "b.missing": None, "c.nan": float("nan")})
    document = json.loads(target.read_text())
    assert document["figures"] == {"a.tokens_per_second": 12.5}
    assert document["env"]["cpu_count"] >= 1 and "python" in document["env"]


def test_workload_lengths_stay_in_range_and_are_seeded() -> None:
    from bench.engine_throughput import make_workload

    token_ids = list(range(5000))
    first = make_workload(token_ids, 32, seed=1)
    assert first == make_workload(token_ids, 32, seed=1)
    assert first != make_workload(token_ids, 32, seed=2)
    assert all(16 <= len(r.prompt_token_ids) <= 256 and 16 <= r.max_new_tokens <= 128 for r in first)
    # prompts are contiguous windows of the token stream
    assert all(r.prompt_token_ids == list(range(r.prompt_token_ids[0], r.prompt_token_ids[0] + len(r.prompt_token_ids)))
               for r in first)


def test_paired_ratios_compare_runs_of_the_same_round() -> None:
    from bench.engine_throughput import RequestTiming, WayResult, paired_ratios

    ours = [WayResult("ours", [RequestTiming(1.0, 0.1, 100)], wall) for wall in (1.0, 2.0)]
    baseline = [WayResult("base", [RequestTiming(1.0, 0.1, 50)], wall) for wall in (1.0, 1.0)]
    assert paired_ratios(ours, baseline) == [2.0, 1.0]
    assert paired_ratios(ours, baseline[:1]) == []  # a baseline that missed a round is not paired
