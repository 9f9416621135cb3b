"""One streaming request to an OpenAI-compatible server, timed the way vLLM bench times it.

Why streaming: TTFT and the inter-token gaps only exist when the text arrives in pieces. TTFT is the time
from sending to the first chunk that carries text; ITL is every gap between text chunks after that; the
end-to-end latency runs until the stream ends. Token counts come from the server's usage chunk
(`stream_options.include_usage`, which dssidecar and vLLM both send); without one, each text chunk counts
as one token. `ignore_eos` asks for exactly max_tokens so a workload's output length is what it says.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from dsagent.loadgen.metrics import RequestResult
from dsagent.loadgen.workload import Endpoint, RequestSpec


class EngineUnreachable(RuntimeError):
    """The server did not answer at all (connection refused, DNS, timeout before any byte)."""


def request_body(spec: RequestSpec, model: str, endpoint: Endpoint, ignore_eos: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model, "max_tokens": spec.max_tokens, "stream": True, "temperature": 0.0,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        body["ignore_eos"] = True
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": spec.prompt}]
    else:
        body["prompt"] = spec.prompt
    return body


def endpoint_path(endpoint: Endpoint) -> str:
    return "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"


def _chunk_text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if "delta" in choice:
        return str((choice.get("delta") or {}).get("content") or "")
    return str(choice.get("text") or "")


async def send_streaming(client: httpx.AsyncClient, base_url: str, model: str, spec: RequestSpec, index: int,
                         endpoint: Endpoint, clock_origin: float, ignore_eos: bool = True) -> RequestResult:
    """Send `spec`, read the SSE stream to the end, and return its timings (never raises for HTTP errors)."""
    result = RequestResult(index=index, success=False)
    started = time.perf_counter()
    result.start_seconds = started - clock_origin
    last_text_at: float | None = None
    text_chunks = 0
    usage: dict[str, Any] | None = None
    try:
        async with client.stream("POST", base_url + endpoint_path(endpoint),
                                 json=request_body(spec, model, endpoint, ignore_eos)) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")[:300]
                result.error = f"HTTP {response.status_code}: {body}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                try:
                    chunk = json.loads(payload)
                except json.JSONDecodeError:
                    result.error = f"unreadable stream chunk {payload[:80]!r}"
                    return result
                if "error" in chunk and not chunk.get("choices"):
                    result.error = str(chunk["error"].get("message") if isinstance(chunk["error"], dict)
                                       else chunk["error"])
                    return result
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if _chunk_text(chunk):
                    now = time.perf_counter()
                    if last_text_at is None:
                        result.ttft_seconds = now - started
                    else:
                        result.itl_seconds.append(now - last_text_at)
                    last_text_at = now
                    text_chunks += 1
    except httpx.ConnectError as exc:
        raise EngineUnreachable(f"cannot connect to {base_url}: {exc}") from exc
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    ended = time.perf_counter()
    result.end_seconds = ended - clock_origin
    result.latency_seconds = ended - started
    if usage is not None:
        result.output_tokens = int(usage.get("completion_tokens") or 0)
        result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    else:
        result.output_tokens = text_chunks
        result.prompt_tokens = spec.prompt_words
    if text_chunks == 0 and result.output_tokens > 0:
        result.ttft_seconds = result.latency_seconds  # all text in the final chunk
    result.success = True
    return result


async def served_model(client: httpx.AsyncClient, base_url: str) -> str:
    """The first model the server lists at /v1/models (what requests must name)."""
    try:
        response = await client.get(base_url + "/v1/models")
    except httpx.HTTPError as exc:
        raise EngineUnreachable(f"no OpenAI-compatible server at {base_url} ({type(exc).__name__}: {exc})") from exc
    if response.status_code != 200:
        raise EngineUnreachable(f"{base_url}/v1/models answered HTTP {response.status_code}")
    try:
        return str(response.json()["data"][0]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise EngineUnreachable(f"{base_url}/v1/models did not list a model") from None
