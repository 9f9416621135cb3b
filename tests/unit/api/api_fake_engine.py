"""A deterministic EngineClient for API tests: a character tokenizer and an engine that spells a text.

As small as the protocol allows, but it keeps the parts the server must respect: errors raised before
the first delta, one block held per 4 tokens of each running request (so tests can prove that a client
disconnect gives them back), a bounded queue, stop strings, EOS, and shutdown with a grace period.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

from dssidecar.engine.protocol import (
    EngineStats,
    EngineStoppedError,
    QueueFullError,
    RequestOutput,
    RequestTooLongError,
    SamplingParams,
)

EOS_ID = 3
GENERATED_TEXT = "hello world, this is the fake engine speaking. " * 40
BLOCK_TOKENS = 4


class CharTokenizer:
    """One token per character (code point + 10); ids 0-9 are special, 3 is EOS."""

    eos_token_ids: Sequence[int] = (EOS_ID,)
    vocab_size = 100_000

    def encode(self, text: str) -> list[int]:
        return [ord(ch) + 10 for ch in text]

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(chr(t - 10) for t in token_ids if t >= 10)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


class FakeEngine:
    """Generates GENERATED_TEXT (or EOS after `eos_after` tokens), `token_delay_seconds` per token."""

    def __init__(
        self,
        *,
        model_name: str = "fake-model",
        max_model_len: int = 512,
        token_delay_seconds: float = 0.0,
        max_running: int = 64,
        total_blocks: int = 1024,
        eos_after: int | None = None,
        tokens_per_delta: int = 1,
    ) -> None:
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.tokenizer = CharTokenizer()
        self.token_delay_seconds = token_delay_seconds
        self.max_running = max_running
        self.total_blocks = total_blocks
        self.eos_after = eos_after
        self.tokens_per_delta = tokens_per_delta
        self.blocks_held: dict[str, int] = {}
        self.aborted: list[str] = []
        self.submitted: list[tuple[str, list[int], SamplingParams]] = []
        self.started = False
        self.stopping = False
        self.loop_alive = True
        self.shutdown_calls = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self._abort_all = False

    # ---------------------------------------------------------------- protocol

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        if self.stopping:
            raise EngineStoppedError("fake engine is shutting down")
        if len(prompt_token_ids) + params.max_tokens > self.max_model_len:
            raise RequestTooLongError(
                f"{len(prompt_token_ids)} prompt + {params.max_tokens} new tokens > {self.max_model_len}"
            )
        if len(self.blocks_held) >= self.max_running:
            raise QueueFullError(f"{len(self.blocks_held)} requests running", retry_after_seconds=2.5)
        self.submitted.append((request_id, list(prompt_token_ids), params))
        arrival = time.monotonic()
        self.prompt_tokens_total += len(prompt_token_ids)
        self.blocks_held[request_id] = -(-len(prompt_token_ids) // BLOCK_TOKENS)
        first_token_time: float | None = None
        generated = 0
        text_so_far = ""
        raw_text = ""
        completed = False
        try:
            while True:
                if self.token_delay_seconds:
                    await asyncio.sleep(self.token_delay_seconds * self.tokens_per_delta)
                else:
                    await asyncio.sleep(0)
                if self._abort_all:
                    completed = True
                    yield self._output(request_id, [], "", "abort", prompt_token_ids, generated, arrival, first_token_time)
                    return
                ids: list[int] = []
                finish: str | None = None
                for _ in range(self.tokens_per_delta):
                    if self.eos_after is not None and generated == self.eos_after and not params.ignore_eos:
                        finish = "stop"
                        break
                    ids.append(self.tokenizer.encode(GENERATED_TEXT[generated % len(GENERATED_TEXT)])[0])
                    generated += 1
                    if generated >= params.max_tokens:
                        finish = "length"
                        break
                self.generation_tokens_total += len(ids)
                if first_token_time is None and ids:
                    first_token_time = time.monotonic()
                self.blocks_held[request_id] = -(-(len(prompt_token_ids) + generated) // BLOCK_TOKENS)
                raw_text += self.tokenizer.decode(ids)
                visible = raw_text
                for stop in params.stop:
                    at = raw_text.find(stop)
                    if at >= 0:
                        visible = raw_text[:at]
                        finish = "stop"
                        break
                if finish is None:  # hold back a tail that may still become a stop string
                    for stop in params.stop:
                        for size in range(min(len(stop) - 1, len(visible)), 0, -1):
                            if stop.startswith(visible[-size:]):
                                visible = visible[:-size]
                                break
                new_text = visible[len(text_so_far) :] if len(visible) > len(text_so_far) else ""
                text_so_far = max(text_so_far, visible, key=len)
                completed = finish is not None
                yield self._output(request_id, ids, new_text, finish, prompt_token_ids, generated, arrival, first_token_time)
                if finish is not None:
                    return
        finally:
            self.blocks_held.pop(request_id, None)
            if not completed:
                self.aborted.append(request_id)

    def _output(
        self,
        request_id: str,
        ids: list[int],
        text: str,
        finish: str | None,
        prompt: list[int],
        generated: int,
        arrival: float,
        first_token_time: float | None,
    ) -> RequestOutput:
        return RequestOutput(
            request_id=request_id,
            token_ids=ids,
            text=text,
            finished=finish is not None,
            finish_reason=finish,  # type: ignore[arg-type]
            prompt_tokens=len(prompt),
            completion_tokens=generated,
            arrival_time=arrival,
            first_token_time=first_token_time,
            finish_time=time.monotonic() if finish is not None else None,
        )

    async def abort(self, request_id: str) -> None:
        self.blocks_held.pop(request_id, None)

    def stats(self) -> EngineStats:
        used = sum(self.blocks_held.values())
        return EngineStats(
            num_requests_running=len(self.blocks_held),
            num_requests_waiting=0,
            kv_cache_usage_ratio=used / self.total_blocks,
            kv_cache_blocks_total=self.total_blocks,
            kv_cache_blocks_free=self.total_blocks - used,
            num_preemptions_total=0,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            steps_total=self.generation_tokens_total,
            engine_loop_alive=self.loop_alive,
        )

    def is_ready(self) -> bool:
        return self.started and self.loop_alive and not self.stopping

    async def start(self) -> None:
        self.started = True

    async def shutdown(self, grace_period_seconds: float) -> None:
        self.shutdown_calls += 1
        self.stopping = True
        deadline = time.monotonic() + grace_period_seconds
        while self.blocks_held and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self.blocks_held:
            self._abort_all = True
