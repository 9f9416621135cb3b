"""Runs the inference engine as a child process (or watches one it does not own) and keeps it serving.

Why it exists: the engine is a process boundary (the agent never imports torch), so something must spawn
`dssidecar serve` (or a vLLM command line), wait until its /readyz says 200, restart it with exponential
backoff when it exits, give up after a crash-loop limit instead of burning CPU forever, and drain it
(SIGTERM, grace period, SIGKILL) when the agent stops. `external` engines (a pod's sidecar container) are
only probed. Restart counts and the state are exported as Samples.

The child runs in its own session and process group (a Ctrl-C in the terminal reaches only the agent,
which drains it), and stopping it signals the whole group, so an engine's worker processes stop with it. On
Linux it gets SIGTERM if the agent dies (PR_SET_PDEATHSIG, set by dsagent.engine_launcher before it execs
the engine: no Python runs between fork and exec in the threaded agent). A pid file in the data dir (pid and
a per-spawn id every worker inherits) lets a restarted agent reap a leftover engine's whole group.

A 200 from /readyz counts only when the engine's own process group listens on the engine port: a foreign
process holding the port is named ("port 8000 is held by pid N (name)") and waited out, not taken for the
engine. When the agent is PID 1 (a container's init) it also reaps the orphans the engine leaves.
"""

from __future__ import annotations

import enum
import logging
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx

from dsagent import engine_process
from dsagent.config import EngineConfig, SupervisorConfig, mask_arguments
from dsagent.engines.base import launcher_for
from dsagent.log_files import copy_truncate
from dsagent.samples import Sample, make_labels

log = logging.getLogger(__name__)

ENGINE_LOG_MAX_BYTES = 50 * 1024 * 1024
PROGRESS_LOG_SECONDS = 10.0  # "still waiting" lines while the engine loads
EXIT_POLL_SECONDS = 0.5  # how soon a crashed engine is noticed (cheap: one waitpid per poll)
PORT_RECHECK_SECONDS = 1.0  # how often a port held by another process is looked at again
LAUNCHER = Path(__file__).with_name("engine_launcher.py")


class EngineState(str, enum.Enum):
    STOPPED = "stopped"
    PREPARING_MODEL = "preparing_model"
    STARTING = "starting"
    READY = "ready"
    BACKOFF = "backoff"
    CRASH_LOOP = "crash_loop"
    FAILED = "failed"
    ATTACHED_READY = "attached_ready"
    ATTACHED_UNREACHABLE = "attached_unreachable"
    WAITING_FOR_PORT = "waiting_for_port"
    STOPPING = "stopping"


def sidecar_command() -> list[str]:
    """How to run `dssidecar` from the agent's own environment (console script next to python, else -m)."""
    script = Path(sys.executable).parent / "dssidecar"
    if script.exists():
        return [str(script)]
    found = shutil.which("dssidecar")
    if found and Path(found).parent == Path(sys.executable).parent:
        return [found]
    return [sys.executable, "-m", "dssidecar.cli"]


def launched(command: list[str]) -> list[str]:
    """`command` run through the launcher that sets the parent-death signal, then execs it (same pid)."""
    if not command or shutil.which(command[0]) is None:
        raise FileNotFoundError(f"{command[0] if command else '(empty command)'}: no such executable")
    return [sys.executable, "-S", str(LAUNCHER), str(os.getpid()), *command]


def backoff_seconds(consecutive_failures: int, initial_seconds: float, max_seconds: float) -> float:
    """initial * 2^(failures-1), capped: 1, 2, 4, ... max."""
    if consecutive_failures <= 0:
        return 0.0
    return float(min(max_seconds, initial_seconds * (2.0 ** min(consecutive_failures - 1, 60))))


