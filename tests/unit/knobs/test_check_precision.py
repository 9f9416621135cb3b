"""check-precision: figures on identical and converted models, thresholds, CLI exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dssidecar.check_precision import (
    PrecisionReport,
    Thresholds,
    check_precision,
    fixed_prompt_texts,
    format_report,
    tokenize_texts,
)
from dssidecar.cli import app
from dssidecar.models.loader import load_checkpoint
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    return load_checkpoint(tiny_model_dir, device="cpu", dtype=torch.float32)


def test_prompt_set_is_fixed() -> None:
    assert fixed_prompt_texts(4) == fixed_prompt_texts(4)
    assert len(fixed_prompt_texts(4)) == 4 and all(len(t) > 100 for t in fixed_prompt_texts(4))


def test_identical_candidate_agrees_fully(loaded) -> None:  # type: ignore[no-untyped-def]
    sequences = tokenize_texts(loaded.tokenizer, fixed_prompt_texts(3), 48)
    report = check_precision(loaded.model, sequences, "fp32", "cpu", candidate=loaded.model)
    assert report.top1_agreement == 1.0
    assert report.mean_kl == pytest.approx(0.0, abs=1e-6)
    assert report.perplexity_delta == pytest.approx(0.0, abs=1e-6)
    assert report.passed and report.num_positions == sum(len(s) for s in sequences)


def test_converted_candidate_is_close_but_measured(loaded) -> None:  # type: ignore[no-untyped-def]
    sequences = tokenize_texts(loaded.tokenizer, fixed_prompt_texts(3), 48)
    report = check_precision(loaded.model, sequences, "bf16", "cpu")
    assert 0.0 < report.mean_kl < 0.05
    assert 0.5 < report.top1_agreement <= 1.0


def test_thresholds_turn_into_named_failures(loaded) -> None:  # type: ignore[no-untyped-def]
    sequences = tokenize_texts(loaded.tokenizer, fixed_prompt_texts(2), 32)
    strict = Thresholds(min_agreement=1.01, max_kl=-1.0, max_ppl_delta=-1.0)
    report = check_precision(loaded.model, sequences, "int8", "cpu", strict)
    assert not report.passed
    assert len(report.failures) == 3 and "agreement" in report.failures[0]
    assert "FAIL" in format_report(report)
    assert json.loads(json.dumps(report.to_dict()))["passed"] is False


def test_cli_exit_codes(tiny_model_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["check-precision", "--model", str(tiny_model_dir), "--device", "cpu", "--num-prompts", "2"]
    loose = runner.invoke(app, [*base, "--precision", "bf16", "--min-agreement", "0", "--max-kl", "10",
                                "--max-ppl-delta", "10", "--json", str(tmp_path / "r.json")])  # fmt: skip
    assert loose.exit_code == 0, loose.output
    assert "PASS" in loose.output
    assert json.loads((tmp_path / "r.json").read_text())["precision"] == "bf16"
    strict = runner.invoke(app, [*base, "--precision", "int8", "--min-agreement", "1.01"])
    assert strict.exit_code == 1 and "FAIL" in strict.output
    unsupported = runner.invoke(app, [*base, "--precision", "fp8"])
    assert unsupported.exit_code == 2


def test_report_dict_has_every_figure() -> None:
    report = PrecisionReport("int8", "cpu", 1, 10, 0.9, 0.01, 10.0, 10.5, 0.05, 1.0)
    figures = report.to_dict()
    for key in ("top1_agreement", "mean_kl", "perplexity_delta", "thresholds", "passed"):
        assert key in figures
