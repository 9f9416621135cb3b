"""`tune apply`: move the engine to a profile in stages, each stage a Decision through the guard, with a
verify window after it, and back to the previous values when a stage breaks the profile's SLO.

Why staged: on one node there is no traffic splitter for a 5 % canary, so the canary is in the knobs
instead: numeric knobs move a fraction of the way at a time (default 25 %, 50 %, 100 %), choice knobs
(precision, backend) switch at the last stage, and after each stage the load generator measures the
profile's workload for a verify window. Every change and every rollback is a `Decision` submitted to the
same `Guard` the rules use (operator bounds, dry-run, audit events), with `rollback_of` naming what a
rollback undoes. The values before the roll-out are saved so `tune rollback` can restore them later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dsagent.actions.decision import Decision, Outcome, Reason
from dsagent.actions.guard import Guard
from dsagent.tune.profile import Profile


@dataclass
class StageReport:
    number: int
    values: dict[str, Any]
    outcomes: list[Outcome] = field(default_factory=list)
    figures: dict[str, Any] | None = None
    breach: str | None = None


@dataclass
class RolloutResult:
    status: str  # "applied", "rolled_back", "failed", "dry_run", "unchanged"
    stages: list[StageReport]
    reason: str
    rollback_outcomes: list[Outcome] = field(default_factory=list)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def plan_stages(current: Mapping[str, Any], target: Mapping[str, Any], fractions: Sequence[float]) -> list[dict[str, Any]]:
    """Knob values per stage: numeric knobs interpolated (integers rounded), the rest switched at the end.

    Stages that would change nothing are dropped; the last stage always equals `target`.
    """
    if not fractions or any(not 0 < f <= 1 for f in fractions) or list(fractions) != sorted(fractions):
        raise ValueError(f"stages must be increasing fractions in (0, 1], got {list(fractions)}")
    if fractions[-1] != 1:
        fractions = [*fractions, 1.0]
    stages: list[dict[str, Any]] = []
    previous = dict(current)
    for fraction in fractions:
        stage = {}
        for name, goal in target.items():
            start = current.get(name)
            if fraction >= 1 or not (_is_number(start) and _is_number(goal)):
                value = goal if fraction >= 1 else start
            else:
                value = start + (goal - start) * fraction
                value = round(value) if isinstance(goal, int) and isinstance(start, int) else value
            stage[name] = value
        if any(previous.get(name) != value for name, value in stage.items()):
            stages.append(stage)
            previous = {**previous, **stage}
    return stages


def slo_breach(figures: Mapping[str, Any], profile: Profile) -> str | None:
    """Why the measured figures break the profile's SLO (None: they hold)."""
    if not figures.get("completed"):
        return "no request completed during the verify window"
    if figures.get("failed"):
        return f"{figures['failed']} requests failed during the verify window"
    for key, limit_ms in profile.slo.limits_ms().items():
        value = figures.get(key)
        if value is not None and value > limit_ms:
            return f"{key.removesuffix('_ms').replace('_', ' ')} {value:.0f} ms > SLO {limit_ms:.0f} ms"
    return None


