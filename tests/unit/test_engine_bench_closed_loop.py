"""bench/engine_throughput.py's closed loop: the steady-state TTFT row rests on it keeping exactly
`concurrency` requests in flight, sending each request once, and staggering the workers' starts."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import engine_throughput  # noqa: E402
from bench.engine_throughput import BenchRequest, RequestTiming  # noqa: E402


async def test_closed_loop_keeps_concurrency_in_flight_and_sends_each_request_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    in_flight = 0
    most_in_flight = 0
    served: list[int] = []

    async def fake_stream(_client: Any, _base_url: str, _model: str, request: BenchRequest) -> RequestTiming:
        nonlocal in_flight, most_in_flight
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        await asyncio.sleep(0.05 * request.max_new_tokens)  # longer outputs take longer, like the engine
        in_flight -= 1
        served.append(request.prompt_token_ids[0])
        return RequestTiming(0.05 * request.max_new_tokens, 0.001, request.max_new_tokens)

    monkeypatch.setattr(engine_throughput, "stream_completion", fake_stream)
    requests = [BenchRequest([index], max_new_tokens=1 + index % 5) for index in range(20)]
    stagger_seconds = 0.005
    sent_timings = await engine_throughput.run_closed_loop("http://127.0.0.1:9", "m", requests,
                                                           concurrency=4, stagger_seconds=stagger_seconds)

    assert sorted(served) == list(range(20))  # every request exactly once
    assert most_in_flight == 4
    assert len(sent_timings) == 20
    sent_times = [sent for sent, _ in sent_timings]
    assert sent_times == sorted(sent_times)
    # the four workers' first sends are staggered, not a burst: worker i waits i staggers before it sends
    offsets = [sent - sent_times[0] for sent in sent_times[:4]]
    assert all(offset >= index * stagger_seconds * 0.8 for index, offset in enumerate(offsets)), offsets
    assert offsets[3] < 0.05  # and the first request (>= 50 ms) is still in flight: four distinct workers


def test_steady_state_output_lengths_vary_around_the_single_request_length() -> None:
    low, high = engine_throughput.STEADY_STATE_OUTPUT_TOKENS_RANGE
    assert low < engine_throughput.TTFT_OUTPUT_TOKENS < high
    assert (low + high) / 2 == engine_throughput.TTFT_OUTPUT_TOKENS  # same mean work per request
    assert engine_throughput.STEADY_STATE_RAMP_UP_REQUESTS < engine_throughput.STEADY_STATE_REQUESTS


def test_a_request_whose_text_came_in_one_chunk_is_flagged_as_time_to_first_text() -> None:
    assert RequestTiming(1.0, 0.99, output_tokens=16, text_chunks=1).first_text_only_at_end
    assert not RequestTiming(1.0, 0.1, output_tokens=16, text_chunks=16).first_text_only_at_end
    assert not RequestTiming(1.0, 0.1, output_tokens=1, text_chunks=1).first_text_only_at_end  # one token: fine
    assert not RequestTiming(1.0, 0.1, output_tokens=16).first_text_only_at_end  # not a streamed way
