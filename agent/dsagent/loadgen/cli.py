"""`dsagent bench URL`: the load generator on its own, with a live progress line, a table and --json.

Why a separate module: cli.py registers it with one line, and `dsagent tune` reuses the same pieces.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import typer

from dsagent.loadgen.metrics import Slo, SloError


def _fail(message: str) -> None:
    typer.echo(f"dsagent bench: {message}", err=True)
    raise typer.Exit(2)


def parse_rate(raw: str | None) -> float | None:
    if raw is None:
        return None
    if raw.strip().lower() in ("inf", "infinity"):
        return math.inf
    try:
        return float(raw)
    except ValueError:
        raise typer.BadParameter(f"{raw!r} is not a number of requests per second (or inf)") from None


def result_table(summary: dict[str, Any], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [("successful requests", f"{summary['completed']}"), ("failed requests", f"{summary['failed']}"),
            ("duration (s)", f"{summary['duration']:.2f}"),
            ("total input tokens", f"{summary['total_input_tokens']}"),
            ("total output tokens", f"{summary['total_output_tokens']}"),
            ("request throughput (req/s)", f"{summary['request_throughput']:.3f}")]
    if summary.get("request_goodput") is not None:
        rows.append(("request goodput (req/s)", f"{summary['request_goodput']:.3f}"))
    rows += [("output token throughput (tok/s)", f"{summary['output_throughput']:.1f}"),
             ("total token throughput (tok/s)", f"{summary['total_token_throughput']:.1f}")]
    for name, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E latency")):
        rows.append((f"{label} mean / median / p99 (ms)",
                     f"{summary[f'mean_{name}_ms']:.1f} / {summary[f'median_{name}_ms']:.1f} / "
                     f"{summary[f'p99_{name}_ms']:.1f}"))
    for label, value in rows:
        table.add_row(label, value)
    return table


def bench_command(
    url: str = typer.Argument(..., help="Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000"),
    workload: str = typer.Option("chat", "--workload", "-w", envvar="DSAGENT_WORKLOAD",
                                 help="Built-in profile (chat, summarisation, code, tiny), a YAML workload file, "
                                      "an NDJSON file of stored request records, or elasticsearch:URL[#INDEX]."),
    concurrency: int | None = typer.Option(None, "--concurrency", help="Closed loop: requests kept in flight "
                                           "(default 1 without --request-rate; with it: max in flight)."),
    request_rate: str | None = typer.Option(None, "--request-rate", help="Open loop: Poisson arrivals per second, "
                                            "or inf to send every prompt at once."),
    num_prompts: int | None = typer.Option(None, "--num-prompts", help="Measure exactly this many requests "
                                           "(default 32 unless --duration is given)."),
    duration: float | None = typer.Option(None, "--duration", help="Measure a fixed window of this many seconds."),
    warmup: float = typer.Option(0.0, "--warmup", help="Seconds of load before measuring (never counted)."),
    goodput: list[str] = typer.Option([], "--goodput", help="SLOs as vLLM: ttft:MS tpot:MS e2el:MS (repeatable)."),
    endpoint: str = typer.Option("", "--endpoint", help="completions or chat (default: the workload's)."),
    model: str | None = typer.Option(None, "--model", help="Model name to send (default: the first /v1/models)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the workload and the Poisson arrivals."),
    no_ignore_eos: bool = typer.Option(False, "--no-ignore-eos",
                                       help="Let requests stop at end-of-sequence (default: exact max_tokens)."),
    json_file: Path | None = typer.Option(None, "--json", help="Write vLLM bench's result keys to FILE."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress line."),
) -> None:
    """Load-test an OpenAI-compatible server: TTFT, TPOT, ITL, end-to-end latency, throughput and goodput."""
    from rich.console import Console

    from dsagent.loadgen.client import EngineUnreachable
    from dsagent.loadgen.runner import LoadPlan, LoadPlanError, run_load
    from dsagent.loadgen.workload import WorkloadError, load_workload

    try:
        slo = Slo.from_goodput_args(goodput)
    except SloError as exc:
        _fail(str(exc))
        return
    try:
        profile = load_workload(workload)
    except WorkloadError as exc:
        _fail(str(exc))
        return
    if endpoint not in ("", "completions", "chat"):
        _fail(f"--endpoint must be completions or chat, got {endpoint!r}")
    rate = parse_rate(request_rate)
    if num_prompts is None and duration is None:
        num_prompts = 32
    plan = LoadPlan(concurrency=concurrency if concurrency is not None else (1 if rate is None else None),
                    request_rate=rate, warmup_seconds=warmup, duration_seconds=duration, num_prompts=num_prompts,
                    seed=seed)
    try:
        plan.check()
    except LoadPlanError as exc:
        _fail(str(exc))
    count = num_prompts if num_prompts is not None else 4096
    specs = profile.generate(count, seed=seed)
    console = Console(stderr=True)
    chosen_endpoint: Any = endpoint or profile.endpoint
    result = None
    try:
        if quiet:
            result = asyncio.run(run_load(url, specs, plan, endpoint=chosen_endpoint, model=model, slo=slo,
                                          ignore_eos=not no_ignore_eos))
        else:
            with console.status(f"bench {url}: {plan.describe()}") as status_line:
                def show(progress: Any) -> None:
                    total = (f"{progress.elapsed_seconds:.0f}/{progress.total_seconds:g} s"
                             if progress.total_seconds else
                             f"{progress.completed + progress.failed}/{progress.total_prompts} requests")
                    rate_now = progress.output_tokens / max(progress.elapsed_seconds, 1e-9)
                    status_line.update(f"{progress.phase}: {total}, {progress.completed} ok, {progress.failed} "
                                       f"failed, {rate_now:.0f} tok/s")
                result = asyncio.run(run_load(url, specs, plan, endpoint=chosen_endpoint, model=model, slo=slo,
                                              on_progress=show, ignore_eos=not no_ignore_eos))
    except EngineUnreachable as exc:
        _fail(str(exc))
    except LoadPlanError as exc:
        _fail(str(exc))
    assert result is not None
    Console().print(result_table(result.summary, f"{url} · {profile.name} · {plan.describe()}"))
    if result.errors:
        console.print(f"[yellow]{result.summary['failed']} requests failed; first error: {result.errors[0]}")
    if json_file is not None:
        document = {**result.summary, "model_id": result.model, "base_url": url, "workload": profile.describe(),
                    "plan": plan.describe(), "goodput": slo.to_goodput_args(),
                    "request_rate": "inf" if rate == math.inf else rate,
                    "max_concurrency": plan.concurrency, "warmup_requests": result.warmup_requests,
                    "errors": result.errors}
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if result.summary["completed"] == 0:
        _fail(f"no request succeeded ({result.errors[0] if result.errors else 'no answers'})")
