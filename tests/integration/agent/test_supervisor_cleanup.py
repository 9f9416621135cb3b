"""The supervisor cleans up what it started (issue 12, items 11-13), with real processes on loopback.

An engine is a process group (vLLM's workers hold GPU memory): stopping it or reaping a leftover must stop
every member, escalating to SIGKILL; a foreign process on the engine port is named, never taken for the
engine; two agents on one data dir are refused; no Python runs between fork and exec (no preexec_fn).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from dsagent import engine_process
from dsagent import supervisor as supervisor_module
from dsagent.config import EngineConfig, SupervisorConfig
from dsagent.data_dir_lock import DataDirInUse, DataDirLock
from dsagent.supervisor import EngineState, EngineSupervisor

from tests.conftest import free_port

FAKE_ENGINE = Path(__file__).resolve().parents[2] / "fakes" / "fake_engine.py"


def fast_supervision(**overrides: float) -> SupervisorConfig:
    values: dict[str, Any] = dict(backoff_initial_seconds=0.05, backoff_max_seconds=0.2, crash_loop_limit=3,
                                  readiness_timeout_seconds=15, readiness_poll_seconds=0.05,
                                  drain_grace_seconds=1)
    values.update(overrides)
    return SupervisorConfig(**values)


def fake_engine(port: int, *args: str) -> EngineConfig:
    return EngineConfig(kind="vllm", port=port, command=[sys.executable, str(FAKE_ENGINE), "--port", str(port), *args])


def wait_for(predicate, timeout_seconds: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def worker_pid(log_path: Path) -> int:
    assert wait_for(lambda: "worker pid" in log_path.read_text())
    match = re.findall(r"worker pid (\d+)", log_path.read_text())
    return int(match[-1])


def test_stop_kills_the_engines_workers_too_escalating_to_sigkill(tmp_path: Path) -> None:
    port = free_port()
    sup = EngineSupervisor(fake_engine(port, "--spawn-worker", "--worker-ignores-sigterm"),
                           fast_supervision(drain_grace_seconds=0.5), tmp_path)
    sup.start()
    try:
        assert sup.wait_ready(20), sup.status()
        worker = worker_pid(tmp_path / "logs" / "engine.log")
        assert alive(worker)
    finally:
        sup.stop()
    assert wait_for(lambda: not alive(worker), 5), "a worker that ignores SIGTERM outlived the engine's drain"


def test_leftover_engine_group_of_a_killed_agent_is_reaped_whole(tmp_path: Path) -> None:
    """The previous agent died; its engine leader is gone (parent-death signal) but a worker still runs."""
    port = free_port()
    spawn_id = "feedface00000001"
    log_file = open(tmp_path / "leftover.log", "wb")  # noqa: SIM115
    leftover = subprocess.Popen([sys.executable, str(FAKE_ENGINE), "--port", str(port), "--spawn-worker"],
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, engine_process.SPAWN_ID_VARIABLE: spawn_id})
    worker = worker_pid(tmp_path / "leftover.log")
    os.kill(leftover.pid, signal.SIGKILL)
    leftover.wait()
    (tmp_path / "engine.pid").write_text(f"{leftover.pid} {spawn_id}\n")
    assert alive(worker)
    sup = EngineSupervisor(fake_engine(port), fast_supervision(), tmp_path)
    try:
        sup._reap_leftover()
        assert wait_for(lambda: not alive(worker), 5), "the leftover engine's worker still runs"
        assert not (tmp_path / "engine.pid").exists()
    finally:
        if alive(worker):
            os.kill(worker, signal.SIGKILL)
        log_file.close()


def test_leftover_reap_leaves_a_process_without_the_spawn_id_alone(tmp_path: Path) -> None:
    """A reused pid (another program now leads that process group) is not ours to kill."""
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        (tmp_path / "engine.pid").write_text(f"{stranger.pid} feedface00000002\n")
        EngineSupervisor(fake_engine(free_port()), fast_supervision(), tmp_path)._reap_leftover()
        time.sleep(0.3)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_foreign_process_on_the_engine_port_is_named_not_taken_for_the_engine(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    foreign = subprocess.Popen([sys.executable, str(FAKE_ENGINE), "--port", str(port)], stdout=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: engine_process.port_holder_text(port) is not None)
        sup = EngineSupervisor(fake_engine(port), fast_supervision(crash_loop_limit=2), tmp_path)
        with caplog.at_level("WARNING", logger="dsagent.supervisor"):
            sup.start()
            try:
                assert wait_for(lambda: sup.state == EngineState.WAITING_FOR_PORT)
                time.sleep(2.5)
                assert sup.state == EngineState.WAITING_FOR_PORT  # not ready, not crash_loop
                assert sup.starts_total == 0
                assert f"port {port} is held by pid {foreign.pid} (python" in str(sup.status()["reason"])
                foreign.kill()
                foreign.wait()
                assert sup.wait_ready(20), sup.status()
                assert sup.pid() not in (None, foreign.pid)
            finally:
                sup.stop()
        assert caplog.text.count(f"is held by pid {foreign.pid}") == 1
    finally:
        if foreign.poll() is None:
            foreign.kill()
            foreign.wait()


def test_a_ready_answer_from_another_process_group_does_not_count(tmp_path: Path) -> None:
    port = free_port()
    foreign = subprocess.Popen([sys.executable, str(FAKE_ENGINE), "--port", str(port)], stdout=subprocess.DEVNULL)
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        assert wait_for(lambda: engine_process.port_holder_text(port) is not None)
        sup = EngineSupervisor(fake_engine(port), fast_supervision(), tmp_path)
        counts, reason = sup._answer_is_ours(ours)  # type: ignore[arg-type]
        assert not counts
        assert f"held by pid {foreign.pid}" in reason and f"started as pid {ours.pid}" in reason
        assert engine_process.port_served_by_group(port, os.getpgid(foreign.pid)) is True
    finally:
        for process in (foreign, ours):
            process.kill()
            process.wait()


def test_engine_is_spawned_without_preexec_fn_and_gets_a_parent_death_signal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    real_popen = subprocess.Popen

    def recording_popen(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(supervisor_module.subprocess, "Popen", recording_popen)
    port = free_port()
    sup = EngineSupervisor(fake_engine(port), fast_supervision(), tmp_path)
    sup.start()
    try:
        assert sup.wait_ready(20), sup.status()
        pid = sup.pid()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert str(FAKE_ENGINE).encode() in cmdline  # the launcher exec'd the engine: same pid
    finally:
        sup.stop()
    assert seen and all(kwargs.get("preexec_fn") is None and kwargs.get("start_new_session") for kwargs in seen)


def test_orphans_reparented_to_the_agent_are_reaped(tmp_path: Path) -> None:
    """As PID 1 (here: a child subreaper, which Linux treats the same way) orphans become our zombies."""
    script = textwrap.dedent("""
        import ctypes, os, subprocess, sys, time
        from dsagent import engine_process
        ctypes.CDLL("libc.so.6").prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
        middle = subprocess.Popen([sys.executable, "-c",
            "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(0.3)']);"
            "print(p.pid, flush=True)"], stdout=subprocess.PIPE)
        orphan = int(middle.stdout.readline()); middle.wait()
        time.sleep(1.0)
        state = open(f"/proc/{orphan}/stat").read().rsplit(")", 1)[1].split()[0]
        reaped = engine_process.reap_orphans([middle.pid])
        print(state, orphan in reaped, os.path.exists(f"/proc/{orphan}"))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["Z", "True", "False"]


