"""The real agent process supervising the real sidecar (tiny demo model), exporting to the fake
Elasticsearch running as its own process: request documents arrive complete and exactly once through an
outage, an agent SIGKILL, and the sidecar being SIGKILLed under load.

Slow (the sidecar imports torch and loads the model on each start: ~20 s on 2 cores).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.slow

REQUIRED_REQUEST_FIELDS = ("@timestamp", "request_id", "model", "prompt_length", "tokens_generated",
                           "generation_time_seconds", "time_to_first_token_seconds", "finish_reason")
REQUEST_STREAM = "logs-dsagent.requests*"
STARTUP_SECONDS = 180.0


def wait_for(predicate, timeout_seconds: float, what: str, interval: float = 0.25) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_seconds
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout_seconds:g} s waiting for {what} (last error: {last_error})")


class FakeEsProcess:
    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_dir / "fake-es.log", "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "tests.fakes.elasticsearch", "--port", str(self.port)],
                                        cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: httpx.get(self.url, timeout=1).status_code == 200, 30, "fake elasticsearch")

    def request_docs(self) -> list[dict]:
        response = httpx.post(f"{self.url}/{REQUEST_STREAM}/_search", params={"size": 100000},
                              json={"query": {"match_all": {}}}, timeout=10)
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return [{"_id": hit["_id"], **hit["_source"]} for hit in response.json()["hits"]["hits"]]

    def faults(self, **spec: object) -> None:
        httpx.post(f"{self.url}/_fake/faults", json=spec, timeout=5).raise_for_status()

    def clear_faults(self) -> None:
        httpx.delete(f"{self.url}/_fake/faults", timeout=5).raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


class AgentProcess:
    def __init__(self, data_dir: Path, model_dir: Path, es_url: str, engine_port: int, api_port: int) -> None:
        self.data_dir = data_dir
        self.api_url = f"http://127.0.0.1:{api_port}"
        self.engine_url = f"http://127.0.0.1:{engine_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DSAGENT_", "DSSIDECAR_"))}
        env.update({
            "DSAGENT_SOURCES__GPU__BACKEND": "off",
            "DSAGENT_EXPORT__SPOOL__RETRY_INITIAL_SECONDS": "0.2",
            "DSAGENT_EXPORT__SPOOL__RETRY_MAX_SECONDS": "1",
            "DSAGENT_EXPORT__ELASTICSEARCH__REQUEST_TIMEOUT_SECONDS": "5",
            "DSAGENT_EXPORT__METRIC_EXPORT_INTERVAL_SECONDS": "2",
            "DSAGENT_SUPERVISOR__BACKOFF_INITIAL_SECONDS": "0.5",
            "DSAGENT_SUPERVISOR__DRAIN_GRACE_SECONDS": "5",
            "DSAGENT_ENGINE__EXTRA_ARGS": "[--num-threads, '1']",
        })
        command = [str(Path(sys.executable).parent / "dsagent"), "run", "--data-dir", str(data_dir), "--model",
                   str(model_dir), "--engine-port", str(engine_port), "--api-port", str(api_port),
                   "--elasticsearch-url", es_url]
        self.log = open(data_dir / "agent.out", "ab")
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def status(self) -> dict:
        response = httpx.get(self.api_url + "/api/status", timeout=5)
        response.raise_for_status()
        return response.json()

    def wait_engine_ready(self) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, f"agent exited early; see {self.data_dir / 'agent.out'}"
            return self.status()["engine"]["state"] == "ready"

        wait_for(ready, STARTUP_SECONDS, "the agent's engine to be ready")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return int(self.process.returncode)


def complete(engine_url: str, index: int, max_tokens: int = 4) -> str:
    models = httpx.get(f"{engine_url}/v1/models", timeout=10).json()["data"]
    response = httpx.post(f"{engine_url}/v1/completions", timeout=60, json={
        "model": models[0]["id"], "prompt": f"request number {index}", "max_tokens": max_tokens,
        "ignore_eos": True})
    response.raise_for_status()
    return str(response.json()["id"])


@pytest.fixture(scope="module")
def fake_es(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeEsProcess]:
    cluster = FakeEsProcess(tmp_path_factory.mktemp("fake-es"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def agent_env(tiny_model_dir: Path, fake_es: FakeEsProcess, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[AgentProcess]:
    data_dir = tmp_path_factory.mktemp("agent-data")
    agent = AgentProcess(data_dir, tiny_model_dir, fake_es.url, free_port(), free_port())
    try:
        agent.wait_engine_ready()
        yield agent
    finally:
        code = agent.stop()
        assert code == 0, f"agent exit code {code} on SIGTERM; see {data_dir / 'agent.out'}"


def assert_exactly_once(docs: list[dict], request_ids: list[str]) -> None:
    ours = [doc for doc in docs if doc["request_id"] in set(request_ids)]
    by_request = Counter(doc["request_id"] for doc in ours)
    assert set(by_request) == set(request_ids), f"missing: {set(request_ids) - set(by_request)}"
    assert max(by_request.values()) == 1, f"duplicates: {[r for r, n in by_request.items() if n > 1]}"
    assert len({doc["_id"] for doc in ours}) == len(request_ids)


def test_requests_become_complete_request_documents(agent_env: AgentProcess, fake_es: FakeEsProcess) -> None:
    request_ids = [complete(agent_env.engine_url, i) for i in range(6)]
    wait_for(lambda: {d["request_id"] for d in fake_es.request_docs()} >= set(request_ids), 60,
             "request documents in Elasticsearch")
    docs = [d for d in fake_es.request_docs() if d["request_id"] in set(request_ids)]
    for doc in docs:
        missing = [field for field in REQUIRED_REQUEST_FIELDS if field not in doc]
        assert not missing, f"request document lacks {missing}: {doc}"
        assert doc["tokens_generated"] == 4 and doc["prompt_length"] > 0
        assert doc["generation_time_seconds"] >= doc["time_to_first_token_seconds"] > 0
        assert "prompt" not in doc and "completion" not in doc  # redacted by default
    assert_exactly_once(fake_es.request_docs(), request_ids)
    status = agent_env.status()
    assert status["slo"]["requests_total"] >= 6 and status["slo"]["qps"] > 0
    metrics = httpx.get(agent_env.api_url + "/metrics", timeout=5).text
    assert "inference_qps" in metrics and "inference_ttft_seconds_bucket" in metrics


def test_outage_then_recovery_delivers_every_document_exactly_once(agent_env: AgentProcess,
                                                                   fake_es: FakeEsProcess) -> None:
    fake_es.faults(status=503, paths=["/_bulk"])
    try:
        request_ids = [complete(agent_env.engine_url, 100 + i) for i in range(8)]
        wait_for(lambda: agent_env.status()["export"].get("elasticsearch.retries", 0) > 0, 30,
                 "the exporter to retry against the outage")
        present = {d["request_id"] for d in fake_es.request_docs()}
        assert not present & set(request_ids), "documents arrived during the outage"
    finally:
        fake_es.clear_faults()
    wait_for(lambda: {d["request_id"] for d in fake_es.request_docs()} >= set(request_ids), 60,
             "the backlog to drain after recovery")
    time.sleep(2)  # any duplicate from a retried batch would have landed by now
    assert_exactly_once(fake_es.request_docs(), request_ids)


def test_sidecar_sigkilled_under_load_is_restarted_and_agent_stays_up(agent_env: AgentProcess) -> None:
    before = agent_env.status()["engine"]
    stop_load = threading.Event()
    outcomes: Counter[str] = Counter()

    def load() -> None:
        index = 0
        while not stop_load.is_set():
            index += 1
            try:
                complete(agent_env.engine_url, 1000 + index, max_tokens=16)
                outcomes["ok"] += 1
            except httpx.HTTPError:
                outcomes["failed"] += 1
                time.sleep(0.2)

    workers = [threading.Thread(target=load) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: outcomes["ok"] >= 3, 60, "load to flow")
        os.kill(int(before["pid"]), signal.SIGKILL)
        wait_for(lambda: agent_env.status()["engine"]["restarts_total"] >= before["restarts_total"] + 1, 30,
                 "the supervisor to notice the crash")
        agent_env.wait_engine_ready()
        after = agent_env.status()["engine"]
        assert after["pid"] != before["pid"]
        ok_before = outcomes["ok"]
        wait_for(lambda: outcomes["ok"] > ok_before, 60, "requests to succeed again after the restart")
    finally:
        stop_load.set()
        for worker in workers:
            worker.join(90)
    assert httpx.get(agent_env.api_url + "/healthz", timeout=5).status_code == 200
    assert agent_env.process.poll() is None


def test_agent_sigkilled_during_outage_restarts_and_delivers_exactly_once(
        tiny_model_dir: Path, fake_es: FakeEsProcess, tmp_path: Path) -> None:
    engine_port, api_port = free_port(), free_port()
    agent = AgentProcess(tmp_path, tiny_model_dir, fake_es.url, engine_port, api_port)
    try:
        agent.wait_engine_ready()
        engine_pid = int(agent.status()["engine"]["pid"])
        fake_es.faults(status=503, paths=["/_bulk"])
        request_ids = [complete(agent.engine_url, 5000 + i) for i in range(8)]
        wait_for(lambda: agent.status()["agent"]["requests_received_total"] >= 8, 30,
                 "the agent to receive the request records")
        agent.process.kill()  # SIGKILL: no drain, no flush
        agent.process.wait()
        wait_for(lambda: not Path(f"/proc/{engine_pid}").exists(), 30, "the orphaned sidecar to stop")
        assert not {d["request_id"] for d in fake_es.request_docs()} & set(request_ids)
        agent.log.close()

        restarted = AgentProcess(tmp_path, tiny_model_dir, fake_es.url, engine_port, api_port)
        agent = restarted
        wait_for(lambda: restarted.status()["agent"]["pid"] == restarted.process.pid, 60, "the restarted agent")
        time.sleep(3)  # it retries the spooled backlog against the still-failing cluster
        fake_es.clear_faults()
        wait_for(lambda: {d["request_id"] for d in fake_es.request_docs()} >= set(request_ids), 90,
                 "the spooled backlog to arrive after the restart")
        time.sleep(2)
        assert_exactly_once(fake_es.request_docs(), request_ids)
        restarted.wait_engine_ready()
    finally:
        fake_es.clear_faults()
        agent.stop()
