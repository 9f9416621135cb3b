"""Settings of the `dssidecar serve` process, read once at start.

One pydantic-settings model so that every setting has one name, one type and one default, and the
precedence is explicit: command-line flag (passed as an init argument) > DSSIDECAR_* environment variable
> default. The engine's own settings (batch limits, KV pool, precision, device) are carried here too and
handed to the engine's EngineConfig by `engine_settings()`, so the CLI has a single place to map flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PrecisionName = Literal["fp32", "bf16", "fp16", "int8", "int8_weight_only", "fp8"]


class ServerConfig(BaseSettings):
    """Everything `dssidecar serve` needs; every field is also the env var DSSIDECAR_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="DSSIDECAR_", extra="ignore", protected_namespaces=())

    # --- what to serve
    model: Path | None = Field(None, description="Checkpoint directory (config.json, *.safetensors, tokenizer).")
    served_model_name: str | None = Field(
        None, description="Name clients pass as `model`; default: the checkpoint directory's name."
    )

    # --- HTTP
    host: str = Field("127.0.0.1", description="Interface to bind; 127.0.0.1 keeps the server local.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    shutdown_grace_seconds: float = Field(
        30.0, ge=0.0, description="After SIGTERM, how long in-flight requests may run before they are aborted."
    )
    max_request_body_bytes: int = Field(
        8 << 20, ge=1, description="Largest request body accepted; a larger one gets 413 before it is read."
    )
    access_log: bool = Field(True, description="Write one JSON line per request to the dssidecar.access logger.")
    log_level: str = Field("info", description="Python log level for dssidecar and uvicorn.")

    # --- request telemetry (OTLP/HTTP; off unless an endpoint is given)
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP base URL (e.g. http://127.0.0.1:4318); request logs go to <url>/v1/logs and "
        "spans to <url>/v1/traces.",
    )
    otlp_timeout_seconds: float = Field(5.0, gt=0.0, description="Timeout of one OTLP export call.")
    otlp_export_spans: bool = Field(True, description="Also export one span per request when OTLP is on.")

    # --- /control (helper K's knob API reads these)
    control_token: str | None = Field(None, description="Bearer token for /control; required to use it.")
    control_token_file: Path | None = Field(None, description="File holding the /control bearer token.")
    control_port: int | None = Field(
        None, ge=0, le=65535,
        description="Serve /control on its own listener at 127.0.0.1:PORT (needed when host is not loopback; "
        "with a loopback host and no port, /control is on the main port).",
    )
    require_accuracy_check: bool = Field(
        False, description="Run check-precision before a live precision switch and refuse it (409) when it fails."
    )
    accuracy_min_agreement: float = Field(0.90, ge=0.0, le=1.0, description="check: smallest top-1 agreement.")
    accuracy_max_kl: float = Field(0.05, ge=0.0, description="check: largest mean KL divergence (nats).")
    accuracy_max_ppl_delta: float = Field(0.05, ge=0.0, description="check: largest relative perplexity increase.")

    # --- engine (handed to EngineConfig)
    max_batch_size: int | None = Field(None, ge=1, description="Most sequences decoded together in one step.")
    max_num_batched_tokens: int | None = Field(None, ge=1, description="Most tokens processed in one step.")
    kv_cache_blocks: int | None = Field(None, ge=1, description="KV pool size in blocks (default: automatic).")
    block_size: int | None = Field(None, ge=1, description="Tokens per KV block.")
    max_waiting_requests: int | None = Field(None, ge=1, description="Queue length beyond which requests get 429.")
    max_model_len: int | None = Field(None, ge=1, description="Context length cap (default: the model's).")
    precision: PrecisionName | None = Field(None, description="Weight/compute precision.")
    backend: str | None = Field(None, description="Model runner backend: eager, torch.compile or tensorrt.")
    num_threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: every usable core).")
    device: str | None = Field(None, description="auto, cpu, cuda or cuda:N.")
    enable_prefix_caching: bool | None = Field(None, description="Reuse KV blocks of identical prompt prefixes.")

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        allowed = ("critical", "error", "warning", "info", "debug")
        if value.lower() not in allowed:
            raise ValueError(f"log_level {value!r} is not one of {', '.join(allowed)}")
        return value.lower()

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_endpoint(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"otlp_endpoint {value!r} must be an http:// or https:// URL")
        return value.rstrip("/")

    def model_name(self) -> str:
        """The name clients use in `model`: --served-model-name, else the checkpoint directory's name."""
        if self.served_model_name:
            return self.served_model_name
        if self.model is not None:
            return self.model.resolve().name
        return "dssidecar"

    def engine_settings(self) -> dict[str, Any]:
        """The engine settings that were set (flag or env); unset ones keep EngineConfig's defaults."""
        names = (
            "max_batch_size",
            "max_num_batched_tokens",
            "kv_cache_blocks",
            "block_size",
            "max_waiting_requests",
            "max_model_len",
            "precision",
            "device",
            "enable_prefix_caching",
            "backend",
            "num_threads",
        )
        settings = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        if self.served_model_name:
            settings["model_name"] = self.served_model_name
        return settings
