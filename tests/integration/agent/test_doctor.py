"""`dsagent doctor`: each check says ok / warn / fail with a fix, against real counterparts on loopback
(the fake Elasticsearch and Kibana, a small HTTP engine, a real SQLite spool) and scripted NVML."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pynvml
import pytest
from dsagent.cli import app
from dsagent.config import load_config
from dsagent.doctor import (
    KibanaTarget,
    check_agent_api,
    check_elasticsearch,
    check_engine,
    check_gpu_control,
    check_kibana,
    check_nvml,
    check_spool,
    check_state_dir,
    run_checks,
)
from dsagent.export.spool import METRIC, REQUEST, Spool, SpoolRecord
from dsagent.sources.nvml_backend import NvmlBackend
from typer.testing import CliRunner

from tests.fakes.elasticsearch import FakeElasticsearch
from tests.fakes.kibana import FakeKibana

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "sources"))
from scripted_nvml import ScriptedNvml, full_h100_values  # noqa: E402


class _Engine:
    """/readyz answering `status` (and any other path from `routes`: path -> (status, JSON body))."""

    def __init__(self, status: int, routes: dict[str, tuple[int, dict[str, Any]]] | None = None) -> None:
        answers = {"/readyz": (status, {}), **(routes or {})}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                code, body = answers.get(self.path, (404, {}))
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def engine_ready() -> Iterator[_Engine]:
    engine = _Engine(200)
    yield engine
    engine.stop()


def config_for(tmp_path: Path, **overrides: Any) -> Any:
    return load_config(None, environ={}, overrides={"data_dir": str(tmp_path / "data"), **overrides})


def test_nvml_ok_with_gpus_warn_without_a_driver_fail_without_permission() -> None:
    ok = check_nvml(NvmlBackend(nvml=ScriptedNvml(full_h100_values(), device_count=2), watch_xid=False))
    assert ok.status == "ok" and "2 GPU(s)" in ok.detail
    missing = check_nvml(NvmlBackend(nvml=ScriptedNvml({}, init_error=pynvml.NVMLError(
        pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)), watch_xid=False))
    assert missing.status == "warn" and "libnvidia-ml" in missing.detail and "backend: off" in missing.fix
    denied = check_nvml(NvmlBackend(nvml=ScriptedNvml({}, init_error=pynvml.NVMLError(
        pynvml.NVML_ERROR_NO_PERMISSION)), watch_xid=False))
    assert denied.status == "fail" and "permission" in denied.detail and "DeviceAllow" in denied.fix
    assert check_gpu_control(missing).status == "warn"
    control = check_gpu_control(ok)  # root here has CAP_SYS_ADMIN; a service user would get the warning
    assert control.status in ("ok", "warn") and ("CAP_SYS_ADMIN" in control.detail + control.fix)


def test_engine_ready_loading_and_unreachable(tmp_path: Path, engine_ready: _Engine) -> None:
    import httpx

    with httpx.Client(timeout=2) as client:
        ready = check_engine(config_for(tmp_path, **{"engine.kind": "external", "engine.url": engine_ready.url}),
                             client)
        assert ready.status == "ok"
        loading_engine = _Engine(503)
        try:
            loading = check_engine(config_for(tmp_path, **{"engine.kind": "external",
                                                           "engine.url": loading_engine.url}), client)
        finally:
            loading_engine.stop()
        assert loading.status == "warn" and "503" in loading.detail
        gone = check_engine(config_for(tmp_path, **{"engine.kind": "external", "engine.url": loading_engine.url}),
                            client)
        assert gone.status == "fail" and "unreachable" in gone.detail
        builtin = check_engine(config_for(tmp_path, **{"engine.port": int(loading_engine.url.rsplit(":", 1)[1])}),
                               client)
        assert builtin.status == "warn" and "dsagent run" in builtin.fix


def test_agent_api_alive_ready_and_not_ready(tmp_path: Path) -> None:
    import httpx

    stale = {"status": "not ready", "ready": False, "stale": ["engine: no good reading for 42 s (bound 30 s)"]}
    for readyz, expected in (((200, {"ready": True}), "ok"), ((503, stale), "warn"), ((404, {}), "ok")):
        agent = _Engine(readyz[0], {"/healthz": (200, {"status": "ok"}), "/readyz": readyz})
        try:
            port = int(agent.url.rsplit(":", 1)[1])
            with httpx.Client(timeout=2) as client:
                result = check_agent_api(config_for(tmp_path, **{"server.port": port}), client)
        finally:
            agent.stop()
        assert result.status == expected, result
    assert "engine: no good reading" in _last_warn(tmp_path, stale)


def _last_warn(tmp_path: Path, body: dict[str, Any]) -> str:
    import httpx

    agent = _Engine(503, {"/healthz": (200, {}), "/readyz": (503, body)})
    try:
        with httpx.Client(timeout=2) as client:
            return check_agent_api(config_for(tmp_path, **{"server.port": int(agent.url.rsplit(":", 1)[1])}),
                                   client).detail
    finally:
        agent.stop()


def test_elasticsearch_reachable_and_unreachable(tmp_path: Path) -> None:
    with FakeElasticsearch() as cluster:
        result = check_elasticsearch(config_for(tmp_path, **{"export.elasticsearch.url": cluster.url}))
        url = cluster.url
    assert result.status == "ok" and "answered (version" in result.detail
    down = check_elasticsearch(config_for(tmp_path, **{"export.elasticsearch.url": url,
                                                       "export.elasticsearch.request_timeout_seconds": 2}))
    assert down.status == "fail" and "unreachable" in down.detail and "spool" in down.fix
    assert check_elasticsearch(config_for(tmp_path)).status == "ok"  # not configured


def test_kibana_checked_with_credentials() -> None:
    with FakeKibana(api_key="k") as kibana:
        assert check_kibana(KibanaTarget(kibana.url, api_key="k")).status == "ok"
        refused = check_kibana(KibanaTarget(kibana.url, api_key="wrong"))
        assert refused.status == "fail" and "401" in refused.detail
    assert "not checked" in check_kibana(None).detail


def test_state_dir_writable_and_not(tmp_path: Path) -> None:
    assert check_state_dir(config_for(tmp_path)).status == "ok"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = check_state_dir(load_config(None, environ={}, overrides={"data_dir": str(blocker / "sub")}))
    assert result.status == "fail" and "not writable" in result.detail


def test_spool_intact_near_quota_and_damaged(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    spool_dir = tmp_path / "data" / "spool"
    spool_dir.mkdir(parents=True)
    spool = Spool(spool_dir / "elasticsearch.sqlite3", 10_000_000)
    spool.append([SpoolRecord(METRIC, "metrics-dsagent.gpu-default", f"id{i}", b'{"v":1}' * 50) for i in range(30)]
                 + [SpoolRecord(REQUEST, "logs-dsagent.requests-default", "r1", b"{}")])
    spool.close()
    intact = check_spool(config)
    assert intact.status == "ok" and "elasticsearch 31 waiting" in intact.detail
    small_quota = config_for(tmp_path, **{"export.spool.max_bytes": 4000})
    assert check_spool(small_quota).status == "warn"
    (spool_dir / "otlp.sqlite3").write_bytes(b"this is not a database" * 100)
    damaged = check_spool(config)
    assert damaged.status == "fail" and "otlp.sqlite3" in damaged.detail


def test_run_checks_finishes_even_when_a_check_crashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> Any:
        raise RuntimeError("kaput")

    monkeypatch.setattr("dsagent.doctor.check_nvml", boom)
    results = run_checks(config_for(tmp_path), "test")
    names = [r.name for r in results]
    assert names == ["config", "nvml", "gpu control", "engine", "agent api", "elasticsearch", "kibana",
                     "state dir", "spool"]
    assert results[1].status == "fail" and "kaput" in results[1].detail


def test_cli_prints_one_line_per_check_and_exits_1_on_a_fail(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["doctor", "--data-dir", str(tmp_path / "d"), "--json"], env={"DSAGENT_CONFIG": ""})
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert len(payload["checks"]) == 9 and payload["summary"]["fail"] == 0
    assert all(c["status"] in ("ok", "warn", "fail") for c in payload["checks"])
    assert all(c["fix"] for c in payload["checks"] if c["status"] != "ok")

    blocker = tmp_path / "file"
    blocker.write_text("")
    failed = runner.invoke(app, ["doctor", "--data-dir", str(blocker / "x")], env={"DSAGENT_CONFIG": ""})
    assert failed.exit_code == 1
    assert any(line.startswith("fail  state dir") for line in failed.stdout.splitlines())
    assert "fix: chown" in failed.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text("engine:\n  port: lots\n")
    invalid = runner.invoke(app, ["doctor", "--config", str(bad)])
    assert invalid.exit_code == 1 and "fail  config" in invalid.stdout and "engine.port" in invalid.stdout


@pytest.mark.live
@pytest.mark.skipif(not os.environ.get("DSAGENT_TEST_ES_URL"), reason="DSAGENT_TEST_ES_URL not set")
def test_elasticsearch_check_against_a_real_cluster(tmp_path: Path) -> None:
    overrides: dict[str, Any] = {"export.elasticsearch.url": os.environ["DSAGENT_TEST_ES_URL"]}
    if os.environ.get("DSAGENT_TEST_ES_API_KEY"):
        overrides["export.elasticsearch.api_key"] = os.environ["DSAGENT_TEST_ES_API_KEY"]
    result = check_elasticsearch(config_for(tmp_path, **overrides))
    assert result.status == "ok", result


@pytest.mark.live
@pytest.mark.skipif(not os.environ.get("DSAGENT_TEST_KIBANA_URL"), reason="DSAGENT_TEST_KIBANA_URL not set")
def test_kibana_check_against_a_real_kibana() -> None:
    result = check_kibana(KibanaTarget(os.environ["DSAGENT_TEST_KIBANA_URL"],
                                       api_key=os.environ.get("DSAGENT_TEST_KIBANA_API_KEY")))
    assert result.status == "ok", result
