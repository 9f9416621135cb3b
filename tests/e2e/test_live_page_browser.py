"""The agent's live page in a real browser: headless Chromium (driven by selenium) against `dsagent run` with
the fake GPU backend and the sidecar on the demo model. Requests sent to the engine must show up on the
page: the charts receive points, the request counter rises, the GPU table lists the simulated GPUs, the
browser logs no console error; stopping the agent raises the "agent down" banner. A screenshot is saved as
a test artifact (DSAGENT_TEST_ARTIFACTS, default .cache/test-artifacts/live-page.png).

Skips with the reason only where Chromium or chromedriver is absent and CI is not set; under CI=true a
missing browser fails the test (.ci/install-deps installs Debian's chromium and chromium-driver)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
GPU_COUNT = 4
ARTIFACTS = Path(os.environ.get("DSAGENT_TEST_ARTIFACTS", REPO_ROOT / ".cache" / "test-artifacts"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,2000"]


def browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", driver)) if path is None]
    if missing:
        reason = f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver; .ci/install-deps)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI is set but {reason}")
        pytest.skip(reason)
    assert chromium is not None and driver is not None
    return chromium, driver


@pytest.fixture()
def agent(tmp_path: Path, tiny_model_dir: Path) -> Iterator[dict[str, Any]]:
    engine_port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSAGENT_", "DSSIDECAR_"))}
    env.update({"DSAGENT_SOURCES__GPU__BACKEND": "fake", "DSAGENT_SOURCES__GPU__FAKE_GPU_COUNT": str(GPU_COUNT),
                "DSAGENT_ENGINE__EXTRA_ARGS": "[--num-threads, '1']"})
    log_path = tmp_path / "agent.out"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(BIN / "dsagent"), "run", "--data-dir", str(tmp_path / "data"),
                                    "--model", str(tiny_model_dir), "--engine-port", str(engine_port),
                                    "--api-port", str(api_port)],
                                   cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    api, engine = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{engine_port}"
    try:
        deadline = time.monotonic() + 300
        state = None
        while time.monotonic() < deadline and state != "ready":
            assert process.poll() is None, log_path.read_text()
            try:
                state = httpx.get(api + "/api/status", timeout=2).json()["engine"]["state"]
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert state == "ready", log_path.read_text()
        yield {"api": api, "engine": engine, "process": process, "log": log_path, "data_dir": tmp_path / "data"}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture()
def browser() -> Iterator[Any]:
    chromium, driver_path = browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="dsagent-chromium-")
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(what: str, predicate: Callable[[], Any], timeout_seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_seconds
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def send_requests(engine: str, count: int) -> None:
    with httpx.Client(timeout=60) as client:
        model = client.get(engine + "/v1/models").json()["data"][0]["id"]
        for i in range(count):
            client.post(engine + "/v1/completions",
                        json={"model": model, "prompt": f"hello page {i}", "max_tokens": 6}).raise_for_status()


def test_live_page_shows_the_node_in_a_real_browser(agent: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(agent["api"] + "/")
    wait_for("the first stream events", lambda: browser.execute_script("return window.dsagentPage.ticks()") >= 2)
    assert browser.find_element(By.ID, "engine-state").text == "ready"
    before = int(browser.find_element(By.ID, "requests-total").text)

    send_requests(agent["engine"], 6)
    wait_for("the request counter to rise by 6",
             lambda: int(browser.find_element(By.ID, "requests-total").text or 0) >= before + 6)
    charts = ("chart-qps", "chart-latency", "chart-tokens", "chart-gpu", "chart-queue", "chart-kv", "chart-knobs",
              "chart-errors")  # the error-rate chart needs two counter samples, so allow a few ticks
    counts = wait_for("points in every chart", lambda: (lambda c: c if all(c[name] > 0 for name in charts) else None)(
        browser.execute_script("return window.dsagentPage.pointCounts()")))
    # live updates keep adding points
    ticks = browser.execute_script("return window.dsagentPage.ticks()")
    wait_for("two more ticks", lambda: browser.execute_script("return window.dsagentPage.ticks()") >= ticks + 2)
    later = browser.execute_script("return window.dsagentPage.pointCounts()")
    assert later["chart-gpu"] > counts["chart-gpu"]
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-latency canvas"), "uPlot drew no canvas"

    rows = browser.find_elements(By.CSS_SELECTOR, "#gpu-table tbody tr")
    assert len(rows) == GPU_COUNT
    assert all("Simulated" in row.text for row in rows)
    assert float(browser.find_element(By.ID, "slo-qps").text) > 0
    # the embedded default loads the shipped rule packs: each rule with its state, the p99 SLO drawn
    rules_text = wait_for("the rule table", lambda: browser.find_element(By.ID, "rules-table").text)
    assert "slo/HighP99Latency" in rules_text and "inactive" in rules_text, rules_text
    legend = browser.find_element(By.ID, "chart-latency").text
    assert "SLO: HighP99Latency (200 ms)" in legend, legend
    assert browser.find_element(By.CSS_SELECTOR, "#export-table tbody").text.startswith("file")

    # an operator's dry-run decision (dsagent act's route) appears on the decisions timeline
    token = (agent["data_dir"] / "control.token").read_text().strip()
    answer = httpx.post(agent["api"] + "/api/actions", headers={"Authorization": f"Bearer {token}"}, timeout=30,
                        json={"actions": [{"set_knob": {"knob": "max_batch_size", "value": 16}}], "dry_run": True,
                              "reason": "page test"})
    assert answer.status_code == 200, answer.text
    decision = wait_for("the decision row", lambda: browser.find_element(By.ID, "actions-table").text)
    assert "max_batch_size" in decision and "dry_run" in decision, decision
    assert not browser.find_element(By.ID, "banner").is_displayed()

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "live-page.png"))
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors

    agent["process"].send_signal(signal.SIGTERM)
    agent["process"].wait(60)
    wait_for("the agent-down banner", lambda: browser.find_element(By.ID, "banner").is_displayed(), 20)
    assert "agent" in browser.find_element(By.ID, "banner").text
