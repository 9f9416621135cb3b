"""A real `dssidecar serve` process with /control enabled, plus a streaming load generator."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sidecar_process import SidecarProcess

TOKEN = "knob-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class KnobServer(SidecarProcess):
    """The shared SidecarProcess on the CPU with a /control token, plus /control helpers."""

    def __init__(self, model_dir: Path, port: int, log_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(model_dir, port, log_dir, "--device", "cpu", *args,
                         env={"DSSIDECAR_CONTROL_TOKEN": TOKEN, **(env or {})})

    def model_name(self) -> str:
        return str(httpx.get(f"{self.base_url}/v1/models", timeout=10).json()["data"][0]["id"])

    def knobs(self) -> dict[str, Any]:
        response = httpx.get(f"{self.base_url}/control/knobs", headers=AUTH, timeout=30)
        response.raise_for_status()
        return dict(response.json())

    async def put_knobs(self, update: dict[str, Any], timeout_seconds: float = 300.0) -> httpx.Response:
        async with httpx.AsyncClient(timeout=timeout_seconds) as client:
            return await client.put(f"{self.base_url}/control/knobs", headers=AUTH, json=update)

    def metrics_text(self) -> str:
        return httpx.get(f"{self.base_url}/metrics", timeout=10).text


@dataclass
class StreamResult:
    ok: bool
    tokens: int = 0
    finish_reason: str | None = None
    error: str = ""


@dataclass
class LoadReport:
    results: list[StreamResult] = field(default_factory=list)

    @property
    def failed(self) -> list[StreamResult]:
        return [r for r in self.results if not r.ok]


async def stream_completion(client: httpx.AsyncClient, base_url: str, model: str, prompt: str, max_tokens: int) -> StreamResult:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    result = StreamResult(ok=False)
    try:
        async with client.stream("POST", f"{base_url}/v1/completions", json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("error"):
                    result.error = str(chunk["error"])
                    return result
                for choice in chunk.get("choices", []):
                    if choice.get("finish_reason"):
                        result.finish_reason = choice["finish_reason"]
                usage = chunk.get("usage")
                if usage:
                    result.tokens = int(usage["completion_tokens"])
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.ok = result.finish_reason == "length" and result.tokens == max_tokens
    if not result.ok and not result.error:
        result.error = f"finish_reason={result.finish_reason} tokens={result.tokens} (expected length/{max_tokens})"
    return result


async def run_streams(base_url: str, model: str, num_streams: int, max_tokens: int, rounds: int = 1) -> LoadReport:
    """`num_streams` concurrent clients, each sending `rounds` streaming requests one after another."""
    report = LoadReport()
    async with httpx.AsyncClient(timeout=300) as client:
        async def worker(index: int) -> None:
            for round_index in range(rounds):
                prompt = f"def function_{index}_{round_index}(x):\n    return x * {index} + " + "y " * (5 + index % 7)
                report.results.append(await stream_completion(client, base_url, model, prompt, max_tokens))

        await asyncio.gather(*(worker(i) for i in range(num_streams)))
    return report


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
