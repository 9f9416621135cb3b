"""`dsagent tune apply PROFILE` and `dsagent tune rollback`: the engine connection, the guard, the saved
previous profile and the printed stage table around `StagedRollout`.

Why the guard is built here: the roll-out's Decisions go through the same `Guard` class as the rules, with
the operator's `actions:` config (knob bounds, global dry-run), but with no cooldown, hysteresis or rate
limit between the stages of one roll-out (a rollback must never wait). Audit events are appended to
DATA_DIR/tune/actions.ndjson in the logs-dsagent.actions document shape, printed, and relayed to the agent
running on this data dir (POST /api/actions/audit with its control token), so they show in `dsagent status`,
on /metrics and in logs-dsagent.actions like every other Decision. No agent running: the file keeps them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

PREVIOUS_PROFILE = "previous-profile.yaml"
APPLIED_PROFILE = "applied-profile.yaml"
AUDIT_FILE = "actions.ndjson"


def _engine(config: Any, engine_url: str | None, token: str | None, fail: Callable[..., None]) -> tuple[str, str]:
    url = (engine_url or config.engine.base_url()).rstrip("/")
    if not token:
        path = config.actions.control_token_file or Path(config.data_dir).expanduser() / "control.token"
        try:
            token = Path(path).expanduser().read_text(encoding="utf-8").strip()
        except OSError:
            fail(f"no control token: pass --control-token / --control-token-file (the agent keeps its token in {path})")
    assert token is not None
    return url, token


class AgentAuditRelay:
    """Sends the roll-out's audit events to the agent running on the same data dir (found through its
    agent.json and control.token), once each; says once when it cannot, and the local file still has them."""

    def __init__(self, url: str | None, token: str | None) -> None:
        self.url = url
        self.token = token
        self.sent = 0
        self.failure: str | None = None

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> AgentAuditRelay:
        try:
            url = str(json.loads((data_dir / "agent.json").read_text(encoding="utf-8"))["url"]).rstrip("/")
            token = (data_dir / "control.token").read_text(encoding="utf-8").strip()
        except (OSError, ValueError, KeyError, TypeError):
            return cls(None, None)  # no agent on this data dir: the local audit file is the record
        return cls(url, token)

    def send(self, event: dict[str, Any]) -> bool:
        if not self.url or self.failure is not None:
            return False
        import httpx

        try:
            response = httpx.post(f"{self.url}/api/actions/audit", json={"events": [event]},
                                  headers={"Authorization": f"Bearer {self.token}"}, timeout=10.0)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            self.failure = f"the agent at {self.url} did not take the audit event ({exc}); kept in the local file"
            from rich.console import Console

            Console(stderr=True).print(f"tune: {self.failure}")
            return False
        self.sent += 1
        return True


def _guard(config: Any, url: str, token: str, audit_path: Path, dry_run: bool) -> tuple[Any, Any, list[dict[str, Any]]]:
    from dsagent.actions.actuators.base import ActuatorRegistry
    from dsagent.actions.actuators.engine_knobs import EngineKnobActuator
    from dsagent.actions.guard import Guard
    from dsagent.engines.builtin import BuiltinEngineAdapter

    adapter = BuiltinEngineAdapter(url, token, timeout_seconds=config.actions.control_timeout_seconds)
    registry = ActuatorRegistry()
    registry.register(EngineKnobActuator(adapter))
    rollout_config = config.actions.model_copy(update={
        "cooldown_seconds": 0.0, "hysteresis_seconds": 0.0, "max_changes": 10_000,
        "dry_run": bool(config.actions.dry_run or dry_run)})
    events: list[dict[str, Any]] = []
    audit_path.parent.mkdir(parents=True, exist_ok=True)
    relay = AgentAuditRelay.for_data_dir(Path(config.data_dir).expanduser())

    def audit(event: dict[str, Any]) -> None:
        events.append(event)
        with audit_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(event, default=str) + "\n")
        relay.send(event)

    return Guard(rollout_config, registry, audit=audit), adapter, events


def run_apply(config: Any, profile_path: Path, engine_url: str | None, token: str | None, stages_text: str,
              verify_seconds: float, concurrency: int | None, dry_run: bool, fail: Callable[..., None]) -> int:
    from rich.console import Console

    from dsagent.engines.base import EngineKnobRefused
    from dsagent.loadgen.client import EngineUnreachable
    from dsagent.tune.profile import Profile, ProfileError, load_profile
    from dsagent.tune.rollout import StagedRollout, probe_with_load

    try:
        profile = load_profile(profile_path)
    except ProfileError as exc:
        fail(str(exc))
        return 2
    try:
        fractions = [float(part) for part in stages_text.split(",") if part.strip()]
    except ValueError:
        fail(f"--stages {stages_text!r}: expected comma-separated fractions such as 0.25,0.5,1")
        return 2
    url, token = _engine(config, engine_url, token, fail)
    state_dir = Path(config.data_dir).expanduser() / "tune"
    guard, adapter, events = _guard(config, url, token, state_dir / AUDIT_FILE, dry_run)
    console = Console()
    try:
        current = adapter.read_knobs()
    except EngineKnobRefused as exc:
        fail(exc.reason)
        return 2
    unknown = sorted(set(profile.knobs) - set(current))
    if unknown:
        fail(f"{profile_path}: the engine at {url} has no knob {', '.join(unknown)}")
    previous = {name: current[name] for name in profile.knobs}
    if not dry_run:
        Profile(knobs=previous, workload=profile.workload, slo=profile.slo, load=profile.load,
                engine={"url": url}, study={"saved_before_applying": str(profile_path)}).write(state_dir / PREVIOUS_PROFILE)
        profile.write(state_dir / APPLIED_PROFILE)

    def on_stage(report: Any) -> None:
        changes = ", ".join(f"{o.decision.short_target()} {o.decision.old_value}->{o.decision.new_value} "
                            f"({o.status})" for o in report.outcomes) or "no change"
        figures = report.figures or {}
        measured = (f"; p99 e2e {figures.get('p99_e2el_ms', 0):.0f} ms, p99 TTFT {figures.get('p99_ttft_ms', 0):.0f} ms, "
                    f"{figures.get('request_throughput', 0):.2f} req/s" if figures else "")
        verdict = f" -> BREACH: {report.breach}" if report.breach else (" -> SLO holds" if figures else "")
        console.print(f"stage {report.number}: {changes}{measured}{verdict}")

    load_probe = probe_with_load(url, profile, concurrency)

    def probe(seconds: float) -> dict[str, Any]:
        with console.status(f"verify window: {seconds:g} s of the profile's workload against {url}"):
            return load_probe(seconds)

    rollout = StagedRollout(guard, adapter.read_knobs, probe, profile,
                            verify_seconds=verify_seconds, label=f"tune apply {profile_path.name}",
                            dry_run=dry_run, on_stage=on_stage)
    try:
        result = rollout.run(previous, fractions)
    except ValueError as exc:
        fail(f"--stages {stages_text!r}: {exc}")
        return 2
    except EngineUnreachable as exc:
        fail(f"engine unreachable during the verify window: {exc}")
        return 2
    finally:
        adapter.close()
    for outcome in result.rollback_outcomes:
        console.print(f"rollback: {outcome.decision.short_target()} {outcome.decision.old_value}->"
                      f"{outcome.decision.new_value} ({outcome.status})")
    console.print(f"tune apply: {result.status}: {result.reason} (audit: {state_dir / AUDIT_FILE}, "
                  f"{len(events)} events)")
    if result.status in ("applied", "unchanged", "dry_run"):
        if result.status == "applied":
            console.print(f"previous values kept in {state_dir / PREVIOUS_PROFILE} (`dsagent tune rollback`)")
        return 0
    return 1


def run_rollback(config: Any, engine_url: str | None, token: str | None, fail: Callable[..., None]) -> int:
    from rich.console import Console

    from dsagent.actions.decision import Decision, Reason
    from dsagent.engines.base import EngineKnobRefused
    from dsagent.tune.profile import ProfileError, load_profile

    state_dir = Path(config.data_dir).expanduser() / "tune"
    path = state_dir / PREVIOUS_PROFILE
    if not path.exists():
        fail(f"nothing to roll back: {path} does not exist (it is written by `dsagent tune apply`)")
    try:
        previous = load_profile(path)
    except ProfileError as exc:
        fail(str(exc))
        return 2
    url, token = _engine(config, engine_url, token, fail)
    guard, adapter, events = _guard(config, url, token, state_dir / AUDIT_FILE, False)
    console = Console()
    try:
        current = adapter.read_knobs()
    except EngineKnobRefused as exc:
        fail(exc.reason)
        return 2
    failed = 0
    try:
        for name, value in previous.knobs.items():
            if current.get(name) == value:
                continue
            outcome = guard.submit(Decision(action="set_knob", target=f"knob:{name}", new_value=value,
                                            old_value=current.get(name), params={"knob": name}, cooldown_seconds=0.0,
                                            reason=Reason("tuner", rule="tune-rollback",
                                                          detail=f"tune rollback to {path.name}")))
            console.print(f"{name}: {current.get(name)} -> {value} ({outcome.status}) {outcome.reason}")
            failed += outcome.status != "applied"
    finally:
        adapter.close()
    if failed:
        fail(f"rollback incomplete: {failed} knob(s) not restored (see above)", 1)
    console.print(f"tune rollback: the engine runs the values saved in {path} ({len(events)} audit events)")
    return 0
