"""`dsagent` command line: run | status | config show (rules, tune, bench, dashboards, doctor come later).

Flags map to DSAGENT_<FLAG> environment variables (--elasticsearch-url <-> DSAGENT_ELASTICSEARCH_URL,
--config <-> DSAGENT_CONFIG, --data-dir <-> DSAGENT_DATA_DIR). Bad input exits non-zero with one line per
problem naming the key and where it came from. Heavy imports happen inside the commands so --help is quick.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import typer

from dsagent.actions.cli_act import act as act_command
from dsagent.cli_rules import rules_app
from dsagent.dashboards.cli import app as dashboards_app
from dsagent.doctor_cli import doctor as doctor_command
from dsagent.export_cli import export_app
from dsagent.loadgen.cli import bench_command
from dsagent.tune.cli import tune_app

app = typer.Typer(
    name="dsagent",
    help="Per-node agent for LLM inference: supervises the engine, collects GPU/host/engine/request "
         "telemetry, exports it (NDJSON, Elasticsearch, OTLP) and serves /metrics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(dashboards_app, name="dashboards")
app.command("doctor")(doctor_command)
app.command("act")(act_command)  # dsagent.actions.cli_act: one operator Decision through the guard
app.command("bench")(bench_command)  # dsagent.loadgen.cli: the load generator on its own
app.add_typer(tune_app, name="tune")  # dsagent.tune.cli: tune --auto, tune apply, tune rollback
app.add_typer(export_app, name="export")  # dsagent.export_cli: replay-dead-letters
app.add_typer(rules_app, name="rules")  # dsagent.cli_rules: rules check | test | eval

ConfigOption = typer.Option(None, "--config", "-c", envvar="DSAGENT_CONFIG",
                            help="YAML config file (default: the embedded default).")


def _fail(message: str) -> None:
    typer.echo(f"dsagent: {message}", err=True)
    raise typer.Exit(2)


def _load(config_file: Path | None, overrides: dict[str, Any]) -> Any:
    from dsagent.config import ConfigError, load_config

    try:
        return load_config(config_file, overrides=overrides)
    except ConfigError as exc:
        _fail(str(exc) if "\n" not in str(exc) else "invalid configuration:\n" + str(exc))


def _run_overrides(
    elasticsearch_url: str | None, data_dir: Path | None, engine_url: str | None, model: Path | None,
    engine_port: int | None, api_port: int | None, log_level: str | None,
) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "export.elasticsearch.url": elasticsearch_url,
        "data_dir": str(data_dir) if data_dir else None,
        "engine.model": str(model) if model else None,
        "engine.port": engine_port,
        "server.port": api_port,
        "log_level": log_level,
    }
    if engine_url:
        overrides["engine.kind"] = "external"
        overrides["engine.url"] = engine_url
    return overrides


@app.command()
def run(
    config_file: Path | None = ConfigOption,
    elasticsearch_url: str | None = typer.Option(
        None, "--elasticsearch-url", envvar="DSAGENT_ELASTICSEARCH_URL",
        help="Add the Elasticsearch exporter (http(s)://host:9200)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", envvar="DSAGENT_DATA_DIR",
                                         help="Spool, exports, logs and the demo model live here."),
    engine_url: str | None = typer.Option(None, "--engine-url", envvar="DSAGENT_ENGINE_URL",
                                          help="Observe an engine already running at this URL (kind external)."),
    model: Path | None = typer.Option(None, "--model", help="Checkpoint directory for the builtin engine."),
    engine_port: int | None = typer.Option(None, "--engine-port", help="Port of the builtin engine."),
    api_port: int | None = typer.Option(None, "--api-port", help="Port of the agent's API (/metrics, /api/status)."),
    log_level: str | None = typer.Option(None, "--log-level", envvar="DSAGENT_LOG_LEVEL"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Evaluate every rule on live data and record what it "
                                 "would do (audit, status), changing nothing."),
) -> None:
    """Run the agent: supervise the engine, collect every second, export telemetry, serve /metrics."""
    overrides = _run_overrides(elasticsearch_url, data_dir, engine_url, model, engine_port, api_port, log_level)
    if dry_run:
        overrides.update({"rules.dry_run": True, "actions.dry_run": True})
    config = _load(config_file, overrides)
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for chatty in ("httpx", "httpcore", "uvicorn.access"):  # one line per scrape/probe every second
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
    from dsagent.app import Agent

    agent = Agent(config, config_file=config_file)
    try:
        code = agent.run_until_signal()
    except OSError as exc:
        _fail(str(exc))
        return
    raise typer.Exit(code)


def _agent_url(url: str | None, config_file: Path | None, data_dir: Path | None) -> str:
    if url:
        return url.rstrip("/")
    config = _load(config_file, {"data_dir": str(data_dir) if data_dir else None})
    pointer = Path(config.data_dir).expanduser() / "agent.json"
    try:
        return str(json.loads(pointer.read_text())["url"]).rstrip("/")
    except (OSError, ValueError, KeyError):
        return f"http://{config.server.host}:{config.server.port}"


def _agent_auth(config_file: Path | None, data_dir: Path | None) -> dict[str, str]:
    """The bearer token a non-loopback agent wrote to its data dir's agent.json (owner-only), if any."""
    config = _load(config_file, {"data_dir": str(data_dir) if data_dir else None})
    try:
        token = json.loads((Path(config.data_dir).expanduser() / "agent.json").read_text()).get("token")
    except (OSError, ValueError, AttributeError):
        return {}
    return {"Authorization": f"Bearer {token}"} if token else {}


@app.command()
def status(
    url: str | None = typer.Option(None, "--url", envvar="DSAGENT_AGENT_URL",
                                   help="The running agent's API (default: from the data dir, else the config)."),
    config_file: Path | None = ConfigOption,
    data_dir: Path | None = typer.Option(None, "--data-dir", envvar="DSAGENT_DATA_DIR"),
    as_json: bool = typer.Option(False, "--json", help="Print the raw status JSON."),
) -> None:
    """Show the running agent's engine, GPUs, SLO signals and recent actions."""
    import httpx

    base = _agent_url(url, config_file, data_dir)
    try:
        response = httpx.get(f"{base}/api/status", timeout=5.0, headers=_agent_auth(config_file, data_dir))
        response.raise_for_status()
    except httpx.HTTPError as exc:
        _fail(f"no agent answering at {base}/api/status ({exc}); is `dsagent run` running? (--url to point elsewhere)")
        return
    payload = response.json()
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
        return
    from rich.console import Console

    from dsagent.status_view import render_status

    Console().print(render_status(payload))


@config_app.command("show")
def config_show(
    config_file: Path | None = ConfigOption,
    elasticsearch_url: str | None = typer.Option(None, "--elasticsearch-url", envvar="DSAGENT_ELASTICSEARCH_URL"),
    data_dir: Path | None = typer.Option(None, "--data-dir", envvar="DSAGENT_DATA_DIR"),
) -> None:
    """Print the effective configuration (defaults < file < DSAGENT_* env < flags) with secrets masked."""
    from dsagent.config import effective_config_yaml

    config = _load(config_file, _run_overrides(elasticsearch_url, data_dir, None, None, None, None, None))
    typer.echo(effective_config_yaml(config), nl=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
