"""OTLP attribute mapping: sidecar (gen_ai.* + plain names) and vLLM attribute names -> RequestRecord."""

from __future__ import annotations

from typing import Any

import pytest
from dsagent.sources.otlp_mapping import CONSUMED_KEYS, KNOB_PREFIXES, record_from_attributes
from hypothesis import given
from hypothesis import strategies as st

SIDECAR_ATTRIBUTES: dict[str, Any] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "demo",
    "gen_ai.response.model": "demo",
    "gen_ai.response.id": "req-1",
    "gen_ai.usage.input_tokens": 12,
    "gen_ai.usage.output_tokens": 5,
    "request_id": "req-1",
    "model": "demo",
    "prompt_length": 12,
    "tokens_generated": 5,
    "stream": False,
    "http.response.status_code": 200,
    "gen_ai.response.finish_reasons": ["length"],
    "finish_reason": "length",
    "generation_time": 0.5,
    "time_to_first_token": 0.1,
    "dssidecar.knob.max_batch_size": 8,
    "dssidecar.knob.precision": "fp32",
}


def test_sidecar_attributes_become_a_full_record() -> None:
    record = record_from_attributes(SIDECAR_ATTRIBUTES, 123.0)
    assert record is not None
    assert record.request_id == "req-1" and record.model == "demo"
    assert (record.prompt_length, record.tokens_generated) == (12, 5)
    assert record.generation_time_seconds == 0.5 and record.time_to_first_token_seconds == 0.1
    assert record.time_per_output_token_seconds == pytest.approx((0.5 - 0.1) / 4)
    assert record.finish_reason == "length" and record.status_code == 200
    assert record.knobs == {"max_batch_size": 8, "precision": "fp32"}
    assert record.attributes == {"gen_ai.operation.name": "chat", "stream": False}
    assert record.timestamp_seconds == 123.0


def test_semconv_only_attributes_are_enough() -> None:
    record = record_from_attributes(
        {
            "gen_ai.response.id": "r",
            "gen_ai.request.model": "m",
            "gen_ai.usage.input_tokens": 3,
            "gen_ai.usage.output_tokens": 1,
            "gen_ai.response.finish_reasons": ["stop"],
        },
        0.0,
    )
    assert record is not None
    assert (record.request_id, record.model, record.prompt_length, record.tokens_generated, record.finish_reason) == (
        "r",
        "m",
        3,
        1,
        "stop",
    )
    assert record.time_per_output_token_seconds is None  # one token: no inter-token time


def test_vllm_span_attributes_map() -> None:
    record = record_from_attributes(
        {
            "gen_ai.request.id": "cmpl-9",
            "gen_ai.response.model": "llama",
            "gen_ai.usage.prompt_tokens": 100,
            "gen_ai.usage.completion_tokens": 21,
            "gen_ai.latency.time_to_first_token": 0.2,
            "gen_ai.latency.e2e": 1.2,
        },
        0.0,
    )
    assert record is not None
    assert record.prompt_length == 100 and record.tokens_generated == 21
    assert record.time_per_output_token_seconds == pytest.approx(0.05)


def test_span_duration_fills_a_missing_generation_time() -> None:
    record = record_from_attributes({"request_id": "x"}, 0.0, duration_seconds=2.5)
    assert record is not None and record.generation_time_seconds == 2.5
    record = record_from_attributes({"request_id": "x", "generation_time": 1.0}, 0.0, duration_seconds=2.5)
    assert record is not None and record.generation_time_seconds == 1.0


def test_a_log_line_without_request_id_is_not_a_request() -> None:
    assert record_from_attributes({"model": "m", "prompt_length": 3}, 0.0) is None
    assert record_from_attributes({"request_id": ""}, 0.0) is None


@pytest.mark.parametrize("bad", ["many", None, float("nan"), -3, True, float("inf")])
def test_unparsable_numbers_are_left_empty_not_zero(bad: Any) -> None:
    record = record_from_attributes(
        {"request_id": "x", "prompt_length": bad, "generation_time": bad, "http.response.status_code": bad}, 0.0
    )
    assert record is not None
    assert record.prompt_length is None and record.generation_time_seconds is None and record.status_code is None


_attribute_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.text(max_size=5), max_size=3),
)
_attribute_keys = st.one_of(
    st.sampled_from(sorted(SIDECAR_ATTRIBUTES) + ["gen_ai.latency.e2e", "gen_ai.request.id", "knob.x"]),
    st.text(max_size=20),
)


@given(st.dictionaries(_attribute_keys, _attribute_values, max_size=12), st.floats(0, 2e9))
def test_mapping_never_raises_and_respects_invariants(attributes: dict[str, Any], timestamp: float) -> None:
    record = record_from_attributes(attributes, timestamp)
    if record is None:
        return
    assert record.request_id
    for count in (record.prompt_length, record.tokens_generated):
        assert count is None or (isinstance(count, int) and count >= 0)
    for seconds in (
        record.generation_time_seconds,
        record.time_to_first_token_seconds,
        record.time_per_output_token_seconds,
    ):
        assert seconds is None or (seconds >= 0 and seconds != float("inf"))
    assert record.status_code is None or 100 <= record.status_code <= 599
    # nothing is lost: every attribute is a mapped field, a knob, or kept in attributes
    for key in attributes:
        if key.startswith(KNOB_PREFIXES):
            assert any(key == prefix + knob for prefix in KNOB_PREFIXES for knob in record.knobs)
        else:
            assert key in CONSUMED_KEYS or record.attributes[key] is attributes[key]


@given(
    st.text(min_size=1, max_size=30),
    st.integers(0, 100_000),
    st.integers(0, 100_000),
    st.floats(0, 1e4),
)
def test_plain_and_semconv_names_give_the_same_record(request_id: str, prompt: int, output: int, ttft: float) -> None:
    plain = record_from_attributes(
        {"request_id": request_id, "prompt_length": prompt, "tokens_generated": output, "time_to_first_token": ttft}, 1.0
    )
    semconv = record_from_attributes(
        {
            "gen_ai.response.id": request_id,
            "gen_ai.usage.input_tokens": prompt,
            "gen_ai.usage.output_tokens": output,
            "gen_ai.server.time_to_first_token": ttft,
        },
        1.0,
    )
    assert plain is not None and semconv is not None
    assert (plain.request_id, plain.prompt_length, plain.tokens_generated, plain.time_to_first_token_seconds) == (
        semconv.request_id,
        semconv.prompt_length,
        semconv.tokens_generated,
        semconv.time_to_first_token_seconds,
    )
