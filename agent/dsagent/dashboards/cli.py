"""`dsagent dashboards install | export`: put the agent's Kibana dashboards into Kibana and take them back out.

install imports the data views, the saved search and the four dashboards through the saved-objects import
API (overwrite=true, so re-running it updates them in place) and prints one line per object; any error
makes it exit 1. export writes them as stable NDJSON (sorted keys, one object per line): from Kibana with
--kibana-url (after editing them there), else the packaged ones (what `dashboards/dsagent.ndjson` holds).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

app = typer.Typer(help="Kibana dashboards for the agent's data streams: install into Kibana, export back.",
                  no_args_is_help=True)

KibanaUrlOption = typer.Option(None, "--kibana-url", envvar="DSAGENT_KIBANA_URL",
                               help="Kibana base URL, e.g. https://kibana:5601.")
SpaceOption = typer.Option("default", "--space", envvar="DSAGENT_KIBANA_SPACE", help="Kibana space id.")
ApiKeyOption = typer.Option(None, "--api-key", envvar="DSAGENT_KIBANA_API_KEY",
                            help="Kibana/Elasticsearch API key (base64 id:key, sent as 'ApiKey ...').")
UsernameOption = typer.Option(None, "--username", envvar="DSAGENT_KIBANA_USERNAME", help="Basic auth user.")
PasswordOption = typer.Option(None, "--password", envvar="DSAGENT_KIBANA_PASSWORD", help="Basic auth password.")
CaCertsOption = typer.Option(None, "--ca-certs", envvar="DSAGENT_KIBANA_CA_CERTS",
                             help="PEM file of the CA that signed Kibana's certificate.")


def _fail(message: str) -> None:
    typer.echo(f"dsagent dashboards: {message}", err=True)
    raise typer.Exit(2)


def _client(kibana_url: str, space: str, api_key: str | None, username: str | None, password: str | None,
            ca_certs: Path | None):  # type: ignore[no-untyped-def]
    from dsagent.dashboards.kibana import KibanaAuth, KibanaClient, KibanaError

    if (username is None) != (password is None):
        _fail("basic auth needs both --username and --password")
    if api_key and username:
        _fail("give either --api-key or --username/--password, not both")
    if ca_certs is not None and not ca_certs.is_file():
        _fail(f"--ca-certs {ca_certs}: no such file")
    try:
        return KibanaClient(kibana_url, KibanaAuth(api_key, username, password), space, ca_certs)
    except KibanaError as exc:
        _fail(str(exc))


def _objects_text(file: Path | None) -> str:
    from dsagent.dashboards import catalog, ndjson

    if file is None:
        return ndjson.dumps(catalog.saved_objects())
    try:
        text = file.read_text(encoding="utf-8")
        ndjson.loads(text, str(file))  # refuse a malformed file before sending it
    except OSError as exc:
        _fail(f"{file}: cannot read: {exc.strerror or exc}")
    except ndjson.NdjsonError as exc:
        _fail(str(exc))
    return text


@app.command()
def install(
    kibana_url: str | None = KibanaUrlOption,
    space: str = SpaceOption,
    api_key: str | None = ApiKeyOption,
    username: str | None = UsernameOption,
    password: str | None = PasswordOption,
    ca_certs: Path | None = CaCertsOption,
    file: Path | None = typer.Option(None, "--file", help="Import this NDJSON instead of the packaged dashboards."),
) -> None:
    """Import the data views and dashboards into Kibana (overwrite=true); exit 1 if any object fails."""
    from dsagent.dashboards.kibana import KibanaError

    if not kibana_url:
        _fail("--kibana-url (or DSAGENT_KIBANA_URL) is required, e.g. --kibana-url http://127.0.0.1:5601")
        return
    text = _objects_text(file)
    client = _client(kibana_url, space, api_key, username, password, ca_certs)
    typer.echo(f"importing {sum(1 for line in text.splitlines() if line.strip())} saved objects into "
               f"{kibana_url} (space {space}) ...", err=True)
    try:
        with client:
            report = client.import_objects(text, overwrite=True)
    except KibanaError as exc:
        _fail(str(exc))
        return
    for result in report.results:
        mark = "ok   " if result.ok else "error"
        detail = f"  {result.error}" if result.error else ""
        typer.echo(f"{mark} {result.type:<13} {result.id:<28} {result.title}{detail}")
    failed = len(report.errors)
    typer.echo(f"{len(report.results) - failed} imported, {failed} failed", err=True)
    if failed or not report.success:
        raise typer.Exit(1)


@app.command()
def export(
    output: Path | None = typer.Option(None, "--output", "-o",
                                       help="Write here (default: standard output)."),
    kibana_url: str | None = KibanaUrlOption,
    space: str = SpaceOption,
    api_key: str | None = ApiKeyOption,
    username: str | None = UsernameOption,
    password: str | None = PasswordOption,
    ca_certs: Path | None = CaCertsOption,
) -> None:
    """Write the dashboards as stable NDJSON: from Kibana with --kibana-url, else the packaged ones."""
    from dsagent.dashboards import catalog, ndjson
    from dsagent.dashboards.kibana import KibanaError

    if kibana_url:
        wanted = [(obj["type"], obj["id"]) for obj in catalog.saved_objects() if obj["type"] == "dashboard"]
        client = _client(kibana_url, space, api_key, username, password, ca_certs)
        try:
            with client:
                exported = client.export_objects(wanted)
            text = ndjson.dumps(ndjson.loads(exported, f"{kibana_url} export"))
        except (KibanaError, ndjson.NdjsonError) as exc:
            _fail(str(exc))
            return
    else:
        text = ndjson.dumps(catalog.saved_objects())
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        _fail(f"{output}: cannot write: {exc.strerror or exc}")
    typer.echo(f"wrote {text.count(chr(10))} saved objects to {output}", err=True)


@app.command()
def check(
    file: Path | None = typer.Option(None, "--file", help="Check this NDJSON instead of the packaged dashboards."),
) -> None:
    """Check saved objects against the agent's index templates (fields, types, references, grid, ids)."""
    from dsagent.dashboards import check as checks
    from dsagent.dashboards import ndjson

    objects = ndjson.loads(_objects_text(file), str(file or "packaged dashboards"))
    report = checks.check_objects(objects)
    for problem in report.problems:
        typer.echo(f"problem: {problem}")
    typer.echo(report.summary())
    if report.problems:
        raise typer.Exit(1)
