"""/v1/completions, /v1/chat/completions and /v1/models against the fake engine: shapes and semantics."""

from __future__ import annotations

import json

import httpx
from api_fake_engine import GENERATED_TEXT, FakeEngine
from api_sse import parse_sse
from dssidecar.api.app import build_app
from dssidecar.api.generation import GenerationJob
from dssidecar.api.request_telemetry import RequestRecord
from dssidecar.engine.protocol import SamplingParams
from hypothesis import given, settings
from hypothesis import strategies as st

MODEL = "fake-model"


async def test_completion_returns_text_usage_and_openai_envelope(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": "Hi there", "max_tokens": 7})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("cmpl-")
    assert response.headers["x-request-id"] == body["id"]
    assert body["object"] == "text_completion"
    assert body["model"] == MODEL
    assert isinstance(body["created"], int)
    assert body["choices"] == [{"index": 0, "text": GENERATED_TEXT[:7], "logprobs": None, "finish_reason": "length"}]
    assert body["usage"] == {"prompt_tokens": 8, "completion_tokens": 7, "total_tokens": 15}


async def test_completion_default_max_tokens_is_16(client: httpx.AsyncClient) -> None:
    body = (await client.post("/v1/completions", json={"model": MODEL, "prompt": "x"})).json()
    assert body["usage"]["completion_tokens"] == 16


async def test_completion_accepts_token_ids_and_single_item_lists(client: httpx.AsyncClient, fake_engine: FakeEngine) -> None:
    for prompt in ([120, 121, 122], [[120, 121]], ["ab"]):
        response = await client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 2})
        assert response.status_code == 200, response.text
    assert fake_engine.submitted[0][1] == [120, 121, 122]
    assert fake_engine.submitted[1][1] == [120, 121]
    assert fake_engine.submitted[2][1] == [ord("a") + 10, ord("b") + 10]


async def test_sampling_parameters_reach_the_engine(client: httpx.AsyncClient, fake_engine: FakeEngine) -> None:
    payload = {
        "model": MODEL, "prompt": "p", "max_tokens": 5, "temperature": 0.3, "top_p": 0.9, "top_k": 40,
        "seed": 1234, "stop": ["zz", "yy"], "ignore_eos": True, "user": "someone",
    }  # fmt: skip
    assert (await client.post("/v1/completions", json=payload)).status_code == 200
    params = fake_engine.submitted[-1][2]
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k, params.seed) == (5, 0.3, 0.9, 40, 1234)
    assert params.stop == ["zz", "yy"] and params.ignore_eos is True
    await client.post("/v1/completions", json={"model": MODEL, "prompt": "p", "stop": "q", "top_k": -1})
    params = fake_engine.submitted[-1][2]
    assert params.stop == ["q"] and params.top_k == 0 and params.temperature == 1.0


async def test_stop_string_trims_text_and_finishes_with_stop(client: httpx.AsyncClient) -> None:
    body = (await client.post("/v1/completions", json={"model": MODEL, "prompt": "p", "max_tokens": 30, "stop": "wor"})).json()
    assert body["choices"][0]["text"] == "hello "
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_eos_finishes_with_stop_unless_ignore_eos(fake_engine: FakeEngine, client: httpx.AsyncClient) -> None:
    fake_engine.eos_after = 3
    stopped = (await client.post("/v1/completions", json={"model": MODEL, "prompt": "p", "max_tokens": 10})).json()
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["usage"]["completion_tokens"] == 3
    ignored = (
        await client.post("/v1/completions", json={"model": MODEL, "prompt": "p", "max_tokens": 10, "ignore_eos": True})
    ).json()
    assert ignored["choices"][0]["finish_reason"] == "length"
    assert ignored["usage"]["completion_tokens"] == 10


async def test_completion_stream_is_openai_sse(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 6, "stream": True}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks, done = parse_sse(response.text)
    assert done
    assert len(chunks) == 6
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith("cmpl-")
    assert all(c["object"] == "text_completion" and c["model"] == MODEL for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == GENERATED_TEXT[:6]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 5 + ["length"]
    assert all("usage" not in c for c in chunks)


async def test_stream_usage_chunk_when_include_usage(client: httpx.AsyncClient) -> None:
    payload = {"model": MODEL, "prompt": "Hi", "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}}
    chunks, done = parse_sse((await client.post("/v1/completions", json=payload)).text)
    assert done
    *content, usage = chunks
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    assert all(c["usage"] is None for c in content)
    assert content[-1]["choices"][0]["finish_reason"] == "length"


async def test_stream_with_multi_token_deltas_and_stop(fake_engine: FakeEngine, client: httpx.AsyncClient) -> None:
    fake_engine.tokens_per_delta = 4
    payload = {"model": MODEL, "prompt": "Hi", "max_tokens": 40, "stream": True, "stop": ["this"]}
    chunks, done = parse_sse((await client.post("/v1/completions", json=payload)).text)
    assert done
    assert "".join(c["choices"][0]["text"] for c in chunks) == "hello world, "
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_chat_completion_non_stream(client: httpx.AsyncClient, fake_engine: FakeEngine) -> None:
    payload = {
        "model": MODEL,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 50,
        "max_completion_tokens": 5,
    }
    response = await client.post("/v1/chat/completions", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": GENERATED_TEXT[:5]}, "logprobs": None, "finish_reason": "length"}
    ]
    prompt_text = "<system>be brief\n<user>hi\n<assistant>"
    assert fake_engine.submitted[-1][1] == fake_engine.tokenizer.encode(prompt_text)
    assert body["usage"]["prompt_tokens"] == len(prompt_text)


async def test_chat_without_max_tokens_may_use_the_rest_of_the_context(fake_engine: FakeEngine, client: httpx.AsyncClient) -> None:
    fake_engine.eos_after = 2
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    assert (await client.post("/v1/chat/completions", json=payload)).status_code == 200
    prompt_length = len(fake_engine.submitted[-1][1])
    assert fake_engine.submitted[-1][2].max_tokens == fake_engine.max_model_len - prompt_length


async def test_chat_stream_role_first_then_content_then_finish(client: httpx.AsyncClient) -> None:
    payload = {
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    chunks, done = parse_sse((await client.post("/v1/chat/completions", json=payload)).text)
    assert done
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = chunks[1:-1]
    assert [c["choices"][0]["delta"] for c in content] == [{"content": ch} for ch in GENERATED_TEXT[:3]]
    assert [c["choices"][0]["finish_reason"] for c in content] == [None, None, "length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


async def test_models_lists_the_served_model(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL]
    assert body["data"][0]["object"] == "model" and body["data"][0]["max_model_len"] == 512


async def test_retrieve_one_model_and_version(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"/v1/models/{MODEL}")).json()["id"] == MODEL
    missing = await client.get("/v1/models/other")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert (await client.get("/version")).json()["version"]


@settings(max_examples=200, deadline=None)
@given(text=st.text(), kind=st.sampled_from(["chat", "completion"]), include_usage=st.booleans())
def test_prerendered_content_chunks_equal_a_full_json_dump(text: str, kind: str, include_usage: bool) -> None:
    from dssidecar.api.openai_routes import _Chunker, sse_event

    state = build_app(FakeEngine(model_name='we"ird\\model')).state.serving
    job = GenerationJob(state, RequestRecord("cmpl-1", state.model_name, "chat", True, 0), [1], SamplingParams())
    chunker = _Chunker(job, kind, 1700000000, include_usage)
    assert chunker.content_event(text) == sse_event(chunker.content(text, None))
    assert json.loads(chunker.content_event(text)[len(b"data: ") : -2])["model"] == 'we"ird\\model'
