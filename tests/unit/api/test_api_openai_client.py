"""The official `openai` client works unchanged against the app (async client over ASGI here; the sync
client is exercised against the real server process in tests/integration/server)."""

from __future__ import annotations

import httpx
import openai
import pytest
from api_fake_engine import GENERATED_TEXT

MODEL = "fake-model"


@pytest.fixture()
def sdk(client: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://sidecar.test/v1", api_key="unused", http_client=client, max_retries=0)


async def test_openai_client_completions(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.completions.create(model=MODEL, prompt="Hello", max_tokens=5)
    assert completion.choices[0].text == GENERATED_TEXT[:5]
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    stream = await sdk.completions.create(model=MODEL, prompt="Hello", max_tokens=5, stream=True)
    texts = [chunk.choices[0].text async for chunk in stream]
    assert "".join(texts) == GENERATED_TEXT[:5]


async def test_openai_client_chat(sdk: openai.AsyncOpenAI) -> None:
    chat = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=4, seed=1, temperature=0
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == GENERATED_TEXT[:4]
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == GENERATED_TEXT[:4]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 4


async def test_openai_client_raises_typed_errors(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.completions.create(model="nope", prompt="x")
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    models = await sdk.models.list()
    assert [m.id for m in models.data] == [MODEL]
