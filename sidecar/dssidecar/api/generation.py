"""One request's life between the HTTP layer and the engine: submit, read deltas, time them, clean up.

Both endpoints (completions, chat) and both modes (stream, not) share this so that error mapping
(queue full -> 429, too long -> 400, draining -> 503), abort-on-disconnect, latency metrics and the
per-request telemetry record are written once. `close()` is the single exit: whatever happened (normal
finish, client gone, server error), it aborts the engine request if still running, observes metrics
and emits the record exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from starlette.requests import Request

from dssidecar.api.errors import APIError, bad_request, queue_full, unavailable
from dssidecar.api.metrics import ServerMetrics
from dssidecar.api.request_telemetry import RequestRecord, RequestTelemetry
from dssidecar.engine.protocol import (
    EngineClient,
    EngineError,
    EngineStoppedError,
    QueueFullError,
    RequestOutput,
    RequestTooLongError,
    SamplingParams,
)

logger = logging.getLogger("dssidecar.api")

T = TypeVar("T")


class ClientGone(Exception):
    """The HTTP client disconnected before the response was complete."""


@dataclass
class ServingState:
    """What the routes share: the engine, names, metrics, telemetry and the draining flag."""

    engine: EngineClient
    model_name: str
    metrics: ServerMetrics
    telemetry: RequestTelemetry
    knob_values: Callable[[], Mapping[str, Any]] | None = None
    draining: bool = False
    in_flight: set[str] = field(default_factory=set)

    def knob_snapshot(self) -> dict[str, Any]:
        hook = self.knob_values if self.knob_values is not None else self.metrics.knob_values
        if hook is None:
            return {}
        try:
            return dict(hook())
        except Exception:
            logger.exception("knob snapshot failed")
            return {}

    def reject(self, record: RequestRecord, error: APIError, reason: str) -> None:
        """Count and log a request refused before the engine produced anything."""
        record.status_code = error.status_code
        record.error_type = error.code or error.error_type
        self.metrics.observe_rejected(reason)
        self.telemetry.record(record)


class GenerationJob:
    """Drives one engine request and keeps its timings."""

    def __init__(
        self,
        state: ServingState,
        record: RequestRecord,
        prompt_token_ids: list[int],
        params: SamplingParams,
    ) -> None:
        self.state = state
        self.record = record
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.arrival_monotonic = time.monotonic()
        self.first_token_monotonic: float | None = None
        self.last_delta_monotonic: float | None = None
        self.inter_token_seconds: list[float] = []
        self.completion_tokens = 0
        self.prompt_tokens = len(prompt_token_ids)
        self.finish_reason: str | None = None
        self.engine_arrival: float | None = None
        self.engine_first_token: float | None = None
        self.engine_finish: float | None = None
        self._stream: AsyncIterator[RequestOutput] | None = None
        self._closed = False
        record.prompt_length = self.prompt_tokens

    @property
    def request_id(self) -> str:
        return self.record.request_id

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    async def start(self) -> RequestOutput:
        """Submit and wait for the first delta; engine refusals become API errors (and are recorded)."""
        state = self.state
        try:
            self._stream = state.engine.generate(self.request_id, self.prompt_token_ids, self.params)
            first = await self._stream.__anext__()
        except QueueFullError as error:
            api_error = queue_full(f"the engine's waiting queue is full: {error}", error.retry_after_seconds)
            await self._refused(api_error, "queue_full")
            raise api_error from error
        except RequestTooLongError as error:
            api_error = bad_request(str(error), param="max_tokens", code="context_length_exceeded")
            await self._refused(api_error, "too_long")
            raise api_error from error
        except EngineStoppedError as error:
            api_error = unavailable(f"the engine admits no new requests: {error}")
            await self._refused(api_error, "draining")
            raise api_error from error
        except EngineError as error:  # InvalidRequestError and any other refusal the engine names
            status = 500 if type(error).__name__ == "EngineStepError" else 400
            api_error = APIError(
                status, str(error), error_type="server_error" if status == 500 else "invalid_request_error"
            )
            await self._refused(api_error, "engine_error" if status == 500 else "invalid")
            raise api_error from error
        except StopAsyncIteration:
            api_error = APIError(500, "the engine ended the request without output", error_type="server_error")
            await self._refused(api_error, "engine_error")
            raise api_error from None
        except Exception as error:  # anything else the engine raised: still counted and recorded
            logger.exception("the engine failed request %s before its first token", self.request_id)
            api_error = APIError(
                500, f"the engine failed this request ({type(error).__name__}); see the server log",
                error_type="server_error",
            )
            await self._refused(api_error, "engine_error")
            raise api_error from error
        state.in_flight.add(self.request_id)
        self.absorb(first)
        return first

    async def _refused(self, error: APIError, reason: str) -> None:
        self._closed = True
        await self._close_stream()
        self.state.reject(self.record, error, reason)

    def absorb(self, output: RequestOutput) -> None:
        """Update timings and counts from one delta."""
        now = time.monotonic()
        new_tokens = len(output.token_ids)
        if new_tokens:
            if self.first_token_monotonic is None:
                self.first_token_monotonic = now
            elif self.last_delta_monotonic is not None:
                gap = (now - self.last_delta_monotonic) / new_tokens
                self.inter_token_seconds.extend([gap] * new_tokens)
            self.last_delta_monotonic = now
        self.completion_tokens = max(self.completion_tokens + new_tokens, output.completion_tokens)
        self.prompt_tokens = output.prompt_tokens or self.prompt_tokens
        self.engine_arrival = output.arrival_time
        if output.first_token_time is not None:
            self.engine_first_token = output.first_token_time
        if output.finished:
            self.finish_reason = output.finish_reason or "stop"
            self.engine_finish = output.finish_time

    async def deltas(self) -> AsyncIterator[RequestOutput]:
        """The deltas after the first one, each already absorbed."""
        assert self._stream is not None, "start() must succeed before deltas()"
        if self.finished:
            return
        async for output in self._stream:
            self.absorb(output)
            yield output
            if output.finished:
                return

    async def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        aclose = getattr(stream, "aclose", None)
        if aclose is None:
            return
        try:
            await aclose()
        except Exception:
            logger.exception("closing the engine stream of %s failed", self.request_id)

    async def close(self, *, status_code: int = 200, error_type: str | None = None) -> None:
        """Abort if unfinished, observe metrics, emit the record. Idempotent; safe under cancellation."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            unfinished = not self.finished
            await self._close_stream()
            if unfinished:
                try:
                    await self.state.engine.abort(self.request_id)
                except Exception:
                    logger.exception("aborting %s failed", self.request_id)
        self.state.in_flight.discard(self.request_id)
        if unfinished:
            self.finish_reason = "abort"
        ttft, e2e = self._latencies()
        self.state.metrics.observe_finished(
            finish_reason=self.finish_reason or "abort",
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            e2e_seconds=e2e,
            ttft_seconds=ttft,
            inter_token_seconds=self.inter_token_seconds,
        )
        record = self.record
        record.status_code = status_code
        record.error_type = error_type
        record.prompt_length = self.prompt_tokens
        record.tokens_generated = self.completion_tokens
        record.finish_reason = self.finish_reason
        record.time_to_first_token = ttft
        record.generation_time = e2e
        self.state.telemetry.record(record)

    def _latencies(self) -> tuple[float | None, float | None]:
        """(time to first token, end-to-end) in seconds; the engine's own stamps when it gave them."""
        now = time.monotonic()
        arrival = self.engine_arrival if self.engine_arrival is not None else self.arrival_monotonic
        # The engine's stamps share time.monotonic() with ours; fall back to ours when it gave none.
        if self.engine_first_token is not None:
            ttft: float | None = max(0.0, self.engine_first_token - arrival)
        elif self.first_token_monotonic is not None:
            ttft = max(0.0, self.first_token_monotonic - self.arrival_monotonic)
        else:
            ttft = None
        if self.engine_finish is not None:
            e2e = max(0.0, self.engine_finish - arrival)
        else:
            e2e = max(0.0, now - self.arrival_monotonic)
        return ttft, e2e


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client disconnects (the request body must already be read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`; if the client disconnects first, cancel it and raise ClientGone."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
    raise ClientGone()
