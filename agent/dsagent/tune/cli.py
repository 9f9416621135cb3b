"""`dsagent tune --auto` (search + report), `dsagent tune apply PROFILE` and `dsagent tune rollback`.

Why one sub-app: the three share the engine connection flags and the profile format; cli.py registers the
group with one line. Heavy imports (optuna, matplotlib) happen inside the commands so --help stays quick.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import typer

tune_app = typer.Typer(help="Search the engine's knobs for the best goodput under a latency SLO, report it, "
                            "and roll the best profile out in guarded stages.",
                       invoke_without_command=True, no_args_is_help=False)

SAMPLERS = ("tpe", "nsga2", "grid", "random")
OBJECTIVES = ("goodput", "throughput", "latency", "energy")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"dsagent tune: {message}", err=True)
    raise typer.Exit(code)


def _duration(raw: str | None, flag: str) -> float | None:
    if raw is None:
        return None
    from dsagent.actions.spec import parse_duration_seconds

    try:
        value = parse_duration_seconds(raw)
    except (ValueError, TypeError) as exc:
        _fail(f"{flag} {raw!r}: {exc}")
        return None
    if value <= 0:
        _fail(f"{flag} must be > 0, got {raw!r}")
    return value


def _config(config_file: Path | None, data_dir: Path | None) -> Any:
    from dsagent.config import ConfigError, load_config

    try:
        return load_config(config_file, overrides={"data_dir": str(data_dir) if data_dir else None})
    except ConfigError as exc:
        _fail(str(exc).splitlines()[0])


def read_token(token: str | None, token_file: Path | None) -> str | None:
    if token:
        return token.strip()
    if token_file is not None:
        try:
            return token_file.read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            _fail(f"--control-token-file {token_file}: {exc.strerror or exc}")
    return None


ConfigOption = typer.Option(None, "--config", "-c", envvar="DSAGENT_CONFIG", help="Agent YAML config (data dir, "
                            "engine URL and control token file for apply/rollback).")
DataDirOption = typer.Option(None, "--data-dir", envvar="DSAGENT_DATA_DIR", help="Agent data dir (demo model, "
                             "tune results, the previous profile).")
EngineUrlOption = typer.Option(None, "--engine-url", envvar="DSAGENT_ENGINE_URL",
                               help="A running dssidecar to tune (needs its control token).")
TokenOption = typer.Option(None, "--control-token", envvar="DSAGENT_CONTROL_TOKEN",
                           help="Bearer token of the engine's /control.")
TokenFileOption = typer.Option(None, "--control-token-file", help="File holding the engine's /control token.")


@tune_app.callback()
def tune(
    ctx: typer.Context,
    auto: bool = typer.Option(False, "--auto", help="Search the knob space with optuna and write a report."),
    model: Path | None = typer.Option(None, "--model", help="Start a sidecar on this checkpoint (default: the "
                                      "demo model) when no --engine-url is given."),
    engine_url: str | None = EngineUrlOption,
    control_token: str | None = TokenOption,
    control_token_file: Path | None = TokenFileOption,
    workload: str = typer.Option("chat", "--workload", "-w", help="Built-in profile (chat, summarisation, code, "
                                 "tiny), a YAML workload file, stored request records (NDJSON) or elasticsearch:URL."),
    slo_p99: float | None = typer.Option(None, "--slo-p99", help="p99 end-to-end latency limit in seconds."),
    slo_ttft: float | None = typer.Option(None, "--slo-ttft", help="p99 time-to-first-token limit in seconds."),
    slo_tpot: float | None = typer.Option(None, "--slo-tpot", help="p99 time-per-output-token limit in seconds."),
    max_trials: int = typer.Option(50, "--max-trials", min=1, help="Trials in all (a resumed tune counts earlier ones)."),
    time_budget: str | None = typer.Option(None, "--time-budget", help="Stop starting trials after this long "
                                           "(e.g. 30m, 2h)."),
    sampler: str = typer.Option("tpe", "--sampler", help="tpe (default, SLO as constraints), nsga2 (Pareto "
                                "front of throughput vs p99 latency), grid, random."),
    objective: str = typer.Option("goodput", "--objective", help="goodput, throughput, latency or energy "
                                  "(joules per output token; needs an NVIDIA GPU)."),
    knob: list[str] = typer.Option([], "--knob", help="Knob to search, optionally with levels: "
                                   "max_batch_size=1,4,16 (repeatable; default: batch size, token budget, precision)."),
    concurrency: int = typer.Option(16, "--concurrency", min=1, help="Closed-loop requests in flight "
                                    "(max in flight with --request-rate)."),
    request_rate: str | None = typer.Option(None, "--request-rate", help="Open-loop Poisson arrivals per second."),
    warmup: float = typer.Option(5.0, "--warmup", min=0.0, help="Seconds of load before each measurement."),
    measure: float = typer.Option(20.0, "--measure", min=0.5, help="Measurement window per trial (seconds)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the sampler, the workload and the arrivals."),
    no_accuracy_check: bool = typer.Option(False, "--no-accuracy-check", help="Do not ask the engine to run "
                                           "check-precision before a precision switch."),
    no_prune: bool = typer.Option(False, "--no-prune", help="Measure every trial's whole window."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Report directory (default: "
                                       "DATA_DIR/tune/<time>; with --resume the newest one)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the study in --output (never repeats a trial)."),
    config_file: Path | None = ConfigOption,
    data_dir: Path | None = DataDirOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Find the engine settings with the best goodput under a latency SLO (`--auto`); see also apply, rollback."""
    if ctx.invoked_subcommand is not None:
        return
    if not auto:
        typer.echo(ctx.get_help())
        _fail("pass --auto to search, or use `dsagent tune apply PROFILE` / `dsagent tune rollback`")
    if sampler not in SAMPLERS:
        _fail(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if objective not in OBJECTIVES:
        _fail(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    for flag, value in (("--slo-p99", slo_p99), ("--slo-ttft", slo_ttft), ("--slo-tpot", slo_tpot)):
        if value is not None and not value > 0:
            _fail(f"{flag} must be > 0 seconds, got {value}")
    from dsagent.loadgen.cli import parse_rate
    from dsagent.tune.run import TuneRequest, run_tune

    rate = parse_rate(request_rate)
    if rate == math.inf:
        _fail("--request-rate inf has no steady state to measure; use --concurrency (closed loop) for a tune")
    config = _config(config_file, data_dir)
    tune_root = Path(config.data_dir).expanduser() / "tune"
    if output is None:
        if resume:
            candidates = sorted(p for p in tune_root.glob("*") if (p / "study.db").exists()) if tune_root.exists() else []
            if not candidates:
                _fail(f"--resume: no earlier tune under {tune_root}; pass --output DIR")
            output = candidates[-1]
        else:
            output = tune_root / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    request = TuneRequest(
        engine_url=engine_url, token=read_token(control_token, control_token_file), model=model,
        workload=workload, slo_p99=slo_p99, slo_ttft=slo_ttft, slo_tpot=slo_tpot, max_trials=max_trials,
        time_budget_seconds=_duration(time_budget, "--time-budget"), sampler=sampler, objective=objective,
        knobs=list(knob), concurrency=concurrency, request_rate=rate, warmup_seconds=warmup,
        measure_seconds=measure, seed=seed, accuracy_check=not no_accuracy_check, prune=not no_prune,
        output=output, resume=resume, data_dir=Path(config.data_dir).expanduser(),
        demo_model=config.engine.demo_model, quiet=quiet)
    code = run_tune(request, fail=_fail)
    raise typer.Exit(code)


@tune_app.command("apply")
def apply_command(
    profile: Path = typer.Argument(..., help="profile.yaml written by `dsagent tune --auto`."),
    engine_url: str | None = EngineUrlOption,
    control_token: str | None = TokenOption,
    control_token_file: Path | None = TokenFileOption,
    stages: str = typer.Option("0.25,0.5,1", "--stages", help="Fractions of the way to the profile's numeric "
                               "values, one stage each (choice knobs switch at the last stage)."),
    verify: float = typer.Option(10.0, "--verify", min=0.5, help="Verify window after each stage (seconds)."),
    concurrency: int | None = typer.Option(None, "--concurrency", help="Probe load during verify windows "
                                           "(default: the profile's)."),
    config_file: Path | None = ConfigOption,
    data_dir: Path | None = DataDirOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Record the Decisions as dry-run; change nothing."),
) -> None:
    """Roll a profile out in stages; each stage is a guarded, audited Decision; a breach rolls back."""
    from dsagent.tune.apply_cli import run_apply

    config = _config(config_file, data_dir)
    token = read_token(control_token, control_token_file)
    raise typer.Exit(run_apply(config, profile, engine_url, token, stages, verify, concurrency, dry_run, _fail))


@tune_app.command("rollback")
def rollback_command(
    engine_url: str | None = EngineUrlOption,
    control_token: str | None = TokenOption,
    control_token_file: Path | None = TokenFileOption,
    config_file: Path | None = ConfigOption,
    data_dir: Path | None = DataDirOption,
) -> None:
    """Put back the knob values saved before the last `tune apply`."""
    from dsagent.tune.apply_cli import run_rollback

    config = _config(config_file, data_dir)
    token = read_token(control_token, control_token_file)
    raise typer.Exit(run_rollback(config, engine_url, token, _fail))
