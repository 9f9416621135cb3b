"""The /control router over a fake engine: auth, status codes, body shapes, metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from dssidecar.api.control import build_control_app, build_control_router, resolve_control_token
from dssidecar.knobs import KnobController
from dssidecar.knobs.metrics import KnobMetricsCollector
from fastapi import FastAPI
from fastapi.testclient import TestClient
from knob_fakes import FakeKnobTarget
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture()
def client(controller: KnobController) -> TestClient:
    app = FastAPI()
    app.include_router(build_control_router(controller, TOKEN))
    return TestClient(app)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}])
def test_missing_or_bad_token_is_401(client: TestClient, headers: dict[str, str]) -> None:
    for method in ("get", "put"):
        response = client.request(method, "/control/knobs", headers=headers, json={"max_batch_size": 2})
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
        assert response.headers["www-authenticate"] == "Bearer"


def test_no_configured_token_disables_control(controller: KnobController, fake_target: FakeKnobTarget) -> None:
    client = TestClient(build_control_app(controller, None))
    response = client.put("/control/knobs", headers={"Authorization": "Bearer anything"}, json={"max_batch_size": 2})
    assert response.status_code == 401
    assert "DSSIDECAR_CONTROL_TOKEN" in response.json()["error"]["message"]
    assert fake_target.values["max_batch_size"] == 32


def test_get_knobs_lists_values_ranges_and_modes(client: TestClient) -> None:
    body = client.get("/control/knobs", headers=AUTH).json()
    assert body["knobs"]["max_batch_size"]["value"] == 32
    assert body["knobs"]["max_batch_size"]["max"] == 1024
    assert body["knobs"]["backend"]["apply"] == "swap"
    assert body["knobs"]["require_accuracy_check"]["value"] is False


def test_put_partial_update_answers_applied_values(client: TestClient, fake_target: FakeKnobTarget) -> None:
    response = client.put("/control/knobs", headers=AUTH, json={"max_batch_size": 4})
    assert response.status_code == 200
    body = response.json()
    assert body["applied"] == {"max_batch_size": 4}
    assert body["apply_seconds"] >= 0
    assert fake_target.values["max_batch_size"] == 4


def test_out_of_range_is_422_naming_the_knob(client: TestClient, fake_target: FakeKnobTarget) -> None:
    response = client.put("/control/knobs", headers=AUTH, json={"max_batch_size": 4, "max_num_batched_tokens": 1})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "max_num_batched_tokens"
    assert "16..65536" in error["message"]
    assert fake_target.values["max_batch_size"] == 32


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"{}"])
def test_malformed_body_is_422(client: TestClient, body: bytes) -> None:
    response = client.put("/control/knobs", headers={**AUTH, "content-type": "application/json"}, content=body)
    assert response.status_code == 422


def test_unsupported_is_409_with_reason(client: TestClient) -> None:
    response = client.put("/control/knobs", headers=AUTH, json={"backend": "tensorrt"})
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["reason"] == "torch_tensorrt is not installed"
    assert error["param"] == "backend"


def test_failed_accuracy_check_is_409_with_figures(fake_target: FakeKnobTarget) -> None:
    fake_target.accuracy_passes = False
    app = build_control_app(KnobController(fake_target, require_accuracy_check=True), TOKEN)
    response = TestClient(app).put("/control/knobs", headers=AUTH, json={"precision": "int8"})
    assert response.status_code == 409
    assert response.json()["error"]["accuracy_check"]["agreement"] == 0.5


def test_failed_apply_is_500_and_rolled_back(client: TestClient, fake_target: FakeKnobTarget) -> None:
    fake_target.fail_build = True
    response = client.put("/control/knobs", headers=AUTH, json={"precision": "bf16"})
    assert response.status_code == 500
    assert fake_target.values["precision"] == "fp32"


def test_changes_endpoint_returns_the_log(client: TestClient) -> None:
    client.put("/control/knobs", headers=AUTH, json={"max_batch_size": 4})
    changes = client.get("/control/changes", headers=AUTH).json()["changes"]
    assert changes[-1]["applied"] == {"max_batch_size": 4}


def test_metrics_collector_exposes_changes_values_and_memory(client: TestClient, controller: KnobController) -> None:
    client.put("/control/knobs", headers=AUTH, json={"max_batch_size": 4})
    client.put("/control/knobs", headers=AUTH, json={"max_batch_size": 0})
    registry = CollectorRegistry()
    registry.register(KnobMetricsCollector(controller))
    text = generate_latest(registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("dssidecar_knob_changes_total", (("knob", "max_batch_size"), ("result", "applied")))] == 1
    assert samples[("dssidecar_knob_changes_total", (("knob", "max_batch_size"), ("result", "invalid")))] == 1
    assert samples[("dssidecar_knob_value", (("knob", "max_batch_size"),))] == 4
    assert samples[("dssidecar_knob_info", (("knob", "precision"), ("value", "fp32")))] == 1
    assert samples[("dssidecar_oom_events_total", ())] == 2
    assert 0.0 <= samples[("dssidecar_memory_fragmentation_ratio", ())] <= 1.0


def test_token_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.delenv("DSSIDECAR_CONTROL_TOKEN", raising=False)
    monkeypatch.setenv("DSSIDECAR_CONTROL_TOKEN_FILE", str(token_file))
    assert resolve_control_token() == "from-file"
    monkeypatch.setenv("DSSIDECAR_CONTROL_TOKEN", "from-env")
    assert resolve_control_token() == "from-env"
    assert resolve_control_token("from-arg") == "from-arg"


def test_unreadable_token_file_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSSIDECAR_CONTROL_TOKEN", raising=False)
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match="nope"):
        resolve_control_token(token_file=missing)


def test_a_deeply_nested_body_is_422_not_a_server_error(client: TestClient) -> None:
    body = "[" * 100_000 + "]" * 100_000
    response = client.put("/control/knobs", headers={**AUTH, "content-type": "application/json"}, content=body)
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "invalid_request_error"
