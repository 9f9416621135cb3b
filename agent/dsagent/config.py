"""The agent's configuration: one validated YAML file, overridable by DSAGENT_* environment and flags.

Why a module of its own: every part of the agent (supervisor, sources, store, exporters, API) reads its
section from one `AgentConfig`, and an operator must get an error that names the key and where it came
from ("config.yaml:3: engine.port: Input should be a valid integer") instead of a traceback.

Precedence, highest first: command-line flag > DSAGENT_* environment > config file > built-in default.
Environment keys nest with a double underscore (DSAGENT_ENGINE__PORT=8001 -> engine.port); a few flat
names are documented aliases (DSAGENT_ELASTICSEARCH_URL -> export.elasticsearch.url, see ENV_ALIASES).
Environment values are parsed as YAML scalars/flow collections, so `8001`, `true` and `[a, b]` work.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from dsagent.actions.config import ActionsConfig
from dsagent.actions.schedules import SchedulePolicy
from dsagent.export.config import ExportConfig
from dsagent.rules.config import RulesConfig
from dsagent.sources.config import SourcesConfig

ENV_PREFIX = "DSAGENT_"
ENV_NESTING = "__"

# Flat environment names (documented in the CLI help) -> dotted config key.
ENV_ALIASES: dict[str, str] = {
    "DSAGENT_ELASTICSEARCH_URL": "export.elasticsearch.url",
    "DSAGENT_ELASTICSEARCH_API_KEY": "export.elasticsearch.api_key",
    "DSAGENT_ELASTICSEARCH_USERNAME": "export.elasticsearch.username",
    "DSAGENT_ELASTICSEARCH_PASSWORD": "export.elasticsearch.password",
    "DSAGENT_ELASTICSEARCH_CA_CERTS": "export.elasticsearch.ca_certs",
    "DSAGENT_DATA_DIR": "data_dir",
    "DSAGENT_ENGINE_URL": "engine.url",
    "DSAGENT_LOG_LEVEL": "log_level",
}
# dotted config key -> the `dsagent run` flag that sets it (for error messages)
FLAG_NAMES: dict[str, str] = {
    "export.elasticsearch.url": "--elasticsearch-url",
    "engine.port": "--engine-port",
    "engine.model": "--model",
    "engine.url": "--engine-url",
    "engine.kind": "--engine-url",
    "server.port": "--api-port",
    "data_dir": "--data-dir",
    "log_level": "--log-level",
}
# Environment names that are read by the CLI itself, not config keys.
ENV_NOT_CONFIG = {"DSAGENT_CONFIG", "DSAGENT_TEST_ES_URL", "DSAGENT_TEST_MODEL_CACHE", "DSAGENT_AGENT_URL"}

SECRET_KEY_PATTERN = re.compile(r"(api_?key|password|passwd|secret|token|authorization|credentials?)$", re.I)
MASK = "***"


class _Yaml12BoolLoader(yaml.SafeLoader):
    """SafeLoader where only true/false are booleans (YAML 1.2): `backend: off` stays the string 'off'."""


_Yaml12BoolLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12BoolLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12BoolLoader)  # noqa: S506 - a SafeLoader subclass


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the source (file/env/flag), the key and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DemoModelConfig(_Section):
    """The demo checkpoint the builtin engine runs when no model path is configured."""

    size: Literal["tiny", "small"] = "tiny"
    train_steps: int = Field(default=200, ge=0)
    seed: int = 0


class EngineConfig(_Section):
    """Which inference engine the agent runs or watches.

    builtin: the agent spawns `dssidecar serve` (model: a checkpoint directory; empty = the demo model
    generated into data_dir on first run). vllm: the agent spawns `command` (a vLLM command line) and
    reaches it at host:port. external: the agent only observes the engine at `url` (a pod's sidecar).
    """

    kind: Literal["builtin", "vllm", "external"] = "builtin"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    model: Path | None = None
    served_model_name: str | None = None
    demo_model: DemoModelConfig = Field(default_factory=DemoModelConfig)
    extra_args: list[str] = Field(default_factory=list)
    command: list[str] = Field(default_factory=list)
    url: str | None = None
    environment: dict[str, str] = Field(default_factory=dict)

    @field_validator("command", "extra_args", mode="before")
    @classmethod
    def _split_command_line(cls, value: Any) -> Any:
        if isinstance(value, str):
            import shlex

            return shlex.split(value)
        return value

    @model_validator(mode="after")
    def _kind_has_what_it_needs(self) -> EngineConfig:
        if self.kind == "external" and not self.url:
            raise ValueError("engine.kind 'external' needs engine.url (for example http://127.0.0.1:8000)")
        if self.kind == "vllm" and not self.command:
            raise ValueError(
                "engine.kind 'vllm' needs engine.command (for example 'vllm serve MODEL --port 8000')"
            )
        return self

    def base_url(self) -> str:
        """Where the engine's HTTP API is reached."""
        if self.url:
            return self.url.rstrip("/")
        return f"http://{self.host}:{self.port}"


class SupervisorConfig(_Section):
    """How the engine process is started, watched, restarted and stopped."""

    backoff_initial_seconds: float = Field(default=1.0, gt=0)
    backoff_max_seconds: float = Field(default=60.0, gt=0)
    crash_loop_limit: int = Field(default=5, ge=1, description="consecutive failed starts before giving up")
    stable_after_seconds: float = Field(
        default=60.0, gt=0, description="a run this long after ready resets the consecutive-failure count"
    )
    readiness_timeout_seconds: float = Field(default=300.0, gt=0)
    readiness_path: str = "/readyz"
    readiness_poll_seconds: float = Field(default=0.5, gt=0)
    drain_grace_seconds: float = Field(default=30.0, ge=0)
    demo_model_timeout_seconds: float = Field(default=1800.0, gt=0)

    @model_validator(mode="after")
    def _backoff_ordered(self) -> SupervisorConfig:
        if self.backoff_max_seconds < self.backoff_initial_seconds:
            raise ValueError(
                f"supervisor.backoff_max_seconds ({self.backoff_max_seconds}) must be >= "
                f"backoff_initial_seconds ({self.backoff_initial_seconds})"
            )
        return self


class StoreConfig(_Section):
    """Bounds of the in-memory time-series store (per series: whichever limit is hit first).

    The defaults cover rule windows up to 5 minutes at the 1 s collect interval (~16 bytes per sample:
    500 series x 330 samples is ~2.6 MB); raise both for longer `[window]`s or `for:` durations.
    """

    retention_seconds: float = Field(default=330.0, gt=0)
    max_samples_per_series: int = Field(default=400, ge=1)


class IntervalsConfig(_Section):
    """Periods of the agent's scheduled jobs (all on one APScheduler, see dsagent.scheduler)."""

    collect_seconds: float = Field(default=1.0, gt=0)
    evaluate_seconds: float = Field(default=5.0, gt=0)
    export_seconds: float | None = Field(
        default=None, gt=0,
        description="how often meters are collected into the export spools; empty = export.metric_export_interval_seconds",
    )


class ServerConfig(_Section):
    """The agent's local HTTP API: /metrics, /api/status, /healthz (the OTLP receiver has its own listener).

    token: on a non-loopback host, /api/status and /api/actions need `Authorization: Bearer <token>`;
    empty = generated at start and written to data_dir/agent.json (owner-only) for `dsagent status`.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)
    token: SecretStr | None = None
    readiness_required_sources: list[str] = Field(
        default_factory=lambda: ["gpu", "host", "engine"],
        description="sources (by name, `gpu` for any GPU backend) whose stale readings make /readyz answer 503")
    readiness_max_source_age_seconds: float = Field(
        default=30.0, gt=0, description="a required source's last good reading older than this is stale")
    slo_window_seconds: float = Field(default=60.0, gt=0, description="window for inference_qps and latency quantiles")


class AgentConfig(_Section):
    engine: EngineConfig = Field(default_factory=EngineConfig)
    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig)
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)  # type: ignore[arg-type]  # E's positional Field defaults
    store: StoreConfig = Field(default_factory=StoreConfig)
    intervals: IntervalsConfig = Field(default_factory=IntervalsConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    actions: ActionsConfig = Field(default_factory=ActionsConfig)  # rules that act: guard, scale target, notify
    schedules: list[SchedulePolicy] = Field(default_factory=list)  # cron policies (dsagent.actions.schedules)
    rules: RulesConfig = Field(default_factory=RulesConfig)  # rule files over the store (dsagent.rules)
    data_dir: Path = Field(default_factory=lambda: default_data_dir())
    log_level: str = "INFO"

    def export_interval_seconds(self) -> float:
        """The one metric-collection period: intervals.export_seconds, else the export section's."""
        return self.intervals.export_seconds or self.export.metric_export_interval_seconds

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {value!r}; use DEBUG, INFO, WARNING or ERROR")
        return level


def default_data_dir() -> Path:
    """$XDG_STATE_HOME/dsagent, or ~/.local/state/dsagent."""
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "dsagent"


# ---------------------------------------------------------------------------------------------------------
# Loading with provenance: every overlay remembers where each key came from, for error messages.


class _Layer:
    def __init__(self, origin: str, values: dict[str, Any], lines: dict[tuple[str, ...], int] | None = None):
        self.origin = origin
        self.values = values
        self.lines = lines or {}

    def describe(self, loc: tuple[str, ...]) -> str | None:
        """'config.yaml:3' / 'environment DSAGENT_X' / 'flag --x' if this layer set `loc` or a parent."""
        names = self.values.get("__names__", {})
        for depth in range(len(loc), 0, -1):
            prefix = loc[:depth]
            if not _has_path(self.values, prefix):
                continue
            if prefix in names:
                return str(names[prefix])
            line = self.lines.get(prefix)
            return f"{self.origin}:{line}" if line else self.origin
        return None


def _has_path(values: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = values
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True


def _set_path(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = target
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def _deep_merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if key == "__names__":
            continue
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _duplicate_key(node: yaml.Node) -> tuple[str, int, int] | None:
    """The first key given twice in one mapping, anywhere in the document: (key, first line, second line).
    YAML loaders keep the last silently; a config where `port:` appears twice is a mistake to name."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                return key, seen[key], line
            seen[key] = line
            found = _duplicate_key(value_node)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found = _duplicate_key(item)
            if found:
                return found
    return None


def _yaml_key_lines(node: yaml.Node, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    lines: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, str(key_node.value))
            lines[path] = key_node.start_mark.line + 1
            lines.update(_yaml_key_lines(value_node, path))
    return lines


def read_config_file(path: Path) -> _Layer:
    """Parse one YAML file; an unreadable or malformed file raises ConfigError naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from exc
    try:
        values = _load_yaml(text)
        root = yaml.compose(text, Loader=_Yaml12BoolLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from exc
    duplicate = _duplicate_key(root) if root is not None else None
    if duplicate is not None:
        key, first_line, second_line = duplicate
        raise ConfigError(f"{path}:{second_line}: duplicate key {key!r} (first given at line {first_line}); "
                          "keep one")
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (engine:, export:, ...), "
                          f"got {type(values).__name__}")
    return _Layer(str(path), values, _yaml_key_lines(root) if root is not None else {})


def _parse_env_value(raw: str) -> Any:
    try:
        return _load_yaml(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw


def read_environment(environ: Mapping[str, str]) -> _Layer:
    """DSAGENT_SECTION__KEY=value and the flat aliases, as a nested overlay."""
    values: dict[str, Any] = {}
    names: dict[tuple[str, ...], str] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in ENV_NOT_CONFIG:
            continue
        if name in ENV_ALIASES:
            path = tuple(ENV_ALIASES[name].split("."))
        elif ENV_NESTING in name[len(ENV_PREFIX):] or name[len(ENV_PREFIX):].lower() in AgentConfig.model_fields:
            path = tuple(part.lower() for part in name[len(ENV_PREFIX):].split(ENV_NESTING))
        else:
            continue  # an unrelated DSAGENT_* variable (a flag of another command)
        _set_path(values, path, _parse_env_value(raw))
        names[path] = f"environment {name}"
    values["__names__"] = names
    return _Layer("environment", values)


def flags_layer(overrides: Mapping[str, Any]) -> _Layer:
    """Command-line overrides given as dotted keys ({'export.elasticsearch.url': URL}); None = not given."""
    values: dict[str, Any] = {}
    names: dict[tuple[str, ...], str] = {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        path = tuple(dotted.split("."))
        _set_path(values, path, value)
        names[path] = f"flag {FLAG_NAMES.get(dotted, '--' + path[-1].replace('_', '-'))}"
    values["__names__"] = names
    return _Layer("flags", values)


def _format_validation_error(error: ValidationError, layers: list[_Layer]) -> str:
    messages = []
    for item in error.errors():
        loc = tuple(str(part) for part in item["loc"])
        key = ".".join(loc) or "(top level)"
        origin = "default"
        for layer in reversed(layers):  # the highest-precedence layer that set it is the culprit
            described = layer.describe(loc)
            if described:
                origin = described
                break
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; `dsagent config show` lists the valid keys)"
        elif "input" in item and not isinstance(item["input"], dict | list):
            message = f"{message} (got {item['input']!r})"
        messages.append(f"{origin}: {key}: {message}")
    return "\n".join(messages)


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """The effective configuration: defaults < file < DSAGENT_* environment < flag overrides.

    Raises ConfigError with one line per bad key, each naming its origin and the key.
    """
    environ = os.environ if environ is None else environ
    layers: list[_Layer] = []
    if path is not None:
        layers.append(read_config_file(Path(path)))
    layers.append(read_environment(environ))
    layers.append(flags_layer(overrides or {}))
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _deep_merge(merged, layer.values)
    try:
        return AgentConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, layers)) from None


SECRET_FLAG_PATTERN = re.compile(r"^--?[\w.-]*(key|token|password|passwd|secret)$", re.I)
_URL_CREDENTIALS = re.compile(r"://(?:([^/@\s:]+):)?[^/@\s]+@")


def strip_url_credentials(text: str) -> str:
    """https://elastic:hunter2@es:9200 -> https://elastic:***@es:9200; a lone user part (often a token)
    https://TOKEN@host -> https://***@host. Every URL inside the text."""
    if "@" not in text:
        return text
    return _URL_CREDENTIALS.sub(lambda m: f"://{m.group(1)}:{MASK}@" if m.group(1) else f"://{MASK}@", text)


def mask_arguments(arguments: list[Any]) -> list[Any]:
    """A command line with the values of --*key / --*token / --*password / --*secret flags masked, in both
    the `--api-key VALUE` and the `--api-key=VALUE` forms, and credentials stripped from URLs."""
    masked: list[Any] = []
    hide_next = False
    for argument in arguments:
        if not isinstance(argument, str):
            masked.append(argument)
            continue
        if hide_next:
            masked.append(MASK)
            hide_next = False
            continue
        flag, equals, _ = argument.partition("=")
        if SECRET_FLAG_PATTERN.match(flag):
            if equals:
                masked.append(f"{flag}={MASK}")
            else:
                masked.append(argument)
                hide_next = True
            continue
        masked.append(strip_url_credentials(argument))
    return masked


def mask_secrets(value: Any, key: str = "") -> Any:
    """A copy with every secret-looking key's value replaced by '***' (api keys, passwords, tokens), every
    `environment` value (an engine's AWS_SECRET_ACCESS_KEY, HF_TOKEN, ...), the values of secret flags in
    command lines, and credentials inside URLs (https://user:pass@host) masked."""
    if isinstance(value, Mapping):
        if key in ("headers", "environment"):
            return {k: MASK for k in value}
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        if key in ("command", "extra_args"):
            return mask_arguments(value)
        return [mask_secrets(v, key) for v in value]
    if value is not None and SECRET_KEY_PATTERN.search(key):
        return MASK
    if isinstance(value, str):
        return strip_url_credentials(value)
    return value


def effective_config_yaml(config: AgentConfig) -> str:
    """The configuration as YAML with secrets masked (what `dsagent config show` prints)."""
    data = mask_secrets(config.model_dump(mode="json"))
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
