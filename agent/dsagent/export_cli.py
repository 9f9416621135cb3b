"""`dsagent export ...`: operations on the export pipeline's files (today: replay dead letters)."""

from __future__ import annotations

from pathlib import Path

import typer

export_app = typer.Typer(help="Operate on the export spools and dead-letter files.", no_args_is_help=True)


@export_app.command("replay-dead-letters")
def replay_dead_letters_command(
    config_file: Path | None = typer.Option(None, "--config", "-c", envvar="DSAGENT_CONFIG",
                                            help="YAML config file (default: the embedded default)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", envvar="DSAGENT_DATA_DIR",
                                         help="The agent's data dir (dead-letter/ and spool/ live here)."),
    destination: list[str] = typer.Option([], "--destination", "-d",
                                           help="Only this destination (file, elasticsearch, otlp); repeatable."),
) -> None:
    """Append dead-lettered documents back into their destination's spool (run with the agent stopped;
    they go out on its next start, Elasticsearch still exactly once by id)."""
    from dsagent.cli import _fail, _load
    from dsagent.data_dir_lock import DataDirInUse, DataDirLock
    from dsagent.export.replay import replay_dead_letters

    config = _load(config_file, {"data_dir": str(data_dir) if data_dir else None})
    root = Path(config.data_dir).expanduser()
    chosen = destination or ["file", "elasticsearch", "otlp"]
    lock = DataDirLock(root)
    try:
        lock.acquire()
    except DataDirInUse as error:
        _fail(f"{error}; stop the agent before replaying dead letters")
        return
    try:
        spool_dir = config.export.spool.directory or root / "spool"
        result = replay_dead_letters(root, Path(spool_dir), config.export.spool.max_bytes, chosen)
    finally:
        lock.release()
    for line in result.bad_lines:
        typer.echo(f"dsagent: skipped {line}", err=True)
    if not result.documents_by_destination:
        typer.echo(f"no dead letters under {root / 'dead-letter'} for {', '.join(chosen)}")
        return
    for name, count in sorted(result.documents_by_destination.items()):
        typer.echo(f"{name}: {count} documents back in the spool; they are sent when the agent starts")
    if result.bad_lines:
        raise typer.Exit(1)
