"""The engine a tune measures: one already running (--engine-url + its control token), or a sidecar the
tuner starts itself on --model or on the demo model (the embedded default), so `dsagent tune --auto` works
on a fresh clone with nothing else running.

Why through the agent's supervisor: it already knows how to spawn `dssidecar serve`, generate the demo
checkpoint, wait for /readyz and drain the process at the end. The tuner's sidecar gets its own port, its
own random control token and its own state directory, so it never touches a running agent's engine or pid
file; an existing demo checkpoint in the agent's data dir is reused instead of generated again.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsagent.config import DemoModelConfig, EngineConfig, SupervisorConfig


class EngineStartError(RuntimeError):
    """The tuner's own sidecar did not become ready; the message says why and where its log is."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def existing_demo_model(data_dir: Path, demo: DemoModelConfig) -> Path | None:
    target = data_dir / "models" / f"demo-{demo.size}-seed{demo.seed}-steps{demo.train_steps}"
    return target if (target / "manifest.json").exists() else None


class OwnSidecar:
    """A dssidecar the tuner starts and stops (context manager); `url` and `token` once started."""

    def __init__(self, data_dir: Path, model: Path | None = None, extra_args: list[str] | None = None,
                 demo: DemoModelConfig | None = None) -> None:
        self.data_dir = data_dir
        self.token = secrets.token_urlsafe(24)
        demo = demo or DemoModelConfig()
        model = model or existing_demo_model(data_dir, demo)
        self.engine = EngineConfig(
            kind="builtin", host="127.0.0.1", port=free_port(), model=model,
            served_model_name="demo-model" if model is None or model.name.startswith("demo-") else None,
            demo_model=demo, extra_args=list(extra_args or []),
            environment={"DSSIDECAR_CONTROL_TOKEN": self.token})
        self.url = self.engine.base_url()
        self._supervisor: Any = None

    def start(self, timeout_seconds: float = 1800.0, on_wait: Callable[[str], None] | None = None) -> OwnSidecar:
        from dsagent.supervisor import EngineState, EngineSupervisor

        state_dir = self.data_dir / "tune-engine"
        self._supervisor = EngineSupervisor(self.engine, SupervisorConfig(crash_loop_limit=1), state_dir)
        self._supervisor.start()
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            state = self._supervisor.state
            if state == EngineState.READY:
                return self
            if state in (EngineState.CRASH_LOOP, EngineState.FAILED, EngineState.BACKOFF):
                reason = self._supervisor.status().get("reason")
                self.stop()
                raise EngineStartError(f"the tuner's sidecar did not start ({reason}); see "
                                       f"{self._supervisor.log_path}")
            if on_wait is not None:
                on_wait(f"engine: {state.value} ({self._supervisor.status().get('reason') or ''})")
            time.sleep(0.25)
        self.stop()
        raise EngineStartError(f"the tuner's sidecar was not ready after {timeout_seconds:g} s; see "
                               f"{self._supervisor.log_path}")

    def model_description(self) -> str:
        if self._supervisor is None or self._supervisor.model_path is None:
            return "demo model"
        return str(self._supervisor.model_path)

    def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.stop()

    def __enter__(self) -> OwnSidecar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
