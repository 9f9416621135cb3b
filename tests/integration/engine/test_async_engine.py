"""AsyncLLMEngine: streaming from asyncio, many concurrent requests, cancellation freeing blocks,
errors raised before the first delta, a failing step failing only its requests, draining shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from dssidecar.engine.async_engine import AsyncLLMEngine
from dssidecar.engine.config import EngineConfig
from dssidecar.engine.protocol import (
    EngineStepError,
    EngineStoppedError,
    QueueFullError,
    RequestOutput,
    RequestTooLongError,
    SamplingParams,
)

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


def build(path: Path, **overrides: object) -> AsyncLLMEngine:
    settings: dict[str, object] = {"device": "cpu", "kv_cache_blocks": 256, "block_size": 8}
    settings.update(overrides)
    return AsyncLLMEngine.from_model_path(path, EngineConfig(**settings))  # type: ignore[arg-type]


async def collect(engine: AsyncLLMEngine, request_id: str, prompt: list[int], params: SamplingParams) -> list[RequestOutput]:
    return [output async for output in engine.generate(request_id, prompt, params)]


async def wait_until(predicate, timeout_seconds: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_seconds
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_stream_matches_the_synchronous_engine(qwen2_checkpoint_dir: Path) -> None:
    engine = build(qwen2_checkpoint_dir)
    prompt = engine.tokenizer.encode("class Parser:")
    expected = engine.engine.generate([prompt], GREEDY)[0]
    await engine.start()
    assert engine.is_ready()
    try:
        outputs = await collect(engine, "r1", prompt, GREEDY)
        assert [t for o in outputs for t in o.token_ids] == expected
        assert outputs[-1].finished and outputs[-1].finish_reason == "length"
        assert outputs[-1].first_token_time is not None
        stats = engine.stats()
        assert stats.generation_tokens_total >= 12 and stats.engine_loop_alive
        assert stats.kv_cache_blocks_free == stats.kv_cache_blocks_total
    finally:
        await engine.shutdown(1.0)
    assert not engine.is_ready()


async def test_thirty_two_concurrent_requests_all_complete(qwen2_checkpoint_dir: Path) -> None:
    engine = build(qwen2_checkpoint_dir)
    await engine.start()
    try:
        prompts = [engine.tokenizer.encode(f"item {i}: " + "x" * (i % 7)) for i in range(32)]
        results = await asyncio.gather(
            *(collect(engine, f"c{i}", p, SamplingParams(max_tokens=4 + i % 9, temperature=0.0, ignore_eos=True))
              for i, p in enumerate(prompts))
        )
        for i, outputs in enumerate(results):
            assert outputs[-1].completion_tokens == 4 + i % 9
        assert engine.stats().num_requests_running == 0
    finally:
        await engine.shutdown(1.0)


async def test_closing_the_stream_aborts_and_frees_blocks(qwen2_checkpoint_dir: Path) -> None:
    engine = build(qwen2_checkpoint_dir)
    await engine.start()
    try:
        stream = engine.generate("long", [5] * 40, SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True))
        first = await stream.__anext__()  # type: ignore[attr-defined]
        assert not first.finished
        await stream.aclose()  # type: ignore[attr-defined]
        await wait_until(lambda: not engine.engine.has_unfinished_requests())
        stats = engine.stats()
        assert stats.kv_cache_blocks_free == stats.kv_cache_blocks_total
        assert stats.generation_tokens_total < 400
    finally:
        await engine.shutdown(1.0)


async def test_errors_are_raised_before_the_first_delta(qwen2_checkpoint_dir: Path) -> None:
    engine = build(qwen2_checkpoint_dir, max_waiting_requests=1)
    with pytest.raises(EngineStoppedError, match="not started"):
        engine.generate("x", [1, 2], GREEDY)
    await engine.start()
    try:
        with pytest.raises(RequestTooLongError):
            engine.generate("too-long", [1] * 500, SamplingParams(max_tokens=100))
        engine.engine.runner.run = _slow(engine.engine.runner.run)  # type: ignore[method-assign]
        busy = [engine.generate(f"b{i}", [1, 2, 3], SamplingParams(max_tokens=50, ignore_eos=True)) for i in range(1)]
        with pytest.raises(QueueFullError):
            for i in range(5):
                busy.append(engine.generate(f"q{i}", [1, 2, 3], GREEDY))
        for stream in busy:
            await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await engine.shutdown(0.0)
    with pytest.raises(EngineStoppedError):
        engine.generate("late", [1, 2], GREEDY)


def _slow(run):  # type: ignore[no-untyped-def]
    import time

    def slowed(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.05)
        return run(*args, **kwargs)

    return slowed


async def test_a_failing_step_fails_its_requests_and_the_engine_keeps_serving(qwen2_checkpoint_dir: Path) -> None:
    engine = build(qwen2_checkpoint_dir)
    real_run = engine.engine.runner.run
    calls = {"n": 0}

    def flaky(seqs, is_prefill):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated device error")
        return real_run(seqs, is_prefill)

    engine.engine.runner.run = flaky  # type: ignore[method-assign]
    await engine.start()
    try:
        with pytest.raises(EngineStepError, match="simulated device error"):
            await collect(engine, "doomed", [3, 4, 5], GREEDY)
        assert engine.is_ready() and engine.step_errors_total == 1
        outputs = await collect(engine, "fine", [3, 4, 5], GREEDY)
        assert outputs[-1].completion_tokens == 12
        stats = engine.stats()
        assert stats.kv_cache_blocks_free == stats.kv_cache_blocks_total
    finally:
        await engine.shutdown(1.0)


async def test_shutdown_lets_in_flight_requests_finish_within_the_grace_period(qwen2_checkpoint_dir: Path) -> None:
    engine = build(qwen2_checkpoint_dir)
    await engine.start()
    task = asyncio.create_task(collect(engine, "inflight", [7, 8, 9], SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)))
    await wait_until(lambda: engine.stats().num_requests_running == 1)
    await engine.shutdown(30.0)
    outputs = await task
    assert outputs[-1].finish_reason == "length" and outputs[-1].completion_tokens == 30


async def test_shutdown_aborts_what_outlives_the_grace_period(qwen2_checkpoint_dir: Path) -> None:
    engine = build(qwen2_checkpoint_dir)
    await engine.start()
    task = asyncio.create_task(collect(engine, "endless", [7, 8, 9], SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)))
    await wait_until(lambda: engine.stats().num_requests_running == 1)
    await engine.shutdown(0.05)
    outputs = await task
    assert outputs[-1].finish_reason == "abort"
    assert not engine.stats().engine_loop_alive


async def test_run_between_steps_runs_on_the_engine_thread(qwen2_checkpoint_dir: Path) -> None:
    import threading

    engine = build(qwen2_checkpoint_dir)
    await engine.start()
    try:
        def change() -> str:
            engine.engine.scheduler.max_batch_size = 3
            return threading.current_thread().name

        name = await asyncio.wrap_future(engine.run_between_steps(change))
        assert name == "dssidecar-engine" and engine.engine.scheduler.max_batch_size == 3
    finally:
        await engine.shutdown(1.0)
