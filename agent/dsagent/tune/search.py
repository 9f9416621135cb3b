"""The search: one optuna study over the engine's knobs, each trial applied live and measured under load.

Why this shape: the sidecar changes knobs between steps, so a trial is "PUT /control/knobs, warm up, measure
a fixed window" instead of a server restart per grid point. Every trial measures the same workload with the
same arrivals; the figures are vLLM bench's. The SLO is a constraint (optuna's constraints_func: p99 minus
its limit, <= 0 is feasible), so TPE and NSGA-II steer away from infeasible regions, and a knob the engine
refuses (fp8 on a CPU, a precision whose accuracy check fails) is infeasible, never "best". A single-
objective trial reports its goodput at four points of the window and is pruned (MedianPruner) when it is
clearly worse than earlier trials at the same point. The study lives in SQLite in the output directory, so
an interrupted tune continues with --resume and never re-runs a finished trial.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from dsagent.engines.base import EngineKnobRefused
from dsagent.engines.builtin import BuiltinEngineAdapter
from dsagent.loadgen.metrics import Slo
from dsagent.loadgen.runner import LoadPlan, Progress, run_load, window_goodput
from dsagent.loadgen.workload import WorkloadProfile
from dsagent.tune.energy import EnergyMeter, joules_per_token
from dsagent.tune.space import Dimension, grid_search_space, grid_size, suggest_knobs

Objective = Literal["goodput", "throughput", "latency", "energy"]
SamplerName = Literal["tpe", "nsga2", "grid", "random"]
STUDY_NAME = "dsagent-tune"
STUDY_FILE = "study.db"
INFEASIBLE = 1e9  # constraint value of a refused or empty trial
PRUNE_STEPS = 4
SET_CONSTRAINT = hasattr(optuna.trial.Trial, "set_constraint")  # optuna >= 5; older ones take constraints_func


class TuneError(RuntimeError):
    """The tune cannot start or continue (bad resume, refused objective); one line for the operator."""


@dataclass(frozen=True)
class TuneSettings:
    """Everything that defines a study; stored in it so --resume continues the same search."""

    objective: Objective = "goodput"
    sampler: SamplerName = "tpe"
    slo_p99_e2el_seconds: float | None = None
    slo_p99_ttft_seconds: float | None = None
    slo_p99_tpot_seconds: float | None = None
    max_trials: int = 50
    time_budget_seconds: float | None = None
    warmup_seconds: float = 5.0
    measure_seconds: float = 20.0
    concurrency: int | None = 16
    request_rate: float | None = None
    seed: int = 0
    accuracy_check: bool = True
    prune: bool = True

    @property
    def slo(self) -> Slo:
        """The per-request SLO for goodput: the same limits as the p99 constraints."""
        return Slo(self.slo_p99_ttft_seconds, self.slo_p99_tpot_seconds, self.slo_p99_e2el_seconds)

    def identity(self) -> dict[str, Any]:
        """What must match for --resume (budgets and pruning may change between runs)."""
        data = asdict(self)
        for key in ("max_trials", "time_budget_seconds", "prune"):
            data.pop(key)
        if data["request_rate"] == math.inf:
            data["request_rate"] = "inf"
        return data

    def plan(self) -> LoadPlan:
        return LoadPlan(concurrency=self.concurrency, request_rate=self.request_rate,
                        warmup_seconds=self.warmup_seconds, duration_seconds=self.measure_seconds, seed=self.seed)

    @property
    def multi_objective(self) -> bool:
        return self.sampler == "nsga2"

    def directions(self) -> list[Literal["minimize", "maximize"]]:
        if self.multi_objective:
            return ["maximize", "minimize"]
        return ["minimize" if self.objective in ("latency", "energy") else "maximize"]

    def objective_names(self) -> list[str]:
        if self.multi_objective:
            primary = "request_throughput" if self.objective in ("throughput", "latency") else "request_goodput"
            if self.objective == "energy":
                return ["request_throughput", "joules_per_output_token"]
            return [primary, "p99_e2el_ms"]
        return [{"goodput": "request_goodput", "throughput": "request_throughput", "latency": "p99_e2el_ms",
                 "energy": "joules_per_output_token"}[self.objective]]


@dataclass
class TrialEvent:
    """For progress displays: a trial finished (or the search state changed)."""

    number: int
    state: str
    knobs: dict[str, Any]
    values: list[float] | None
    feasible: bool
    best_value: float | None
    trials_done: int
    max_trials: int
    elapsed_seconds: float
    budget_seconds: float | None
    note: str = ""


def constraint_values(figures: dict[str, Any], settings: TuneSettings) -> dict[str, float]:
    """optuna constraints by name: p99 - limit (seconds) for each SLO given; <= 0 everywhere is feasible."""
    values: dict[str, float] = {}
    for limit, key in ((settings.slo_p99_e2el_seconds, "p99_e2el_ms"), (settings.slo_p99_ttft_seconds, "p99_ttft_ms"),
                       (settings.slo_p99_tpot_seconds, "p99_tpot_ms")):
        if limit is not None:
            measured = figures.get(key)
            values[key.removesuffix("_ms")] = INFEASIBLE if measured is None else float(measured) / 1000.0 - limit
    values["completed"] = 0.0 if figures.get("completed") else INFEASIBLE
    return values


def record_constraints(trial: optuna.Trial, values: dict[str, float]) -> None:
    """Keep the constraints on the trial: as a user attr (reports) and where the sampler reads them."""
    trial.set_user_attr("constraints", list(values.values()))
    trial.set_user_attr("constraint_names", list(values))
    if SET_CONSTRAINT:
        for name, value in values.items():
            trial.set_constraint(name, value)


def constraints_of(trial: FrozenTrial) -> Sequence[float]:
    return list(trial.user_attrs.get("constraints", [INFEASIBLE]))


def is_feasible(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and all(value <= 0 for value in constraints_of(trial))


def objective_values(figures: dict[str, Any], settings: TuneSettings) -> list[float]:
    values = []
    for name, direction in zip(settings.objective_names(), settings.directions(), strict=True):
        value = figures.get(name)
        if name == "request_goodput" and value is None:
            value = figures.get("request_throughput")  # no SLO given: every request is good
        if value is None:
            value = INFEASIBLE if direction == "minimize" else 0.0
        values.append(float(value))
    return values


def best_trial(study: optuna.Study, settings: TuneSettings) -> FrozenTrial | None:
    """The feasible completed trial with the best primary value (ties: lower p99 latency)."""
    feasible = [trial for trial in study.get_trials(deepcopy=False) if is_feasible(trial)]
    if not feasible:
        return None
    sign = -1.0 if settings.directions()[0] == "minimize" else 1.0

    def key(trial: FrozenTrial) -> tuple[float, float]:
        return (sign * trial.values[0], -float(trial.user_attrs.get("figures", {}).get("p99_e2el_ms") or 0.0))

    return max(feasible, key=key)


def _sampler(settings: TuneSettings, dimensions: Sequence[Dimension], offset: int) -> optuna.samplers.BaseSampler:
    seed = settings.seed + offset  # a resumed run must not replay the first run's random draws
    constraints = None if SET_CONSTRAINT else constraints_of
    if settings.sampler == "grid":
        # the seed fixes the grid's order, which maps each stored grid_id to its point: never offset it
        return optuna.samplers.GridSampler(grid_search_space(dimensions), seed=settings.seed)
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if settings.sampler == "nsga2":
        population = max(4, min(20, grid_size(dimensions) // 4))
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed, constraints_func=constraints)
    # independent TPE: on one measured 48-point table of bench/tuner.py it reached 95 % of the best within
    # 12 points for 70 % of 30 seeds (multivariate TPE 50 %, random 47 %); on a later, noisier table it only
    # matched random sampling (9 vs 10 of 20 seeds): rerun bench/tuner.py before trusting either.
    startup = max(3, min(10, settings.max_trials // 4))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constraints_func=constraints)


class Tuner:
    """Runs (or resumes) the study in `output_dir` against the engine at `engine_url`."""

    def __init__(self, engine_url: str, token: str, settings: TuneSettings, dimensions: Sequence[Dimension],
                 workload: WorkloadProfile, output_dir: Path, *, resume: bool = False,
                 on_event: Callable[[TrialEvent], None] | None = None,
                 on_load_progress: Callable[[int, Progress], None] | None = None,
                 energy_meter: EnergyMeter | None = None, request_count: int = 4096) -> None:
        self.engine_url = engine_url.rstrip("/")
        self.settings = settings
        self.dimensions = list(dimensions)
        self.workload = workload
        self.output_dir = output_dir
        self.on_event = on_event
        self.on_load_progress = on_load_progress
        self.energy_meter = energy_meter
        self.adapter = BuiltinEngineAdapter(self.engine_url, token, timeout_seconds=600.0)
        self.specs = workload.generate(request_count, seed=settings.seed)
        self.started = time.monotonic()
        self._repeats_in_a_row = 0
        self.interrupted = False
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self.study = self._open_study(resume)

    # ---- study -------------------------------------------------------------------------------------

    def _study_identity(self) -> dict[str, Any]:
        return {"settings": self.settings.identity(), "space": [d.to_dict() for d in self.dimensions],
                "workload": self.workload.describe()}

    def _open_study(self, resume: bool) -> optuna.Study:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        database = self.output_dir / STUDY_FILE
        storage = f"sqlite:///{database}"
        identity = self._study_identity()
        exists = database.exists() and any(
            summary.study_name == STUDY_NAME for summary in optuna.get_all_study_summaries(storage))
        if exists and not resume:
            raise TuneError(f"{self.output_dir} already holds a tune study; pass --resume to continue it "
                            "or choose another --output")
        if not exists and resume:
            raise TuneError(f"--resume: no tune study in {self.output_dir} ({database} missing)")
        previous = optuna.load_study(study_name=STUDY_NAME, storage=storage) if exists else None
        offset = len(previous.trials) if previous is not None else 0
        study = optuna.create_study(
            study_name=STUDY_NAME, storage=storage, load_if_exists=True, directions=self.settings.directions(),
            sampler=_sampler(self.settings, self.dimensions, offset),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1))
        if previous is not None:
            stored = study.user_attrs.get("identity")
            if stored != json.loads(json.dumps(identity, default=str)):
                raise TuneError(f"--resume: the study in {self.output_dir} was made with other settings "
                                f"(stored {json.dumps(stored, default=str)[:300]}); use the same flags or another --output")
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
                study.tell(trial.number, state=TrialState.FAIL)  # interrupted: never half-counted
            # run the interrupted points first (a grid sampler would otherwise count them as visited)
            cut = set(study.user_attrs.get("interrupted_trials", []))
            measured = {json.dumps(t.params, sort_keys=True) for t in study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))}
            waiting = {json.dumps(t.system_attrs.get("fixed_params", {}), sort_keys=True) for t in study.get_trials(
                deepcopy=False, states=(TrialState.WAITING,))}
            for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
                key = json.dumps(trial.params, sort_keys=True)
                if (trial.user_attrs.get("interrupted") or trial.number in cut) and trial.params \
                        and key not in measured and key not in waiting:
                    study.enqueue_trial(dict(trial.params))
                    waiting.add(key)
        else:
            study.set_user_attr("identity", json.loads(json.dumps(identity, default=str)))
            study.set_user_attr("started_unix_seconds", time.time())
        return study

    def trials_done(self) -> int:
        """Trials that measured something (a repeat of a measured point is answered from it and not counted)."""
        cut = set(self.study.user_attrs.get("interrupted_trials", []))
        return sum(1 for trial in self.study.get_trials(deepcopy=False)
                   if (trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
                       or (trial.state == TrialState.FAIL and not trial.user_attrs.get("interrupted")
                           and trial.number not in cut))
                   and "repeat_of" not in trial.user_attrs)

    def _measured_points(self) -> dict[str, FrozenTrial]:
        return {json.dumps(trial.user_attrs.get("knobs"), sort_keys=True): trial
                for trial in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if "repeat_of" not in trial.user_attrs and trial.user_attrs.get("knobs")}

    def space_exhausted(self) -> bool:
        return len(self._measured_points()) >= grid_size(self.dimensions) or self._repeats_in_a_row >= 25

    # ---- running -----------------------------------------------------------------------------------

    def run(self) -> optuna.Study:
        """Run trials until max_trials (counting earlier runs), the time budget, or the grid is exhausted."""
        original = self._read_values()
        try:
            while self.trials_done() < self.settings.max_trials and not self.space_exhausted():
                budget = self.settings.time_budget_seconds
                if budget is not None and time.monotonic() - self.started >= budget:
                    break
                self.study.optimize(self._objective, n_trials=1, catch=(EngineKnobRefused,))
                self._emit(self.study.trials[-1])
        except KeyboardInterrupt:
            # optuna marked the running trial failed; remember it was cut short so --resume does not count it
            self.interrupted = True
            cut = [t.number for t in self.study.get_trials(deepcopy=False) if t.state == TrialState.FAIL
                   and t.datetime_complete is not None and "figures" not in t.user_attrs]
            self.study.set_user_attr("interrupted_trials", sorted(set(self.study.user_attrs.get(
                "interrupted_trials", [])) | set(cut)))
        finally:
            self._restore(original)
        return self.study

    def _read_values(self) -> dict[str, Any]:
        try:
            values = self.adapter.read_knobs()
        except EngineKnobRefused as exc:
            raise TuneError(str(exc)) from exc
        names = [d.name for d in self.dimensions] + ["require_accuracy_check"]  # the tuner may turn it on
        return {name: values.get(name) for name in names if values.get(name) is not None}

    def _restore(self, original: dict[str, Any]) -> None:
        """Put the engine back as it was before the search (the best profile is applied by `tune apply`)."""
        try:
            current = self.adapter.read_knobs()
            changed = {name: value for name, value in original.items() if current.get(name) != value}
            if changed:
                self.adapter.apply_knobs(changed)
        except EngineKnobRefused:
            pass  # the engine went away; nothing to restore

    def _emit(self, trial: FrozenTrial) -> None:
        if self.on_event is None:
            return
        best = best_trial(self.study, self.settings)
        self.on_event(TrialEvent(
            number=trial.number, state=trial.state.name.lower(), knobs=dict(trial.user_attrs.get("knobs", {})),
            values=list(trial.values) if trial.values else None, feasible=is_feasible(trial),
            best_value=best.values[0] if best is not None else None, trials_done=self.trials_done(),
            max_trials=self.settings.max_trials, elapsed_seconds=time.monotonic() - self.started,
            budget_seconds=self.settings.time_budget_seconds, note=str(trial.user_attrs.get("refused", ""))))

    def _apply(self, knobs: dict[str, Any]) -> tuple[float, str | None]:
        """PUT the knobs that differ; returns (seconds, refusal reason or None)."""
        started = time.perf_counter()
        current = self.adapter.read_knobs()
        update = {name: value for name, value in knobs.items() if current.get(name) != value}
        if self.settings.accuracy_check and "precision" in update:
            update["require_accuracy_check"] = True
        if update:
            try:
                self.adapter.apply_knobs(update)
            except EngineKnobRefused as exc:
                status = exc.detail.get("status_code")
                if status in (409, 422):
                    return time.perf_counter() - started, exc.reason
                raise
        return time.perf_counter() - started, None

    def _objective(self, trial: optuna.Trial) -> Any:
        knobs = suggest_knobs(trial, self.dimensions)
        trial.set_user_attr("knobs", knobs)
        trial.set_user_attr("started_offset_seconds", time.monotonic() - self.started)
        earlier = self._measured_points().get(json.dumps(knobs, sort_keys=True))
        if earlier is not None:
            # the sampler asked for a point already measured: answer from that trial instead of spending a
            # window on it (it is marked, and not counted as a measured trial)
            self._repeats_in_a_row += 1
            trial.set_user_attr("repeat_of", earlier.number)
            trial.set_user_attr("figures", earlier.user_attrs.get("figures", {}))
            if earlier.user_attrs.get("refused"):
                trial.set_user_attr("refused", earlier.user_attrs["refused"])
            names = earlier.user_attrs.get("constraint_names") or [
                str(i) for i in range(len(earlier.user_attrs.get("constraints", [])))]
            record_constraints(trial, dict(zip(names, constraints_of(earlier), strict=False)))
            return list(earlier.values) if self.settings.multi_objective else earlier.values[0]
        self._repeats_in_a_row = 0
        apply_seconds, refused = self._apply(knobs)
        trial.set_user_attr("apply_seconds", apply_seconds)
        if refused is not None:
            trial.set_user_attr("refused", refused)
            record_constraints(trial, {"refused": INFEASIBLE})
            trial.set_user_attr("figures", {})
            values = objective_values({}, self.settings)
            return values if self.settings.multi_objective else values[0]
        single = not self.settings.multi_objective
        prune_marks = [self.settings.measure_seconds * step / PRUNE_STEPS for step in range(1, PRUNE_STEPS + 1)]
        reported: list[int] = []
        energy_start: list[tuple[float, float | None]] = []

        def watch(progress: Progress) -> bool:
            if self.on_load_progress is not None:
                self.on_load_progress(trial.number, progress)
            if progress.phase != "measure":
                return False
            if self.energy_meter is not None and not energy_start:
                energy_start.append((progress.elapsed_seconds, self.energy_meter.read_joules()))
            if not (single and self.settings.prune and self.settings.objective in ("goodput", "throughput")):
                return False
            step = sum(1 for mark in prune_marks[:-1] if progress.elapsed_seconds >= mark)
            if step and step not in reported:
                reported.append(step)
                slo = self.settings.slo if self.settings.objective == "goodput" else None
                trial.report(window_goodput(progress.measured, progress.elapsed_seconds, slo), step)
                return bool(trial.should_prune())
            return False

        measure_started = time.monotonic()
        result = asyncio.run(run_load(self.engine_url, self.specs, self.settings.plan(),
                                      endpoint=self.workload.endpoint, slo=self.settings.slo, on_progress=watch))
        figures = dict(result.summary)
        if self.energy_meter is not None and energy_start:
            offset, start_joules = energy_start[0]
            tokens = sum(r.output_tokens for r in result.results if r.success and r.end_seconds >= offset)
            figures["joules_per_output_token"] = joules_per_token(start_joules, self.energy_meter.read_joules(), tokens)
        trial.set_user_attr("figures", figures)
        trial.set_user_attr("warmup_seconds", result.warmup_seconds)
        trial.set_user_attr("measure_seconds", result.measure_seconds)
        trial.set_user_attr("load_seconds", time.monotonic() - measure_started)
        trial.set_user_attr("errors", result.errors[:3])
        record_constraints(trial, constraint_values(figures, self.settings))
        if result.stopped_early:
            trial.set_user_attr("pruned_at_seconds", result.measure_seconds)
            raise optuna.TrialPruned(f"goodput after {result.measure_seconds:.1f} s below the median of earlier trials")
        values = objective_values(figures, self.settings)
        return values if self.settings.multi_objective else values[0]


def trial_records(study: optuna.Study) -> list[dict[str, Any]]:
    """trials.json: one plain record per trial (knob values, figures, constraints, timings, state)."""
    records = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        records.append({
            "number": trial.number, "state": trial.state.name.lower(), "knobs": attrs.get("knobs", {}),
            "values": list(trial.values) if trial.values else None, "feasible": is_feasible(trial),
            "constraints": attrs.get("constraints"), "refused": attrs.get("refused"),
            "interrupted": bool(attrs.get("interrupted")), "figures": attrs.get("figures", {}),
            "repeat_of": attrs.get("repeat_of"),
            "apply_seconds": attrs.get("apply_seconds"), "warmup_seconds": attrs.get("warmup_seconds"),
            "measure_seconds": attrs.get("measure_seconds"), "load_seconds": attrs.get("load_seconds"),
            "started_offset_seconds": attrs.get("started_offset_seconds"),
            "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
            "datetime_complete": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
            "intermediate": {str(step): value for step, value in trial.intermediate_values.items()},
            "errors": attrs.get("errors", []),
        })
    return records
