"""Issue 12's fault-injection suite: the real `dsagent run` process, a fake engine process, the fake
Elasticsearch process and an OTLP collector on loopback, each fault injected while telemetry flows.

Every scenario counts what was answered 200 and checks it all arrived (documents lost = 0) and, for
Elasticsearch, once (duplicated = 0). The closing note of issue 12 tabulates these scenarios. Items 11-13
(process groups, a foreign port holder, one agent per data dir) also have their own real-process tests in
tests/integration/agent/test_supervisor_cleanup.py; items 5 and 6 are proven at unit level (fsync calls;
the sidecar's bad input belongs to the engine's tests).
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.slow

FAKE_ENGINE = REPO_ROOT / "tests" / "fakes" / "fake_engine.py"
TOKEN = "receiver-test-token"
SECRET = "SECRETPROMPTTEXT"
PASSWORD = "hunter2"
REQUESTS_STREAM = "logs-dsagent.requests-default"


def wait_for(predicate: Callable[[], Any], timeout_seconds: float, what: str) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (httpx.HTTPError, OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_seconds:g} s waiting for {what}")


def otlp_logs(request_ids: list[str]) -> dict[str, Any]:
    def attribute(key: str, value: Any) -> dict[str, Any]:
        kind = "intValue" if isinstance(value, int) else "stringValue"
        return {"key": key, "value": {kind: str(value) if kind == "intValue" else value}}

    records = [{"timeUnixNano": str(time.time_ns()), "attributes": [
        attribute("request_id", rid), attribute("gen_ai.request.model", "demo"), attribute("prompt_length", 9),
        attribute("tokens_generated", 4), attribute("gen_ai.prompt.0.content", f"{SECRET} prompt of {rid}"),
        attribute("gen_ai.completion.0.content", f"{SECRET} answer"), attribute("input.value", SECRET),
        attribute("llm.input_messages.0.message.content", SECRET), attribute("http.request.body", SECRET),
    ]} for rid in request_ids]
    return {"resourceLogs": [{"scopeLogs": [{"logRecords": records}]}]}


class Collector:
    """An OTLP/HTTP collector on loopback answering `status` (changeable) and keeping accepted bodies."""

    def __init__(self) -> None:
        self.status = 200
        self.accepted: list[bytes] = []
        self.refused = 0
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = collector.status
                if status == 200:
                    collector.accepted.append(body)
                else:
                    collector.refused += 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeEs:
    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_dir / "fake-es.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen([sys.executable, "-m", "tests.fakes.elasticsearch", "--port", str(self.port)],
                                        cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: httpx.get(self.url, timeout=1).status_code == 200, 30, "fake elasticsearch")

    def faults(self, **spec: Any) -> None:
        httpx.post(f"{self.url}/_fake/faults", json=spec, timeout=5).raise_for_status()

    def clear_faults(self) -> None:
        httpx.delete(f"{self.url}/_fake/faults", timeout=5).raise_for_status()

    def request_ids(self) -> list[str]:
        response = httpx.post(f"{self.url}/{REQUESTS_STREAM}/_search", params={"size": 100000},
                              json={"query": {"match_all": {}}}, timeout=10)
        if response.status_code == 404:
            return []
        return [hit["_source"]["request_id"] for hit in response.json()["hits"]["hits"]]

    def all_text(self) -> str:
        response = httpx.post(f"{self.url}/*/_search", params={"size": 100000}, json={"query": {"match_all": {}}},
                              timeout=10)
        return response.text

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.close()


class Agent:
    """`dsagent run -c config.yaml` as a process; the fake engine is its vLLM-kind engine."""

    def __init__(self, data_dir: Path, config: dict[str, Any], limit_file_bytes: int | None = None) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = data_dir.parent / f"{data_dir.name}-config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = data_dir.parent / f"{data_dir.name}-agent.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dsagent.cli", "run", "-c", str(self.config_path)],
            cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_for(lambda: self.pointer()["pid"] == self.process.pid, 30, "the agent's API")

    def pointer(self) -> dict[str, Any]:
        return dict(json.loads((self.data_dir / "agent.json").read_text()))

    @property
    def api(self) -> str:
        return str(self.pointer()["url"])

    @property
    def receiver(self) -> str:
        return str(self.pointer()["otlp_endpoint"]) + "/v1/logs"

    def status(self) -> dict[str, Any]:
        return dict(httpx.get(self.api + "/api/status", timeout=5).json())

    def post(self, body: Any, token: str | None = TOKEN, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kwargs.pop("headers", {}))
        if isinstance(body, bytes):
            return httpx.post(self.receiver, content=body, headers={"Content-Type": "application/json", **headers},
                              timeout=30, **kwargs)
        return httpx.post(self.receiver, json=body, headers=headers, timeout=30, **kwargs)

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def agent_config(data_dir: Path, engine_port: int, **export: Any) -> dict[str, Any]:
    return {
        "data_dir": str(data_dir),
        "engine": {"kind": "vllm", "port": engine_port,
                   "command": [sys.executable, str(FAKE_ENGINE), "--port", str(engine_port)],
                   "environment": {"AWS_SECRET_ACCESS_KEY": PASSWORD}},
        "supervisor": {"readiness_poll_seconds": 0.1, "drain_grace_seconds": 2, "backoff_initial_seconds": 0.2},
        "sources": {"gpu": {"backend": "off"}, "otlp_receiver": {"token": TOKEN}},
        "server": {"port": 0},
        "intervals": {"collect_seconds": 0.5},
        "export": {"metric_export_interval_seconds": 1.0,
                   "spool": {"retry_initial_seconds": 0.1, "retry_max_seconds": 0.5}, **export},
    }


def raw_post_status(url: str, body: bytes, declared_length: int) -> int:
    """POST with a Content-Length that lies (an HTTP client library refuses to send one)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                     f"Authorization: Bearer {TOKEN}\r\nContent-Length: {declared_length}\r\n\r\n".encode() + body)
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    return int(status_line.split()[1])


