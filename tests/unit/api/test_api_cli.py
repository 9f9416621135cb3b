"""`dssidecar serve` flags: each one is a ServerConfig field (so it maps to DSSIDECAR_<NAME>), and bad
input ends with one line and status 2 before any model is loaded."""

from __future__ import annotations

import inspect

import pytest
from dssidecar.cli import app, serve_command
from dssidecar.config import ServerConfig
from typer.testing import CliRunner

runner = CliRunner()


def test_every_serve_flag_is_a_server_config_field() -> None:
    flags = set(inspect.signature(serve_command).parameters)
    assert flags - set(ServerConfig.model_fields) == set()


def test_env_var_supplies_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSSIDECAR_MODEL", "/definitely/not/here")
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2
    assert "/definitely/not/here" in result.output and "does not exist" in result.output


def test_flag_beats_env_and_bad_values_name_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSSIDECAR_PORT", "8000")
    result = runner.invoke(app, ["serve", "--model", "/x", "--port", "70000"])
    assert result.exit_code == 2
    assert "--port" in result.output and "65535" in result.output
    result = runner.invoke(app, ["serve", "--model", "/x", "--otlp-endpoint", "collector:4318"])
    assert result.exit_code == 2 and "--otlp-endpoint" in result.output


def test_missing_model_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSSIDECAR_MODEL", raising=False)
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "--model" in result.output
