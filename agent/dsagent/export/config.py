"""Settings of the export pipeline, as pydantic models the agent's top-level config embeds.

Every field has a default so `ExportConfig()` is the embedded default: NDJSON files under the agent's
data directory through the durable spool, no Elasticsearch, no OTLP upstream. Secrets are `SecretStr`
so `dsagent config show` prints them masked.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

DEFAULT_DROP_FIELDS = [
    "prompt",
    "completion",
    "prompt_text",
    "completion_text",
    "gen_ai.prompt",
    "gen_ai.completion",
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "messages",
    "input_text",
    "output_text",
]

#: globs (any depth, key or dotted path) for the text-carrying attribute families of the OpenTelemetry GenAI
#: semantic conventions (current and deprecated indexed forms), OpenInference / OpenLLMetry and HTTP bodies.
DEFAULT_DROP_PATTERNS = [
    "gen_ai.prompt*", "gen_ai.completion*", "gen_ai.input.messages*", "gen_ai.output.messages*",
    "gen_ai.system_instructions*", "gen_ai.tool.call.arguments*", "gen_ai.tool.call.result*",
    "gen_ai.*.content*", "gen_ai.choice*", "gen_ai.user.message*", "gen_ai.assistant.message*",
    "llm.prompts*", "llm.prompt*", "llm.completions*", "llm.input_messages*", "llm.output_messages*",
    "llm.prompt_template*", "input.value*", "output.value*", "http.request.body*", "http.response.body*",
    "body.content*", "*.content", "*prompt_text*", "*completion_text*",
]
#: request-record attributes kept by default (globs); everything else is dropped before redaction.
DEFAULT_REQUEST_ATTRIBUTES_ALLOW = [
    "service.name", "service.instance.id", "service.version", "host.name", "trace_id", "span_id",
    "gen_ai.system", "gen_ai.provider.name", "gen_ai.operation.name", "gen_ai.request.model",
    "gen_ai.response.model", "gen_ai.response.id", "gen_ai.response.finish_reasons", "gen_ai.usage.*",
    "gen_ai.request.max_tokens", "gen_ai.request.temperature", "gen_ai.request.top_p", "gen_ai.request.top_k",
    "gen_ai.request.seed", "gen_ai.request.stream", "http.response.status_code", "http.request.method",
    "http.route", "server.address", "server.port", "error.type", "dssidecar.queue_time*",
    "dssidecar.prefill_time*", "dssidecar.decode_time*", "dssidecar.engine*",
]

#: request latency buckets in seconds: the DESIGN.md default (0.1, 0.5, 1, 2, 5 s) plus finer ones below 0.1 s.
DEFAULT_LATENCY_BUCKETS_SECONDS = [
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08,
    0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
]
#: per-output-token time buckets in seconds (decode steps are milliseconds).
DEFAULT_TOKEN_TIME_BUCKETS_SECONDS = [
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0,
]
#: token-count buckets (GenAI semconv advice for gen_ai.client.token.usage).
DEFAULT_TOKEN_COUNT_BUCKETS = [
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpoolConfig(_Strict):
    """The durable SQLite spool in front of every destination (one database file per destination)."""

    directory: Path | None = Field(None, description="default: <data_dir>/spool")
    max_bytes: int = Field(512 * 1024 * 1024, gt=0, description="disk quota per destination spool")
    batch_documents: int = Field(2000, gt=0, description="documents per send while draining")
    retry_initial_seconds: float = Field(0.5, gt=0)
    retry_max_seconds: float = Field(30.0, gt=0)
    move_aside_after_attempts: int = Field(
        5, ge=1, description="failed sends before a document stuck at the head of the queue is moved to its tail")


class DeadLetterConfig(_Strict):
    """Documents a destination refused for good: <data_dir>/dead-letter/<destination>.ndjson, capped."""

    max_bytes: int = Field(64 * 1024 * 1024, gt=0, description="size at which the file rotates")
    keep_files: int = Field(3, ge=1, description="rotated files kept besides the current one (oldest deleted)")


class ElasticsearchConfig(_Strict):
    """An Elasticsearch cluster written through data streams (`metrics-dsagent.*`, `logs-dsagent.*`)."""

    url: str = Field(..., description="http(s)://host:9200; several may be given comma-separated")
    api_key: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    ca_certs: Path | None = None
    verify_certs: bool = True
    request_timeout_seconds: float = Field(30.0, gt=0)
    index_prefix: str = Field("dsagent", pattern=r"^[a-z0-9_.]+$", description="dataset prefix of the streams")
    namespace: str = Field("default", pattern=r"^[a-z0-9_]+$", description="data stream namespace")
    install_templates: bool = True
    metrics_time_series_mode: bool = Field(
        False,
        description=(
            "index metrics as a TSDS. Off by default: a TSDS rejects documents older than its look-back "
            "window (2 h) and custom _ids, so a long outage's backlog could not be replayed exactly once"
        ),
    )

    @field_validator("url")
    @classmethod
    def _url_has_scheme(cls, value: str) -> str:
        for part in value.split(","):
            if not part.strip().startswith(("http://", "https://")):
                raise ValueError(f"elasticsearch url {part.strip()!r} must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _basic_auth_complete(self) -> ElasticsearchConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("elasticsearch basic auth needs both username and password")
        return self

    def urls(self) -> list[str]:
        return [part.strip() for part in self.url.split(",") if part.strip()]


class FileExportConfig(_Strict):
    """Local NDJSON files, one per stream, rotated by size: the embedded default destination."""

    enabled: bool = True
    directory: Path | None = Field(None, description="default: <data_dir>/export")
    rotate_bytes: int = Field(64 * 1024 * 1024, gt=0)
    keep_files: int = Field(5, ge=1, description="rotated files kept per stream besides the current one")


class OtlpExportConfig(_Strict):
    """An upstream OpenTelemetry collector (Elastic EDOT or any) over OTLP/HTTP protobuf."""

    endpoint: str = Field(..., description="base URL, e.g. http://collector:4318 (/v1/metrics, /v1/logs appended)")
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    timeout_seconds: float = Field(10.0, gt=0)

    @field_validator("endpoint")
    @classmethod
    def _endpoint_has_scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"otlp endpoint {value!r} must start with http:// or https://")
        return value.rstrip("/")


class MaskPattern(_Strict):
    pattern: str
    replacement: str = "[REDACTED]"


class RedactionConfig(_Strict):
    """Applied to every request/action record before any exporter sees it."""

    drop_fields: list[str] = Field(default_factory=lambda: list(DEFAULT_DROP_FIELDS))
    drop_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DROP_PATTERNS),
        description="globs on a field's key or dotted path (any depth); dropped wherever they match")
    request_attributes_allow: list[str] | None = Field(
        default_factory=lambda: list(DEFAULT_REQUEST_ATTRIBUTES_ALLOW),
        description="globs of request-record attributes kept (the rest dropped); null keeps every attribute, "
                    "drop_fields/drop_patterns still apply")
    mask_patterns: list[MaskPattern] = Field(default_factory=list)


class HistogramBuckets(_Strict):
    latency_seconds: list[float] = Field(default_factory=lambda: list(DEFAULT_LATENCY_BUCKETS_SECONDS))
    token_time_seconds: list[float] = Field(default_factory=lambda: list(DEFAULT_TOKEN_TIME_BUCKETS_SECONDS))
    token_count: list[float] = Field(default_factory=lambda: [float(b) for b in DEFAULT_TOKEN_COUNT_BUCKETS])

    @field_validator("latency_seconds", "token_time_seconds", "token_count")
    @classmethod
    def _ascending(cls, value: list[float]) -> list[float]:
        if not value or any(b <= a for a, b in zip(value, value[1:], strict=False)):
            raise ValueError(f"histogram buckets must be non-empty and strictly ascending, got {value}")
        return value


class ExportConfig(_Strict):
    elasticsearch: ElasticsearchConfig | None = None
    file: FileExportConfig = Field(default_factory=lambda: FileExportConfig.model_validate({}))
    otlp: OtlpExportConfig | None = None
    spool: SpoolConfig = Field(default_factory=lambda: SpoolConfig.model_validate({}))
    dead_letter: DeadLetterConfig = Field(default_factory=lambda: DeadLetterConfig.model_validate({}))
    redaction: RedactionConfig = Field(default_factory=RedactionConfig)
    buckets: HistogramBuckets = Field(default_factory=HistogramBuckets)
    metric_export_interval_seconds: float = Field(10.0, gt=0, description="how often meters are collected")
