"""schemathesis against the agent's own OpenAPI: its API (/metrics, /api/status, /readyz, the Prometheus
query API, the page, /api/actions) and the OTLP receiver's listener, as `dsagent run` wires them (engine
observed at a dead URL, simulated GPUs: no processes). No generated request may get a 5xx, and every
documented response must match its schema. Bounded example counts (SCHEMATHESIS_MAX_EXAMPLES) and
`derandomize` keep CI time small and runs reproducible.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from dsagent.app import Agent
from dsagent.config import load_config
from fastapi import FastAPI
from hypothesis import HealthCheck, settings

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error, response_schema_conformance  # noqa: E402

TOKEN = "schemathesis-receiver-token"
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "25"))


def _running_agent() -> Agent:
    data_dir = Path(tempfile.mkdtemp(prefix="dsagent-schemathesis-"))
    agent = Agent(load_config(None, environ={}, overrides={
        "data_dir": str(data_dir), "engine.kind": "external", "engine.url": "http://127.0.0.1:9",
        "server.port": 0, "sources.gpu.backend": "fake", "sources.gpu.fake_gpu_count": 2,
        "sources.otlp_receiver.token": TOKEN, "actions.dry_run": True,
        # The engine is a dead URL on purpose, and this agent starts at collection, long before its tests
        # run in a full session: readiness follows the simulated GPUs and the host here, so /readyz stays
        # 200 and any 5xx is a real server error (the 503 for a stale engine: test_agent_readiness.py).
        "server.readiness_required_sources": ["gpu", "host"],
    }))
    agent.start()
    agent.collect_once()  # the store has series for the query API to find
    return agent


def _with_openapi_route(app: FastAPI) -> FastAPI:
    """The agent serves no /openapi.json (docs off); the test reads the same document app.openapi() builds."""
    if not any(getattr(route, "path", None) == "/openapi.json" for route in app.routes):
        app.add_api_route("/openapi.json", app.openapi, include_in_schema=False)
    return app


AGENT = _running_agent()
assert AGENT.api is not None and AGENT.receiver is not None
API_APP: FastAPI = _with_openapi_route(AGENT.api._config.app)  # type: ignore[attr-defined]
RECEIVER_APP: FastAPI = _with_openapi_route(AGENT.receiver._server._config.app)  # type: ignore[attr-defined]
api_schema = schemathesis.openapi.from_asgi("/openapi.json", API_APP)
receiver_schema = schemathesis.openapi.from_asgi("/openapi.json", RECEIVER_APP)


@pytest.fixture(scope="module", autouse=True)
def _stop_agent_after_the_module() -> object:
    yield None
    AGENT.stop()


@api_schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_agent_api_never_answers_5xx_and_matches_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])


@receiver_schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_receiver_never_answers_5xx_and_matches_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"},
                           checks=[not_a_server_error, response_schema_conformance])
