"""A precision whose accuracy check fails is refused by the engine (409) and is infeasible, never "best"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from dsagent.tune.engine import free_port
from dsagent.tune.run import TuneRequest, tune_once
from sidecar_process import SidecarProcess

TOKEN = "accuracy-gate-token"
pytestmark = pytest.mark.slow


@pytest.fixture()
def strict_sidecar(tiny_model_dir: Path, tmp_path: Path) -> Iterator[SidecarProcess]:
    # an accuracy gate no precision other than fp32 passes (as in the knob tests), so the refusal is certain
    server = SidecarProcess(tiny_model_dir, free_port(), tmp_path / "logs", "--device", "cpu",
                            env={"DSSIDECAR_CONTROL_TOKEN": TOKEN, "DSSIDECAR_ACCURACY_MIN_AGREEMENT": "1.0",
                                 "DSSIDECAR_ACCURACY_MAX_KL": "0.0"})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_precision_failing_its_accuracy_check_is_never_best(strict_sidecar: SidecarProcess, tmp_path: Path) -> None:
    output = tmp_path / "tune"
    result = tune_once(TuneRequest(
        engine_url=strict_sidecar.base_url, token=TOKEN, workload="tiny", max_trials=2, sampler="grid",
        warmup_seconds=0.5, measure_seconds=1.5, concurrency=4, output=output, quiet=True,
        knobs=["precision=fp32,bf16", "max_batch_size=4"]))
    assert result is not None
    trials = json.loads((output / "trials.json").read_text())["trials"]
    by_precision = {t["knobs"]["precision"]: t for t in trials}
    refused = by_precision["bf16"]
    assert refused["refused"] and "accuracy" in refused["refused"].lower()
    assert refused["feasible"] is False
    assert by_precision["fp32"]["feasible"] is True
    assert result.best_knobs == {"precision": "fp32", "max_batch_size": 4}
    assert "| bf16 |" in (output / "report.md").read_text()
