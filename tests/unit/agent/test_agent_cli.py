"""`dsagent` CLI: config show (precedence + masking), one-line errors with non-zero exit, status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from dsagent.api import ApiServer, build_api
from dsagent.cli import app
from dsagent.store import TimeSeriesStore
from typer.testing import CliRunner

runner = CliRunner()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "status", "config"):
        assert command in result.output


def test_config_show_applies_precedence_and_masks(tmp_path: Path) -> None:
    config_file = tmp_path / "agent.yaml"
    config_file.write_text("engine:\n  port: 8100\nexport:\n  elasticsearch:\n    url: http://127.0.0.1:9200\n"
                           "    api_key: s3cret\n")
    result = runner.invoke(app, ["config", "show", "--config", str(config_file),
                                 "--elasticsearch-url", "http://127.0.0.1:9201"],
                           env={"DSAGENT_ENGINE__PORT": "8200"})
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["engine"]["port"] == 8200
    assert shown["export"]["elasticsearch"]["url"] == "http://127.0.0.1:9201"
    assert shown["export"]["elasticsearch"]["api_key"] == "***"
    assert "s3cret" not in result.output


def test_bad_config_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    config_file = tmp_path / "agent.yaml"
    config_file.write_text("intervals:\n  collect_seconds: soon\n")
    result = runner.invoke(app, ["config", "show", "--config", str(config_file)])
    assert result.exit_code == 2
    assert f"{config_file}:2: intervals.collect_seconds" in result.output
    assert "Traceback" not in result.output


def test_run_with_bad_config_fails_before_starting_anything(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "--data-dir", str(tmp_path)], env={"DSAGENT_ENGINE__KIND": "quantum"})
    assert result.exit_code == 2
    assert "environment DSAGENT_ENGINE__KIND: engine.kind" in result.output
    assert not (tmp_path / "agent.json").exists()


def test_status_renders_the_running_agents_tables() -> None:
    status = {"agent": {"version": "0.1.0"}, "engine": {"kind": "builtin", "state": "ready", "restarts_total": 0},
              "gpus": {"devices": [], "none_reason": "backend off"}, "slo": {"qps": 2.0}, "export": {}, "actions": []}
    server = ApiServer(build_api(TimeSeriesStore(), lambda: status), "127.0.0.1", 0)
    server.start()
    try:
        result = runner.invoke(app, ["status", "--url", server.url], env={"COLUMNS": "200"})
        raw = runner.invoke(app, ["status", "--url", server.url, "--json"])
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    assert "ready" in result.output and "no GPU: backend off" in result.output
    assert '"qps": 2.0' in raw.output


def test_status_finds_the_agent_through_the_data_dir(tmp_path: Path) -> None:
    server = ApiServer(build_api(TimeSeriesStore(), lambda: {"engine": {"state": "starting"}}), "127.0.0.1", 0)
    server.start()
    try:
        (tmp_path / "agent.json").write_text(f'{{"url": "{server.url}"}}')
        result = runner.invoke(app, ["status", "--data-dir", str(tmp_path), "--json"])
    finally:
        server.stop()
    assert result.exit_code == 0 and '"starting"' in result.output


def test_status_without_agent_is_a_one_line_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "no agent answering at http://127.0.0.1:9/api/status" in result.output


def test_agent_modules_import_without_torch() -> None:
    code = ("import sys; sys.modules['torch'] = None\n"
            "from dsagent.cli import app\n"
            "import dsagent.app, dsagent.supervisor, dsagent.api, dsagent.status_view\n"
            "import dsagent.sources.factory, dsagent.sources.otlp_receiver, dsagent.export\n"
            "assert 'torch' not in {m for m in sys.modules if sys.modules[m] is not None}, 'torch imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
