"""Supervisor with a fake engine process: readiness, restart with backoff, crash-loop limit, drain."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest
from dsagent import supervisor as supervisor_module
from dsagent.config import EngineConfig, SupervisorConfig
from dsagent.supervisor import EngineState, EngineSupervisor, backoff_seconds

from tests.conftest import free_port

FAKE_ENGINE = Path(__file__).resolve().parents[2] / "fakes" / "fake_engine.py"


def fast_supervision(**overrides: float) -> SupervisorConfig:
    values = dict(backoff_initial_seconds=0.05, backoff_max_seconds=0.2, crash_loop_limit=3,
                  stable_after_seconds=60, readiness_timeout_seconds=10, readiness_poll_seconds=0.05,
                  drain_grace_seconds=2)
    values.update(overrides)
    return SupervisorConfig(**values)


def fake_engine(port: int, *args: str) -> EngineConfig:
    return EngineConfig(kind="vllm", port=port, command=[sys.executable, str(FAKE_ENGINE), "--port", str(port), *args])


def wait_for(predicate, timeout_seconds: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_backoff_doubles_and_caps() -> None:
    assert [backoff_seconds(n, 1, 10) for n in range(0, 7)] == [0, 1, 2, 4, 8, 10, 10]


def test_engine_becomes_ready_and_is_drained_on_stop(tmp_path: Path) -> None:
    port = free_port()
    sup = EngineSupervisor(fake_engine(port, "--ready-after", "0.3"), fast_supervision(), tmp_path)
    sup.start()
    try:
        assert sup.wait_ready(15), sup.status()
        pid = sup.pid()
        assert pid is not None and sup.status()["state"] == "ready"
        recorded_pid, spawn_id = (tmp_path / "engine.pid").read_text().split()
        assert recorded_pid == str(pid) and spawn_id == sup.spawn_id
    finally:
        sup.stop()
    assert sup.pid() is None
    assert sup.state == EngineState.STOPPED
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert "fake engine on" in (tmp_path / "logs" / "engine.log").read_text()


def test_engine_that_exits_is_restarted_and_ready_again(tmp_path: Path) -> None:
    port = free_port()
    sup = EngineSupervisor(fake_engine(port, "--exit-after", "0.6", "--exit-code", "7"),
                           fast_supervision(crash_loop_limit=50), tmp_path)
    sup.start()
    try:
        assert sup.wait_ready(15)
        first_pid = sup.pid()
        assert wait_for(lambda: sup.restarts_total >= 1 and sup.state == EngineState.READY)
        assert sup.pid() != first_pid
        assert sup.last_exit_code == 7
        samples = {s.name: s.value for s in sup.samples(time.time())}
        assert samples["dsagent_engine_restarts_total"] >= 1
    finally:
        sup.stop()


def test_crash_loop_limit_stops_restarting(tmp_path: Path) -> None:
    port = free_port()
    sup = EngineSupervisor(fake_engine(port, "--exit-after", "0", "--exit-code", "3", "--never-ready"),
                           fast_supervision(crash_loop_limit=3), tmp_path)
    sup.start()
    try:
        assert wait_for(lambda: sup.state == EngineState.CRASH_LOOP)
        assert sup.starts_total == 3
        assert sup.restarts_total == 2
        assert sup.consecutive_failures == 3
        assert sup.last_exit_code == 3
        assert "3 failed starts in a row" in str(sup.status()["reason"])
        time.sleep(0.5)
        assert sup.starts_total == 3  # given up: no more attempts
        samples = {s.name: s.value for s in sup.samples(time.time())}
        assert samples["dsagent_engine_crash_loop"] == 1 and samples["dsagent_engine_ready"] == 0
    finally:
        sup.stop()


def test_engine_never_ready_is_killed_after_readiness_timeout(tmp_path: Path) -> None:
    port = free_port()
    sup = EngineSupervisor(fake_engine(port, "--never-ready"),
                           fast_supervision(readiness_timeout_seconds=0.5, crash_loop_limit=2), tmp_path)
    sup.start()
    try:
        assert wait_for(lambda: sup.state == EngineState.CRASH_LOOP)
        assert sup.starts_total == 2
        assert sup.pid() is None
    finally:
        sup.stop()


def test_engine_ignoring_sigterm_is_killed_after_grace(tmp_path: Path) -> None:
    port = free_port()
    sup = EngineSupervisor(fake_engine(port, "--ignore-sigterm"), fast_supervision(drain_grace_seconds=0.5), tmp_path)
    sup.start()
    assert sup.wait_ready(15)
    pid = sup.pid()
    sup.stop()
    assert sup.pid() is None
    assert wait_for(lambda: not Path(f"/proc/{pid}").exists(), 5)


def test_external_engine_is_only_observed(tmp_path: Path) -> None:
    import subprocess

    port = free_port()
    process = subprocess.Popen([sys.executable, str(FAKE_ENGINE), "--port", str(port)])
    sup = EngineSupervisor(EngineConfig(kind="external", url=f"http://127.0.0.1:{port}"), fast_supervision(), tmp_path)
    try:
        sup.start()
        assert wait_for(lambda: sup.state == EngineState.ATTACHED_READY)
        assert sup.pid() is None  # not ours
        process.kill()
        process.wait()
        assert wait_for(lambda: sup.state == EngineState.ATTACHED_UNREACHABLE)
    finally:
        sup.stop()
        if process.poll() is None:
            process.kill()


def test_builtin_generates_demo_model_then_serves_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The builtin path with a stand-in `dssidecar` (demo-model writes a manifest; serve runs the fake engine)."""
    fake_cli = tmp_path / "fake_dssidecar.py"
    fake_cli.write_text(textwrap.dedent(f"""
        import json, sys, pathlib, runpy
        if sys.argv[1] == "demo-model":
            target = pathlib.Path(sys.argv[2]); target.mkdir(parents=True, exist_ok=True)
            (target / "manifest.json").write_text(json.dumps({{"args": sys.argv[3:]}}))
        else:
            args = sys.argv[2:]
            print("serve args:", " ".join(args), flush=True)
            port = args[args.index("--port") + 1]
            sys.argv = ["fake_engine", "--port", port]
            runpy.run_path({str(FAKE_ENGINE)!r}, run_name="__main__")
    """))
    monkeypatch.setattr(supervisor_module, "sidecar_command", lambda: [sys.executable, str(fake_cli)])
    port = free_port()
    engine = EngineConfig(kind="builtin", port=port, demo_model={"size": "tiny", "train_steps": 5})
    sup = EngineSupervisor(engine, fast_supervision(), tmp_path, otlp_endpoint="http://127.0.0.1:9")
    sup.start()
    try:
        assert sup.wait_ready(20), sup.status()
        model_dir = tmp_path / "models" / "demo-tiny-seed0-steps5"
        assert (model_dir / "manifest.json").exists()
        assert "--train-steps" in (model_dir / "manifest.json").read_text()
        log_text = (tmp_path / "logs" / "engine.log").read_text()
        assert f"--model {model_dir}" in log_text
        assert "--otlp-endpoint http://127.0.0.1:9" in log_text
    finally:
        sup.stop()


