"""The `dssidecar serve` process: load the model, open the port, drain on SIGTERM, exit 0.

Order matters to whoever supervises us: the checkpoint is loaded (and its manifest verified) before
the port is bound, so a connection that succeeds means the model is there; a bad model directory ends
the process with one line on stderr and a non-zero status instead of a traceback.

SIGTERM does not go straight to uvicorn. The first SIGTERM/SIGINT starts a drain: new requests get 503
(and /readyz 503) while in-flight ones run to completion, up to shutdown_grace_seconds, after which the
engine aborts what is left; only then is uvicorn told to exit, and it closes connections once their
responses are sent. A second signal skips the wait; a third forces exit. uvicorn's habit of re-raising
the captured signal after shutdown is not used, so a drained server exits with status 0.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI

from dssidecar.api.app import build_app, shutdown_engine
from dssidecar.api.request_telemetry import RequestTelemetry
from dssidecar.config import ServerConfig
from dssidecar.engine.protocol import EngineClient

logger = logging.getLogger("dssidecar.server")

# After the engine drained, how long uvicorn may take to flush the last responses and close sockets.
HTTP_CLOSE_TIMEOUT_SECONDS = 5.0


class ModelLoadError(Exception):
    """The model directory cannot be served; the message is one line naming the problem."""


def check_model_dir(model: Path | None) -> Path:
    """Fail fast, with the file that is missing, before importing torch."""
    if model is None:
        raise ModelLoadError("no model given: pass --model DIR or set DSSIDECAR_MODEL")
    path = Path(model)
    if not path.is_dir():
        raise ModelLoadError(f"model directory {path} does not exist or is not a directory")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model directory {path} has no config.json (expected a Hugging Face-format checkpoint)")
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(f"model directory {path} has no *.safetensors weight file")
    if not (path / "tokenizer.json").is_file():
        raise ModelLoadError(f"model directory {path} has no tokenizer.json")
    return path


def load_engine(config: ServerConfig) -> EngineClient:
    """Build the engine from the checkpoint; errors become ModelLoadError with a one-line reason."""
    path = check_model_dir(config.model)
    from dssidecar.engine.async_engine import AsyncLLMEngine
    from dssidecar.engine.config import EngineConfig

    try:
        engine_config = EngineConfig(**config.engine_settings())
        engine_config.validate()
    except (TypeError, ValueError) as error:
        raise ModelLoadError(f"invalid engine settings: {error}") from error
    try:
        engine: EngineClient = AsyncLLMEngine.from_model_path(path, engine_config)  # type: ignore[assignment]
        return engine
    except Exception as error:  # IntegrityError, CheckpointError, bad JSON, torch errors: all one line
        message = " ".join(str(error).split()) or type(error).__name__
        raise ModelLoadError(f"cannot load model from {path}: {type(error).__name__}: {message}") from error


def build_server_app(config: ServerConfig, engine: EngineClient) -> FastAPI:
    """The app for a real process: OTLP telemetry from config, served name, grace period."""
    telemetry = RequestTelemetry.from_endpoint(
        config.otlp_endpoint,
        access_log=config.access_log,
        timeout_seconds=config.otlp_timeout_seconds,
        export_spans=config.otlp_export_spans,
        resource_attributes={"dssidecar.served_model_name": config.served_model_name or engine.model_name},
    )
    app = build_app(
        engine,
        model_name=config.served_model_name or engine.model_name,
        telemetry=telemetry,
        shutdown_grace_seconds=config.shutdown_grace_seconds,
        max_request_body_bytes=config.max_request_body_bytes,
    )
    # /control knobs, knob gauges and knob/OOM/memory metrics (the dssidecar.knobs package)
    from dssidecar.api.control import attach_knobs

    attach_knobs(app, engine, config)
    return app


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT drains the app before uvicorn's own shutdown."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, grace_period_seconds: float) -> None:
        super().__init__(config)
        self._app = app
        self._grace_period_seconds = grace_period_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._signals_received = 0

    async def serve(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        await super().startup(sockets)
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                logger.info("dssidecar ready: serving %s on http://%s:%d", self._app.state.serving.model_name, host, port)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the signal handler (main thread, between two bytecodes of the event loop).
        self._signals_received += 1
        if self._signals_received == 1 and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._start_drain)
        elif self._signals_received <= 2:
            self.should_exit = True
        else:
            self.force_exit = True

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        state = self._app.state.serving
        logger.info(
            "shutdown signal: draining %d in-flight request(s), grace %.1f s", len(state.in_flight), self._grace_period_seconds
        )
        try:
            await shutdown_engine(self._app, self._grace_period_seconds)
        finally:
            self.should_exit = True


def configure_logging(level: str) -> None:
    """Diagnostics to stderr; the JSON access log (logger dssidecar.access) alone on stdout."""
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    access = logging.getLogger("dssidecar.access")
    access.handlers.clear()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False


def serve(config: ServerConfig) -> int:
    """Load, serve until signalled, drain. Returns the process exit status."""
    configure_logging(config.log_level)
    engine = load_engine(config)  # raises ModelLoadError; the CLI prints it
    app = build_server_app(config, engine)
    uvicorn_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_config=None,
        log_level=config.log_level,
        access_log=False,  # our own access log has the request's figures
        timeout_graceful_shutdown=int(HTTP_CLOSE_TIMEOUT_SECONDS),
        lifespan="on",
    )
    server = DrainingServer(uvicorn_config, app, config.shutdown_grace_seconds)
    server.run()
    if not server.started:
        logger.error("the server did not start (see the messages above)")
        return 1
    return 0
