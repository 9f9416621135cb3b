"""The whole flow for the actions e2e scenarios: `dsagent run` (real sidecar, fake GPU) with a config file,
the fake Elasticsearch and the fake Kubernetes API in this process, and readers for what the agent wrote.

Shared by tests/e2e/test_actions_*.py and bench/reaction.py's agent mode, so each scenario states only its
rules and what it expects.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import REPO_ROOT, free_port

BIN = Path(sys.executable).parent
ACTIONS_STREAM = "logs-dsagent.actions-default"


def wait_for(condition: Callable[[], Any], timeout_seconds: float, what: str, interval_seconds: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_seconds
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (httpx.HTTPError, KeyError, ValueError, AssertionError) as exc:
            last_error = exc
        time.sleep(interval_seconds)
    raise AssertionError(f"timed out after {timeout_seconds:g} s waiting for {what} (last error: {last_error})")


class AgentUnderTest:
    """`dsagent run --config FILE` with the given config (data_dir, ports and the model filled in)."""

    def __init__(self, tmp_path: Path, model_dir: Path, config: dict[str, Any]) -> None:
        self.data_dir = tmp_path / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine_port, self.api_port = free_port(), free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.engine_url = f"http://127.0.0.1:{self.engine_port}"
        full = {"data_dir": str(self.data_dir), "supervisor": {"drain_grace_seconds": 5}, **config}
        full["engine"] = {"model": str(model_dir), "port": self.engine_port, "extra_args": ["--num-threads", "1"],
                          **config.get("engine", {})}
        full["server"] = {"port": self.api_port, **config.get("server", {})}
        self.config_path = tmp_path / "agent.yaml"
        self.config_path.write_text(yaml.safe_dump(full))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DSAGENT_", "DSSIDECAR_"))}
        self.env = env
        self.log_path = tmp_path / "agent.out"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen([str(BIN / "dsagent"), "run", "--config", str(self.config_path)],
                                        cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        response = httpx.get(self.api_url + "/api/status", timeout=5)
        response.raise_for_status()
        return dict(response.json())

    def wait_ready(self, timeout_seconds: float = 180) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, f"agent exited early:\n{self.log_text()[-3000:]}"
            return bool(self.status()["engine"]["state"] == "ready")

        wait_for(ready, timeout_seconds, "the engine to be ready")

    def actions(self) -> list[dict[str, Any]]:
        """Audit events from the NDJSON export (what logs-dsagent.actions receives)."""
        path = self.data_dir / "export" / "logs-dsagent.actions.ndjson"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def knobs(self) -> dict[str, Any]:
        token = (self.data_dir / "control.token").read_text().strip()
        response = httpx.get(self.engine_url + "/control/knobs", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        response.raise_for_status()
        return {name: entry["value"] for name, entry in response.json()["knobs"].items()}

    def cli(self, *args: str, timeout_seconds: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "dsagent"), *args, "--data-dir", str(self.data_dir)], capture_output=True,
                              text=True, timeout=timeout_seconds, env={**self.env, "COLUMNS": "250"}, cwd=REPO_ROOT)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return int(self.process.returncode)


def es_actions(es: Any) -> list[dict[str, Any]]:
    """Audit documents in the fake Elasticsearch."""
    return [dict(doc) for doc in es.documents("logs-dsagent.actions*").values()]
