"""The tuner's pieces without an engine: SLO constraints, objectives, the knob space, the profile schema,
resume of an interrupted study, the staged roll-out's plan and rollback, and the energy refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from dsagent.actions import ActionsConfig, ActuatorRegistry, Guard, RecordingActuator
from dsagent.actions.config import KnobBounds
from dsagent.loadgen.workload import BUILTIN_PROFILES
from dsagent.sources.gpu_backend import GpuReading, GpuUnavailable
from dsagent.tune.energy import EnergyMeter, EnergyUnavailable, joules_per_token
from dsagent.tune.profile import Profile, ProfileError, ProfileSlo, load_profile
from dsagent.tune.report import pareto_indices
from dsagent.tune.rollout import StagedRollout, plan_stages, slo_breach
from dsagent.tune.search import (
    INFEASIBLE,
    TuneError,
    Tuner,
    TuneSettings,
    constraint_values,
    objective_values,
)
from dsagent.tune.space import SpaceError, build_space, knobs_from_params

DESCRIPTION: dict[str, Any] = {
    "knobs": {
        "max_batch_size": {"value": 32, "type": "int", "apply": "live", "min": 1, "max": 1024},
        "max_num_batched_tokens": {"value": 2048, "type": "int", "apply": "live", "min": 1, "max": 1048576},
        "kv_cache_blocks": {"value": 8192, "type": "int", "apply": "live", "min": 129, "max": 179276},
        "precision": {"value": "fp32", "type": "choice", "apply": "swap",
                      "choices": ["fp32", "bf16", "fp16", "int8", "int8_weight_only", "fp8"]},
        "require_accuracy_check": {"value": False, "type": "bool", "apply": "live"},
    },
    "status": {"device": "cpu"},
}


# ---- SLO constraint and objectives -----------------------------------------------------------------------

def test_constraint_is_p99_minus_limit_in_seconds_and_feasible_at_or_below_zero() -> None:
    settings = TuneSettings(slo_p99_e2el_seconds=0.5, slo_p99_ttft_seconds=0.2)
    values = constraint_values({"completed": 10, "p99_e2el_ms": 400.0, "p99_ttft_ms": 250.0}, settings)
    assert values["p99_e2el"] == pytest.approx(-0.1)
    assert values["p99_ttft"] == pytest.approx(0.05)  # breaks the TTFT SLO
    assert values["completed"] == 0.0
    assert constraint_values({"completed": 0}, TuneSettings())["completed"] == INFEASIBLE
    assert constraint_values({"completed": 3}, TuneSettings(slo_p99_tpot_seconds=0.1))["p99_tpot"] == INFEASIBLE


def test_objectives_and_directions() -> None:
    figures = {"request_goodput": 3.0, "request_throughput": 4.0, "p99_e2el_ms": 120.0}
    assert objective_values(figures, TuneSettings(objective="goodput")) == [3.0]
    assert objective_values(figures, TuneSettings(objective="latency")) == [120.0]
    assert TuneSettings(objective="latency").directions() == ["minimize"]
    nsga = TuneSettings(objective="goodput", sampler="nsga2")
    assert nsga.directions() == ["maximize", "minimize"]
    assert objective_values(figures, nsga) == [3.0, 120.0]
    # no SLO given: every successful request is good, so goodput is throughput
    assert objective_values({"request_goodput": None, "request_throughput": 4.0}, TuneSettings()) == [4.0]


def test_pareto_front_maximizes_throughput_and_minimizes_latency() -> None:
    points = [(1.0, 100.0), (2.0, 150.0), (1.5, 200.0), (3.0, 400.0), (0.5, 90.0)]
    assert pareto_indices(points) == [4, 0, 1, 3]


# ---- knob space from GET /control/knobs ------------------------------------------------------------------

def test_default_space_comes_from_the_engine_description() -> None:
    space = {dimension.name: dimension for dimension in build_space(DESCRIPTION)}
    assert set(space) == {"max_batch_size", "max_num_batched_tokens", "precision"}
    assert space["max_batch_size"].levels == (1, 2, 4, 8, 16, 32, 64) and space["max_batch_size"].ordered
    assert space["precision"].levels == ("fp32", "bf16") and not space["precision"].ordered


def test_knob_flags_choose_levels_and_are_checked_against_the_engine() -> None:
    space = build_space(DESCRIPTION, ["max_batch_size=16,4,4", "precision=fp32,int8"])
    assert [(d.name, d.levels) for d in space] == [("max_batch_size", (4, 16)), ("precision", ("fp32", "int8"))]
    assert knobs_from_params({"max_batch_size": 1, "precision": "int8"}, space) == {"max_batch_size": 16,
                                                                                   "precision": "int8"}
    with pytest.raises(SpaceError, match="no such tunable knob"):
        build_space(DESCRIPTION, ["max_batch=4"])
    with pytest.raises(SpaceError, match="outside the engine's range"):
        build_space(DESCRIPTION, ["kv_cache_blocks=10"])
    with pytest.raises(SpaceError, match="not one of"):
        build_space(DESCRIPTION, ["precision=fp64"])


# ---- profile schema ---------------------------------------------------------------------------------------

def test_profile_round_trips_and_bad_files_name_file_line_and_key(tmp_path: Path) -> None:
    profile = Profile(knobs={"max_batch_size": 8, "precision": "bf16"}, slo=ProfileSlo(p99_e2el_seconds=0.5),
                      figures={"request_goodput": 3.5})
    path = tmp_path / "profile.yaml"
    profile.write(path)
    assert load_profile(path) == profile
    text = path.read_text().replace("p99_e2el_seconds: 0.5", "p99_e2el_seconds: -1")
    path.write_text(text)
    line = next(number for number, row in enumerate(text.splitlines(), 1) if "p99_e2el_seconds" in row)
    with pytest.raises(ProfileError, match=rf"^{path}:{line}: slo.p99_e2el_seconds: "):
        load_profile(path)
    path.write_text("kind: dsagent-tune-profile\nknobs: {}\n")
    with pytest.raises(ProfileError, match=rf"^{path}:2: knobs: "):
        load_profile(path)
    path.write_text("knobs: {max_batch_size: [1, 2]}\n")
    with pytest.raises(ProfileError, match="expected a number, string or boolean"):
        load_profile(path)
    with pytest.raises(ProfileError, match="cannot be read"):
        load_profile(tmp_path / "missing.yaml")


# ---- resume -----------------------------------------------------------------------------------------------

def _tuner(tmp_path: Path, resume: bool, **settings: Any) -> Tuner:
    space = build_space(DESCRIPTION, ["max_batch_size=1,4"])
    return Tuner("http://127.0.0.1:9", "token", TuneSettings(**settings), space, BUILTIN_PROFILES["tiny"],
                 tmp_path, resume=resume, request_count=4)


def test_resume_marks_an_interrupted_trial_failed_and_does_not_count_it(tmp_path: Path) -> None:
    first = _tuner(tmp_path, resume=False, max_trials=4)
    done = first.study.ask()
    done.set_user_attr("knobs", {"max_batch_size": 1})
    first.study.tell(done, 2.0)
    cut = first.study.ask()  # the process died during this trial
    cut.suggest_int("max_batch_size", 0, 1)
    with pytest.raises(TuneError, match="already holds a tune study; pass --resume"):
        _tuner(tmp_path, resume=False, max_trials=4)
    resumed = _tuner(tmp_path, resume=True, max_trials=8)  # budgets may change on resume
    trials = resumed.study.get_trials(deepcopy=False)
    states = optuna.trial.TrialState
    assert [t.state for t in trials] == [states.COMPLETE, states.FAIL, states.WAITING]
    assert trials[1].user_attrs["interrupted"] is True
    assert trials[2].system_attrs["fixed_params"] == trials[1].params  # the cut-short point runs first
    again = _tuner(tmp_path, resume=True, max_trials=8)  # resuming twice does not queue it twice
    assert len(again.study.get_trials(deepcopy=False, states=(states.WAITING,))) == 1
    assert resumed.trials_done() == 1


def test_resume_refuses_other_settings_and_a_missing_study(tmp_path: Path) -> None:
    with pytest.raises(TuneError, match="no tune study"):
        _tuner(tmp_path, resume=True)
    _tuner(tmp_path, resume=False, slo_p99_e2el_seconds=0.5)
    with pytest.raises(TuneError, match="made with other settings"):
        _tuner(tmp_path, resume=True, slo_p99_e2el_seconds=0.9)


# ---- staged roll-out --------------------------------------------------------------------------------------

def test_stages_interpolate_numbers_and_switch_choices_last() -> None:
    stages = plan_stages({"max_batch_size": 32, "precision": "fp32"}, {"max_batch_size": 8, "precision": "bf16"},
                         [0.25, 0.5, 1.0])
    assert stages == [{"max_batch_size": 26, "precision": "fp32"}, {"max_batch_size": 20, "precision": "fp32"},
                      {"max_batch_size": 8, "precision": "bf16"}]
    assert plan_stages({"max_batch_size": 8}, {"max_batch_size": 8}, [0.5, 1]) == []
    with pytest.raises(ValueError, match="increasing fractions"):
        plan_stages({}, {"max_batch_size": 8}, [0.5, 0.25])


def test_slo_breach_reasons() -> None:
    profile = Profile(knobs={"max_batch_size": 1}, slo=ProfileSlo(p99_ttft_seconds=0.2))
    assert slo_breach({"completed": 5, "failed": 0, "p99_ttft_ms": 150.0}, profile) is None
    assert slo_breach({"completed": 5, "failed": 0, "p99_ttft_ms": 250.0}, profile) == "p99 ttft 250 ms > SLO 200 ms"
    assert "failed" in str(slo_breach({"completed": 5, "failed": 2}, profile))
    assert "no request" in str(slo_breach({"completed": 0}, profile))


def _rollout(probe_p99s: list[float], **config: Any) -> tuple[StagedRollout, RecordingActuator, list[dict[str, Any]]]:
    actuator = RecordingActuator(("set_knob",), {"knob:max_batch_size": 32})
    audit: list[dict[str, Any]] = []
    guard = Guard(ActionsConfig(cooldown_seconds=0, hysteresis_seconds=0, **config), ActuatorRegistry([actuator]),
                  audit=audit.append)
    profile = Profile(knobs={"max_batch_size": 8}, slo=ProfileSlo(p99_e2el_seconds=0.5))
    probes = iter(probe_p99s)

    def probe(seconds: float) -> dict[str, Any]:
        return {"completed": 10, "failed": 0, "p99_e2el_ms": next(probes)}

    rollout = StagedRollout(guard, lambda: {}, probe, profile, verify_seconds=1.0, label="test")
    return rollout, actuator, audit


def test_rollout_applies_every_stage_while_the_slo_holds() -> None:
    rollout, actuator, audit = _rollout([300.0, 310.0, 320.0])
    result = rollout.run({"max_batch_size": 32}, [0.25, 0.5, 1.0])
    assert result.status == "applied"
    assert actuator.applied == [("knob:max_batch_size", 26), ("knob:max_batch_size", 20), ("knob:max_batch_size", 8)]
    assert [event["outcome"] for event in audit] == ["applied"] * 3
    assert all(event["source"] == "tuner" and "stage" in event["reason"] for event in audit)


def test_a_breach_rolls_back_to_the_previous_value_through_the_guard() -> None:
    rollout, actuator, audit = _rollout([300.0, 900.0])
    result = rollout.run({"max_batch_size": 32}, [0.25, 0.5, 1.0])
    assert result.status == "rolled_back"
    assert "stage 2/3 broke the SLO: p99 e2el 900 ms > SLO 500 ms" in result.reason
    assert actuator.values["knob:max_batch_size"] == 32
    assert actuator.applied[-1] == ("knob:max_batch_size", 32)
    rollback = audit[-1]
    assert rollback["rollback_of"] == audit[-2]["decision_id"] and rollback["new"] == 32


def test_a_guard_refusal_stops_the_rollout_and_restores() -> None:
    rollout, actuator, audit = _rollout([300.0], knob_bounds={"max_batch_size": KnobBounds(min=16)})
    result = rollout.run({"max_batch_size": 32}, [0.25, 1.0])
    assert result.status == "failed"
    assert "skipped" in result.reason and "bounds" in result.reason
    assert actuator.values["knob:max_batch_size"] == 32


# ---- energy -----------------------------------------------------------------------------------------------

class _Backend:
    def __init__(self, energies: list[float | None], fail_open: bool = False) -> None:
        self.energies = iter(energies)
        self.fail_open = fail_open

    def open(self) -> None:
        if self.fail_open:
            raise GpuUnavailable("NVML: driver not loaded")

    def read_all(self) -> list[GpuReading]:
        return [GpuReading(index=0, uuid="GPU-0", name="fake", energy_joules_total=next(self.energies))]

    def close(self) -> None:
        pass


def test_energy_objective_is_refused_without_a_gpu_or_counter() -> None:
    with pytest.raises(EnergyUnavailable, match="needs an NVIDIA GPU"):
        EnergyMeter(_Backend([], fail_open=True))
    with pytest.raises(EnergyUnavailable, match="total energy counter"):
        EnergyMeter(_Backend([None]))


def test_joules_per_token_from_the_counter_difference() -> None:
    meter = EnergyMeter(_Backend([100.0, 100.0, 160.0]))
    start = meter.read_joules()
    assert joules_per_token(start, meter.read_joules(), 30) == pytest.approx(2.0)
    assert joules_per_token(None, 5.0, 30) is None and joules_per_token(1.0, 5.0, 0) is None
