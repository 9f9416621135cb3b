"""OTLP log records and spans -> RequestRecord: the attribute names the engines use, in one table.

The builtin sidecar sends gen_ai.* semantic-convention names plus plain ones (request_id, prompt_length,
tokens_generated, generation_time, time_to_first_token, finish_reason, model, dssidecar.knob.<name>);
vLLM's traces use gen_ai.request.id, gen_ai.usage.prompt_tokens/completion_tokens and gen_ai.latency.*.
For each RequestRecord field the first attribute present in its list wins. A record without a request id
is not a request (it is some other log line) and maps to None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from dsagent.samples import RequestRecord

REQUEST_ID_KEYS = ("request_id", "gen_ai.response.id", "gen_ai.request.id")
MODEL_KEYS = ("model", "gen_ai.response.model", "gen_ai.request.model")
PROMPT_LENGTH_KEYS = ("prompt_length", "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
TOKENS_GENERATED_KEYS = ("tokens_generated", "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
GENERATION_TIME_KEYS = ("generation_time", "gen_ai.server.request.duration", "gen_ai.latency.e2e")
TIME_TO_FIRST_TOKEN_KEYS = (
    "time_to_first_token",
    "gen_ai.server.time_to_first_token",
    "gen_ai.latency.time_to_first_token",
)
TIME_PER_OUTPUT_TOKEN_KEYS = ("time_per_output_token", "gen_ai.server.time_per_output_token")
FINISH_REASON_KEYS = ("finish_reason", "gen_ai.response.finish_reasons")
STATUS_CODE_KEYS = ("http.response.status_code", "status_code", "http.status_code")
KNOB_PREFIXES = ("dssidecar.knob.", "knob.")

CONSUMED_KEYS = frozenset(
    REQUEST_ID_KEYS
    + MODEL_KEYS
    + PROMPT_LENGTH_KEYS
    + TOKENS_GENERATED_KEYS
    + GENERATION_TIME_KEYS
    + TIME_TO_FIRST_TOKEN_KEYS
    + TIME_PER_OUTPUT_TOKEN_KEYS
    + FINISH_REASON_KEYS
    + STATUS_CODE_KEYS
)


def _first(attributes: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = attributes.get(key)
        if value is not None and value != "" and value != []:
            return value
    return None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return int(number)


def _as_seconds(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _as_text(value: Any) -> str | None:
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if value is None:
        return None
    return str(value)


def record_from_attributes(
    attributes: Mapping[str, Any],
    timestamp_seconds: float,
    duration_seconds: float | None = None,
) -> RequestRecord | None:
    """A RequestRecord from one log record's (or span's) attributes, or None when it names no request.

    duration_seconds: the span's length, used when no generation-time attribute is present.
    Unparsable numbers are left None (never 0); every attribute not mapped to a field is kept in
    `attributes`, and dssidecar.knob.<name> attributes become `knobs`.
    """
    request_id = _as_text(_first(attributes, REQUEST_ID_KEYS))
    if not request_id:
        return None
    tokens_generated = _as_int(_first(attributes, TOKENS_GENERATED_KEYS))
    generation_time = _as_seconds(_first(attributes, GENERATION_TIME_KEYS))
    if generation_time is None:
        generation_time = _as_seconds(duration_seconds)
    time_to_first_token = _as_seconds(_first(attributes, TIME_TO_FIRST_TOKEN_KEYS))
    time_per_output_token = _as_seconds(_first(attributes, TIME_PER_OUTPUT_TOKEN_KEYS))
    if (
        time_per_output_token is None
        and generation_time is not None
        and time_to_first_token is not None
        and tokens_generated is not None
        and tokens_generated > 1
        and generation_time >= time_to_first_token
    ):
        time_per_output_token = (generation_time - time_to_first_token) / (tokens_generated - 1)

    knobs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in attributes.items():
        prefix = next((p for p in KNOB_PREFIXES if key.startswith(p)), None)
        if prefix is not None:
            knobs[key[len(prefix) :]] = value
        elif key not in CONSUMED_KEYS:
            extra[key] = value

    status = _as_int(_first(attributes, STATUS_CODE_KEYS))
    return RequestRecord(
        request_id=request_id,
        timestamp_seconds=timestamp_seconds,
        model=_as_text(_first(attributes, MODEL_KEYS)) or "",
        prompt_length=_as_int(_first(attributes, PROMPT_LENGTH_KEYS)),
        tokens_generated=tokens_generated,
        generation_time_seconds=generation_time,
        time_to_first_token_seconds=time_to_first_token,
        time_per_output_token_seconds=time_per_output_token,
        finish_reason=_as_text(_first(attributes, FINISH_REASON_KEYS)),
        status_code=status if status is not None and 100 <= status <= 599 else None,
        knobs=knobs,
        attributes=extra,
    )
