"""The contract between the engine and everything that drives it (HTTP server, knobs, benchmarks).

The server never touches Sequences or the scheduler; it submits a prompt with SamplingParams to an
`EngineClient` and reads a stream of `RequestOutput` deltas. Keeping this boundary small lets the API be
tested against a fake engine and lets the engine change (new runner, new backend) without the API
noticing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

FinishReason = Literal["stop", "length", "abort"]


class EngineError(Exception):
    """Base class of errors the engine reports to its callers."""


class QueueFullError(EngineError):
    """The waiting queue is at its limit; the caller should answer 429 with Retry-After."""

    def __init__(self, message: str, retry_after_seconds: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class RequestTooLongError(EngineError):
    """prompt tokens + max_tokens exceed the model's context length."""


class EngineStoppedError(EngineError):
    """The engine is draining or stopped and admits no new requests."""


class InvalidRequestError(EngineError):
    """The request itself is malformed (empty prompt, token id outside the vocabulary, max_tokens < 1)."""


class EngineStepError(EngineError):
    """The engine failed while running this request (for example an exception in the model step)."""


@dataclass
class SamplingParams:
    """How to pick tokens for one request. Defaults follow OpenAI's API."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or negative: disabled
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1


@dataclass
class RequestOutput:
    """One delta of a request's output, yielded after each engine step that produced tokens.

    `text` is the newly decoded text since the previous delta (stop strings already trimmed).
    Timestamps are time.monotonic() seconds; the final delta has finished=True and a finish_reason.
    """

    request_id: str
    token_ids: list[int]
    text: str
    finished: bool
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    arrival_time: float
    first_token_time: float | None = None
    finish_time: float | None = None
    # set (with finished=True, finish_reason="abort") when the engine failed this request
    error: str | None = None


@dataclass
class EngineStats:
    """A snapshot of the engine for /metrics and /readyz; base units only."""

    num_requests_running: int
    num_requests_waiting: int
    kv_cache_usage_ratio: float  # 0..1
    kv_cache_blocks_total: int
    kv_cache_blocks_free: int
    num_preemptions_total: int
    prompt_tokens_total: int
    generation_tokens_total: int
    steps_total: int
    engine_loop_alive: bool


class Tokenizer(Protocol):
    """What the server needs from a tokenizer."""

    eos_token_ids: Sequence[int]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str: ...


class EngineClient(Protocol):
    """An engine running its step loop in the background, driven from asyncio."""

    model_name: str
    max_model_len: int
    tokenizer: Tokenizer

    def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        """Submit a request and stream its deltas. Raises QueueFullError, RequestTooLongError,
        EngineStoppedError before the first delta. Closing the iterator (client disconnect) aborts the
        request and frees its KV blocks."""
        ...

    async def abort(self, request_id: str) -> None: ...

    def stats(self) -> EngineStats: ...

    def is_ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def shutdown(self, grace_period_seconds: float) -> None:
        """Stop admitting, let in-flight requests finish up to the grace period, abort the rest."""
        ...
