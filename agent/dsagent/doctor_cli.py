"""The `dsagent doctor` command: runs dsagent.doctor's checks and prints one ok/warn/fail line each.

Exit status: 0 when nothing failed (warnings allowed), 1 when a check failed, 2 on bad input.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def doctor(
    config_file: Path | None = typer.Option(None, "--config", "-c", envvar="DSAGENT_CONFIG",
                                            help="YAML config file (default: the embedded default)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", envvar="DSAGENT_DATA_DIR",
                                         help="The agent's state directory to check."),
    kibana_url: str | None = typer.Option(None, "--kibana-url", envvar="DSAGENT_KIBANA_URL",
                                          help="Also check this Kibana (reachable, credentials accepted)."),
    kibana_api_key: str | None = typer.Option(None, "--kibana-api-key", envvar="DSAGENT_KIBANA_API_KEY"),
    kibana_username: str | None = typer.Option(None, "--kibana-username", envvar="DSAGENT_KIBANA_USERNAME"),
    kibana_password: str | None = typer.Option(None, "--kibana-password", envvar="DSAGENT_KIBANA_PASSWORD"),
    kibana_ca_certs: Path | None = typer.Option(None, "--kibana-ca-certs", envvar="DSAGENT_KIBANA_CA_CERTS"),
    timeout_seconds: float = typer.Option(5.0, "--timeout", min=0.1, help="Per network check, seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Check this host: NVML, GPU control, engine, agent API, Elasticsearch, Kibana, state dir, spool."""
    from dsagent.config import ConfigError, load_config
    from dsagent.doctor import KibanaTarget, render_line, run_checks, summary

    try:
        config = load_config(config_file, overrides={"data_dir": str(data_dir) if data_dir else None})
    except ConfigError as exc:
        typer.echo(f"fail  config         {exc}\n{'':<20} fix: correct the key named above "
                   "(docs/configuration.md lists every key)")
        raise typer.Exit(1) from None
    kibana = KibanaTarget(kibana_url, kibana_api_key, kibana_username, kibana_password, kibana_ca_certs) \
        if kibana_url else None
    progress = None if as_json else (lambda name: typer.echo(f"checking {name} ...", err=True))
    results = run_checks(config, str(config_file or "embedded default"), kibana, timeout_seconds, progress)
    counts = summary(results)
    if as_json:
        typer.echo(json.dumps({"checks": [r.as_dict() for r in results], "summary": counts}, indent=2))
    else:
        for result in results:
            typer.echo(render_line(result))
        typer.echo(f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail")
    if counts["fail"]:
        raise typer.Exit(1)
