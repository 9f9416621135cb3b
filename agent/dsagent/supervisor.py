"""Runs the inference engine as a child process (or watches one it does not own) and keeps it serving.

Why it exists: the engine is a process boundary (the agent never imports torch), so something must spawn
`dssidecar serve` (or a vLLM command line), wait until its /readyz says 200, restart it with exponential
backoff when it exits, give up after a crash-loop limit instead of burning CPU forever, and drain it
(SIGTERM, grace period, SIGKILL) when the agent stops. `external` engines (a pod's sidecar container) are
only probed. Restart counts and the state are exported as Samples.

The child runs in its own session (a Ctrl-C in the terminal reaches only the agent, which drains it) and,
on Linux, gets SIGTERM if the agent dies (PR_SET_PDEATHSIG), so a SIGKILLed agent leaves no orphan holding
the port. A pid file in the data dir lets a restarted agent reap a leftover child all the same.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx

from dsagent.config import EngineConfig, SupervisorConfig
from dsagent.samples import Sample, make_labels

log = logging.getLogger(__name__)

ENGINE_LOG_MAX_BYTES = 50 * 1024 * 1024
PROGRESS_LOG_SECONDS = 10.0  # "still waiting" lines while the engine loads
EXIT_POLL_SECONDS = 0.5  # how soon a crashed engine is noticed (cheap: one waitpid per poll)
DEMO_SERVED_MODEL_NAME = "demo-model"  # what clients send as `model` when the agent generated the demo model


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


def _set_parent_death_signal() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


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
        target = self._attach_loop if self.engine.kind == "external" else self._run_loop
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
            "log_file": str(self.log_path) if self.engine.kind != "external" else None,
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
        if self.engine.kind == "vllm":
            return list(self.engine.command)
        assert self.model_path is not None
        command = [*sidecar_command(), "serve", "--model", str(self.model_path),
                   "--host", self.engine.host, "--port", str(self.engine.port)]
        served_model_name = self.engine.served_model_name
        if served_model_name is None and self.engine.model is None:
            served_model_name = DEMO_SERVED_MODEL_NAME  # a stable name for clients, whatever the training steps
        if served_model_name:
            command += ["--served-model-name", served_model_name]
        if self.otlp_endpoint:
            command += ["--otlp-endpoint", self.otlp_endpoint]
        return command + list(self.engine.extra_args)

    def _environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        if self.engine.kind == "vllm" and self.otlp_endpoint:
            environment.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", self.otlp_endpoint)
        if self.engine.kind == "builtin":
            # the agent needs one record per request: the OTLP log carries everything, so skip the span
            environment.setdefault("DSSIDECAR_OTLP_EXPORT_SPANS", "false")
        environment.update(self.engine.environment)
        return environment

    def _open_log(self) -> IO[bytes]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.log_path.exists() and self.log_path.stat().st_size > ENGINE_LOG_MAX_BYTES:
            self.log_path.replace(self.log_path.with_suffix(".log.1"))
        return open(self.log_path, "ab")

    def _prepare_model(self) -> bool:
        """For builtin with no model: generate the demo checkpoint once into the data dir."""
        if self.engine.kind != "builtin" or self.engine.model is not None:
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
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       preexec_fn=_set_parent_death_signal)
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
                process.kill()
                process.wait()
            with self._lock:
                self._process = None
        if (target / "manifest.json").exists():
            return True
        if not self._stop.is_set():
            self._set_state(EngineState.FAILED, f"demo model generation failed (exit {process.returncode}); "
                                                f"see {self.log_path}")
        return False

    def _reap_leftover(self) -> None:
        """A previous agent that was SIGKILLed may have left its engine running: stop it."""
        try:
            old_pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{old_pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmdline = ""
        if cmdline and ("dssidecar" in cmdline or (self.engine.command and self.engine.command[0] in cmdline)):
            log.warning("stopping a leftover engine process %d from a previous agent", old_pid)
            try:
                os.kill(old_pid, signal.SIGTERM)
                deadline = time.monotonic() + self.config.drain_grace_seconds
                while time.monotonic() < deadline and Path(f"/proc/{old_pid}").exists():
                    time.sleep(0.1)
                if Path(f"/proc/{old_pid}").exists():
                    os.kill(old_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.pid_path.unlink(missing_ok=True)

    def _warn_if_port_taken(self) -> None:
        """A busy engine port makes every start fail the same way; say so plainly once per start."""
        if self.engine.kind != "builtin":
            return
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.engine.host, self.engine.port))
            except OSError as exc:
                log.warning("engine port %s:%d is already in use (%s): the engine will fail to start; stop the "
                            "other process or set engine.port / --engine-port", self.engine.host, self.engine.port,
                            exc.strerror or exc)

    def _spawn(self) -> subprocess.Popen[bytes]:
        self._warn_if_port_taken()
        command = self._command()
        log.info("starting engine: %s (output -> %s)", " ".join(command), self.log_path)
        with self._open_log() as log_file:
            log_file.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
                           f"start: {' '.join(command)}\n".encode())
            log_file.flush()
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=self._environment(),
                                       start_new_session=True, preexec_fn=_set_parent_death_signal)
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.write_text(str(process.pid))
        return process

    def _wait_until_ready(self, process: subprocess.Popen[bytes], client: httpx.Client) -> tuple[bool, str]:
        started = time.monotonic()
        deadline = started + self.config.readiness_timeout_seconds
        next_progress = started + PROGRESS_LOG_SECONDS
        reason = "not probed yet"
        while not self._stop.is_set():
            if time.monotonic() >= next_progress:
                log.info("engine not ready yet after %.0f s (%s); waiting up to %g s", time.monotonic() - started,
                         reason, self.config.readiness_timeout_seconds)
                next_progress += PROGRESS_LOG_SECONDS
            code = process.poll()
            if code is not None:
                return False, f"exited with code {code} before becoming ready"
            ready, reason = self._probe_ready(client)
            if ready:
                return True, ""
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
        self._set_state(EngineState.STARTING, f"waiting for {self.engine_url}{self.config.readiness_path}")
        try:
            process = self._spawn()
        except OSError as exc:
            self.consecutive_failures += 1
            self.last_exit_code = None
            log.error("cannot start the engine %s: %s", self._command()[0], exc)
            return
        with self._lock:
            self._process = process
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
        while not self._stop.is_set() and process.poll() is None:
            self._stop.wait(EXIT_POLL_SECONDS)
        if self._stop.is_set():
            drain_process(process, self.config.drain_grace_seconds)
            return
        self.last_exit_code = process.returncode
        if time.monotonic() - ready_at >= self.config.stable_after_seconds:
            self.consecutive_failures = 0
        self.consecutive_failures += 1
        log.warning("engine exited with code %s after %.1f s ready", process.returncode,
                    time.monotonic() - ready_at)


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    """Signal the engine's whole process group (it runs in its own session), so workers stop too."""
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        try:
            process.send_signal(signum)
        except ProcessLookupError:
            pass


def drain_process(process: subprocess.Popen[bytes], grace_seconds: float) -> int:
    """SIGTERM to the engine's process group, wait up to the grace period, then SIGKILL; returns the exit code."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            log.warning("engine pid %d did not stop within %g s of SIGTERM; killing it", process.pid, grace_seconds)
            _signal_group(process, signal.SIGKILL)
            process.wait()
    return int(process.returncode) if process.returncode is not None else -1