class StagedRollout:
    """Drives one roll-out. `probe(seconds)` measures and returns figures (the load generator's summary)."""

    def __init__(self, guard: Guard, read_knobs: Callable[[], dict[str, Any]], probe: Callable[[float], dict[str, Any]],
                 profile: Profile, *, verify_seconds: float, label: str, dry_run: bool = False,
                 on_stage: Callable[[StageReport], None] | None = None) -> None:
        self.guard = guard
        self.read_knobs = read_knobs
        self.probe = probe
        self.profile = profile
        self.verify_seconds = verify_seconds
        self.label = label
        self.dry_run = dry_run
        self.on_stage = on_stage

    def _decision(self, name: str, old: Any, new: Any, detail: str, rollback_of: str | None = None) -> Decision:
        return Decision(action="set_knob", target=f"knob:{name}", new_value=new, old_value=old,
                        reason=Reason("tuner", rule="tune-apply", detail=detail), params={"knob": name},
                        dry_run=self.dry_run, cooldown_seconds=0.0, rollback_of=rollback_of)

    def run(self, previous: Mapping[str, Any], fractions: Sequence[float]) -> RolloutResult:
        stages = plan_stages(previous, self.profile.knobs, fractions)
        if not stages:
            return RolloutResult("unchanged", [], "the engine already runs the profile's knob values")
        reports: list[StageReport] = []
        current = dict(previous)
        applied: dict[str, Decision] = {}
        for number, values in enumerate(stages, start=1):
            report = StageReport(number, values)
            reports.append(report)
            detail = f"{self.label} stage {number}/{len(stages)}"
            for name, value in values.items():
                if current.get(name) == value:
                    continue
                outcome = self.guard.submit(self._decision(name, current.get(name), value, detail))
                report.outcomes.append(outcome)
                if outcome.status == "applied":
                    applied[name] = outcome.decision
                    current[name] = value
                elif outcome.status != "dry_run":
                    report.breach = f"{name}: {outcome.status}: {outcome.reason}"
                    self._emit(report)
                    return self._roll_back(previous, applied, current, reports, f"stage {number} {report.breach}",
                                           "failed")
            if self.dry_run:
                self._emit(report)
                continue
            report.figures = self.probe(self.verify_seconds)
            report.breach = slo_breach(report.figures, self.profile)
            self._emit(report)
            if report.breach is not None:
                return self._roll_back(previous, applied, current, reports,
                                       f"stage {number}/{len(stages)} broke the SLO: {report.breach}", "rolled_back")
        if self.dry_run:
            return RolloutResult("dry_run", reports, "dry-run: nothing changed")
        return RolloutResult("applied", reports, f"{len(stages)} stages applied; the SLO held after each")

    def _emit(self, report: StageReport) -> None:
        if self.on_stage is not None:
            self.on_stage(report)

    def _roll_back(self, previous: Mapping[str, Any], applied: Mapping[str, Decision], current: Mapping[str, Any],
                   reports: list[StageReport], why: str, status: str) -> RolloutResult:
        outcomes = []
        for name, decision in applied.items():
            if current.get(name) == previous.get(name):
                continue
            rollback = self._decision(name, current.get(name), previous.get(name), f"{self.label} rollback: {why}",
                                      rollback_of=decision.id)
            rollback.dry_run = False
            outcomes.append(self.guard.submit(rollback))
        failed = [o for o in outcomes if o.status != "applied"]
        if failed:
            why += "; rollback incomplete: " + "; ".join(f"{o.decision.short_target()} {o.status}: {o.reason}"
                                                        for o in failed)
            status = "failed"
        return RolloutResult(status, reports, why, outcomes)


def probe_with_load(engine_url: str, profile: Profile, concurrency: int | None) -> Callable[[float], dict[str, Any]]:
    """A verify probe that sends the profile's workload for the window (closed loop) and returns the figures."""
    from dsagent.loadgen.runner import LoadPlan, run_load
    from dsagent.loadgen.workload import BUILTIN_PROFILES, WorkloadProfile

    workload_raw = dict(profile.workload)
    if isinstance(workload_raw.get("requests"), int):  # a replayed workload keeps only its count
        workload = BUILTIN_PROFILES.get(str(workload_raw.get("name")), BUILTIN_PROFILES["chat"])
    else:
        try:
            workload = WorkloadProfile.model_validate(workload_raw)
        except ValueError:
            workload = BUILTIN_PROFILES.get(str(workload_raw.get("name")), BUILTIN_PROFILES["chat"])
    load_concurrency = concurrency or int(profile.load.get("concurrency") or 8)
    specs = workload.generate(4096, seed=int(profile.load.get("seed") or 0))

    def probe(seconds: float) -> dict[str, Any]:
        plan = LoadPlan(concurrency=load_concurrency, duration_seconds=seconds, warmup_seconds=0.0)
        return asyncio.run(run_load(engine_url, specs, plan, endpoint=workload.endpoint)).summary

    return probe