class EngineSupervisor:
    """Owns the engine process for the agent's lifetime; all methods are thread-safe."""

    def __init__(
        self,
        engine: EngineConfig,
        supervisor: SupervisorConfig,
        data_dir: Path,
        otlp_endpoint: str | None = None,
        on_state_change: Callable[[EngineState, EngineState], None] | None = None,
    ) -> None:
        self.engine = engine
        self.config = supervisor
        self.data_dir = Path(data_dir)
        self.otlp_endpoint = otlp_endpoint
        self.on_state_change = on_state_change
        self.engine_url = engine.base_url()
        self.launcher = launcher_for(engine)  # the one place that depends on engine.kind (dsagent.engines)
        self.log_path = self.data_dir / "logs" / "engine.log"
        self.pid_path = self.data_dir / "engine.pid"
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._state = EngineState.STOPPED
        self._state_reason = ""
        self.restarts_total = 0
        self.starts_total = 0
        self.consecutive_failures = 0
        self.last_exit_code: int | None = None
        self.ready_since_seconds: float | None = None
        self.model_path: Path | None = engine.model.expanduser().resolve() if engine.model else None
        self.spawn_id = ""
        self.log_max_bytes = ENGINE_LOG_MAX_BYTES
        # drained restart with new arguments (a vLLM knob change, dsagent.engines.vllm): see restart_with_command
        self._command_override: list[str] | None = None
        self._restart_requested = threading.Event()
        self._restart_reason = ""
        self._skip_backoff = False

    # ---- public --------------------------------------------------------------------------------------

    @property
    def state(self) -> EngineState:
        return self._state

    def pid(self) -> int | None:
        with self._lock:
            process = self._process
            if process is not None and process.poll() is None:
                return int(process.pid)
            return None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        target = self._run_loop if self.launcher.owns_process else self._attach_loop
        self._thread = threading.Thread(target=target, name="engine-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout_seconds: float | None = None) -> None:
        """Drain the engine (SIGTERM, grace, SIGKILL) and stop supervising. Idempotent."""
        self._stop.set()
        self._drain_current()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_seconds if timeout_seconds is not None else self.config.drain_grace_seconds + 10)
        self._thread = None
        self._set_state(EngineState.STOPPED, "agent stopping")

    def restart_with_command(self, command: list[str], reason: str, timeout_seconds: float | None = None) -> bool:
        """Drain the running engine and start `command` instead; True once the new process is ready.

        Why: vLLM reads max_num_seqs, dtype, ... only at start-up, so a knob change is a restart with new
        arguments. If the new command does not come up ready, the previous command is put back and started
        again (the engine keeps serving with its old arguments) and False is returned.
        """
        timeout = timeout_seconds if timeout_seconds is not None else (
            self.config.readiness_timeout_seconds + self.config.drain_grace_seconds + 10)
        previous = self._command_override
        self._command_override = list(command)
        if self._restart_and_wait(reason, timeout):
            return True
        log.warning("engine did not come back ready with the new arguments (%s); restoring the previous ones", reason)
        self._command_override = previous
        self._restart_and_wait(f"restoring the arguments before: {reason}", timeout)
        return False

    def _restart_and_wait(self, reason: str, timeout_seconds: float) -> bool:
        starts_before = self.starts_total
        if self._state == EngineState.READY:  # else the run loop is (re)starting anyway, with the new command
            self._restart_reason = reason
            self._restart_requested.set()
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline and not self._stop.is_set():
            if self.starts_total > starts_before:
                if self._state == EngineState.READY:
                    return True
                if self._state in (EngineState.BACKOFF, EngineState.CRASH_LOOP, EngineState.FAILED):
                    return False
            time.sleep(0.05)
        return False

    def wait_ready(self, timeout_seconds: float) -> bool:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self._state in (EngineState.READY, EngineState.ATTACHED_READY):
                return True
            if self._state in (EngineState.CRASH_LOOP, EngineState.FAILED):
                return False
            time.sleep(0.05)
        return False

    def status(self) -> dict[str, object]:
        return {
            "kind": self.engine.kind,
            "url": self.engine_url,
            "state": self._state.value,
            "reason": self._state_reason,
            "pid": self.pid(),
            "restarts_total": self.restarts_total,
            "consecutive_failures": self.consecutive_failures,
            "last_exit_code": self.last_exit_code,
            "ready_since_seconds": self.ready_since_seconds,
            "model": str(self.model_path) if self.model_path else None,
            "log_file": str(self.log_path) if self.launcher.owns_process else None,
        }

    def samples(self, now_seconds: float) -> list[Sample]:
        labels = make_labels({"engine_kind": self.engine.kind})
        ready = self._state in (EngineState.READY, EngineState.ATTACHED_READY)
        samples = [
            Sample("dsagent_engine_ready", labels, 1.0 if ready else 0.0, now_seconds),
            Sample("dsagent_engine_restarts_total", labels, float(self.restarts_total), now_seconds, "counter"),
            Sample("dsagent_engine_consecutive_failures", labels, float(self.consecutive_failures), now_seconds),
            Sample("dsagent_engine_crash_loop", labels, 1.0 if self._state == EngineState.CRASH_LOOP else 0.0,
                   now_seconds),
        ]
        return samples

    # ---- state ---------------------------------------------------------------------------------------

    def _set_state(self, state: EngineState, reason: str = "") -> None:
        previous = self._state
        self._state = state
        self._state_reason = reason
        self.ready_since_seconds = time.time() if state in (EngineState.READY, EngineState.ATTACHED_READY) else (
            self.ready_since_seconds if state == previous else None)
        if state != previous:
            level = logging.WARNING if state in (EngineState.CRASH_LOOP, EngineState.BACKOFF,
                                                 EngineState.ATTACHED_UNREACHABLE) else logging.INFO
            log.log(level, "engine %s -> %s%s", previous.value, state.value, f" ({reason})" if reason else "")
            if self.on_state_change is not None:
                try:
                    self.on_state_change(previous, state)
                except Exception:  # a listener must not kill the supervisor
                    log.exception("engine state listener failed")

    # ---- external ------------------------------------------------------------------------------------

    def _probe_ready(self, client: httpx.Client) -> tuple[bool, str]:
        try:
            response = client.get(self.engine_url + self.config.readiness_path)
        except httpx.HTTPError as exc:
            return False, f"{type(exc).__name__}: {exc}"
        if response.status_code == 200:
            return True, ""
        return False, f"{self.config.readiness_path} answered {response.status_code}"

    def _attach_loop(self) -> None:
        interval_seconds = max(self.config.readiness_poll_seconds, 1.0)
        with httpx.Client(timeout=2.0) as client:
            while not self._stop.is_set():
                ready, reason = self._probe_ready(client)
                if ready:
                    self._set_state(EngineState.ATTACHED_READY, f"observing {self.engine_url}")
                else:
                    self._set_state(EngineState.ATTACHED_UNREACHABLE, reason)
                self._stop.wait(interval_seconds)

    # ---- owned process -------------------------------------------------------------------------------

    def _command(self) -> list[str]:
        if self._command_override is not None:
            return list(self._command_override)
        return self.launcher.command(self.model_path, self.otlp_endpoint)

    def _environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        environment.update(self.launcher.environment(self.otlp_endpoint))
        environment.update(self.engine.environment)
        # every worker inherits it: how a restarted agent recognizes this engine's leftovers (_reap_leftover)
        environment[engine_process.SPAWN_ID_VARIABLE] = self.spawn_id
        return environment

    def _open_log(self) -> IO[bytes]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        copy_truncate(self.log_path, self.log_max_bytes)
        return open(self.log_path, "ab")

    def _prepare_model(self) -> bool:
        """For builtin with no model: generate the demo checkpoint once into the data dir."""
        if not self.launcher.prepares_demo_model:
            return True
        demo = self.engine.demo_model
        target = self.data_dir / "models" / f"demo-{demo.size}-seed{demo.seed}-steps{demo.train_steps}"
        self.model_path = target
        if (target / "manifest.json").exists():
            return True
        self._set_state(EngineState.PREPARING_MODEL, f"generating the demo model into {target}")
        log.info("no engine.model configured: generating the demo model (%s, %d training steps) into %s; "
                 "progress in %s", demo.size, demo.train_steps, target, self.log_path)
        command = [*sidecar_command(), "demo-model", str(target), "--size", demo.size,
                   "--seed", str(demo.seed), "--train-steps", str(demo.train_steps)]
        with self._open_log() as log_file:
            process = subprocess.Popen(launched(command), stdout=log_file, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
            with self._lock:
                self._process = process
            deadline = time.monotonic() + self.config.demo_model_timeout_seconds
            started = time.monotonic()
            next_progress = started + PROGRESS_LOG_SECONDS
            while process.poll() is None and not self._stop.is_set() and time.monotonic() < deadline:
                time.sleep(0.2)
                if time.monotonic() >= next_progress:
                    log.info("still generating the demo model (%.0f s; progress in %s)",
                             time.monotonic() - started, self.log_path)
                    next_progress += PROGRESS_LOG_SECONDS
            if process.poll() is None:
                engine_process.terminate_group(process.pid, 0, process, what="demo model generation")
            with self._lock:
                self._process = None
        if (target / "manifest.json").exists():
            return True
        if not self._stop.is_set():
            self._set_state(EngineState.FAILED, f"demo model generation failed (exit {process.returncode}); "
                                                f"see {self.log_path}")
        return False

    def _reap_leftover(self) -> None:
        """A previous agent that was SIGKILLed may have left its engine (and its workers) running: stop the
        whole process group, but only processes that carry that engine's spawn id (a reused pid is left alone)."""
        try:
            recorded = self.pid_path.read_text().split()
            old_pid = int(recorded[0])
        except (OSError, ValueError, IndexError):
            return
        old_spawn_id = recorded[1] if len(recorded) > 1 else None
        members = engine_process.live_group_members(old_pid)
        ours = [pid for pid in members if old_spawn_id and engine_process.has_spawn_id(pid, old_spawn_id)]
        if ours:
            log.warning("stopping a leftover engine from a previous agent: process group %d (%s)", old_pid,
                        ", ".join(f"pid {pid} ({engine_process.process_name(pid)})" for pid in ours))
            engine_process.terminate_group(old_pid, self.config.drain_grace_seconds, what="leftover engine")
        self.pid_path.unlink(missing_ok=True)

    def _engine_port_is_local(self) -> bool:
        return self.launcher.owns_process and not self.engine.url

    def _wait_for_free_port(self) -> bool:
        """Before a spawn: while another process listens on the engine port, say who (once per holder) and
        wait, instead of starting an engine that cannot bind and counting that as a crash. False: stopping."""
        if not self._engine_port_is_local():
            return True
        announced = None
        while not self._stop.is_set():
            holder = engine_process.port_holder_text(self.engine.port)
            if holder is None:
                return True
            if holder != announced:
                reason = (f"port {self.engine.port} is held by {holder}; the engine starts when it is free "
                          "(stop that process or set engine.port / --engine-port)")
                log.warning("engine %s", reason)
                self._set_state(EngineState.WAITING_FOR_PORT, reason)
                announced = holder
            self._stop.wait(PORT_RECHECK_SECONDS)
        return False

    def _spawn(self) -> subprocess.Popen[bytes]:
        command = self._command()
        self.spawn_id = secrets.token_hex(8)
        shown = " ".join(mask_arguments(command))  # --api-key VALUE and URL credentials masked
        log.info("starting engine: %s (output -> %s)", shown, self.log_path)
        with self._open_log() as log_file:
            log_file.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
                           f"start: {shown}\n".encode())
            log_file.flush()
            process = subprocess.Popen(launched(command), stdout=log_file, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=self._environment(),
                                       start_new_session=True)
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.write_text(f"{process.pid} {self.spawn_id}\n")
        return process

    def _answer_is_ours(self, process: subprocess.Popen[bytes]) -> tuple[bool, str]:
        """A ready answer counts only when the spawned engine's process group holds the engine port."""
        if not self._engine_port_is_local():
            return True, ""
        served = engine_process.port_served_by_group(self.engine.port, process.pid)
        if served is None or served:
            return True, ""  # cannot tell (no /proc): trust the answer as before
        holder = engine_process.port_holder_text(self.engine.port) or "another process"
        return False, f"port {self.engine.port} is held by {holder}, not by the engine started as pid {process.pid}"

    def _wait_until_ready(self, process: subprocess.Popen[bytes], client: httpx.Client) -> tuple[bool, str]:
        started = time.monotonic()
        deadline = started + self.config.readiness_timeout_seconds
        next_progress = started + PROGRESS_LOG_SECONDS
        reason = "not probed yet"
        announced = ""
        while not self._stop.is_set():
            if time.monotonic() >= next_progress:
                log.info("engine not ready yet after %.0f s (%s); waiting up to %g s", time.monotonic() - started,
                         reason, self.config.readiness_timeout_seconds)
                next_progress += PROGRESS_LOG_SECONDS
            code = process.poll()
            if code is not None:
                return False, f"exited with code {code} before becoming ready" + (f" ({announced})" if announced
                                                                                   else "")
            ready, reason = self._probe_ready(client)
            if ready:
                ready, reason = self._answer_is_ours(process)
                if ready:
                    return True, ""
                if reason != announced:
                    log.warning("engine readiness answered by someone else: %s", reason)
                    announced = reason
            if time.monotonic() >= deadline:
                return False, f"not ready after {self.config.readiness_timeout_seconds:g} s ({reason})"
            self._stop.wait(self.config.readiness_poll_seconds)
        return False, "agent stopping"

    def _drain_current(self) -> None:
        with self._lock:
            process = self._process
        if process is None or process.poll() is not None:
            return
        self._set_state(EngineState.STOPPING, "draining")
        drain_process(process, self.config.drain_grace_seconds)
        self.pid_path.unlink(missing_ok=True)

    def _reap_orphans(self) -> None:
        if engine_process.reaps_orphans():
            with self._lock:
                owned = [self._process.pid] if self._process is not None else []
            for pid in engine_process.reap_orphans(owned):
                log.debug("reaped orphaned process %d", pid)
    def _run_loop(self) -> None:
        try:
            self._reap_leftover()
            if not self._prepare_model():
                return
            with httpx.Client(timeout=2.0) as client:
                while not self._stop.is_set():
                    self._run_once(client)
                    if self._stop.is_set():
                        break
                    if self._skip_backoff:  # a drained restart asked for: start the new command now
                        self._skip_backoff = False
                        self.restarts_total += 1
                        continue
                    if self.consecutive_failures >= self.config.crash_loop_limit:
                        self._set_state(EngineState.CRASH_LOOP,
                                        f"{self.consecutive_failures} failed starts in a row; not restarting "
                                        f"(see {self.log_path}; fix and restart the agent)")
                        return
                    delay = backoff_seconds(self.consecutive_failures, self.config.backoff_initial_seconds,
                                            self.config.backoff_max_seconds)
                    self._set_state(EngineState.BACKOFF, f"restarting in {delay:g} s "
                                                         f"(last exit code {self.last_exit_code})")
                    if self._stop.wait(delay):
                        break
                    self.restarts_total += 1
        except Exception as exc:  # the supervisor thread must report, not vanish
            log.exception("engine supervisor failed")
            self._set_state(EngineState.FAILED, f"supervisor error: {exc}")

    def _run_once(self, client: httpx.Client) -> None:
        if not self._wait_for_free_port():
            return
        self._set_state(EngineState.STARTING, f"waiting for {self.engine_url}{self.config.readiness_path}")
        try:
            process = self._spawn()
        except OSError as exc:
            self.consecutive_failures += 1
            self.last_exit_code = None
            log.error("cannot start the engine %s: %s", self._command()[0], exc.strerror or exc)
            return
        with self._lock:
            self._process = process
        self._restart_requested.clear()  # a fresh process satisfies any pending restart request
        self.starts_total += 1
        ready, reason = self._wait_until_ready(process, client)
        if not ready:
            if self._stop.is_set():  # stop() may have looked before _process was set: drain here too
                drain_process(process, self.config.drain_grace_seconds)
                return
            log.warning("engine did not become ready: %s", reason)
            drain_process(process, self.config.drain_grace_seconds)
            self.last_exit_code = process.returncode
            self.consecutive_failures += 1
            return
        self._set_state(EngineState.READY, f"serving at {self.engine_url}")
        ready_at = time.monotonic()
        while not self._stop.is_set() and process.poll() is None and not self._restart_requested.is_set():
            self._stop.wait(EXIT_POLL_SECONDS)
            self._reap_orphans()
            copy_truncate(self.log_path, self.log_max_bytes)  # the engine keeps writing: cap it while it runs
        if self._stop.is_set():
            drain_process(process, self.config.drain_grace_seconds)
            return
        if self._restart_requested.is_set():
            self._set_state(EngineState.STOPPING, f"drained restart: {self._restart_reason}")
            drain_process(process, self.config.drain_grace_seconds)
            self._restart_requested.clear()
            self._skip_backoff = True
            return
        self.last_exit_code = process.returncode
        if time.monotonic() - ready_at >= self.config.stable_after_seconds:
            self.consecutive_failures = 0
        self.consecutive_failures += 1
        log.warning("engine exited with code %s after %.1f s ready", process.returncode,
                    time.monotonic() - ready_at)


def drain_process(process: subprocess.Popen[bytes], grace_seconds: float) -> int:
    """SIGTERM to the engine's process group, wait up to the grace period for every member, then SIGKILL the
    group; returns the leader's exit code."""
    engine_process.terminate_group(process.pid, grace_seconds, process)
    return int(process.returncode) if process.returncode is not None else -1
