"""The FastAPI application around one EngineClient: OpenAI routes, health, metrics, draining.

`build_app` takes an already-built engine (real or fake) so tests can drive the whole HTTP surface
without torch, and so the process entry point (`dssidecar.api.server`) can load the model before the
port opens. Draining is a property of the app, not of uvicorn: `drain()` flips every new request to
503 while in-flight ones finish, which is what a load balancer or the agent's supervisor needs to see.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

import dssidecar
from dssidecar.api.body_limit import DEFAULT_MAX_REQUEST_BODY_BYTES, BodySizeLimitMiddleware
from dssidecar.api.errors import install_error_handlers
from dssidecar.api.generation import ServingState
from dssidecar.api.metrics import CONTENT_TYPE, ServerMetrics
from dssidecar.api.openai_routes import router as openai_router
from dssidecar.api.request_telemetry import RequestTelemetry
from dssidecar.engine.protocol import EngineClient

logger = logging.getLogger("dssidecar.api")

health_router = APIRouter()


@health_router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: 200 while the process serves HTTP."""
    return {"status": "ok"}


@health_router.get("/version")
async def version() -> dict[str, str]:
    return {"version": dssidecar.__version__}


@health_router.get("/readyz", response_model=None)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 only when the model is loaded, the engine loop alive and the server not draining."""
    state: ServingState = request.app.state.serving
    reason = not_ready_reason(state)
    if reason is not None:
        return JSONResponse({"status": "not_ready", "reason": reason}, status_code=503)
    return JSONResponse({"status": "ready", "model": state.model_name})


def not_ready_reason(state: ServingState) -> str | None:
    if state.draining:
        return "draining: the server received a shutdown signal and admits no new requests"
    try:
        ready = state.engine.is_ready()
    except Exception as error:
        return f"engine readiness check failed: {type(error).__name__}: {error}"
    if not ready:
        return "model not loaded or engine loop not running"
    try:
        alive = state.engine.stats().engine_loop_alive
    except Exception as error:
        return f"engine stats unavailable: {type(error).__name__}: {error}"
    if not alive:
        return "engine loop is not running"
    return None


@health_router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format, vLLM metric names."""
    state: ServingState = request.app.state.serving
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


def build_app(
    engine: EngineClient,
    *,
    model_name: str | None = None,
    telemetry: RequestTelemetry | None = None,
    knob_values: Callable[[], Mapping[str, Any]] | None = None,
    control_router: APIRouter | None = None,
    shutdown_grace_seconds: float = 30.0,
    manage_engine: bool = True,
    max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES,
) -> FastAPI:
    """An app serving `engine`.

    manage_engine: start the engine in the app's startup and shut it down (with the grace period) in
    its shutdown. control_router: the /control knobs router (helper K's build_control_router), mounted
    as is. knob_values: the current knob values for /metrics and each request record; can also be set
    later with `set_knob_values(app, fn)`.
    """
    served_name = model_name or engine.model_name
    metrics_ = ServerMetrics(served_name, lambda: engine.stats(), knob_values=knob_values)
    state = ServingState(
        engine=engine,
        model_name=served_name,
        metrics=metrics_,
        telemetry=telemetry if telemetry is not None else RequestTelemetry(),
        knob_values=knob_values,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_engine:
            await engine.start()
        try:
            yield
        finally:
            if manage_engine:
                await shutdown_engine(_app, shutdown_grace_seconds)
            state.telemetry.shutdown()

    app = FastAPI(
        title="dssidecar",
        version=dssidecar.__version__,
        description="Continuous-batching LLM inference with an OpenAI-compatible API.",
        lifespan=lifespan,
    )
    app.state.serving = state
    # Other parts (the /control knobs) register their own metrics here so /metrics shows them.
    app.state.metrics_registry = metrics_.registry
    app.state.engine_shut_down = False
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=max_request_body_bytes)
    app.include_router(health_router)
    app.include_router(openai_router)
    # /control knobs (helper K): build_control_router(controller, token) is mounted here.
    if control_router is not None:
        app.include_router(control_router)
    return app


def set_knob_values(app: FastAPI, knob_values: Callable[[], Mapping[str, Any]] | None) -> None:
    """Feed the knob gauges in /metrics and the knob snapshot of each request record."""
    state: ServingState = app.state.serving
    state.knob_values = knob_values
    state.metrics.knob_values = knob_values


def begin_draining(app: FastAPI) -> None:
    """From now on new generation requests get 503 and /readyz says draining."""
    state: ServingState = app.state.serving
    if not state.draining:
        logger.info("draining: refusing new requests; %d in flight", len(state.in_flight))
    state.draining = True
    state.metrics.draining = True


async def shutdown_engine(app: FastAPI, grace_period_seconds: float) -> None:
    """Stop admitting and let the engine finish in-flight requests within the grace period; once."""
    begin_draining(app)
    if app.state.engine_shut_down:
        return
    app.state.engine_shut_down = True
    state: ServingState = app.state.serving
    try:
        await state.engine.shutdown(grace_period_seconds)
    except Exception:
        logger.exception("engine shutdown failed")
