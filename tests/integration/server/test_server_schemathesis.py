"""schemathesis against a real `dssidecar serve` process (tiny demo model, real tokenizer): requests
generated from the server's own /openapi.json never get a 5xx, and documented responses match their
schemas. /control is mounted (loopback) and called with its token, so its handlers are exercised too.

Bounded: a short context (--max-model-len 48) keeps each generation short and the example count is
small; `derandomize` makes the run reproducible. The fake-engine twin in tests/unit/api runs more.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from sidecar_process import SidecarProcess

from tests.conftest import free_port

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error, response_schema_conformance  # noqa: E402

TOKEN = "schemathesis-token"


@pytest.fixture(scope="module")
def sidecar(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    log_dir = tmp_path_factory.mktemp("sidecar-schemathesis")
    token_file = log_dir / "token"
    token_file.write_text(TOKEN)
    process = SidecarProcess(
        tiny_model_dir, free_port(), log_dir,
        "--kv-cache-blocks", "64", "--served-model-name", "tiny", "--max-model-len", "48",
        "--max-request-body-bytes", "65536", "--control-token-file", str(token_file),
    )  # fmt: skip
    process.start()
    yield process
    assert process.stop() == 0, process.stderr_tail()


def served_openapi() -> dict[str, Any]:
    """The OpenAPI document `dssidecar serve` publishes (app + /control), built without a model so the
    test can be parametrized at collection; test_the_served_document_is_this_one proves it is the same."""
    from dssidecar.api.app import build_app
    from dssidecar.api.control import build_control_router

    app = build_app(SimpleNamespace(model_name="tiny"), manage_engine=False)  # type: ignore[arg-type]
    app.include_router(build_control_router(None, TOKEN))  # type: ignore[arg-type]
    return app.openapi()


SPEC = served_openapi()
schema = schemathesis.openapi.from_dict(SPEC)


@pytest.mark.slow
def test_the_served_document_is_this_one(sidecar: SidecarProcess) -> None:
    served = httpx.get(f"{sidecar.base_url}/openapi.json", timeout=10).json()
    assert served["paths"] == SPEC["paths"] and served["components"] == SPEC["components"]


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "25")), deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_real_server_never_answers_5xx_and_matches_its_schema(case: schemathesis.Case, sidecar: SidecarProcess) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"} if case.path.startswith("/control") else None
    if case.path == "/control/knobs" and case.method == "PUT":
        # only knobs that are cheap to change live; precision/backend swaps load and warm a new runner
        pytest.skip("PUT /control/knobs is covered by tests/integration/knobs (its changes rebuild runners)")
    response = case.call(base_url=sidecar.base_url, headers=headers, timeout=60)
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
    assert sidecar.process is not None and sidecar.process.poll() is None, sidecar.stderr_tail()
