"""The token-protected /control API: read and change the engine's runtime knobs.

Why this exists: the agent (and an operator with curl) retunes a running sidecar through it. It is a
plain APIRouter so the server can mount it on its own app when that app listens on loopback, or serve
it from a separate loopback-only listener (`build_control_app`) when the OpenAI API is exposed wider.

Errors: no/wrong bearer token -> 401; unknown knob, wrong type, out of range -> 422; valid but not
possible here (fp8 on CPU, tensorrt absent, accuracy check failed) -> 409 with the reason and figures;
failure while applying (rolled back) -> 500. Each answer has the same JSON shape as the OpenAI errors:
{"error": {"message", "type", "param", "code", ...details}}.

Token precedence: explicit argument > DSSIDECAR_CONTROL_TOKEN > the file named by
DSSIDECAR_CONTROL_TOKEN_FILE. With no token configured at all the control API refuses every call (401)
rather than running open.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from dssidecar.knobs import (
    KnobApplyError,
    KnobController,
    KnobError,
    KnobUnsupportedError,
    KnobValidationError,
)

logger = logging.getLogger("dssidecar.knobs")

TOKEN_ENV = "DSSIDECAR_CONTROL_TOKEN"
TOKEN_FILE_ENV = "DSSIDECAR_CONTROL_TOKEN_FILE"


def resolve_control_token(token: str | None = None, token_file: str | Path | None = None) -> str | None:
    """The control token: argument > env DSSIDECAR_CONTROL_TOKEN > file (argument or env) > None.

    A named token file that cannot be read raises ValueError naming it (a typo must not silently
    disable the control API).
    """
    if token:
        return token.strip()
    env_token = os.environ.get(TOKEN_ENV, "").strip()
    if env_token:
        return env_token
    file_name = token_file or os.environ.get(TOKEN_FILE_ENV) or None
    if file_name:
        path = Path(file_name)
        try:
            file_token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"control token file {path} cannot be read: {exc.strerror or exc}") from exc
        if not file_token:
            raise ValueError(f"control token file {path} is empty; write the bearer token into it")
        return file_token
    return None


_CODES = {401: "unauthorized", 409: "knob_unsupported", 422: "knob_invalid", 500: "knob_apply_failed"}


def _error(status: int, message: str, error_type: str, param: str | None = None, **details: Any) -> JSONResponse:
    body: dict[str, Any] = {"message": message, "type": error_type, "param": param, "code": _CODES.get(status)}
    body.update(details)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _authorized(request: Request, token: str | None) -> JSONResponse | None:
    if token is None:
        return _error(
            401,
            f"the control API is disabled: no token configured (set {TOKEN_ENV} or {TOKEN_FILE_ENV})",
            "authentication_error",
        )
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return _error(401, "missing bearer token: send 'Authorization: Bearer <token>'", "authentication_error")
    if not hmac.compare_digest(presented.strip().encode(), token.encode()):
        return _error(401, "invalid bearer token", "authentication_error")
    return None


def build_control_router(controller: KnobController, token: str | None) -> APIRouter:
    """GET/PUT /control/knobs and GET /control/changes, guarded by the bearer `token`."""
    router = APIRouter(prefix="/control", tags=["control"])

    @router.get("/knobs")
    async def get_knobs(request: Request) -> Any:
        denied = _authorized(request, token)
        if denied is not None:
            return denied
        return await anyio.to_thread.run_sync(controller.describe)

    @router.put("/knobs")
    async def put_knobs(request: Request) -> Any:
        denied = _authorized(request, token)
        if denied is not None:
            return denied
        try:
            update = await request.json()
        except (ValueError, RecursionError):  # not JSON, or nested too deep for the parser
            return _error(422, "body must be a JSON object of knob values, e.g. {\"max_batch_size\": 16}", "invalid_request_error")
        if not isinstance(update, dict):
            return _error(422, "body must be a JSON object of knob values", "invalid_request_error")
        try:
            answer = await anyio.to_thread.run_sync(controller.apply, update)
        except KnobValidationError as exc:
            return _error(422, exc.message, "invalid_request_error", _first_knob(exc), **exc.details)
        except KnobUnsupportedError as exc:
            return _error(409, exc.message, "unsupported_error", exc.details.get("knob"), **exc.details)
        except KnobApplyError as exc:
            return _error(500, exc.message, "apply_error", None, **exc.details)
        except KnobError as exc:  # pragma: no cover - every subclass is handled above
            return _error(500, exc.message, "apply_error")
        return answer

    @router.get("/changes")
    async def get_changes(request: Request) -> Any:
        denied = _authorized(request, token)
        if denied is not None:
            return denied
        return {"changes": controller.change_log()}

    return router


def _first_knob(exc: KnobValidationError) -> str | None:
    errors = exc.details.get("errors") or []
    return str(errors[0]["knob"]) if errors else None


def build_control_app(controller: KnobController, token: str | None) -> FastAPI:
    """A FastAPI app serving only /control, for a separate loopback listener (--control-port)."""
    app = FastAPI(title="dssidecar control", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(build_control_router(controller, token))
    return app


# ---- wiring: the knobs of a real engine into the server app


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


def attach_knobs(app: FastAPI, async_engine: Any, config: Any) -> KnobController | None:
    """Wire /control, the knob gauges and the knob metrics into the server app; returns the controller.

    Where /control listens: on the main app when the server binds a loopback address (the default
    127.0.0.1); when the OpenAI API binds a wider address, /control is NOT mounted there and gets its own
    listener on 127.0.0.1:`control_port` (DSSIDECAR_CONTROL_PORT; none configured -> no control API), so
    the knobs are never reachable from the network by default.
    """
    from dssidecar.api.app import set_knob_values
    from dssidecar.check_precision import Thresholds
    from dssidecar.knobs.engine_target import EngineKnobTarget
    from dssidecar.knobs.metrics import KnobMetricsCollector

    if not hasattr(async_engine, "engine") or not hasattr(async_engine, "run_between_steps"):
        logger.warning("engine %s has no live knobs; /control is not mounted", type(async_engine).__name__)
        return None
    thresholds = Thresholds(
        min_agreement=float(getattr(config, "accuracy_min_agreement", Thresholds.min_agreement)),
        max_kl=float(getattr(config, "accuracy_max_kl", Thresholds.max_kl)),
        max_ppl_delta=float(getattr(config, "accuracy_max_ppl_delta", Thresholds.max_ppl_delta)),
    )
    target = EngineKnobTarget(async_engine, model_path=getattr(config, "model", None), thresholds=thresholds)
    controller = KnobController(target, require_accuracy_check=bool(getattr(config, "require_accuracy_check", False)))
    token = resolve_control_token(
        getattr(config, "control_token", None), getattr(config, "control_token_file", None)
    )
    set_knob_values(app, controller.values)
    registry = getattr(app.state, "metrics_registry", None)
    if registry is not None:
        registry.register(KnobMetricsCollector(controller, include_values=False))
    host = str(getattr(config, "host", "127.0.0.1"))
    control_port = getattr(config, "control_port", None)
    if _is_loopback(host) and not control_port:
        app.include_router(build_control_router(controller, token))
    elif control_port:
        app.state.control_server = _serve_control_in_thread(build_control_app(controller, token), int(control_port))
    else:
        logger.warning(
            "host %s is not loopback and no control_port is set: /control is disabled (set DSSIDECAR_CONTROL_PORT)",
            host,
        )
    app.state.knob_controller = controller
    return controller


def _serve_control_in_thread(control_app: Any, port: int) -> Any:
    """A uvicorn server on 127.0.0.1:port in a daemon thread; set `.should_exit = True` to stop it."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(control_app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, name="dssidecar-control", daemon=True)
    thread.start()
    logger.info("/control listening on http://127.0.0.1:%d", port)
    return server
