"""One real `dssidecar serve` (tiny demo model, CPU, /control token) shared by the tune/bench tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dsagent.tune.engine import free_port
from sidecar_process import SidecarProcess

TUNE_TOKEN = "tune-test-token"


@pytest.fixture(scope="package")
def tune_sidecar(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    server = SidecarProcess(tiny_model_dir, free_port(), tmp_path_factory.mktemp("tune-sidecar"),
                            "--device", "cpu", "--max-batch-size", "32",
                            env={"DSSIDECAR_CONTROL_TOKEN": TUNE_TOKEN})
    server.start()
    try:
        yield server
    finally:
        server.stop()
