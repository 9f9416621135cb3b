"""Config loading: errors name the key and the file/env/flag, precedence, masking."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dsagent.config import ConfigError, effective_config_yaml, load_config, mask_secrets


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_embedded_default_runs_builtin_engine_with_ndjson_and_no_elasticsearch() -> None:
    config = load_config(None, environ={})
    assert config.engine.kind == "builtin"
    assert config.engine.model is None  # demo model generated on first run
    assert config.intervals.collect_seconds == 1.0
    assert config.export.elasticsearch is None
    assert config.export.file.enabled
    assert config.server.host == "127.0.0.1"


def test_bad_type_error_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "engine:\n  kind: builtin\n  port: abc\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert f"{path}:3: engine.port:" in message
    assert "valid integer" in message and "'abc'" in message


def test_unknown_key_is_rejected_with_its_path(tmp_path: Path) -> None:
    path = write(tmp_path, "store:\n  retention_secs: 10\n")
    with pytest.raises(ConfigError, match=r"config.yaml:2: store.retention_secs: unknown key"):
        load_config(path, environ={})


def test_every_bad_key_is_reported_not_just_the_first(tmp_path: Path) -> None:
    path = write(tmp_path, "engine:\n  port: x\nintervals:\n  collect_seconds: -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    lines = str(info.value).splitlines()
    assert any("engine.port" in line for line in lines)
    assert any("intervals.collect_seconds" in line and "greater than 0" in line for line in lines)


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "engine:\n  port: [1, 2\n")
    with pytest.raises(ConfigError, match=r"config.yaml:\d+: not valid YAML"):
        load_config(path, environ={})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), environ={})


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    path = write(tmp_path, "engine:\n  port: 8100\n  host: 127.0.0.2\nstore:\n  retention_seconds: 30\n")
    env = {"DSAGENT_ENGINE__PORT": "8200", "DSAGENT_STORE__RETENTION_SECONDS": "40"}
    config = load_config(path, environ=env, overrides={"engine.port": 8300})
    assert config.engine.port == 8300  # flag
    assert config.store.retention_seconds == 40  # env over file
    assert config.engine.host == "127.0.0.2"  # file over default
    assert config.intervals.collect_seconds == 1.0  # default
    assert load_config(path, environ=env).engine.port == 8200
    assert load_config(path, environ={}).engine.port == 8100


def test_flat_elasticsearch_env_adds_the_exporter() -> None:
    config = load_config(None, environ={"DSAGENT_ELASTICSEARCH_URL": "http://127.0.0.1:9200"})
    assert config.export.elasticsearch is not None
    assert config.export.elasticsearch.url == "http://127.0.0.1:9200"


def test_env_error_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"environment DSAGENT_ENGINE__PORT: engine.port"):
        load_config(None, environ={"DSAGENT_ENGINE__PORT": "eighty"})


def test_flag_error_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"flag --engine-port: engine.port"):
        load_config(None, environ={}, overrides={"engine.port": "eighty"})


def test_env_values_parse_as_yaml_lists() -> None:
    config = load_config(None, environ={"DSAGENT_ENGINE__EXTRA_ARGS": "[--max-batch-size, '8']"})
    assert config.engine.extra_args == ["--max-batch-size", "8"]


def test_unrelated_dsagent_variables_are_ignored() -> None:
    config = load_config(None, environ={"DSAGENT_CONFIG": "x.yaml", "DSAGENT_SOMETHING_ELSE": "1"})
    assert config.engine.kind == "builtin"


def test_external_engine_needs_url() -> None:
    with pytest.raises(ConfigError, match="engine.url"):
        load_config(None, environ={}, overrides={"engine.kind": "external"})


def test_vllm_command_string_is_split() -> None:
    config = load_config(None, environ={}, overrides={"engine.kind": "vllm", "engine.command": "vllm serve m --port 8000"})
    assert config.engine.command == ["vllm", "serve", "m", "--port", "8000"]


def test_backoff_max_below_initial_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "supervisor:\n  backoff_initial_seconds: 10\n  backoff_max_seconds: 1\n")
    with pytest.raises(ConfigError, match="backoff_max_seconds"):
        load_config(path, environ={})


def test_config_show_masks_api_keys_passwords_and_url_credentials(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "export:\n  elasticsearch:\n    url: https://elastic:hunter2@es.example:9200\n"
        "    username: elastic\n    password: hunter2\n    api_key: c2VjcmV0\n"
        "  otlp:\n    endpoint: http://collector:4318\n    headers:\n      Authorization: Bearer t0ken\n"))
    text = effective_config_yaml(load_config(path, environ={}))
    assert "hunter2" not in text and "c2VjcmV0" not in text and "t0ken" not in text
    shown = yaml.safe_load(text)
    assert shown["export"]["elasticsearch"]["username"] == "elastic"  # not a secret
    assert shown["export"]["elasticsearch"]["password"] == "***"
    assert shown["export"]["elasticsearch"]["url"] == "https://elastic:***@es.example:9200"
    assert shown["engine"]["port"] == 8000


def test_mask_secrets_keeps_absent_secrets_absent() -> None:
    assert mask_secrets({"api_key": None, "token": "x", "nested": [{"password": "p"}]}) == {
        "api_key": None, "token": "***", "nested": [{"password": "***"}]}


def test_off_and_on_stay_strings_only_true_false_are_booleans(tmp_path: Path) -> None:
    path = write(tmp_path, "sources:\n  gpu:\n    backend: off\n  host:\n    enabled: false\n")
    config = load_config(path, environ={"DSAGENT_SOURCES__ENGINE__ENABLED": "False"})
    assert config.sources.gpu.backend == "off"
    assert config.sources.host.enabled is False and config.sources.engine.enabled is False
    assert load_config(None, environ={"DSAGENT_SOURCES__GPU__BACKEND": "off"}).sources.gpu.backend == "off"


def test_one_export_interval_intervals_section_wins_over_export_section() -> None:
    assert load_config(None, environ={}).export_interval_seconds() == 10.0
    config = load_config(None, environ={"DSAGENT_EXPORT__METRIC_EXPORT_INTERVAL_SECONDS": "3"})
    assert config.export_interval_seconds() == 3.0
    config = load_config(None, environ={"DSAGENT_EXPORT__METRIC_EXPORT_INTERVAL_SECONDS": "3",
                                        "DSAGENT_INTERVALS__EXPORT_SECONDS": "7"})
    assert config.export_interval_seconds() == 7.0
