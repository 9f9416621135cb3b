"""ServerConfig: flag > DSSIDECAR_* env > default, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from dssidecar.config import ServerConfig
from pydantic import ValidationError


def test_env_prefix_and_flag_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSSIDECAR_PORT", "9123")
    monkeypatch.setenv("DSSIDECAR_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("DSSIDECAR_SHUTDOWN_GRACE_SECONDS", "2.5")
    from_env = ServerConfig()
    assert (from_env.port, from_env.max_batch_size, from_env.shutdown_grace_seconds) == (9123, 8, 2.5)
    from_flag = ServerConfig(port=9000)
    assert from_flag.port == 9000 and from_flag.max_batch_size == 8


def test_defaults_are_local_and_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DSSIDECAR_PORT", "DSSIDECAR_HOST", "DSSIDECAR_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    config = ServerConfig()
    assert config.host == "127.0.0.1" and config.port == 8000 and config.otlp_endpoint is None
    assert config.engine_settings() == {}


def test_engine_settings_carry_only_what_was_set() -> None:
    config = ServerConfig(max_batch_size=4, precision="int8", kv_cache_blocks=100)
    assert config.engine_settings() == {"max_batch_size": 4, "precision": "int8", "kv_cache_blocks": 100}


def test_bad_values_name_the_setting() -> None:
    with pytest.raises(ValidationError, match="otlp_endpoint"):
        ServerConfig(otlp_endpoint="collector:4318")
    with pytest.raises(ValidationError, match="precision"):
        ServerConfig(precision="fp4")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="max_batch_size"):
        ServerConfig(max_batch_size=0)


def test_model_name_defaults_to_the_directory_name(tmp_path: Path) -> None:
    model_dir = tmp_path / "qwen-tiny"
    assert ServerConfig(model=model_dir).model_name() == "qwen-tiny"
    assert ServerConfig(model=model_dir, served_model_name="alias").model_name() == "alias"


def test_control_token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server resolves the token once, in dssidecar.api.control (config only carries the settings)."""
    from dssidecar.api.control import resolve_control_token

    monkeypatch.delenv("DSSIDECAR_CONTROL_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    config = ServerConfig(control_token_file=token_file)
    assert resolve_control_token(config.control_token, config.control_token_file) == "s3cret"
    with pytest.raises(ValueError, match="control token file"):
        resolve_control_token(None, tmp_path / "missing")
