"""One `dsagent tune --auto` run: connect to (or start) the engine, build the space, search, report.

Why separate from the CLI: the integration tests and bench/tuner.py drive exactly this, without typer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsagent.config import DemoModelConfig


@dataclass
class TuneRequest:
    engine_url: str | None = None
    token: str | None = None
    model: Path | None = None
    workload: str = "chat"
    slo_p99: float | None = None
    slo_ttft: float | None = None
    slo_tpot: float | None = None
    max_trials: int = 50
    time_budget_seconds: float | None = None
    sampler: str = "tpe"
    objective: str = "goodput"
    knobs: list[str] = field(default_factory=list)
    concurrency: int | None = 16
    request_rate: float | None = None
    warmup_seconds: float = 5.0
    measure_seconds: float = 20.0
    seed: int = 0
    accuracy_check: bool = True
    prune: bool = True
    output: Path = Path("dsagent-tune")
    resume: bool = False
    data_dir: Path = Path(".cache/dsagent")
    demo_model: DemoModelConfig = field(default_factory=DemoModelConfig)
    sidecar_args: list[str] = field(default_factory=list)
    quiet: bool = False
    energy_backend: Any = None


@dataclass
class TuneResult:
    study: Any
    paths: dict[str, Path]
    best_knobs: dict[str, Any] | None
    best_figures: dict[str, Any] | None
    trials: int
    seconds: float
    interrupted: bool = False


def _raise(message: str, code: int = 2) -> None:
    raise RuntimeError(message)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a tune like Ctrl-C: report what finished, resumable


def run_tune(request: TuneRequest, fail: Callable[..., None] = _raise) -> int:
    """The CLI's entry: 0 when a feasible best was found, 1 when none was (the report is written either way);
    130 when interrupted (Ctrl-C or SIGTERM) after writing the report of the finished trials."""
    import signal

    signal.signal(signal.SIGTERM, _interrupt)
    result = tune_once(request, fail)
    if result is not None and result.interrupted:
        return 130
    if result is None:
        return 2
    return 0 if result.best_knobs is not None else 1


def tune_once(request: TuneRequest, fail: Callable[..., None] = _raise) -> TuneResult | None:
    from rich.console import Console

    from dsagent.loadgen.workload import WorkloadError, load_workload
    from dsagent.tune.energy import EnergyMeter, EnergyUnavailable
    from dsagent.tune.engine import EngineStartError, OwnSidecar
    from dsagent.tune.space import ControlError, SpaceError, build_space, grid_size, read_knob_description

    console = Console(stderr=True, quiet=request.quiet)
    try:
        workload = load_workload(request.workload)
    except WorkloadError as exc:
        fail(str(exc))
        return None
    energy_meter = None
    if request.objective == "energy":
        try:
            energy_meter = EnergyMeter(request.energy_backend)
        except EnergyUnavailable as exc:
            fail(f"--objective energy refused: {exc}")
            return None
    own: OwnSidecar | None = None
    try:
        if request.engine_url:
            engine_url, token = request.engine_url.rstrip("/"), request.token
            model_text = _served_model(engine_url)
        else:
            own = OwnSidecar(request.data_dir, request.model, request.sidecar_args, request.demo_model)
            with console.status("starting the sidecar") as status:
                own.start(on_wait=lambda text: status.update(text))
            engine_url, token, model_text = own.url, own.token, own.model_description()
        try:
            description = read_knob_description(engine_url, token)
            dimensions = build_space(description, request.knobs)
        except (ControlError, SpaceError) as exc:
            fail(str(exc))
            return None
        return _search(request, engine_url, str(token), model_text, description, dimensions, workload,
                       energy_meter, console, fail, grid_size(dimensions))
    except EngineStartError as exc:
        fail(str(exc))
        return None
    finally:
        if own is not None:
            own.stop()
        if energy_meter is not None:
            energy_meter.close()


def _served_model(engine_url: str) -> str:
    import httpx

    try:
        return str(httpx.get(f"{engine_url}/v1/models", timeout=10.0).json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        return "model unknown"


def _search(request: TuneRequest, engine_url: str, token: str, model_text: str, description: dict[str, Any],
            dimensions: list[Any], workload: Any, energy_meter: Any, console: Any, fail: Callable[..., None],
            points: int) -> TuneResult | None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dsagent.loadgen.client import EngineUnreachable
    from dsagent.tune.profile import Profile, ProfileSlo, machine_description
    from dsagent.tune.report import write_report
    from dsagent.tune.search import TrialEvent, TuneError, Tuner, TuneSettings, best_trial

    settings = TuneSettings(
        objective=request.objective, sampler=request.sampler,  # type: ignore[arg-type]
        slo_p99_e2el_seconds=request.slo_p99, slo_p99_ttft_seconds=request.slo_ttft,
        slo_p99_tpot_seconds=request.slo_tpot, max_trials=request.max_trials,
        time_budget_seconds=request.time_budget_seconds, warmup_seconds=request.warmup_seconds,
        measure_seconds=request.measure_seconds, concurrency=request.concurrency, request_rate=request.request_rate,
        seed=request.seed, accuracy_check=request.accuracy_check, prune=request.prune)
    started = time.monotonic()
    progress = Progress(TextColumn("[bold]tune"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                        TimeElapsedColumn(), console=console, transient=False, disable=request.quiet)
    budget = request.time_budget_seconds

    def describe(best: float | None, note: str) -> str:
        left = "" if budget is None else f" · {max(0.0, budget - (time.monotonic() - started)) / 60:.1f} min left"
        shown = "-" if best is None else f"{best:.3g}"
        return f"best {settings.objective_names()[0]} {shown}{left} · {note}"

    with progress:
        task = progress.add_task(describe(None, "starting"), total=request.max_trials)
        best_seen: list[float | None] = [None]

        def on_event(event: TrialEvent) -> None:
            best_seen[0] = event.best_value
            values = "refused" if event.note else (f"{event.values[0]:.3g}" if event.values else "-")
            progress.update(task, completed=event.trials_done,
                            description=describe(event.best_value, f"#{event.number} {event.state} {values}"))

        def on_load(number: int, load: Any) -> None:
            progress.update(task, description=describe(
                best_seen[0], f"#{number} {load.phase} {load.elapsed_seconds:.0f} s, {load.completed} done"))

        try:
            tuner = Tuner(engine_url, token, settings, dimensions, workload, request.output, resume=request.resume,
                          on_event=on_event, on_load_progress=on_load, energy_meter=energy_meter)
            progress.update(task, completed=tuner.trials_done())
            study = tuner.run()
        except TuneError as exc:
            fail(str(exc))
            return None
        except EngineUnreachable as exc:
            fail(f"engine unreachable during the tune: {exc}")
            return None
    best = best_trial(study, settings)
    profile = None
    if best is not None:
        profile = Profile(
            knobs=dict(best.user_attrs.get("knobs", {})), workload=workload.describe(),
            slo=ProfileSlo(p99_e2el_seconds=request.slo_p99, p99_ttft_seconds=request.slo_ttft,
                           p99_tpot_seconds=request.slo_tpot),
            objective=request.objective,
            figures={k: v for k, v in best.user_attrs.get("figures", {}).items() if isinstance(v, (int, float))},
            load={"concurrency": request.concurrency,
                  "request_rate": None if request.request_rate is None else request.request_rate,
                  "warmup_seconds": request.warmup_seconds, "measure_seconds": request.measure_seconds,
                  "seed": request.seed},
            machine=machine_description(description.get("status")),
            engine={"url": engine_url, "model": model_text},
            study={"trials": len(study.trials), "best_trial": best.number, "sampler": request.sampler,
                   "space_points": points, "output": str(request.output)})
    context = {"engine_url": engine_url, "model": model_text, "workload": workload.name,
               "space_points": points, "seconds": time.monotonic() - started}
    paths = write_report(study, settings, dimensions, request.output, profile, context)
    _print_summary(console, study, settings, best, paths)
    if tuner.interrupted:
        console.print(f"interrupted: the report holds the finished trials; continue with "
                      f"`dsagent tune --auto --resume --output {request.output}` and the same flags")
    return TuneResult(study, paths, dict(best.user_attrs.get("knobs", {})) if best else None,
                      dict(best.user_attrs.get("figures", {})) if best else None, len(study.trials),
                      time.monotonic() - started, tuner.interrupted)


def _print_summary(console: Any, study: Any, settings: Any, best: Any, paths: dict[str, Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="dsagent tune: best feasible trial", show_header=True)
    table.add_column("figure")
    table.add_column("value", justify="right")
    if best is None:
        table.add_row("result", "no feasible trial (all broke the SLO or were refused)")
    else:
        figures = best.user_attrs.get("figures", {})
        table.add_row("trial", f"#{best.number} of {len(study.trials)}")
        for name, value in best.user_attrs.get("knobs", {}).items():
            table.add_row(name, str(value))
        for key, label in (("request_goodput", "goodput (req/s)"), ("request_throughput", "throughput (req/s)"),
                           ("output_throughput", "output tokens/s"), ("p99_ttft_ms", "p99 TTFT (ms)"),
                           ("p99_tpot_ms", "p99 TPOT (ms)"), ("p99_e2el_ms", "p99 E2E (ms)")):
            value = figures.get(key)
            table.add_row(label, "-" if value is None or (isinstance(value, float) and math.isnan(value))
                          else f"{value:.3f}")
    Console().print(table)
    console.print(f"report: {paths['report_md']} and {paths['report_html']}")
    if "profile" in paths:
        console.print(f"profile: {paths['profile']}  (roll out: dsagent tune apply {paths['profile']})")
