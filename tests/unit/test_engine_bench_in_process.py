"""bench/engine_throughput.py's in-process engine row: its tok/s and TTFT figures rest on submitting every
request at once with the workload's own token ids and max_tokens (ignore_eos, greedy), counting the tokens
the engine streamed, and taking TTFT at the first output that carries a token."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import engine_throughput  # noqa: E402
from bench.engine_throughput import BenchRequest, InProcessEngine  # noqa: E402

TOKEN_SECONDS = 0.01


@dataclass
class FakeOutput:
    token_ids: list[int]


@dataclass
class FakeAsyncEngine:
    """Streams `max_tokens` one-token outputs after an empty one (like a prefill-only delta)."""

    submitted: list[tuple[str, list[int], Any]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    shut_down: bool = False
    tokens_cap: int | None = None  # stop after this many tokens whatever max_tokens says

    def generate(self, request_id: str, prompt_token_ids: list[int], params: Any) -> AsyncIterator[FakeOutput]:
        self.submitted.append((request_id, list(prompt_token_ids), params))

        async def stream() -> AsyncIterator[FakeOutput]:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            await asyncio.sleep(TOKEN_SECONDS)
            yield FakeOutput([])  # no token yet: must not count as the first token
            count = params.max_tokens if self.tokens_cap is None else min(self.tokens_cap, params.max_tokens)
            for index in range(count):
                await asyncio.sleep(TOKEN_SECONDS)
                yield FakeOutput([index])
            self.in_flight -= 1

        return stream()

    async def shutdown(self, grace_period_seconds: float) -> None:
        self.shut_down = True


def fake_in_process_engine(fake: FakeAsyncEngine) -> InProcessEngine:
    engine = InProcessEngine.__new__(InProcessEngine)  # no model load: the fake stands in for AsyncLLMEngine
    engine.engine = fake  # type: ignore[assignment]
    engine.loop = asyncio.new_event_loop()
    engine._requests_sent = 0
    return engine


def test_in_process_row_submits_all_requests_at_once_and_counts_streamed_tokens() -> None:
    fake = FakeAsyncEngine()
    requests = [BenchRequest([1, 2, 3], 3), BenchRequest([4, 5], 5), BenchRequest([6], 2)]
    with fake_in_process_engine(fake) as engine:
        result = engine_throughput.run_dssidecar_in_process(engine, requests)
    assert fake.shut_down

    warm_up, measured = fake.submitted[:2], fake.submitted[2:]
    assert len(warm_up) == 2 and len(measured) == len(requests)
    ids = [request_id for request_id, _, _ in fake.submitted]
    assert len(set(ids)) == len(ids)  # the engine refuses a request id already in flight
    for (_, prompt, params), request in zip(measured, requests, strict=True):
        assert prompt == request.prompt_token_ids
        assert params.max_tokens == request.max_new_tokens
        assert params.ignore_eos and params.temperature == 0.0
    assert fake.most_in_flight == len(requests)  # concurrent, not one after another

    assert [timing.output_tokens for timing in result.timings] == [3, 5, 2]
    assert result.output_tokens == result.requested_tokens == 10
    assert "produced" not in result.note
    for timing, request in zip(result.timings, requests, strict=True):
        # first token after the empty delta and one token step, not at the empty delta
        assert timing.ttft_seconds >= 2 * TOKEN_SECONDS * 0.9
        assert timing.latency_seconds >= (request.max_new_tokens + 1) * TOKEN_SECONDS * 0.9
        assert timing.ttft_seconds < timing.latency_seconds
    assert result.wall_seconds >= max(timing.latency_seconds for timing in result.timings)
    assert result.output_tokens_per_second == 10 / result.wall_seconds


def test_in_process_row_notes_a_short_answer() -> None:
    short_engine = FakeAsyncEngine(tokens_cap=1)  # stops after one token despite ignore_eos
    with fake_in_process_engine(short_engine) as engine:
        result = engine_throughput.run_dssidecar_in_process(engine, [BenchRequest([1], 4), BenchRequest([2], 4)])
    assert result.output_tokens == 2
    assert "produced 2 of 8 requested tokens" in result.note
