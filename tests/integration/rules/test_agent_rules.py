"""The real agent on the embedded default (builtin sidecar, demo model) with the shipped SLO pack: after a
load step the p99 rule fires, `dsagent status` shows it firing, /metrics carries ALERTS, /api/v1/alerts
lists it, and `dsagent rules eval` answers from the agent's store.

The pack's rule is used as shipped except `for: 5m` -> `for: 5s` and the group interval (15s -> 1s), so the
test takes seconds, not minutes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _load_step(engine: str, model: str, seconds: float) -> None:
    """Eight clients sending 48-token requests back to back: queueing pushes p99 well over 200 ms."""
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        while time.monotonic() < stop:
            try:
                httpx.post(engine + "/v1/completions", timeout=60, json={
                    "model": model, "prompt": f"load step {i}", "max_tokens": 48}).raise_for_status()
            except httpx.HTTPError:
                time.sleep(0.2)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_p99_rule_fires_on_the_embedded_default(tmp_path: Path) -> None:
    pack = (REPO_ROOT / "rules" / "slo.yaml").read_text()
    assert "for: 5m" in pack and "interval: 15s" in pack
    rules_file = tmp_path / "slo.yaml"
    rules_file.write_text(pack.replace("for: 5m", "for: 5s").replace("interval: 15s", "interval: 1s"))
    config = tmp_path / "agent.yaml"
    config.write_text(f"intervals:\n  evaluate_seconds: 1\nrules:\n  paths: ['{rules_file}']\n")
    engine_port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSAGENT_", "DSSIDECAR_"))}
    env["DSAGENT_ENGINE__DEMO_MODEL__TRAIN_STEPS"] = "0"
    env["DSAGENT_ENGINE__EXTRA_ARGS"] = "[--num-threads, '1']"
    data_dir = tmp_path / "data"
    log_path = tmp_path / "agent.out"
    with open(log_path, "wb") as log:
        agent = subprocess.Popen([str(BIN / "dsagent"), "run", "--config", str(config), "--data-dir", str(data_dir),
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
        rules = httpx.get(api + "/api/status", timeout=5).json()["rules"]
        names = [r["name"] for g in rules["groups"] for r in g["rules"]]
        assert "HighP99Latency" in names and rules["last_reload_error"] is None

        model = httpx.get(engine + "/v1/models", timeout=10).json()["data"][0]["id"]
        _load_step(engine, model, seconds=12)

        deadline = time.monotonic() + 60
        firing = False
        while time.monotonic() < deadline and not firing:
            alerts = httpx.get(api + "/api/v1/alerts", timeout=5).json()["data"]["alerts"]
            firing = any(a["labels"]["alertname"] == "HighP99Latency" and a["state"] == "firing" for a in alerts)
            time.sleep(1)
        status = httpx.get(api + "/api/status", timeout=5).json()
        assert firing, (status["rules"], status["slo"], log_path.read_text()[-3000:])

        metrics = httpx.get(api + "/metrics", timeout=5).text
        assert any(line.startswith("ALERTS{") and 'alertname="HighP99Latency"' in line and 'alertstate="firing"' in line
                   for line in metrics.splitlines()), metrics
        assert 'dsagent_rules_loaded' in metrics and 'dsagent_rule_alerts{state="firing"}' in metrics

        shown = subprocess.run([str(BIN / "dsagent"), "status", "--data-dir", str(data_dir)],
                               capture_output=True, text=True, timeout=60, env={**env, "COLUMNS": "220"})
        assert shown.returncode == 0, shown.stderr
        assert "HighP99Latency" in shown.stdout and "firing" in shown.stdout and "notify" in shown.stdout

        evaluated = subprocess.run([str(BIN / "dsagent"), "rules", "eval", "--data-dir", str(data_dir),
                                    'ALERTS{alertname="HighP99Latency"}'],
                                   capture_output=True, text=True, timeout=60, env=env)
        assert evaluated.returncode == 0, evaluated.stderr
        assert 'alertstate="firing"' in evaluated.stdout and "=> 1" in evaluated.stdout
        recorded = subprocess.run([str(BIN / "dsagent"), "rules", "eval", "--data-dir", str(data_dir),
                                   "inference:latency_p99_seconds:5m > 0.2"], capture_output=True, text=True,
                                  timeout=60, env=env)
        assert recorded.returncode == 0 and "inference:latency_p99_seconds:5m" in recorded.stdout

        # A bad edit + SIGHUP: refused as a whole, the error shown, the previous rules keep running.
        rules_file.write_text(rules_file.read_text().replace("> 0.2", "> > 0.2"))
        agent.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        error = None
        while time.monotonic() < deadline and not error:
            error = httpx.get(api + "/api/status", timeout=5).json()["rules"]["last_reload_error"]
            time.sleep(0.5)
        assert error and f"{rules_file}:" in error
        assert agent.poll() is None
        rules = httpx.get(api + "/api/status", timeout=5).json()["rules"]
        assert any(r["name"] == "HighP99Latency" for g in rules["groups"] for r in g["rules"])
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(90)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
