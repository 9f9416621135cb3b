"""`dsagent rules check | test | eval`: promtool's rule commands over dsagent's evaluator.

Why here: operators check and test rule files before an agent loads them, in CI, with the commands (and
output) they know from promtool; `eval` asks a running agent's store through its Prometheus API.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

rules_app = typer.Typer(help="Check, test and evaluate rule files (promtool-compatible).", no_args_is_help=True)


@rules_app.command("check")
def check(files: list[Path] = typer.Argument(..., help="Rule files (Prometheus format, dsagent actions, short form)."),
          as_json: bool = typer.Option(False, "--json", help="Print the parsed rules and actions as JSON.")) -> None:
    """Validate rule files like `promtool check rules`; every problem is printed as file:line: what."""
    from dsagent.rules.rulefile import RuleFileError, load_file

    failed = False
    parsed = []
    for path in files:
        typer.echo(f"Checking {path}")
        try:
            groups = load_file(path)
        except RuleFileError as exc:
            typer.echo(f"  FAILED:\n{exc}", err=True)
            failed = True
            continue
        count = sum(len(g.rules) for g in groups)
        typer.echo(f"  SUCCESS: {count} rules found")
        for group in groups:
            for rule in group.rules:
                parsed.append({"file": str(path), "group": group.name, "kind": rule.kind, "name": rule.name,
                               "expr": rule.expr, "for_seconds": rule.for_seconds,
                               "actions": [a.describe() if hasattr(a, "describe") else a for a in rule.actions]})
    if as_json:
        typer.echo(json.dumps(parsed, indent=2, default=str))
    if failed:
        raise typer.Exit(1)


@rules_app.command("test")
def test(files: list[Path] = typer.Argument(..., help="Test files in promtool's format (rule_files, tests, ...).")) -> None:
    """Run rule unit tests like `promtool test rules` (same format, same pass/fail, exp/got on failure)."""
    from dsagent.rules.testrunner import run_files

    code = run_files([str(f) for f in files], sys.stdout, sys.stderr)
    raise typer.Exit(code)


@rules_app.command("eval")
def evaluate(
    expr: str = typer.Argument(..., help="PromQL expression"),
    at: str | None = typer.Option(None, "--time", help="Evaluation time (unix seconds or RFC 3339); default now."),
    url: str | None = typer.Option(None, "--url", envvar="DSAGENT_AGENT_URL",
                                   help="The running agent's API (default: from the data dir, else the config)."),
    config_file: Path | None = typer.Option(None, "--config", "-c", envvar="DSAGENT_CONFIG"),
    data_dir: Path | None = typer.Option(None, "--data-dir", envvar="DSAGENT_DATA_DIR"),
    as_json: bool = typer.Option(False, "--json", help="Print Prometheus's JSON answer."),
) -> None:
    """Evaluate an expression against the running agent's store (through its /api/v1/query)."""
    import httpx

    from dsagent.cli import _agent_auth, _agent_url
    from dsagent.rules.promql import PromQLError, parse

    try:
        parse(expr)
    except PromQLError as exc:
        typer.echo(f"dsagent: {exc}", err=True)
        raise typer.Exit(2) from None
    base = _agent_url(url, config_file, data_dir)
    params = {"query": expr}
    if at:
        params["time"] = at
    try:
        response = httpx.get(f"{base}/api/v1/query", params=params, timeout=10.0,
                             headers=_agent_auth(config_file, data_dir))
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        typer.echo(f"dsagent: no agent answering at {base}/api/v1/query ({exc}); is `dsagent run` running?", err=True)
        raise typer.Exit(2) from None
    if body.get("status") != "success":
        typer.echo(f"dsagent: {body.get('errorType', 'error')}: {body.get('error', response.text)}", err=True)
        raise typer.Exit(1)
    data = body["data"]
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    kind, result = data["resultType"], data["result"]
    if kind in ("scalar", "string"):
        typer.echo(f"{result[1]} @ {result[0]}")
    elif kind == "vector":
        for item in result:
            typer.echo(f"{_labels(item['metric'])} => {item['value'][1]} @ {item['value'][0]}")
        if not result:
            typer.echo("(empty vector)")
    else:
        for item in result:
            points = " ".join(f"{v} @{t}" for t, v in item["values"])
            typer.echo(f"{_labels(item['metric'])} => {points}")


def _labels(metric: dict[str, str]) -> str:
    name = metric.get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
    return f"{name}{{{rest}}}"
