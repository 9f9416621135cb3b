"""The OpenAI wire format as pydantic models: the request bodies we accept and the responses we send.

They are the documentation of what the server understands (FastAPI shows them at /docs) and the first
line of validation: a wrong type is rejected here with the field's name before the engine sees it.
Unknown fields are ignored (clients send newer options), but options we cannot honour are rejected
explicitly by `unsupported_option()` instead of being silently dropped.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool | None = False


INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class SamplingFields(BaseModel):
    """Fields both endpoints share.

    Every number is range-checked here (as vLLM does), so nothing out of range reaches the engine's
    tensors: NaN and infinities are refused for every float (`allow_inf_nan=False`), a seed must fit a
    signed 64-bit integer, top_k must be -1, 0 or positive (its upper bound, the vocabulary, is checked
    by the route, which knows the model).
    """

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(
        None, ge=-1, description="Extension: keep the k most likely tokens (at most the vocabulary); 0 or -1 disables."
    )
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX, description="Reproducible sampling; a signed 64-bit integer.")
    stop: str | list[str] | None = None
    n: int | None = Field(1, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool | None = Field(False, description="Extension: keep generating past the end-of-sequence token.")
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError(f"stop holds {len(value)} strings; at most 4 are allowed")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        strings = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return [s for s in strings if s]

    def common_unsupported(self) -> tuple[str, str] | None:
        """(param, message) for an option we cannot honour, else None."""
        if self.n not in (None, 1):
            return "n", f"n={self.n} is not supported; this server returns exactly one choice (n=1)"
        if self.presence_penalty:
            return "presence_penalty", "presence_penalty is not supported; send 0 or leave it out"
        if self.frequency_penalty:
            return "frequency_penalty", "frequency_penalty is not supported; send 0 or leave it out"
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported; leave it out"
        return None

    @property
    def include_usage_chunk(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    echo: bool | None = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def unsupported_option(self) -> tuple[str, str] | None:
        common = self.common_unsupported()
        if common is not None:
            return common
        if self.logprobs is not None:
            return "logprobs", "logprobs are not supported by this server; leave logprobs out"
        if self.echo:
            return "echo", "echo is not supported; send echo=false"
        if self.best_of not in (None, 1):
            return "best_of", f"best_of={self.best_of} is not supported; only 1"
        if self.suffix:
            return "suffix", "suffix is not supported; leave it out"
        return None


class TextContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text; content parts other than text are rejected earlier."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)

    def non_text_part(self) -> str | None:
        if isinstance(self.content, list):
            for part in self.content:
                if part.type != "text":
                    return part.type
        return None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: ResponseFormat | None = None

    def unsupported_option(self) -> tuple[str, str] | None:
        common = self.common_unsupported()
        if common is not None:
            return common
        if self.logprobs or self.top_logprobs:
            return "logprobs", "logprobs are not supported by this server; send logprobs=false"
        if self.tools:
            return "tools", "tool calling is not supported by this server; leave tools out"
        if self.response_format is not None and self.response_format.type != "text":
            return "response_format", f"response_format {self.response_format.type!r} is not supported; only 'text'"
        for index, message in enumerate(self.messages):
            part_type = message.non_text_part()
            if part_type is not None:
                return f"messages[{index}].content", f"content part type {part_type!r} is not supported; only 'text'"
        return None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# ---------------------------------------------------------------- responses


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error this server answers, in OpenAI's shape."""

    error: ErrorDetail


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Invalid request: the message names the parameter",
        413: "Request body larger than max_request_body_bytes",
        429: "The engine's waiting queue is full (Retry-After)",
        500: "The engine failed this request",
        503: "Draining or the engine is not running (Retry-After)",
    }
    return {status: {"model": ErrorResponse, "description": descriptions[status]} for status in statuses}


GENERATION_ERROR_RESPONSES = _error_responses(400, 413, 429, 500, 503)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def unix_now() -> int:
    return int(time.time())


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=unix_now)
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=unix_now)
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=unix_now)
    owned_by: str = "dssidecar"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
