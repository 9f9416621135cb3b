"""The load generator's figures follow vLLM bench's definitions (TPOT, goodput, percentiles, ms keys)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dsagent.loadgen.metrics import RequestResult, Slo, SloError, percentile, summarize, tpot_seconds
from hypothesis import given
from hypothesis import strategies as st


def _result(index: int, ttft: float, latency: float, tokens: int, ok: bool = True) -> RequestResult:
    gaps = [(latency - ttft) / (tokens - 1)] * (tokens - 1) if tokens > 1 else []
    return RequestResult(index=index, success=ok, ttft_seconds=ttft, latency_seconds=latency, output_tokens=tokens,
                         prompt_tokens=10, itl_seconds=gaps, end_seconds=latency)


def test_tpot_excludes_the_first_token_and_is_zero_for_one_token() -> None:
    assert tpot_seconds(1.0, 0.2, 5) == pytest.approx(0.2)  # (1.0 - 0.2) / (5 - 1)
    assert tpot_seconds(1.0, 0.2, 1) == 0.0
    assert tpot_seconds(1.0, 0.2, 0) == 0.0


def test_goodput_counts_requests_meeting_every_given_slo_per_second() -> None:
    results = [
        _result(0, ttft=0.1, latency=0.5, tokens=5),   # tpot 0.1: good
        _result(1, ttft=0.4, latency=0.8, tokens=5),   # ttft 0.4 > 0.3: bad
        _result(2, ttft=0.1, latency=1.7, tokens=5),   # tpot 0.4 > 0.2: bad
        _result(3, ttft=0.2, latency=0.2, tokens=1),   # one token: tpot counts 0 -> good
        _result(4, ttft=0.1, latency=0.3, tokens=3, ok=False),  # failed: never good, not completed
    ]
    slo = Slo.from_goodput_args(["ttft:300", "tpot:200"])
    summary = summarize(results, duration_seconds=2.0, slo=slo)
    assert summary["completed"] == 4 and summary["failed"] == 1
    assert summary["good_completed"] == 2
    assert summary["request_goodput"] == pytest.approx(1.0)
    assert summary["request_throughput"] == pytest.approx(2.0)
    assert summary["total_output_tokens"] == 16
    assert summary["output_throughput"] == pytest.approx(8.0)
    # TPOT statistics only over requests with more than one token (vLLM's tpots list)
    assert summary["mean_tpot_ms"] == pytest.approx((100 + 100 + 400) / 3)


def test_value_equal_to_the_slo_is_good() -> None:
    result = _result(0, ttft=0.25, latency=0.25, tokens=1)
    assert Slo(ttft_seconds=0.25).met_by(result)
    assert not Slo(ttft_seconds=0.2499).met_by(result)


def test_no_slo_leaves_goodput_unset() -> None:
    summary = summarize([_result(0, 0.1, 0.2, 2)], 1.0, None)
    assert summary["request_goodput"] is None


def test_latency_keys_are_milliseconds_with_vllm_names() -> None:
    summary = summarize([_result(0, 0.1, 0.5, 5), _result(1, 0.3, 0.9, 7)], 1.0)
    for name in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std", "p99"):
            assert f"{stat}_{name}_ms" in summary
    assert summary["mean_ttft_ms"] == pytest.approx(200.0)
    assert summary["median_e2el_ms"] == pytest.approx(700.0)


@pytest.mark.parametrize("bad", ["ttft", "ttft:abc", "latency:100", "tpot:-1", "ttft:nan"])
def test_bad_goodput_arguments_are_refused_with_the_reason(bad: str) -> None:
    with pytest.raises(SloError, match="goodput SLO"):
        Slo.from_goodput_args([bad])


def test_goodput_arguments_round_trip_in_milliseconds() -> None:
    slo = Slo.from_goodput_args(["ttft:500 tpot:50", "e2el:2000"])
    assert slo == Slo(0.5, 0.05, 2.0)
    assert Slo.from_goodput_args(slo.to_goodput_args()) == slo
    with pytest.raises(SloError, match="twice"):
        Slo.from_goodput_args(["ttft:1", "ttft:2"])


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=60),
       st.floats(min_value=0, max_value=1))
def test_percentile_matches_numpy_linear_interpolation(values: list[float], fraction: float) -> None:
    assert math.isclose(percentile(values, fraction), float(np.percentile(values, fraction * 100)),
                        rel_tol=1e-9, abs_tol=1e-6)
