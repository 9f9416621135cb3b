"""`dsagent tune` end to end on the real sidecar: a 4-trial search writes the whole report, a resumed study
continues without repeating trials, and `tune apply` stages a profile and rolls back on an SLO breach."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from dsagent.tune.profile import Profile, ProfileSlo, load_profile
from dsagent.tune.run import TuneRequest, tune_once
from sidecar_process import SidecarProcess

TUNE_TOKEN = "tune-test-token"  # what conftest.tune_sidecar hands the sidecar
AUTH = {"Authorization": f"Bearer {TUNE_TOKEN}"}
pytestmark = pytest.mark.slow


def _knob_values(base_url: str) -> dict[str, object]:
    knobs = httpx.get(f"{base_url}/control/knobs", headers=AUTH, timeout=30).json()["knobs"]
    return {name: entry["value"] for name, entry in knobs.items()}


def _request(base_url: str, output: Path, **changes: object) -> TuneRequest:
    settings: dict[str, object] = dict(
        engine_url=base_url, token=TUNE_TOKEN, workload="tiny", slo_p99=5.0, max_trials=4, warmup_seconds=0.5,
        measure_seconds=2.0, concurrency=4, output=output, quiet=True,
        knobs=["max_batch_size=1,4,16", "max_num_batched_tokens=256,2048"])
    settings.update(changes)
    return TuneRequest(**settings)  # type: ignore[arg-type]


def test_four_trial_tune_writes_report_plots_trials_and_profile(tune_sidecar: SidecarProcess, tmp_path: Path) -> None:
    before = _knob_values(tune_sidecar.base_url)
    output = tmp_path / "tune"
    result = tune_once(_request(tune_sidecar.base_url, output))
    assert result is not None and result.best_knobs is not None
    for name in ("report.md", "report.html", "trials.json", "profile.yaml", "study.db", "objective_over_time.png",
                 "pareto_front.png", "latency_vs_throughput.png", "param_importances.png"):
        assert (output / name).stat().st_size > 0, name
    for png in output.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trials = json.loads((output / "trials.json").read_text())["trials"]
    measured = [t for t in trials if t["repeat_of"] is None and t["state"] in ("complete", "pruned")]
    assert len(measured) == 4
    assert all(t["figures"].get("completed", 0) > 0 for t in measured if t["state"] == "complete")
    profile = load_profile(output / "profile.yaml")
    assert profile.knobs == result.best_knobs and profile.slo.p99_e2el_seconds == 5.0
    assert profile.figures["request_goodput"] > 0 and profile.workload["name"] == "tiny"
    html = (output / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "![pareto_front](pareto_front.png)" in (output / "report.md").read_text()
    assert _knob_values(tune_sidecar.base_url) == before  # the search leaves the engine as it found it


def test_resumed_tune_continues_without_repeating_trials(tune_sidecar: SidecarProcess, tmp_path: Path) -> None:
    output = tmp_path / "tune"
    first = tune_once(_request(tune_sidecar.base_url, output, sampler="grid", max_trials=2))
    assert first is not None
    started = [t.datetime_start for t in first.study.trials]
    with pytest.raises(RuntimeError, match="already holds a tune study"):
        tune_once(_request(tune_sidecar.base_url, output, sampler="grid", max_trials=4))
    second = tune_once(_request(tune_sidecar.base_url, output, sampler="grid", max_trials=4, resume=True))
    assert second is not None
    trials = second.study.trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert [t.datetime_start for t in trials[:2]] == started  # the first two were not run again
    points = [json.dumps(t.user_attrs["knobs"], sort_keys=True) for t in trials]
    assert len(set(points)) == 4


def _dsagent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dsagent.cli", *args], capture_output=True, text=True, timeout=300,
                          check=False)


def test_tune_apply_stages_and_rolls_back_on_a_breach(tune_sidecar: SidecarProcess, tmp_path: Path) -> None:
    base = tune_sidecar.base_url
    assert _knob_values(base)["max_batch_size"] == 32
    # max_batch_size 1 under 16 concurrent requests queues them: p99 TTFT is many request times -> breach
    profile = Profile(knobs={"max_batch_size": 1}, slo=ProfileSlo(p99_ttft_seconds=1.0),
                      workload={"name": "tiny", "prompt_tokens": {"min": 8, "max": 24},
                                "output_tokens": {"min": 24, "max": 32}},
                      load={"concurrency": 16})
    path = tmp_path / "slow.yaml"
    profile.write(path)
    data_dir = tmp_path / "data"
    result = _dsagent("tune", "apply", str(path), "--engine-url", base, "--control-token", TUNE_TOKEN,
                      "--data-dir", str(data_dir), "--stages", "0.5,1", "--verify", "3")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rolled_back" in result.stdout and "BREACH" in result.stdout
    assert _knob_values(base)["max_batch_size"] == 32
    events = [json.loads(line) for line in (data_dir / "tune" / "actions.ndjson").read_text().splitlines()]
    applied = [e for e in events if e["outcome"] == "applied" and e["rollback_of"] is None]
    rollbacks = [e for e in events if e["rollback_of"] is not None]
    assert [e["new"] for e in applied][:1] == [16]  # stage 1 of 2: half way from 32 to 1
    assert all(e["source"] == "tuner" and e["action"] == "set_knob" for e in events)
    assert len(rollbacks) == 1 and rollbacks[0]["new"] == 32 and rollbacks[0]["outcome"] == "applied"
    assert rollbacks[0]["rollback_of"] == applied[-1]["decision_id"]
    saved = yaml.safe_load((data_dir / "tune" / "previous-profile.yaml").read_text())
    assert saved["knobs"] == {"max_batch_size": 32}


def test_tune_apply_then_rollback_restores_the_previous_values(tune_sidecar: SidecarProcess, tmp_path: Path) -> None:
    base = tune_sidecar.base_url
    path = tmp_path / "ok.yaml"
    Profile(knobs={"max_batch_size": 8, "max_num_batched_tokens": 1024}, workload={"name": "tiny"},
            load={"concurrency": 2}).write(path)
    common = ["--engine-url", base, "--control-token", TUNE_TOKEN, "--data-dir", str(tmp_path / "data")]
    applied = _dsagent("tune", "apply", str(path), *common, "--stages", "1", "--verify", "2")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert _knob_values(base)["max_batch_size"] == 8
    rolled = _dsagent("tune", "rollback", *common)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    values = _knob_values(base)
    assert values["max_batch_size"] == 32 and values["max_num_batched_tokens"] == 2048


def test_bad_profile_is_one_line_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("kind: dsagent-tune-profile\nknobs:\n  max_batch_size: [1]\n")
    result = _dsagent("tune", "apply", str(path), "--engine-url", "http://127.0.0.1:9", "--control-token", "x")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}:" in lines[0] and "knobs" in lines[0], result.stderr
