"""Bad input and refusals answer with OpenAI's error body and the right status."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from api_fake_engine import FakeEngine
from dssidecar.api.app import begin_draining
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MODEL = "fake-model"


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


async def test_malformed_json_is_400_with_openai_body(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/completions", content=b'{"model": "fake-model", "prompt": ', headers={"content-type": "application/json"}
    )
    error = assert_openai_error(response, 400, code="invalid_json")
    assert "JSON" in error["message"]


@pytest.mark.parametrize(
    ("path", "payload", "param"),
    [
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": "many"}, "max_tokens"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": "hot"}, "temperature"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "top_p": 0}, "top_p"),
        ("/v1/completions", {"model": MODEL}, "prompt"),
        ("/v1/completions", {"prompt": "x"}, "model"),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, "messages"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -1}, "max_completion_tokens"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
async def test_wrong_types_and_ranges_name_the_parameter(client: httpx.AsyncClient, path: str, payload: dict[str, Any], param: str) -> None:
    error = assert_openai_error(await client.post(path, json=payload), 400, param=param)
    assert error["type"] == "invalid_request_error"


async def test_unknown_model_is_rejected(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"})
    error = assert_openai_error(response, 400, param="model", code="model_not_found")
    assert "gpt-9" in error["message"] and MODEL in error["message"]


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("/v1/completions", {"n": 2}, "n"),
        ("/v1/completions", {"logprobs": 2}, "logprobs"),
        ("/v1/completions", {"echo": True}, "echo"),
        ("/v1/completions", {"best_of": 3}, "best_of"),
        ("/v1/completions", {"presence_penalty": 0.5}, "presence_penalty"),
        ("/v1/chat/completions", {"n": 3}, "n"),
        ("/v1/chat/completions", {"logprobs": True}, "logprobs"),
        ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
async def test_unsupported_options_are_400_not_ignored(client: httpx.AsyncClient, path: str, extra: dict[str, Any], param: str) -> None:
    base: dict[str, Any] = {"model": MODEL}
    base.update({"prompt": "x"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "x"}]})
    error = assert_openai_error(await client.post(path, json={**base, **extra}), 400, param=param, code="unsupported_parameter")
    assert param in error["message"]


async def test_defaults_of_unsupported_options_are_accepted(client: httpx.AsyncClient) -> None:
    payload = {
        "model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 1, "logprobs": False,
        "presence_penalty": 0, "frequency_penalty": 0.0, "response_format": {"type": "text"}, "max_tokens": 2,
    }  # fmt: skip
    assert (await client.post("/v1/chat/completions", json=payload)).status_code == 200


async def test_prompt_plus_max_tokens_beyond_context_is_400(client: httpx.AsyncClient, fake_engine: FakeEngine) -> None:
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x" * 500, "max_tokens": 13})
    error = assert_openai_error(response, 400, param="max_tokens", code="context_length_exceeded")
    assert "512" in error["message"] and "513" in error["message"]
    too_long = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x" * 600})
    assert_openai_error(too_long, 400, param="prompt", code="context_length_exceeded")
    assert fake_engine.submitted == []


async def test_several_prompts_and_empty_prompts_are_400(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.post("/v1/completions", json={"model": MODEL, "prompt": ["a", "b"]}), 400, param="prompt")
    assert_openai_error(await client.post("/v1/completions", json={"model": MODEL, "prompt": ""}), 400, param="prompt")
    assert_openai_error(await client.post("/v1/completions", json={"model": MODEL, "prompt": []}), 400, param="prompt")
    assert_openai_error(await client.post("/v1/completions", json={"model": MODEL, "prompt": [-5]}), 400, param="prompt")


async def test_engine_refusals_map_to_429_and_400(client: httpx.AsyncClient, fake_engine: FakeEngine) -> None:
    fake_engine.max_running = 0
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
    error = assert_openai_error(response, 429, code="queue_full")
    assert error["type"] == "rate_limit_error"
    assert response.headers["retry-after"] == "3"  # ceil(2.5)
    streamed = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "stream": True})
    assert_openai_error(streamed, 429)  # refused before any SSE byte is sent
    fake_engine.max_running = 64
    fake_engine.max_model_len = 10_000  # the server's check passes, the engine still refuses
    fake_engine_limit = fake_engine.max_model_len

    async def too_long(*args: Any, **kwargs: Any) -> Any:
        from dssidecar.engine.protocol import RequestTooLongError

        raise RequestTooLongError(f"prompt too long for {fake_engine_limit}")
        yield  # pragma: no cover

    fake_engine.generate = too_long  # type: ignore[method-assign]
    assert_openai_error(await client.post("/v1/completions", json={"model": MODEL, "prompt": "x"}), 400, code="context_length_exceeded")


async def test_draining_server_answers_503(app: FastAPI, client: httpx.AsyncClient) -> None:
    begin_draining(app)
    response = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
    assert_openai_error(response, 503, code="server_draining")
    assert response.headers["retry-after"] == "1"
    assert (await client.get("/healthz")).status_code == 200


async def test_unknown_route_has_openai_error_body(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.get("/v1/nothing"), 404)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3000) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
field_names = st.sampled_from(
    ["model", "prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "stop", "n", "stream", "seed",
     "stream_options", "logprobs", "max_completion_tokens", "ignore_eos"]
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(field_names, json_values, max_size=6), chat=st.booleans())
async def test_any_json_body_gets_200_or_an_openai_4xx_never_500(client: httpx.AsyncClient, body: dict[str, Any], chat: bool) -> None:
    path = "/v1/chat/completions" if chat else "/v1/completions"
    response = await client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    if response.status_code == 200:
        return
    assert 400 <= response.status_code < 500, response.text
    assert_openai_error(response, response.status_code)


def _failing_after(fake_engine: FakeEngine, good_deltas: int) -> None:
    """Make the fake engine fail every request with EngineStepError after `good_deltas` deltas."""
    from dssidecar.engine.protocol import EngineStepError

    original = fake_engine.generate

    async def failing(request_id: str, prompt: list[int], params: Any) -> Any:
        produced = 0
        async for output in original(request_id, prompt, params):
            if produced == good_deltas:
                raise EngineStepError("CUDA error: device-side assert (injected)")
            produced += 1
            yield output

    fake_engine.generate = failing  # type: ignore[method-assign]


async def test_engine_failure_mid_stream_sends_an_error_event_then_done(client: httpx.AsyncClient, fake_engine: FakeEngine) -> None:
    _failing_after(fake_engine, 3)
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 20, "stream": True})
    assert response.status_code == 200  # headers went out with the first token
    events = response.text.strip().split("\n\n")
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2][len("data: ") :])["error"]
    assert error["type"] == "server_error" and "injected" in error["message"]
    assert len(events) == 3 + 2


async def test_engine_failure_before_the_answer_is_a_500_openai_error(client: httpx.AsyncClient, fake_engine: FakeEngine) -> None:
    _failing_after(fake_engine, 2)
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 20})
    error = assert_openai_error(response, 500)
    assert error["type"] == "server_error" and "injected" in error["message"]
    metrics = (await client.get("/metrics")).text
    assert 'vllm:request_success_total{finished_reason="abort",model_name="fake-model"} 1.0' in metrics
