"""One real sidecar process per test module for the knob integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from knob_server import KnobServer, free_port


@pytest.fixture(scope="module")
def knob_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnobServer]:

    server = KnobServer(
        tiny_model_dir, free_port(), tmp_path_factory.mktemp("knob-logs"),
        "--max-batch-size", "32", "--kv-cache-blocks", "256",
        # an accuracy gate no real precision passes, so the refusal path is exercised deterministically
        env={"DSSIDECAR_ACCURACY_MIN_AGREEMENT": "1.0", "DSSIDECAR_ACCURACY_MAX_KL": "0.0"},
    )  # fmt: skip
    server.start()
    try:
        yield server
    finally:
        server.stop()
