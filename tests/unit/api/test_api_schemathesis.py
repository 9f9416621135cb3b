"""Property-based API test: schemathesis generates requests from the sidecar's own OpenAPI document and
checks that no request gets a 5xx and every documented response matches its schema.

Against the FakeEngine (fast, many examples); tests/integration/server runs the same checks against a
real engine process with fewer examples. Bounded example counts keep CI time small; `derandomize`
makes a run reproducible.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from api_fake_engine import FakeEngine
from dssidecar.api.app import build_app
from dssidecar.api.request_telemetry import RequestTelemetry
from hypothesis import HealthCheck, settings

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error, response_schema_conformance  # noqa: E402

ENGINE = FakeEngine(max_model_len=256)
asyncio.run(ENGINE.start())  # ready: /readyz answers 200, not 503
# manage_engine=False: schemathesis runs the app's lifespan around every call; the shutdown must not drain
APP = build_app(
    ENGINE, model_name="fake-model", telemetry=RequestTelemetry(), max_request_body_bytes=64 << 10, manage_engine=False
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "40")), deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error_and_responses_match_the_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])
