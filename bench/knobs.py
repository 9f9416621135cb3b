"""Benchmark the runtime knobs: speed of each precision/backend, cost of each live swap, failures (must be 0).

For each precision and backend this host supports, on one engine that keeps serving throughout:
1. switch to it the way PUT /control/knobs does (KnobController.apply -> new runner built and warmed
   beside the old one, switched between steps) while 16 streams are generating: the swap's seconds and
   the requests that failed during it (must be 0);
2. measure output tokens/s and p50/p99 request latency at 32 concurrent requests (fixed workload).

It drives the engine in-process (AsyncLLMEngine + the same KnobController the server mounts), so the
figures compare knob settings, not HTTP; tests/integration/knobs covers the same swaps over HTTP.

    python bench/knobs.py [--size tiny|small] [--device auto|cpu|cuda] [--full] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sidecar"))

from common import (  # noqa: E402
    REPO_ROOT,
    LatencySummary,
    add_common_arguments,
    environment,
    print_table,
    write_json,
)


def log(message: str) -> None:
    print(f"[knobs {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class LoadResult:
    wall_seconds: float
    latencies_seconds: list[float] = field(default_factory=list)
    output_tokens: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0


def ensure_model(size: str, train_steps: int) -> Path:
    from dssidecar.demo_model import write_demo_model

    target = REPO_ROOT / ".cache" / "bench-models" / f"qwen2-{size}-seed0-steps{train_steps}"
    if not (target / "manifest.json").exists():
        log(f"writing demo model {target.name}")
        write_demo_model(target, size=size, seed=0, arch="qwen2", train_steps=train_steps)
    return target


def make_workload(vocab_size: int, count: int, seed: int, prompt_range: tuple[int, int],
                  output_range: tuple[int, int]) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    workload = []
    for _ in range(count):
        prompt_len = rng.randint(*prompt_range)
        workload.append(([rng.randrange(3, vocab_size) for _ in range(prompt_len)], rng.randint(*output_range)))
    return workload


async def run_load(engine: Any, workload: list[tuple[list[int], int]], concurrency: int, tag: str) -> LoadResult:
    from dssidecar.engine.protocol import SamplingParams

    queue = list(enumerate(workload))
    result = LoadResult(wall_seconds=0.0)

    async def one(index: int, prompt: list[int], max_tokens: int) -> None:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        started = time.perf_counter()
        tokens = 0
        last = None
        try:
            async for output in engine.generate(f"{tag}-{index}", prompt, params):
                tokens += len(output.token_ids)
                last = output
        except Exception as exc:  # a failed request is a finding, not a crash of the benchmark
            result.failures.append(f"{tag}-{index}: {type(exc).__name__}: {exc}")
            return
        if last is None or last.error or last.finish_reason != "length" or tokens != max_tokens:
            reason = None if last is None else (last.error or last.finish_reason)
            result.failures.append(f"{tag}-{index}: {reason}, {tokens}/{max_tokens} tokens")
        result.latencies_seconds.append(time.perf_counter() - started)
        result.output_tokens += tokens

    async def worker() -> None:
        while queue:
            index, (prompt, max_tokens) = queue.pop(0)
            await one(index, prompt, max_tokens)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall_seconds = time.perf_counter() - started
    return result


async def swap_under_load(engine: Any, controller: Any, update: dict[str, Any],
                          workload: list[tuple[list[int], int]], tag: str) -> tuple[dict[str, Any] | str, LoadResult]:
    """Apply `update` while 16 streams generate; returns (answer or refusal reason, the load's result)."""
    from dssidecar.knobs import KnobError

    load = asyncio.create_task(run_load(engine, workload, 16, tag))
    await asyncio.sleep(0.2)
    try:
        answer: dict[str, Any] | str = await asyncio.to_thread(controller.apply, update)
    except KnobError as exc:
        answer = exc.message
    return answer, await load


async def bench(args: argparse.Namespace) -> tuple[dict[str, float | int | None], list[list[Any]], list[list[Any]]]:
    import torch
    from dssidecar.backends.registry import supported_backends
    from dssidecar.engine.async_engine import AsyncLLMEngine
    from dssidecar.engine.config import EngineConfig
    from dssidecar.knobs import KnobController
    from dssidecar.knobs.engine_target import EngineKnobTarget
    from dssidecar.precision import supported_precisions

    model_dir = Path(args.model) if args.model else ensure_model(args.size, args.train_steps)
    config = EngineConfig(device=args.device, max_batch_size=32, kv_cache_blocks=args.kv_cache_blocks)
    engine = AsyncLLMEngine.from_model_path(model_dir, config)
    await engine.start()
    device = engine.engine.runner.device
    target = EngineKnobTarget(engine, model_path=model_dir)
    controller = KnobController(target)
    vocab = int(engine.engine.model_config.vocab_size)
    workload = make_workload(vocab, 32, seed=1, prompt_range=(16, 128), output_range=(32, 96))
    swap_workload = make_workload(vocab, 32, seed=2, prompt_range=(16, 64), output_range=(24, 48))
    log(f"model {model_dir.name} on {device}; precisions {supported_precisions(device)}")

    precisions = [p for p, reason in supported_precisions(device).items() if reason is None]
    backends = [b for b, reason in supported_backends(device).items() if reason is None]
    if args.backends:
        backends = [b for b in backends if b in args.backends.split(",")]
    compile_precisions = args.compile_precisions.split(",") if args.compile_precisions else None
    plan: list[tuple[str, str]] = [(p, "eager") for p in precisions]
    for backend in backends:
        if backend == "eager":
            continue
        chosen = compile_precisions or (precisions if args.full else ["fp32"] + (["bf16"] if device.type == "cuda" else []))
        plan.extend((p, backend) for p in chosen)
    plan.append(("fp32", "eager"))  # and back

    figures: dict[str, float | int | None] = {}
    speed_rows: list[list[Any]] = []
    swap_rows: list[list[Any]] = []
    current = ("fp32", "eager")
    for index, (precision, backend) in enumerate(plan):
        name = f"{precision}/{backend}"
        if (precision, backend) != current:
            log(f"swap {current[0]}/{current[1]} -> {name} under 16 streams")
            answer, load = await swap_under_load(
                engine, controller, {"precision": precision, "backend": backend}, swap_workload, f"swap{index}"
            )
            if isinstance(answer, str):
                log(f"  refused: {answer}")
                swap_rows.append([name, "refused", None, len(load.failures), answer[:60]])
                continue
            key = f"swap_to_{precision}_{backend}".replace(".", "_")
            figures[f"{key}_seconds"] = answer["apply_seconds"]
            figures[f"{key}_failed_requests"] = len(load.failures)
            swap_rows.append([name, "applied", answer["apply_seconds"], len(load.failures),
                              f"warm-up {target.last_warmup_seconds or 0:.2f} s"])
            log(f"  swap took {answer['apply_seconds']:.2f} s (warm-up {target.last_warmup_seconds or 0:.2f} s), "
                f"{len(load.failures)} failed requests during it")
            for failure in load.failures[:5]:
                log(f"  FAILED during swap: {failure}")
            current = (precision, backend)
        if index == len(plan) - 1 and speed_rows:
            break  # the final swap back is measured as a swap only
        await run_load(engine, workload[:4], 4, f"warm{index}")
        repeats = []
        for repeat in range(args.repeats):
            repeats.append(await run_load(engine, workload, 32, f"m{index}-{repeat}"))
        best = max(repeats, key=lambda r: r.tokens_per_second)
        summary = LatencySummary.of(best.latencies_seconds)
        key = f"{precision}_{backend}".replace(".", "_")
        figures[f"{key}_output_tokens_per_second"] = best.tokens_per_second
        figures[f"{key}_p50_latency_seconds"] = summary.p50_seconds
        figures[f"{key}_p99_latency_seconds"] = summary.p99_seconds
        figures[f"{key}_failed_requests"] = sum(len(r.failures) for r in repeats)
        speed_rows.append([name, best.tokens_per_second, summary.p50_seconds, summary.p99_seconds,
                           sum(len(r.failures) for r in repeats),
                           " ".join(f"{r.tokens_per_second:.0f}" for r in repeats)])
        log(f"  {name}: {best.tokens_per_second:.0f} tok/s, p99 {summary.p99_seconds:.2f} s")
        if args.json:  # keep what is measured so far if a later (compile) step runs out of time
            write_json(args.json, figures, environment())
    figures["swap_failed_requests_total"] = sum(int(v or 0) for k, v in figures.items() if k.startswith("swap_to_") and k.endswith("_failed_requests"))
    await engine.shutdown(5.0)
    if device.type == "cuda":
        figures["cuda_max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return figures, speed_rows, swap_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--size", default="tiny", choices=("tiny", "small"), help="demo model size")
    parser.add_argument("--train-steps", type=int, default=0, help="demo model training steps (speed does not need them)")
    parser.add_argument("--model", default=None, help="use this checkpoint directory instead of a demo model")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--kv-cache-blocks", type=int, default=512)
    parser.add_argument("--backends", default=None, help="comma list to limit backends (eager is always measured)")
    parser.add_argument("--compile-precisions", default=None, help="precisions measured with non-eager backends")
    parser.add_argument("--repeats", type=int, default=None, help="measurements per setting (best is reported)")
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = 3 if args.full else 1
    figures, speed_rows, swap_rows = asyncio.run(bench(args))
    env = environment()
    print_table(f"dssidecar knobs: 32 concurrent requests ({args.size} model, {env.get('cuda_device', 'CPU')})",
                ["precision/backend", "output tok/s", "p50 latency s", "p99 latency s", "failed", "tok/s per repeat"],
                speed_rows)
    print_table("live swaps under 16 concurrent streams",
                ["switch to", "result", "swap seconds", "failed requests", "note"], swap_rows,
                caption="failed requests during a swap must be 0")
    if args.json:
        write_json(args.json, figures, env)
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