def exported_text(data_dir: Path) -> str:
    return "\n".join(path.read_text(errors="replace") for path in (data_dir / "export").rglob("*") if path.is_file())


# ---- items 1, 2, 7, 8, 9, 10, 15: one agent exporting to Elasticsearch, OTLP and files ---------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, FakeEs, Collector]]:
    root = tmp_path_factory.mktemp("fault-node")
    es = FakeEs(root)
    collector = Collector()
    es_url = es.url.replace("http://", f"http://elastic:{PASSWORD}@")
    agent = Agent(root / "data", agent_config(root / "data", free_port(),
                                              elasticsearch={"url": es_url}, otlp={"endpoint": collector.url}))
    try:
        yield agent, es, collector
    finally:
        agent.stop()
        collector.stop()
        es.stop()


def test_refusals_are_retried_not_dead_lettered_and_everything_arrives_once(
        node: tuple[Agent, FakeEs, Collector]) -> None:
    agent, es, collector = node
    collector.status = 401  # an expired collector token
    es.faults(item_status=403)  # an API key without write rights: every bulk item security_exception
    ids = [f"refused-{i}" for i in range(30)]
    for start in range(0, 30, 10):
        assert agent.post(otlp_logs(ids[start:start + 10])).status_code == 200

    def refused() -> bool:
        export = agent.status()["export"]
        return export["otlp.state"].startswith("refused") and export["elasticsearch.state"].startswith("refused")

    wait_for(refused, 30, "both destinations to report the refusal")
    export = agent.status()["export"]
    assert export["otlp.refused_retries"] > 0 and export["elasticsearch.refused_retries"] > 0
    assert export["dead_lettered_documents"] == 0
    assert not (agent.data_dir / "dead-letter").exists() or not any((agent.data_dir / "dead-letter").iterdir())

    collector.status = 200  # the operator renews the token and the key's rights
    es.clear_faults()
    wait_for(lambda: set(ids) <= set(es.request_ids()), 60, "every request document in Elasticsearch")
    stored = es.request_ids()
    assert sorted(i for i in stored if i in ids) == sorted(ids)  # lost 0, duplicated 0
    wait_for(lambda: all(any(i.encode() in body for body in collector.accepted) for i in ids), 30,
             "every request record at the collector")
    wait_for(lambda: all(i in exported_text(agent.data_dir) for i in ids), 30, "every request in NDJSON")
    assert agent.status()["export"]["dead_lettered_documents"] == 0