def test_second_lock_on_a_data_dir_is_refused_naming_the_holder(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(DataDirInUse, match=rf"in use by another agent \(pid {os.getpid()}\)"):
            DataDirLock(tmp_path).acquire()
    finally:
        first.release()
    again = DataDirLock(tmp_path)
    again.acquire()  # released: free again
    again.release()


def test_second_agent_on_the_same_data_dir_exits_with_one_line(tmp_path: Path) -> None:
    dsagent = [sys.executable, "-m", "dsagent.cli", "run", "--engine-url", "http://127.0.0.1:9",
               "--data-dir", str(tmp_path), "--api-port", "0"]
    environment = {**os.environ, "DSAGENT_SOURCES__GPU__BACKEND": "off"}
    first = subprocess.Popen(dsagent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
    try:
        assert wait_for(lambda: (tmp_path / "agent.json").exists(), 30)
        second = subprocess.run(dsagent, capture_output=True, text=True, timeout=60, env=environment)
        assert second.returncode == 2
        last_line = second.stderr.strip().splitlines()[-1]
        assert last_line.startswith(f"dsagent: data dir {tmp_path} is in use by another agent (pid {first.pid})")
        assert first.poll() is None and (tmp_path / "agent.json").exists()  # the first one is untouched
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(30)


def test_the_spawned_engine_carries_the_spawn_id_recorded_in_the_pid_file(tmp_path: Path) -> None:
    port = free_port()
    sup = EngineSupervisor(fake_engine(port, "--spawn-worker"), fast_supervision(), tmp_path)
    sup.start()
    try:
        assert sup.wait_ready(20), sup.status()
        pid, spawn_id = (tmp_path / "engine.pid").read_text().split()
        assert engine_process.has_spawn_id(int(pid), spawn_id)
        assert engine_process.has_spawn_id(worker_pid(tmp_path / "logs" / "engine.log"), spawn_id)
    finally:
        sup.stop()
