"""POST /v1/completions, POST /v1/chat/completions and GET /v1/models, as OpenAI serves them.

The handlers turn a request body into (prompt token ids, SamplingParams), refuse what cannot be served
with an OpenAI error naming the parameter, and hand the rest to a GenerationJob. Streaming answers are
Server-Sent Events exactly as OpenAI sends them: `data: {json}\\n\\n` per chunk and `data: [DONE]\\n\\n`;
chat streams send `delta.role` first, the finish_reason rides on the last content chunk, and with
`stream_options.include_usage` a final chunk with empty `choices` carries the usage.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from dssidecar.api.errors import APIError, bad_request, error_body, unavailable
from dssidecar.api.generation import ClientGone, GenerationJob, ServingState, cancel_on_disconnect
from dssidecar.api.openai_models import (
    GENERATION_ERROR_RESPONSES,
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    SamplingFields,
    Usage,
)
from dssidecar.api.request_telemetry import RequestRecord
from dssidecar.engine.protocol import EngineError, RequestOutput, SamplingParams

router = APIRouter()

COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def serving_state(request: Request) -> ServingState:
    state: ServingState = request.app.state.serving
    return state


# ------------------------------------------------------------------ request -> engine inputs


def _new_record(state: ServingState, request_id: str, operation: str, stream: bool) -> RequestRecord:
    return RequestRecord(
        request_id=request_id,
        model=state.model_name,
        operation=operation,
        stream=stream,
        arrival_unix_nano=time.time_ns(),
        knobs=state.knob_snapshot(),
    )


def _check_admissible(state: ServingState, body: SamplingFields, unsupported: tuple[str, str] | None) -> None:
    if state.draining:
        raise unavailable("the server is shutting down and admits no new requests; retry on another replica")
    if body.model != state.model_name:
        raise bad_request(
            f"the model {body.model!r} does not exist; this server serves {state.model_name!r}",
            param="model",
            code="model_not_found",
        )
    if unsupported is not None:
        param, message = unsupported
        raise bad_request(message, param=param, code="unsupported_parameter")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _require_utf8(text: str, param: str) -> None:
    """A lone surrogate (JSON "\\ud800" without its pair) cannot be encoded to UTF-8, so no tokenizer can
    read it: refuse it with a 400 naming the field instead of failing inside the tokenizer (a 500)."""
    match = _LONE_SURROGATE.search(text)
    if match is not None:
        raise bad_request(
            f"{param} holds a lone UTF-16 surrogate (U+{ord(match.group()):04X}) at character {match.start()}; "
            "send valid Unicode text",
            param=param,
            code="invalid_unicode",
        )


def _check_sampling_ranges(state: ServingState, body: SamplingFields) -> None:
    """Ranges that depend on the model (the rest are checked by the pydantic models)."""
    vocab_size = getattr(state.engine.tokenizer, "vocab_size", None)
    if body.top_k is not None and isinstance(vocab_size, int) and body.top_k > vocab_size:
        raise bad_request(
            f"top_k={body.top_k} is larger than the vocabulary ({vocab_size} tokens); use 1..{vocab_size}, "
            "or 0 / -1 to disable it",
            param="top_k",
            code="invalid_value",
        )
    for index, stop in enumerate(body.stop_list()):
        _require_utf8(stop, f"stop[{index}]" if isinstance(body.stop, list) else "stop")


def _completion_prompt_ids(state: ServingState, body: CompletionRequest) -> list[int]:
    """Runs in a worker thread (tokenizing a long prompt must not stall the event loop)."""
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) == 0:
            raise bad_request("prompt is empty; send a string or a list of token ids", param="prompt")
        first = prompt[0]
        if isinstance(first, str | list):
            if len(prompt) != 1:
                raise bad_request(
                    f"prompt holds {len(prompt)} prompts; this server takes one prompt per request",
                    param="prompt",
                )
            prompt = first
    if isinstance(prompt, str):
        _require_utf8(prompt, "prompt")
        ids = list(state.engine.tokenizer.encode(prompt))
    else:
        if not all(isinstance(token, int) for token in prompt):
            raise bad_request("prompt must be a string, a list of token ids, or a list with one of those", param="prompt")
        ids = [int(token) for token in prompt if isinstance(token, int)]
        vocab_size = getattr(state.engine.tokenizer, "vocab_size", None)
        if isinstance(vocab_size, int):
            bad = [t for t in ids if t < 0 or t >= vocab_size]
            if bad:
                raise bad_request(f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})", param="prompt")
    if not ids:
        raise bad_request("prompt is empty after tokenization", param="prompt")
    return ids


def _chat_prompt_ids(state: ServingState, body: ChatCompletionRequest) -> list[int]:
    """Runs in a worker thread, like _completion_prompt_ids."""
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    for index, message in enumerate(messages):
        _require_utf8(message["content"], f"messages[{index}].content")
    try:
        text = state.engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except Exception as error:
        raise bad_request(f"the messages could not be rendered with the chat template: {error}", param="messages") from error
    ids = list(state.engine.tokenizer.encode(text))
    if not ids:
        raise bad_request("messages render to an empty prompt", param="messages")
    return ids


def _max_tokens(
    state: ServingState, prompt_length: int, requested: int | None, param: str, prompt_param: str
) -> int:
    max_model_len = state.engine.max_model_len
    if prompt_length >= max_model_len:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens; the prompt has {prompt_length} "
            "tokens, which leaves no room for a completion. Shorten the prompt.",
            param=prompt_param,
            code="context_length_exceeded",
        )
    if requested is None:
        return max_model_len - prompt_length
    if prompt_length + requested > max_model_len:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_length + requested} tokens ({prompt_length} in the prompt, {requested} for the completion). "
            f"Reduce the prompt or {param}.",
            param=param,
            code="context_length_exceeded",
        )
    return requested


def _sampling_params(body: SamplingFields, max_tokens: int) -> SamplingParams:
    top_k = body.top_k if body.top_k is not None and body.top_k > 0 else 0
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=top_k,
        seed=body.seed,
        stop=body.stop_list(),
        ignore_eos=bool(body.ignore_eos),
    )


def _usage(job: GenerationJob) -> dict[str, int]:
    return {
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": job.completion_tokens,
        "total_tokens": job.prompt_tokens + job.completion_tokens,
    }


# ------------------------------------------------------------------ SSE


def sse_event(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"data: {data}\n\n".encode()


SSE_DONE = sse_event("[DONE]")


class EventStreamResponse(StreamingResponse):
    """A StreamingResponse that always closes its event generator, also when the client went away.

    Starlette stops iterating on disconnect but leaves the generator to the garbage collector; closing
    it here runs the generator's `finally` at once, which aborts the engine request and frees its blocks.
    """

    def __init__(self, events: AsyncIterator[bytes], request_id: str) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Request-Id": request_id},
        )
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()


_TEXT_SLOT = "\x00dssidecar-text-slot\x00"


class _Chunker:
    """Builds the JSON chunks of one stream.

    Mid-stream content chunks differ only in their text, so their JSON is rendered once per stream with
    a slot for the text; each token then costs one string encode instead of a nested dict dump.
    """

    def __init__(self, job: GenerationJob, kind: str, created: int, include_usage: bool) -> None:
        self.job = job
        self.kind = kind  # "chat" or "completion"
        self.created = created
        self.include_usage = include_usage
        template = json.dumps(self.content(_TEXT_SLOT, None), separators=(",", ":"), ensure_ascii=False)
        self._content_prefix, self._content_suffix = template.split(json.dumps(_TEXT_SLOT, ensure_ascii=False))

    def content_event(self, text: str) -> bytes:
        """The SSE event of a mid-stream content chunk (no finish_reason)."""
        encoded = json.dumps(text, ensure_ascii=False)
        return f"data: {self._content_prefix}{encoded}{self._content_suffix}\n\n".encode()

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.job.request_id,
            "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.job.state.model_name,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def role(self) -> dict[str, Any]:
        return self._envelope(
            [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
        )

    def content(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = {"content": text} if text or finish_reason is None else {}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return self._envelope([choice])

    def usage(self) -> dict[str, Any]:
        chunk = self._envelope([])
        chunk["usage"] = _usage(self.job)
        return chunk


async def _event_stream(job: GenerationJob, first: RequestOutput, chunker: _Chunker) -> AsyncIterator[bytes]:
    status_code, error_type = 200, None
    try:
        if chunker.kind == "chat":
            yield sse_event(chunker.role())

        def chunks_for(output: RequestOutput) -> list[bytes]:
            if output.finished:
                return [sse_event(chunker.content(output.text, job.finish_reason))]
            return [chunker.content_event(output.text)] if output.text else []

        for event in chunks_for(first):
            yield event
        async for output in job.deltas():
            for event in chunks_for(output):
                yield event
        if not job.finished:  # the engine stream ended without a final delta
            job.finish_reason = "abort"
            yield sse_event(chunker.content("", "abort"))
        if chunker.include_usage:
            yield sse_event(chunker.usage())
        yield SSE_DONE
    except EngineError as error:  # the engine failed this request mid-stream: tell the client in-band
        status_code, error_type = 500, type(error).__name__
        yield sse_event(error_body(f"the engine failed this request: {error}", "server_error"))
        yield SSE_DONE
    except GeneratorExit:
        error_type = "client_disconnected"
        raise
    except BaseException as error:  # cancellation (client gone) or an engine failure mid-stream
        error_type = "client_disconnected" if isinstance(error, anyio.get_cancelled_exc_class()) else type(error).__name__
        if error_type != "client_disconnected":
            status_code = 500
        raise
    finally:
        await job.close(status_code=status_code, error_type=error_type)


# ------------------------------------------------------------------ handlers


async def _run(request: Request, job: GenerationJob, kind: str, include_usage: bool, stream: bool) -> Response:
    try:
        first = await cancel_on_disconnect(request, job.start())
    except ClientGone:
        await job.close(status_code=499, error_type="client_disconnected")
        return Response(status_code=499)
    if stream:
        chunker = _Chunker(job, kind, int(time.time()), include_usage)
        return EventStreamResponse(_event_stream(job, first, chunker), job.request_id)

    async def collect() -> str:
        parts = [first.text]
        async for output in job.deltas():
            parts.append(output.text)
        return "".join(parts)

    try:
        text = await cancel_on_disconnect(request, collect())
    except ClientGone:
        await job.close(status_code=499, error_type="client_disconnected")
        return Response(status_code=499)
    except EngineError as error:
        await job.close(status_code=500, error_type=type(error).__name__)
        raise APIError(500, f"the engine failed this request: {error}", error_type="server_error") from error
    except BaseException as error:
        await job.close(status_code=500, error_type=type(error).__name__)
        raise
    await job.close()
    finish_reason = job.finish_reason or "abort"
    usage = Usage(**_usage(job))
    body: ChatCompletionResponse | CompletionResponse
    if kind == "chat":
        message = AssistantMessage(content=text)
        choice = ChatChoice(message=message, finish_reason=finish_reason)
        body = ChatCompletionResponse(id=job.request_id, model=job.state.model_name, choices=[choice], usage=usage)
    else:
        completion_choice = CompletionChoice(text=text, finish_reason=finish_reason)
        body = CompletionResponse(id=job.request_id, model=job.state.model_name, choices=[completion_choice], usage=usage)
    return JSONResponse(body.model_dump(exclude_none=False), headers={"X-Request-Id": job.request_id})


def _refuse(state: ServingState, record: RequestRecord, error: APIError) -> APIError:
    reason = {503: "draining", 429: "queue_full"}.get(error.status_code, "invalid")
    if error.code == "context_length_exceeded":
        reason = "too_long"
    state.reject(record, error, reason)
    return error


@router.post(
    "/v1/completions",
    response_model=None,
    responses={200: {"model": CompletionResponse, "description": "JSON, or text/event-stream with stream=true"},
               **GENERATION_ERROR_RESPONSES},
)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    state = serving_state(request)
    record = _new_record(state, f"cmpl-{uuid.uuid4().hex}", "text_completion", bool(body.stream))
    try:
        _check_admissible(state, body, body.unsupported_option())
        _check_sampling_ranges(state, body)
        prompt_ids = await anyio.to_thread.run_sync(_completion_prompt_ids, state, body)
        record.prompt_length = len(prompt_ids)
        requested = body.max_tokens if body.max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
        max_tokens = _max_tokens(state, len(prompt_ids), requested, "max_tokens", "prompt")
    except APIError as error:
        raise _refuse(state, record, error) from None
    job = GenerationJob(state, record, prompt_ids, _sampling_params(body, max_tokens))
    return await _run(request, job, "completion", body.include_usage_chunk, bool(body.stream))


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses={200: {"model": ChatCompletionResponse, "description": "JSON, or text/event-stream with stream=true"},
               **GENERATION_ERROR_RESPONSES},
)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    state = serving_state(request)
    record = _new_record(state, f"chatcmpl-{uuid.uuid4().hex}", "chat", bool(body.stream))
    try:
        _check_admissible(state, body, body.unsupported_option())
        _check_sampling_ranges(state, body)
        prompt_ids = await anyio.to_thread.run_sync(_chat_prompt_ids, state, body)
        record.prompt_length = len(prompt_ids)
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        max_tokens = _max_tokens(state, len(prompt_ids), body.requested_max_tokens(), param, "messages")
    except APIError as error:
        raise _refuse(state, record, error) from None
    job = GenerationJob(state, record, prompt_ids, _sampling_params(body, max_tokens))
    return await _run(request, job, "chat", body.include_usage_chunk, bool(body.stream))


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    state = serving_state(request)
    return ModelList(data=[ModelCard(id=state.model_name, max_model_len=state.engine.max_model_len)])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses={404: {"model": ErrorResponse}})
async def retrieve_model(model_id: str, request: Request) -> ModelCard:
    state = serving_state(request)
    if model_id != state.model_name:
        raise APIError(
            404,
            f"the model {model_id!r} does not exist; this server serves {state.model_name!r}",
            error_type="not_found_error",
            param="model",
            code="model_not_found",
        )
    return ModelCard(id=state.model_name, max_model_len=state.engine.max_model_len)