def test_no_prompt_text_and_no_secret_leaves_the_node(node: tuple[Agent, FakeEs, Collector]) -> None:
    agent, es, collector = node
    ids = [f"leak-{i}" for i in range(5)]
    assert agent.post(otlp_logs(ids)).status_code == 200
    wait_for(lambda: set(ids) <= set(es.request_ids()), 60, "the leak probes in Elasticsearch")
    wait_for(lambda: all(i in exported_text(agent.data_dir) for i in ids), 30, "the leak probes in NDJSON")
    wait_for(lambda: all(any(i.encode() in body for body in collector.accepted) for i in ids), 30,
             "the leak probes at the collector")
    outputs = [es.all_text(), exported_text(agent.data_dir), *(b.decode(errors="replace") for b in collector.accepted)]
    dead = agent.data_dir / "dead-letter"
    outputs += [path.read_text() for path in dead.glob("*")] if dead.exists() else []
    assert not [text for text in outputs if SECRET in text]
    shown = subprocess.run([sys.executable, "-m", "dsagent.cli", "config", "show", "-c", str(agent.config_path)],
                           capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert shown.returncode == 0 and "elasticsearch" in shown.stdout
    for text in (shown.stdout, httpx.get(agent.api + "/api/status", timeout=5).text, agent.log_path.read_text()):
        assert PASSWORD not in text


def test_the_receiver_is_its_own_listener_and_refuses_forged_records(node: tuple[Agent, FakeEs, Collector]) -> None:
    agent, _, _ = node
    assert agent.pointer()["otlp_endpoint"] != agent.api
    assert httpx.post(agent.api + "/v1/logs", json=otlp_logs(["x"]), timeout=5).status_code in (404, 405)
    before = agent.status()["agent"]["requests_received_total"]
    assert agent.post(otlp_logs(["forged"]), token=None).status_code == 401
    assert agent.post(otlp_logs(["forged"]), token="guess").status_code == 401
    assert agent.status()["agent"]["requests_received_total"] == before
    assert httpx.get(agent.api + "/metrics", timeout=5).status_code == 200  # the API port keeps /metrics


def test_hostile_bodies_get_4xx_in_bounded_memory_and_the_agent_keeps_serving(
        node: tuple[Agent, FakeEs, Collector]) -> None:
    agent, _, _ = node
    rss_before = agent.rss_bytes()
    bomb = gzip.compress(b"{" + b" " * (256 * 1024 * 1024) + b"}", compresslevel=9)  # 256 MiB in ~250 KB
    assert agent.post(bomb, headers={"Content-Encoding": "gzip"}).status_code == 413
    assert raw_post_status(agent.receiver, b"x" * 1024, declared_length=10**10) == 413  # refused unread
    assert agent.post(b"[" * 200_000 + b"]" * 200_000).status_code == 400
    assert agent.post(b'{"resourceLogs": [' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"]}").status_code == 400
    assert agent.post(b"\x1f\x8b\x08 not gzip", headers={"Content-Encoding": "gzip"}).status_code == 400
    growth_bytes = agent.rss_bytes() - rss_before
    assert growth_bytes < 120 * 1024 * 1024, f"RSS grew {growth_bytes / 2**20:.0f} MiB"
    assert agent.post(otlp_logs(["after-hostile"])).status_code == 200


def test_replaying_dead_letters_is_refused_while_the_agent_runs(node: tuple[Agent, FakeEs, Collector]) -> None:
    agent, _, _ = node
    result = subprocess.run([sys.executable, "-m", "dsagent.cli", "export", "replay-dead-letters", "-c",
                             str(agent.config_path)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert result.returncode == 2 and "stop the agent before replaying" in result.stderr


# ---- item 3: a spool write that fails is answered 503, and nothing answered 200 is lost ---------------


def test_full_disk_answers_503_and_loses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    agent = Agent(data, agent_config(data, free_port()))
    try:
        accepted: list[str] = []
        refused: list[list[str]] = []
        files = [path for path in data.rglob("*") if path.is_file()]
        limit = max(path.stat().st_size for path in files) + 256 * 1024
        resource.prlimit(agent.process.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        for batch_number in range(400):  # until the "disk" is full
            batch = [f"full-{batch_number}-{i}" for i in range(50)]
            response = agent.post(otlp_logs(batch))
            if response.status_code == 200:
                accepted += batch
            else:
                assert response.status_code == 503, response.text
                refused.append(batch)
                if len(refused) >= 3:
                    break
        assert refused, "the file size limit never made a spool write fail"
        assert agent.process.poll() is None
        resource.prlimit(agent.process.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        for batch in refused:  # the engine's exporter sends a 503'd batch again
            assert agent.post(otlp_logs(batch)).status_code == 200
            accepted += batch
        wait_for(lambda: all(i in exported_text(data) for i in accepted), 60, "every accepted record in NDJSON")
    finally:
        agent.stop()


# ---- items 11 and 13: a killed agent's engine group is reaped whole; one agent per data dir ------------


def test_killed_agents_engine_workers_are_reaped_by_the_next_agent(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    config = agent_config(data, port)
    config["engine"]["command"] += ["--spawn-worker", "--worker-ignores-sigterm"]
    first = Agent(data, config)
    wait_for(lambda: first.status()["engine"]["state"] == "ready", 30, "the first engine")
    log_text = (data / "logs" / "engine.log").read_text()
    worker = int(log_text.rsplit("worker pid ", 1)[1].split()[0])
    second = subprocess.run([sys.executable, "-m", "dsagent.cli", "run", "-c", str(first.config_path)],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert second.returncode == 2 and "is in use by another agent" in second.stderr.strip().splitlines()[-1]
    first.process.kill()  # SIGKILL: no drain; the engine leader gets its parent-death signal, the worker not
    first.process.wait()
    first.log.close()
    time.sleep(1.0)
    assert Path(f"/proc/{worker}").exists(), "the scenario needs a surviving worker"
    restarted = Agent(data, config)
    try:
        wait_for(lambda: not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text()
                 .rsplit(")", 1)[1].split()[0], 30, "the leftover worker to be reaped")
        wait_for(lambda: restarted.status()["engine"]["state"] == "ready", 30, "the new engine")
    finally:
        restarted.stop()
        if Path(f"/proc/{worker}").exists():
            os.kill(worker, signal.SIGKILL)


# ---- item 14: a dead engine's series vanish and /readyz names it ---------------------------------------


def test_dead_engine_series_vanish_and_readyz_names_it(tmp_path: Path) -> None:
    port = free_port()
    engine = subprocess.Popen([sys.executable, str(FAKE_ENGINE), "--port", str(port)], stdout=subprocess.DEVNULL)
    data = tmp_path / "data"
    config = agent_config(data, port)
    config["engine"] = {"kind": "external", "url": f"http://127.0.0.1:{port}"}
    config["server"].update(readiness_required_sources=["engine"], readiness_max_source_age_seconds=1.5)
    agent = Agent(data, config)
    try:
        wait_for(lambda: "dsagent_engine_requests_running" in httpx.get(agent.api + "/metrics", timeout=5).text,
                 30, "the engine's series")
        wait_for(lambda: httpx.get(agent.api + "/readyz", timeout=5).status_code == 200, 30, "ready")
        engine.kill()
        engine.wait()
        wait_for(lambda: "dsagent_engine_requests_running" not in httpx.get(agent.api + "/metrics", timeout=5).text,
                 10, "the engine's series to vanish (not repeat their last value)")
        wait_for(lambda: httpx.get(agent.api + "/readyz", timeout=5).status_code == 503, 15, "/readyz to go red")
        assert "engine: no good reading for" in httpx.get(agent.api + "/readyz", timeout=5).text
        assert httpx.get(agent.api + "/healthz", timeout=5).status_code == 200  # still live
    finally:
        agent.stop()
        if engine.poll() is None:
            engine.kill()
