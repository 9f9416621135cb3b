"""The builtin engine (dssidecar): knobs change live through its token-protected /control API.

Why here: the agent spawns the sidecar, so it also creates the bearer token (a 0600 file in the data dir,
handed to the sidecar as DSSIDECAR_CONTROL_TOKEN_FILE) and knob actions work on the embedded default with
no set-up. The sidecar validates again and answers 422/409/500 with a reason, which becomes the refusal.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from dsagent.engines.base import EngineKnobRefused, KnobMode

if TYPE_CHECKING:
    from dsagent.config import EngineConfig

DEMO_SERVED_MODEL_NAME = "demo-model"  # what clients send as `model` when the agent generated the demo model

CONTROL_TOKEN_FILE_ENV = "DSSIDECAR_CONTROL_TOKEN_FILE"
LIVE_KNOBS: dict[str, KnobMode] = {"max_batch_size": "live", "max_num_batched_tokens": "live",
                                   "kv_cache_blocks": "live", "precision": "swap", "backend": "swap"}


def ensure_control_token(path: Path) -> str:
    """The token in `path`, created (random, mode 0600) when absent or empty. Returns the token."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        existing = path.read_text(encoding="utf-8").strip()
    except OSError:
        existing = ""
    if existing:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # a token readable by others would let them retune the engine
        return existing
    token = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    os.chmod(path, 0o600)
    return token


class BuiltinLauncher:
    """How the supervisor runs dssidecar: `dssidecar serve` on the model (the demo model when none is set)."""

    kind = "builtin"
    owns_process = True

    def __init__(self, engine: EngineConfig) -> None:
        self.engine = engine
        self.prepares_demo_model = engine.model is None

    def command(self, model_path: Path | None, otlp_endpoint: str | None) -> list[str]:
        from dsagent.supervisor import sidecar_command

        assert model_path is not None
        engine = self.engine
        command = [*sidecar_command(), "serve", "--model", str(model_path), "--host", engine.host, "--port", str(engine.port)]
        served_model_name = engine.served_model_name
        if served_model_name is None and engine.model is None:
            served_model_name = DEMO_SERVED_MODEL_NAME  # a stable name for clients, whatever the training steps
        if served_model_name:
            command += ["--served-model-name", served_model_name]
        if otlp_endpoint:
            command += ["--otlp-endpoint", otlp_endpoint]
        return command + list(engine.extra_args)

    def environment(self, otlp_endpoint: str | None) -> dict[str, str]:
        # the agent needs one record per request: the OTLP log carries everything, so skip the span
        return {} if "DSSIDECAR_OTLP_EXPORT_SPANS" in os.environ else {"DSSIDECAR_OTLP_EXPORT_SPANS": "false"}


class BuiltinEngineAdapter:
    kind = "builtin"

    def __init__(self, url: str, token: str | None, *, timeout_seconds: float = 120.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_seconds, connect=5.0), transport=transport)

    def knob_modes(self) -> dict[str, KnobMode]:
        return dict(LIVE_KNOBS)

    def _headers(self) -> dict[str, str]:
        if not self.token:
            raise EngineKnobRefused("no control token for the engine's /control (actions.control_token_file)")
        return {"Authorization": f"Bearer {self.token}"}

    def read_knobs(self) -> dict[str, Any]:
        try:
            response = self._client.get(f"{self.url}/control/knobs", headers=self._headers())
        except httpx.HTTPError as exc:
            raise EngineKnobRefused(f"engine /control unreachable at {self.url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise EngineKnobRefused(f"engine /control/knobs answered {response.status_code}: {_message(response)}")
        knobs = response.json().get("knobs", {})
        return {name: entry.get("value") for name, entry in knobs.items() if isinstance(entry, dict)}

    def apply_knobs(self, update: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._client.put(f"{self.url}/control/knobs", json=update, headers=self._headers())
        except httpx.HTTPError as exc:
            raise EngineKnobRefused(f"engine /control unreachable at {self.url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise EngineKnobRefused(f"engine refused ({response.status_code}): {_message(response)}",
                                    {"status_code": response.status_code})
        body = response.json()
        return {"applied": body.get("applied"), "apply_seconds": body.get("apply_seconds")}

    def close(self) -> None:
        self._client.close()


def _message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        return str(error.get("message") or response.text[:200])
    except ValueError:
        return response.text[:200]
