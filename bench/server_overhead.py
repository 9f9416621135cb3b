"""What the HTTP layer costs: the same 32 concurrent requests on the engine in-process and through
`dssidecar serve` over HTTP (streaming SSE), alternated so machine noise hits both alike.

Prints one table (output tokens/s, p50/p99 latency and TTFT) and the ratio HTTP / in-process; with
`--json FILE` writes {"figures": {...}, "env": {...}}. Defaults: tiny demo model, 32 requests, prompts of
16-128 characters, 64 new tokens each (ignore_eos), 3 alternating rounds; `--full` doubles the tokens and
runs 5 rounds.

    .venv/bin/python bench/server_overhead.py [--model DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sidecar"))

from common import LatencySummary, add_common_arguments, environment, print_table, write_json  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Timing:
    latency_seconds: float
    ttft_seconds: float
    tokens: int


@dataclass
class Round:
    wall_seconds: float
    timings: list[Timing]

    @property
    def tokens_per_second(self) -> float:
        return sum(t.tokens for t in self.timings) / self.wall_seconds


def make_prompts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = "the quick brown fox jumps over a lazy dog while servers batch tokens".split()
    prompts = []
    for _ in range(count):
        length = rng.randint(16, 128)
        text = ""
        while len(text) < length:
            text += rng.choice(words) + " "
        prompts.append(text[:length])
    return prompts


# ------------------------------------------------------------------ in-process engine


async def engine_round(engine, prompts: list[str], max_tokens: int) -> Round:  # type: ignore[no-untyped-def]
    from dssidecar.engine.protocol import SamplingParams

    async def one(index: int, prompt: str) -> Timing:
        start = time.monotonic()
        first = None
        tokens = 0
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        async for output in engine.generate(f"bench-{index}-{start}", engine.tokenizer.encode(prompt), params):
            if first is None and output.token_ids:
                first = time.monotonic()
            tokens += len(output.token_ids)
        end = time.monotonic()
        return Timing(end - start, (first or end) - start, tokens)

    start = time.monotonic()
    timings = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    return Round(time.monotonic() - start, list(timings))


# ------------------------------------------------------------------ HTTP server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, model_dir: Path, kv_cache_blocks: int) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="dssidecar-overhead-", suffix=".log", delete=False)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "sidecar"), os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dssidecar.cli", "serve", "--model", str(model_dir), "--port", str(self.port),
             "--served-model-name", "bench", "--kv-cache-blocks", str(kv_cache_blocks)],
            stdout=subprocess.DEVNULL, stderr=self.log, env=env,
        )  # fmt: skip

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dssidecar serve exited {self.process.returncode}; log {self.log.name}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"not ready in 300 s; log {self.log.name}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def http_round(base_url: str, prompts: list[str], max_tokens: int) -> Round:
    import httpx

    async def one(client: httpx.AsyncClient, prompt: str) -> Timing:
        payload = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                   "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
        start = time.monotonic()
        first = None
        tokens = 0
        async with client.stream("POST", "/v1/completions", json=payload) as response:
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk["choices"] and first is None:
                    first = time.monotonic()
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        end = time.monotonic()
        return Timing(end - start, (first or end) - start, tokens)

    limits = httpx.Limits(max_connections=len(prompts) + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:
        start = time.monotonic()
        timings = await asyncio.gather(*(one(client, p) for p in prompts))
        return Round(time.monotonic() - start, list(timings))


# ------------------------------------------------------------------ main


def summarize(rounds: list[Round]) -> dict[str, float]:
    best = sorted(rounds, key=lambda r: r.tokens_per_second)[len(rounds) // 2]  # the median round
    latency = LatencySummary.of([t.latency_seconds for t in best.timings])
    ttft = LatencySummary.of([t.ttft_seconds for t in best.timings])
    return {
        "tokens_per_second": statistics.median(r.tokens_per_second for r in rounds),
        "tokens_per_second_min": min(r.tokens_per_second for r in rounds),
        "tokens_per_second_max": max(r.tokens_per_second for r in rounds),
        "latency_p50_seconds": latency.p50_seconds,
        "latency_p99_seconds": latency.p99_seconds,
        "ttft_p50_seconds": ttft.p50_seconds,
        "ttft_p99_seconds": ttft.p99_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="checkpoint dir (default: tiny demo model in .cache)")
    parser.add_argument("--requests", type=int, default=32)
    add_common_arguments(parser)
    args = parser.parse_args()
    max_tokens = 128 if args.full else 64
    rounds_count = 5 if args.full else 3
    kv_blocks = 1024

    model_dir = args.model
    if model_dir is None:
        from dssidecar.demo_model import write_demo_model

        model_dir = REPO_ROOT / ".cache" / "test-models" / "qwen2-tiny-seed0-steps0"
        if not (model_dir / "manifest.json").exists():
            write_demo_model(model_dir, size="tiny", seed=0, arch="qwen2", train_steps=0)
    prompts = make_prompts(args.requests)

    from dssidecar.engine.async_engine import AsyncLLMEngine
    from dssidecar.engine.config import EngineConfig

    engine = AsyncLLMEngine.from_model_path(model_dir, EngineConfig(kv_cache_blocks=kv_blocks))
    server = Server(model_dir, kv_blocks)
    engine_rounds: list[Round] = []
    http_rounds: list[Round] = []
    try:
        server.wait_ready()

        async def run_engine_rounds(count: int) -> list[Round]:
            await engine.start()
            return [await engine_round(engine, prompts, max_tokens) for _ in range(count)]

        # warm both once, then alternate engine / HTTP rounds
        loop = asyncio.new_event_loop()
        loop.run_until_complete(run_engine_rounds(1))
        asyncio.run(http_round(server.base_url, prompts[:4], 8))
        for _ in range(rounds_count):
            engine_rounds.extend(loop.run_until_complete(run_engine_rounds(1)))
            http_rounds.append(asyncio.run(http_round(server.base_url, prompts, max_tokens)))
        loop.run_until_complete(engine.shutdown(5.0))
        loop.close()
    finally:
        server.stop()

    in_process = summarize(engine_rounds)
    over_http = summarize(http_rounds)
    ratio = over_http["tokens_per_second"] / in_process["tokens_per_second"]
    rows = [
        ("engine in-process (AsyncLLMEngine)", in_process["tokens_per_second"], in_process["latency_p50_seconds"],
         in_process["latency_p99_seconds"], in_process["ttft_p50_seconds"], in_process["ttft_p99_seconds"]),
        ("dssidecar serve over HTTP (SSE)", over_http["tokens_per_second"], over_http["latency_p50_seconds"],
         over_http["latency_p99_seconds"], over_http["ttft_p50_seconds"], over_http["ttft_p99_seconds"]),
    ]  # fmt: skip
    print_table(
        f"HTTP overhead: {args.requests} concurrent requests x {max_tokens} tokens, {model_dir.name}, "
        f"median of {rounds_count} alternating rounds",
        ["way", "output tok/s", "p50 latency s", "p99 latency s", "p50 TTFT s", "p99 TTFT s"],
        rows,
        caption=f"HTTP / in-process throughput: {ratio:.2f}x  (tok/s range in-process "
        f"{in_process['tokens_per_second_min']:.0f}-{in_process['tokens_per_second_max']:.0f}, HTTP "
        f"{over_http['tokens_per_second_min']:.0f}-{over_http['tokens_per_second_max']:.0f})",
    )
    if args.json is not None:
        figures = {f"in_process_{k}": v for k, v in in_process.items()}
        figures.update({f"http_{k}": v for k, v in over_http.items()})
        figures["http_over_in_process_throughput_ratio"] = ratio
        write_json(args.json, figures, environment())


if __name__ == "__main__":
    main()
