"""Drive a workload against a server: closed-loop concurrency or open-loop Poisson arrivals, with a warm-up
that is never measured and either a fixed set of prompts or a fixed measurement window.

Why both modes: `--num-prompts N` gives exact, comparable request and token counts (the same N requests
every time, duration from the first send to the last answer, like vLLM bench); `--duration S` gives the
steady-state figures a tuner needs (requests that finish inside the window, divided by the window; the
requests still in flight when it closes are cancelled and not counted). In both, a warm-up phase with the
same arrivals runs first and its requests are dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from dsagent.loadgen.client import EngineUnreachable, send_streaming, served_model
from dsagent.loadgen.metrics import RequestResult, Slo, summarize
from dsagent.loadgen.workload import Endpoint, RequestSpec


class LoadPlanError(ValueError):
    """An arrival/measurement combination that cannot run (named in the message)."""


@dataclass(frozen=True)
class LoadPlan:
    """How requests arrive and what is measured.

    concurrency: closed loop, that many requests always in flight (when request_rate is None); with a
    request_rate it caps the requests in flight (vLLM's --max-concurrency). request_rate: open-loop Poisson
    arrivals per second; math.inf sends everything at once (needs num_prompts).
    """

    concurrency: int | None = 1
    request_rate: float | None = None
    warmup_seconds: float = 0.0
    duration_seconds: float | None = None
    num_prompts: int | None = None
    seed: int = 0

    def check(self) -> None:
        if (self.duration_seconds is None) == (self.num_prompts is None):
            raise LoadPlanError("give exactly one of a measurement window (--duration) or --num-prompts")
        if self.duration_seconds is not None and not self.duration_seconds > 0:
            raise LoadPlanError(f"--duration must be > 0 seconds, got {self.duration_seconds}")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise LoadPlanError(f"--num-prompts must be >= 1, got {self.num_prompts}")
        if self.warmup_seconds < 0:
            raise LoadPlanError(f"--warmup must be >= 0 seconds, got {self.warmup_seconds}")
        if self.concurrency is not None and self.concurrency < 1:
            raise LoadPlanError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.request_rate is None and self.concurrency is None:
            raise LoadPlanError("give --concurrency (closed loop) or --request-rate (open loop)")
        if self.request_rate is not None and not self.request_rate > 0:
            raise LoadPlanError(f"--request-rate must be > 0 (or inf), got {self.request_rate}")
        if self.request_rate == math.inf and self.duration_seconds is not None and self.concurrency is None:
            raise LoadPlanError("--request-rate inf with a --duration window needs --concurrency to bound it "
                                "(or use --num-prompts)")

    def describe(self) -> str:
        if self.request_rate is None:
            arrivals = f"closed loop, concurrency {self.concurrency}"
        else:
            arrivals = ("all at once (rate inf)" if self.request_rate == math.inf else
                        f"Poisson {self.request_rate:g} req/s") + (
                f", max {self.concurrency} in flight" if self.concurrency else "")
        measure = (f"{self.num_prompts} prompts" if self.num_prompts is not None else
                   f"{self.duration_seconds:g} s window")
        return f"{arrivals}; warm-up {self.warmup_seconds:g} s; {measure}"


@dataclass
class Progress:
    """A snapshot for progress displays and early stopping (elapsed in seconds since the phase began)."""

    phase: str  # "warmup" or "measure"
    elapsed_seconds: float
    total_seconds: float | None
    total_prompts: int | None
    completed: int
    failed: int
    output_tokens: int
    measured: list[RequestResult] = field(default_factory=list)


ProgressCallback = Callable[[Progress], "bool | None"]  # returning True stops the measurement early


@dataclass
class LoadResult:
    summary: dict[str, Any]
    results: list[RequestResult]
    warmup_requests: int
    warmup_seconds: float
    measure_seconds: float
    stopped_early: bool
    model: str
    errors: list[str]


class _Arrivals:
    """Yields request specs forever (cycling), paced by the plan's arrival process."""

    def __init__(self, specs: Sequence[RequestSpec], plan: LoadPlan) -> None:
        self._specs = itertools.cycle(enumerate(specs))
        self._rng = random.Random(plan.seed)
        self._rate = plan.request_rate

    def next_spec(self) -> tuple[int, RequestSpec]:
        return next(self._specs)

    def gap_seconds(self) -> float:
        if self._rate is None or self._rate == math.inf:
            return 0.0
        return self._rng.expovariate(self._rate)


async def _phase(client: httpx.AsyncClient, base_url: str, model: str, endpoint: Endpoint, arrivals: _Arrivals,
                 plan: LoadPlan, *, seconds: float | None, prompts: int | None, phase: str,
                 on_progress: ProgressCallback | None, ignore_eos: bool) -> tuple[list[RequestResult], float, bool]:
    """Run one phase; returns (results, elapsed seconds, stopped early). Window phases cancel stragglers."""
    origin = time.perf_counter()
    results: list[RequestResult] = []
    in_flight: set[asyncio.Task[RequestResult]] = set()
    limit = plan.concurrency if plan.concurrency is not None else math.inf
    slots = asyncio.Semaphore(int(limit)) if limit != math.inf else None
    unreachable: list[BaseException] = []
    sent = 0
    stop = asyncio.Event()

    def done(task: asyncio.Task[RequestResult]) -> None:
        in_flight.discard(task)
        if slots is not None:
            slots.release()
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            unreachable.append(error)
            stop.set()
            return
        results.append(task.result())

    async def sender() -> None:
        nonlocal sent
        next_at = time.perf_counter()
        while not stop.is_set():
            if prompts is not None and sent >= prompts:
                return
            if seconds is not None and time.perf_counter() - origin >= seconds:
                return
            if plan.request_rate is not None:
                next_at += arrivals.gap_seconds()
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if slots is not None:
                await slots.acquire()
            if stop.is_set() or (seconds is not None and time.perf_counter() - origin >= seconds):
                if slots is not None:
                    slots.release()
                return
            index, spec = arrivals.next_spec()
            task = asyncio.create_task(send_streaming(client, base_url, model, spec, sent, endpoint, origin,
                                                      ignore_eos))
            task.add_done_callback(done)
            in_flight.add(task)
            sent += 1

    sending = asyncio.create_task(sender())
    stopped_early = False
    try:
        while True:
            await asyncio.sleep(0.2)
            if unreachable:
                break
            elapsed = time.perf_counter() - origin
            if on_progress is not None:
                snapshot = Progress(phase, elapsed, seconds, prompts, sum(r.success for r in results),
                                    sum(not r.success for r in results),
                                    sum(r.output_tokens for r in results if r.success), results)
                if on_progress(snapshot):
                    stopped_early = True
                    break
            if seconds is not None and elapsed >= seconds:
                break
            if prompts is not None and sending.done() and not in_flight:
                break
    finally:
        stop.set()
        sending.cancel()
        for task in list(in_flight):
            task.cancel()
        await asyncio.gather(sending, *in_flight, return_exceptions=True)
    if unreachable:
        error = unreachable[0]
        raise error if isinstance(error, EngineUnreachable) else EngineUnreachable(str(error))
    elapsed = time.perf_counter() - origin
    if prompts is not None and results:
        elapsed = max(result.end_seconds for result in results)  # first send (0) to the last answer
    return results, elapsed, stopped_early


async def run_load(base_url: str, specs: Sequence[RequestSpec], plan: LoadPlan, *, endpoint: Endpoint = "completions",
                   model: str | None = None, slo: Slo | None = None, on_progress: ProgressCallback | None = None,
                   ignore_eos: bool = True, request_timeout_seconds: float = 600.0) -> LoadResult:
    """Warm up, measure, summarize. Raises EngineUnreachable when the server cannot be reached."""
    plan.check()
    if not specs:
        raise LoadPlanError("the workload produced no requests")
    base_url = base_url.rstrip("/")
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(request_timeout_seconds, connect=10.0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        model_name = model or await served_model(client, base_url)
        arrivals = _Arrivals(specs, plan)
        warmup_results: list[RequestResult] = []
        warmup_elapsed = 0.0
        if plan.warmup_seconds > 0:
            warmup_results, warmup_elapsed, _ = await _phase(
                client, base_url, model_name, endpoint, arrivals, plan, seconds=plan.warmup_seconds, prompts=None,
                phase="warmup", on_progress=on_progress, ignore_eos=ignore_eos)
        if plan.num_prompts is not None:
            arrivals = _Arrivals(specs, plan)  # the measured prompts are always the same first N
            results, elapsed, stopped = await _phase(
                client, base_url, model_name, endpoint, arrivals, plan, seconds=None, prompts=plan.num_prompts,
                phase="measure", on_progress=on_progress, ignore_eos=ignore_eos)
            measured = results
            duration = elapsed
        else:
            window = float(plan.duration_seconds or 0.0)
            results, elapsed, stopped = await _phase(
                client, base_url, model_name, endpoint, arrivals, plan, seconds=window, prompts=None,
                phase="measure", on_progress=on_progress, ignore_eos=ignore_eos)
            measured = [result for result in results if not result.success or result.end_seconds <= window]
            duration = min(elapsed, window) if stopped else window
    errors = sorted({result.error for result in measured if not result.success})
    return LoadResult(summarize(measured, duration, slo), sorted(measured, key=lambda r: r.index),
                      len(warmup_results), warmup_elapsed, duration, stopped, model_name, errors)


def window_goodput(results: Sequence[RequestResult], elapsed_seconds: float, slo: Slo | None) -> float:
    """Good (or, without an SLO, all successful) requests per second so far: the tuner's intermediate value."""
    if elapsed_seconds <= 0:
        return 0.0
    ok = [result for result in results if result.success]
    good = [result for result in ok if slo is None or slo.is_empty() or slo.met_by(result)]
    return len(good) / elapsed_seconds
