"""Process-level behaviour of `dssidecar serve`: SIGTERM drain and exit 0, a full queue answers 429,
a bad model directory ends the process with one line and a non-zero status."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sidecar_process import SidecarProcess

from tests.conftest import free_port


def stream_in_thread(base_url: str, payload: dict[str, Any], results: list[Any], first_chunk: threading.Event) -> threading.Thread:
    """POST a streaming request in a thread; append (status, full SSE text) to results."""

    def run() -> None:
        try:
            with httpx.Client(base_url=base_url, timeout=120.0) as client:
                with client.stream("POST", "/v1/completions", json=payload) as response:
                    parts = []
                    for text in response.iter_text():
                        parts.append(text)
                        if "data: " in text:
                            first_chunk.set()
                    results.append((response.status_code, "".join(parts)))
                    first_chunk.set()
        except Exception as error:  # recorded, asserted by the test
            results.append((None, repr(error)))
            first_chunk.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_sigterm_refuses_new_requests_finishes_in_flight_and_exits_0(tiny_model_dir: Path, tmp_path: Path) -> None:
    sidecar = SidecarProcess(tiny_model_dir, free_port(), tmp_path, "--kv-cache-blocks", "256", "--shutdown-grace-seconds", "60")
    sidecar.start()
    try:
        results: list[Any] = []
        events = [threading.Event() for _ in range(4)]
        payload = {"model": tiny_model_dir.name, "prompt": "drain me", "max_tokens": 150, "ignore_eos": True, "stream": True}
        threads = [stream_in_thread(sidecar.base_url, payload, results, event) for event in events]
        for event in events:
            assert event.wait(60), "streams did not start"
        sidecar.signal(signal.SIGTERM)
        refused = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the listener stays open while draining and answers 503
            try:
                refused = httpx.post(f"{sidecar.base_url}/v1/completions", json={"model": tiny_model_dir.name, "prompt": "x"}, timeout=10)
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            if refused.status_code == 503:
                break
        assert refused is not None and refused.status_code == 503, refused and refused.text
        assert refused.json()["error"]["code"] in ("server_draining",)
        ready = httpx.get(f"{sidecar.base_url}/readyz", timeout=10)
        assert ready.status_code == 503 and "draining" in ready.json()["reason"]
        for thread in threads:
            thread.join(120)
        assert sidecar.wait(60) == 0, sidecar.stderr_tail()
    finally:
        sidecar.stop()
    assert len(results) == 4
    for status, text in results:
        assert status == 200, text
        assert text.endswith("data: [DONE]\n\n"), text[-200:]
        last = json.loads(text.strip().split("\n\n")[-2][len("data: ") :])
        assert last["choices"][0]["finish_reason"] == "length"


@pytest.mark.slow
def test_sigterm_past_grace_aborts_streams_and_still_exits_0(tiny_model_dir: Path, tmp_path: Path) -> None:
    sidecar = SidecarProcess(tiny_model_dir, free_port(), tmp_path, "--kv-cache-blocks", "512", "--shutdown-grace-seconds", "0.5")
    sidecar.start()
    try:
        results: list[Any] = []
        started = threading.Event()
        payload = {"model": tiny_model_dir.name, "prompt": "long", "max_tokens": 1000, "ignore_eos": True, "stream": True}
        thread = stream_in_thread(sidecar.base_url, payload, results, started)
        assert started.wait(60)
        began = time.monotonic()
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait(60) == 0, sidecar.stderr_tail()
        assert time.monotonic() - began < 30
        thread.join(30)
    finally:
        sidecar.stop()
    ((status, text),) = results
    assert status == 200
    assert '"finish_reason":"abort"' in text


@pytest.mark.slow
def test_full_queue_answers_429_with_retry_after(tiny_model_dir: Path, tmp_path: Path) -> None:
    sidecar = SidecarProcess(
        tiny_model_dir, free_port(), tmp_path,
        "--kv-cache-blocks", "256", "--max-batch-size", "1", "--max-waiting-requests", "1",
        "--shutdown-grace-seconds", "1",
    )  # fmt: skip
    sidecar.start()
    try:
        results: list[Any] = []
        payload = {"model": tiny_model_dir.name, "prompt": "busy", "max_tokens": 1500, "ignore_eos": True, "stream": True}
        running = threading.Event()
        first = stream_in_thread(sidecar.base_url, payload, results, running)
        assert running.wait(60)
        waiting = threading.Event()
        second = stream_in_thread(sidecar.base_url, payload, results, waiting)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the second request sits in the waiting queue
            metrics = httpx.get(f"{sidecar.base_url}/metrics", timeout=10).text
            if f'vllm:num_requests_waiting{{model_name="{tiny_model_dir.name}"}} 1.0' in metrics:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the second request never showed up as waiting")
        response = httpx.post(f"{sidecar.base_url}/v1/completions", json={**payload, "stream": False, "max_tokens": 2}, timeout=30)
        statuses = [response.status_code]
        assert statuses[-1] == 429, statuses
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["type"] == "rate_limit_error"
    finally:
        sidecar.stop()
        first.join(30)
        second.join(30)


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dssidecar.cli", "serve", "--port", str(free_port()), *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_missing_model_dir_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    result = run_serve("--model", str(tmp_path / "absent"))
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert "absent" in result.stderr and "does not exist" in result.stderr


def test_model_dir_without_weights_names_the_missing_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    result = run_serve("--model", str(tmp_path))
    assert result.returncode != 0
    assert "safetensors" in result.stderr and result.stderr.strip().count("\n") == 0


def test_corrupt_weights_fail_the_manifest_check_with_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = run_serve("--model", str(broken))
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("dssidecar serve:") and "model.safetensors" in last_line