def test_spawn_failure_counts_toward_the_crash_loop(tmp_path: Path) -> None:
    engine = EngineConfig(kind="vllm", port=free_port(), command=[str(tmp_path / "does-not-exist")])
    sup = EngineSupervisor(engine, fast_supervision(crash_loop_limit=2), tmp_path)
    sup.start()
    try:
        assert wait_for(lambda: sup.state == EngineState.CRASH_LOOP)
    finally:
        sup.stop()


def test_busy_engine_port_is_named_and_waited_out_not_a_crash_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import os
    import socket

    monkeypatch.setattr(supervisor_module, "sidecar_command", lambda: [sys.executable, "-c", "raise SystemExit(1)"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        model = tmp_path / "model"
        model.mkdir()
        sup = EngineSupervisor(EngineConfig(kind="builtin", port=port, model=model),
                               fast_supervision(crash_loop_limit=1), tmp_path)
        with caplog.at_level("WARNING", logger="dsagent.supervisor"):
            sup.start()
            try:
                assert wait_for(lambda: sup.state == EngineState.WAITING_FOR_PORT)
                time.sleep(1.5)
                assert sup.state == EngineState.WAITING_FOR_PORT and sup.starts_total == 0
                assert f"port {port} is held by pid {os.getpid()} (" in str(sup.status()["reason"])
            finally:
                sup.stop()
    assert caplog.text.count(f"port {port} is held by pid {os.getpid()}") == 1  # said once, not every recheck
