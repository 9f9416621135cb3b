"""Run `dssidecar serve` as a real process on 127.0.0.1 for integration tests, and always clean it up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx


class SidecarProcess:
    """`python -m dssidecar.cli serve --model DIR --port P ...`; stdout/stderr go to files in log_dir."""

    def __init__(self, model_dir: Path, port: int, log_dir: Path, *extra_args: str, env: dict[str, str] | None = None) -> None:
        self.model_dir = model_dir
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_dir = log_dir
        self.extra_args = list(extra_args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / f"sidecar-{port}.out"
        self.stderr_path = log_dir / f"sidecar-{port}.err"

    def start(self, ready_timeout_seconds: float = 180.0) -> SidecarProcess:
        command = [
            sys.executable, "-m", "dssidecar.cli", "serve", "--model", str(self.model_dir),
            "--host", "127.0.0.1", "--port", str(self.port), *self.extra_args,
        ]  # fmt: skip
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err, env=self.env)
        deadline = time.monotonic() + ready_timeout_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sidecar exited with {self.process.returncode} before ready:\n{self.stderr_tail()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"sidecar not ready after {ready_timeout_seconds} s:\n{self.stderr_tail()}")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout_seconds: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_seconds)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode

    def stderr_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no stderr)"

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace")
