"""`dsagent rules check | test | eval` and `dsagent run --dry-run` at the command line (no agent process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dsagent.cli import app
from typer.testing import CliRunner

runner = CliRunner()


def test_rules_check_prints_file_and_line_and_fails(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up ==\n")
    result = runner.invoke(app, ["rules", "check", str(good)])
    assert result.exit_code == 0 and "SUCCESS: 1 rules found" in result.output
    result = runner.invoke(app, ["rules", "check", str(good), str(bad)])
    assert result.exit_code == 1 and f"{bad}:5: alert A: could not parse expression" in result.output


def test_rules_check_json_lists_actions(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("alerts:\n  - condition: 'avg(gpu_utilization) > 90'\n    action: scale_out\n")
    result = runner.invoke(app, ["rules", "check", "--json", str(path)])
    assert result.exit_code == 0 and '"scale"' in result.output and "dsagent_gpu_utilization_ratio" in result.output


def test_rules_test_runs_promtool_format(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("groups:\n  - name: g\n    rules:\n      - record: two\n        expr: up * 2\n")
    test = tmp_path / "t.yaml"
    test.write_text("rule_files: [r.yaml]\ntests:\n  - interval: 1m\n    input_series:\n"
                    "      - {series: 'up{job=\"a\"}', values: '1x5'}\n    promql_expr_test:\n"
                    "      - {expr: two, eval_time: 2m, exp_samples: [{labels: 'two{job=\"a\"}', value: 2}]}\n")
    result = runner.invoke(app, ["rules", "test", str(test)])
    assert result.exit_code == 0 and "SUCCESS" in result.output
    test.write_text(test.read_text().replace("value: 2", "value: 3"))
    result = runner.invoke(app, ["rules", "test", str(test)])
    assert result.exit_code == 1 and "exp: {__name__=\"two\", job=\"a\"} 3E+00" in result.output


def test_rules_eval_refuses_a_bad_expression_before_asking_the_agent() -> None:
    result = runner.invoke(app, ["rules", "eval", "sum(", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "parse error" in result.output


def test_rules_eval_names_the_missing_agent() -> None:
    result = runner.invoke(app, ["rules", "eval", "up", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "no agent answering" in result.output


def test_run_dry_run_sets_rules_and_actions_dry_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class FakeAgent:
        def __init__(self, config: Any, config_file: Any = None) -> None:
            seen["config"] = config

        def run_until_signal(self) -> int:
            return 0

    import dsagent.app

    monkeypatch.setattr(dsagent.app, "Agent", FakeAgent)
    result = runner.invoke(app, ["run", "--dry-run", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen["config"].rules.dry_run is True and seen["config"].actions.dry_run is True
