"""End to end on the embedded default: `dsagent run` with no config file generates the demo model into
its data dir, starts the sidecar, collects, writes NDJSON through the spool and serves /metrics;
`dsagent status` shows it; SIGTERM drains the sidecar and exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def test_embedded_default_end_to_end(tmp_path: Path) -> None:
    engine_port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSAGENT_", "DSSIDECAR_"))}
    env["DSAGENT_ENGINE__DEMO_MODEL__TRAIN_STEPS"] = "0"  # the default trains 200 steps; untrained is enough here
    env["DSAGENT_ENGINE__EXTRA_ARGS"] = "[--num-threads, '1']"
    log_path = tmp_path / "agent.out"
    with open(log_path, "wb") as log:
        agent = subprocess.Popen([str(BIN / "dsagent"), "run", "--data-dir", str(tmp_path / "data"),
                                  "--engine-port", str(engine_port), "--api-port", str(api_port)],
                                 cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{api_port}"
    engine = f"http://127.0.0.1:{engine_port}"
    try:
        deadline = time.monotonic() + 400
        state = None
        while time.monotonic() < deadline and state != "ready":
            assert agent.poll() is None, log_path.read_text()
            try:
                state = httpx.get(api + "/api/status", timeout=2).json()["engine"]["state"]
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert state == "ready", log_path.read_text()
        assert (tmp_path / "data" / "models" / "demo-tiny-seed0-steps0" / "manifest.json").exists()

        model = httpx.get(engine + "/v1/models", timeout=10).json()["data"][0]["id"]
        assert model == "demo-model"  # the README's examples use this name
        ids = []
        for i in range(3):
            response = httpx.post(engine + "/v1/chat/completions", timeout=60, json={
                "model": model, "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 5})
            response.raise_for_status()
            ids.append(response.json()["id"])

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and httpx.get(api + "/api/status").json()["slo"]["requests_total"] < 3:
            time.sleep(0.5)
        metrics = httpx.get(api + "/metrics", timeout=5).text
        assert "inference_qps" in metrics and 'dsagent_engine_ready{engine_kind="builtin"} 1.0' in metrics

        status = subprocess.run([str(BIN / "dsagent"), "status", "--data-dir", str(tmp_path / "data")],
                                capture_output=True, text=True, timeout=60, env={**env, "COLUMNS": "200"})
        assert status.returncode == 0, status.stderr
        assert "ready" in status.stdout and "SLO signals" in status.stdout
        assert "no GPU:" in status.stdout or "GPUs" in status.stdout
        engine_pid = httpx.get(api + "/api/status").json()["engine"]["pid"]
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            code = agent.wait(90)
        except subprocess.TimeoutExpired:
            agent.kill()
            code = agent.wait()
    assert code == 0, log_path.read_text()
    assert not Path(f"/proc/{engine_pid}").exists()
    requests_file = tmp_path / "data" / "export" / "logs-dsagent.requests.ndjson"
    documents = [json.loads(line) for line in requests_file.read_text().splitlines() if line.strip()]
    assert {doc["request_id"] for doc in documents} >= set(ids)
    output = log_path.read_text()
    assert f"agent API on {api}" in output and "telemetry goes to NDJSON files" in output
