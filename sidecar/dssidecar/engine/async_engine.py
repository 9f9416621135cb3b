"""AsyncLLMEngine: the LLMEngine driven by one background thread, consumed from asyncio.

The model step is blocking (torch), so it runs in a dedicated thread that steps while there is work
and sleeps on a condition otherwise. The asyncio side never touches engine state: new requests,
aborts and between-step callables (knob changes, runner swaps) are queued under a small lock and
applied by the loop thread between steps. Each step's deltas are handed back to the event loop with
one `call_soon_threadsafe`, which routes them to per-request asyncio queues.

Failure handling: an exception in step() is logged and fails the requests of that batch with an
error (their streams raise EngineStepError) instead of hanging them; if the loop thread itself dies,
every open stream is failed and is_ready() turns false.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from dssidecar.engine.config import EngineConfig
from dssidecar.engine.llm_engine import LLMEngine
from dssidecar.engine.protocol import (
    EngineStats,
    EngineStepError,
    EngineStoppedError,
    InvalidRequestError,
    QueueFullError,
    RequestOutput,
    SamplingParams,
    Tokenizer,
)

logger = logging.getLogger("dssidecar.engine.async")

_StreamItem = RequestOutput | BaseException


class AsyncLLMEngine:
    """protocol.EngineClient over an LLMEngine."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.model_name = engine.model_name
        self.max_model_len = engine.max_model_len
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._pending_adds: list[tuple[str, list[int], SamplingParams, float]] = []
        self._pending_aborts: list[str] = []
        self._pending_calls: list[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = []
        self._streams: dict[str, asyncio.Queue[_StreamItem]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_requested = False
        self._draining = False
        self._loop_died = False
        self.step_errors_total = 0

    @classmethod
    def from_model_path(cls, model_path: str | Path, config: EngineConfig | None = None) -> AsyncLLMEngine:
        return cls(LLMEngine.from_model_path(model_path, config))

    # ---- EngineClient attributes ----------------------------------------------------------------
    @property
    def tokenizer(self) -> Tokenizer:
        assert self.engine.tokenizer is not None, "engine was built without a tokenizer"
        return self.engine.tokenizer

    @property
    def config(self) -> EngineConfig:
        return self.engine.config

    # ---- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run_loop, name="dssidecar-engine", daemon=True)
        self._thread.start()

    def is_ready(self) -> bool:
        return (
            self._thread is not None
            and self._thread.is_alive()
            and not self._loop_died
            and not self._stop_requested
            and not self._draining
        )

    async def shutdown(self, grace_period_seconds: float) -> None:
        """Stop admitting; let in-flight requests finish up to the grace period; abort the rest."""
        self._draining = True
        deadline = time.monotonic() + max(0.0, grace_period_seconds)
        while time.monotonic() < deadline and self._has_work() and self._thread_alive():
            await asyncio.sleep(0.02)
        if self._thread_alive():
            await asyncio.wrap_future(self.run_between_steps(self._abort_everything))
        with self._wakeup:
            self._stop_requested = True
            self._wakeup.notify_all()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10.0)
        self._fail_open_streams(EngineStoppedError("the engine shut down"))

    def _thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _has_work(self) -> bool:
        with self._lock:
            pending = bool(self._pending_adds)
        return pending or self.engine.has_unfinished_requests()

    # ---- requests -------------------------------------------------------------------------------
    def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        """Validate and enqueue now (errors raise here, before any delta); stream deltas after."""
        if self._draining or self._stop_requested:
            raise EngineStoppedError("the engine is shutting down and admits no new requests")
        if self._loop_died:
            raise EngineStoppedError("the engine loop died; see the server log")
        if self._thread is None or self._loop is None:
            raise EngineStoppedError("the engine is not started; call `await engine.start()` first")
        self.engine.validate_request(prompt_token_ids, params)
        queue: asyncio.Queue[_StreamItem] = asyncio.Queue()
        with self._wakeup:
            if request_id in self._streams:
                raise InvalidRequestError(f"request id {request_id!r} is already in flight; use a unique id")
            waiting = self.engine.num_waiting + len(self._pending_adds)
            limit = self.engine.config.max_waiting_requests
            if waiting >= limit:
                raise QueueFullError(f"{waiting} requests are waiting (max_waiting_requests={limit})")
            self._streams[request_id] = queue
            self._pending_adds.append((request_id, list(prompt_token_ids), params, time.monotonic()))
            self._wakeup.notify()
        stream = self._stream(request_id, queue)
        # a stream dropped without being iterated to the end still aborts its request
        weakref.finalize(stream, self._abort_threadsafe, request_id)
        return stream

    async def _stream(self, request_id: str, queue: asyncio.Queue[_StreamItem]) -> AsyncIterator[RequestOutput]:
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.finished:
                    finished = True
                    if item.error is not None:
                        raise EngineStepError(f"request {request_id} failed in the engine: {item.error}")
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self._abort_threadsafe(request_id)
            with self._lock:
                self._streams.pop(request_id, None)

    async def abort(self, request_id: str) -> None:
        self._abort_threadsafe(request_id)

    def _abort_threadsafe(self, request_id: str) -> None:
        with self._wakeup:
            self._pending_aborts.append(request_id)
            self._wakeup.notify()

    def run_between_steps(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run fn on the engine thread between two steps (knob changes, runner swaps).

        Returns a concurrent Future (wrap with asyncio.wrap_future, or .result() from another thread).
        When the loop thread is not running, fn runs right away in the caller's thread."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if not self._thread_alive():
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)
            return future
        with self._wakeup:
            self._pending_calls.append((fn, future))
            self._wakeup.notify()
        return future

    # ---- stats ----------------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        engine = self.engine
        block_manager = engine.block_manager
        with self._lock:
            pending = len(self._pending_adds)
        return EngineStats(
            num_requests_running=len(engine.scheduler.running),
            num_requests_waiting=len(engine.scheduler.waiting) + pending,
            kv_cache_usage_ratio=block_manager.usage_ratio,
            kv_cache_blocks_total=block_manager.num_blocks,
            kv_cache_blocks_free=block_manager.num_free_blocks,
            num_preemptions_total=engine.scheduler.num_preemptions_total,
            prompt_tokens_total=engine.prompt_tokens_total,
            generation_tokens_total=engine.generation_tokens_total,
            steps_total=engine.steps_total,
            engine_loop_alive=self._thread_alive() and not self._loop_died,
        )

    # ---- the loop thread ------------------------------------------------------------------------
    def _run_loop(self) -> None:
        try:
            while True:
                with self._wakeup:
                    while (
                        not self._stop_requested
                        and not self._pending_adds
                        and not self._pending_aborts
                        and not self._pending_calls
                        and not self.engine.has_unfinished_requests()
                    ):
                        self._wakeup.wait()
                    if self._stop_requested:
                        calls, self._pending_calls = self._pending_calls, []
                        for _fn, future in calls:
                            future.set_exception(EngineStoppedError("the engine stopped"))
                        return
                    adds, self._pending_adds = self._pending_adds, []
                    aborts, self._pending_aborts = self._pending_aborts, []
                    calls, self._pending_calls = self._pending_calls, []
                outputs: list[RequestOutput] = []
                for fn, future in calls:
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # handed to the caller
                        future.set_exception(exc)
                for request_id, prompt, params, arrival in adds:
                    try:
                        self.engine.add_request(request_id, prompt, params, arrival_time=arrival)
                    except Exception as exc:
                        self._deliver_threadsafe([(request_id, exc)])
                for request_id in aborts:
                    output = self.engine.abort_request(request_id)
                    if output is not None:
                        outputs.append(output)
                if self.engine.has_unfinished_requests():
                    try:
                        outputs.extend(self.engine.step())
                    except Exception as exc:
                        self.step_errors_total += 1
                        logger.exception("engine step failed; failing the requests of that step")
                        outputs.extend(self.engine.fail_current_batch(f"{type(exc).__name__}: {exc}"))
                if outputs:
                    self._deliver_threadsafe(outputs)
        except BaseException as exc:
            self._loop_died = True
            logger.exception("the engine loop died")
            self._deliver_threadsafe(None, EngineStepError(f"the engine loop died: {exc}"))

    def _deliver_threadsafe(
        self, items: list[RequestOutput] | list[tuple[str, Exception]] | None, fail_all: Exception | None = None
    ) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            if fail_all is not None:
                loop.call_soon_threadsafe(self._fail_open_streams, fail_all)
            else:
                loop.call_soon_threadsafe(self._deliver, items)
        except RuntimeError:  # the event loop closed meanwhile
            pass

    def _deliver(self, items: list[Any] | None) -> None:
        streams = self._streams
        for item in items or []:
            if isinstance(item, RequestOutput):
                queue = streams.get(item.request_id)
                if queue is not None:
                    queue.put_nowait(item)
            else:
                request_id, exc = item
                queue = streams.get(request_id)
                if queue is not None:
                    queue.put_nowait(exc)

    def _fail_open_streams(self, exc: Exception) -> None:
        for queue in list(self._streams.values()):
            queue.put_nowait(exc)

    def _abort_everything(self) -> None:
        outputs = self.engine.abort_all()
        with self._lock:
            adds, self._pending_adds = self._pending_adds, []
        for request_id, *_ in adds:
            outputs.append(
                RequestOutput(request_id, [], "", True, "abort", 0, 0, arrival_time=time.monotonic())
            )
        if outputs:
            self._deliver_threadsafe(outputs)
