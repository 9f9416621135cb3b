"""The actions part of a running agent: builds the actuators from the config, the guard and the dispatcher,
and gives the agent its hooks (engine environment, API routes, rule-event sink, verify tick, metrics).

Why one object: `app.py` stays a list of steps; everything about acting lives here and is wired in with a
few lines (`ActionRuntime(...)`, `engine_config`, `attach`, `router`, `tick`, `samples`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from dsagent.actions.actuators.base import Actuator, ActuatorRegistry
from dsagent.actions.actuators.engine_knobs import EngineKnobActuator
from dsagent.actions.config import ActionsConfig
from dsagent.actions.decision import Reason
from dsagent.actions.dispatcher import Dispatcher, SignalFactory
from dsagent.actions.guard import AuditSink, Guard
from dsagent.actions.spec import ActionSpecError, parse_actions
from dsagent.engines.base import EngineAdapter, adapter_for
from dsagent.engines.builtin import CONTROL_TOKEN_FILE_ENV, ensure_control_token
from dsagent.samples import Sample

if TYPE_CHECKING:
    from dsagent.config import EngineConfig

log = logging.getLogger(__name__)

CONTROL_TOKEN_FILE_NAME = "control.token"


class ActionRuntime:
    """Owned by the Agent: `engine_config()` before the supervisor, `attach()` after, `stop()` at the end."""

    def __init__(self, config: ActionsConfig, engine: EngineConfig, data_dir: Path, audit: AuditSink) -> None:
        self.config = config
        self.engine = engine
        self.data_dir = Path(data_dir)
        self.registry = ActuatorRegistry()
        self.audit = audit
        self.guard = Guard(config, self.registry, audit=audit)
        scale = config.scale
        self.dispatcher = Dispatcher(self.guard, scale_target=f"{scale.kind}/{scale.namespace}/{scale.name or '-'}",
                                     replicas_bounds=(scale.min_replicas, scale.max_replicas))
        self.adapter: EngineAdapter | None = None
        self.control_token: str | None = None
        self.control_token_path: Path | None = None
        self.api_token: str | None = None  # POST /api/actions (dsagent act) needs it: data_dir/control.token

    # ---- before the engine starts --------------------------------------------------------------------

    def engine_config(self) -> EngineConfig:
        """The engine config with the control token handed to a builtin sidecar (created on first run).

        An operator who set DSSIDECAR_CONTROL_TOKEN / _FILE in engine.environment keeps theirs; the agent
        reads the token from there instead.
        """
        own_path = self.data_dir / CONTROL_TOKEN_FILE_NAME
        try:
            self.api_token = ensure_control_token(own_path)
        except OSError as exc:
            log.warning("cannot create the control token %s (%s): knob actions and dsagent act will fail",
                        own_path, exc)
        if self.engine.kind != "builtin":
            return self.engine
        environment = dict(self.engine.environment)
        if environment.get("DSSIDECAR_CONTROL_TOKEN"):
            self.control_token = environment["DSSIDECAR_CONTROL_TOKEN"].strip()
            return self.engine
        named = environment.get(CONTROL_TOKEN_FILE_ENV) or self.config.control_token_file
        path = Path(named).expanduser() if named else self.data_dir / CONTROL_TOKEN_FILE_NAME
        try:
            self.control_token = ensure_control_token(path)
            self.control_token_path = path
        except OSError as exc:
            log.warning("cannot create the engine control token %s (%s): knob actions will fail", path, exc)
            return self.engine
        environment[CONTROL_TOKEN_FILE_ENV] = str(path)
        environment.pop("DSSIDECAR_CONTROL_TOKEN", None)
        if os.environ.get("DSSIDECAR_CONTROL_TOKEN"):
            # the agent's own environment would win over the file in the sidecar (token precedence): use it
            self.control_token = os.environ["DSSIDECAR_CONTROL_TOKEN"].strip()
        return self.engine.model_copy(update={"environment": environment})

    # ---- once the supervisor and sources exist -------------------------------------------------------

    def attach(self, restart: Callable[[list[str], str], bool] | None = None, gpu_backend: Any = None,
               signal_for: SignalFactory | None = None, extra_actuators: list[Actuator] | None = None) -> None:
        """Build the actuators this node can use; `restart` is the supervisor's drained restart (vLLM)."""
        self.adapter = adapter_for(self.engine, self.data_dir, control_token=self.control_token, restart=restart,
                                   control_timeout_seconds=self.config.control_timeout_seconds)
        self.registry.register(EngineKnobActuator(self.adapter))
        self.registry.missing_hints.update({
            "scale": "set actions.scale.name (and namespace) to the Deployment or StatefulSet to scale",
            **{kind: "no GPU control here (sources.gpu.backend is off, or NVML is unavailable)" for kind in
               ("set_gpu_clocks", "reset_gpu_clocks", "set_power_limit", "reset_power_limit")},
            "switch_rule_group": "no schedules configured",
        })
        from dsagent.actions.actuators.notify import NotifyActuator, WebhookActuator

        self.registry.register(NotifyActuator(self.config.notify))
        self.registry.register(WebhookActuator(self.config.notify.timeout_seconds))
        if gpu_backend is not None:
            from dsagent.actions.actuators.gpu import GpuActuator, supports_gpu_control

            if supports_gpu_control(gpu_backend):
                self.registry.register(GpuActuator(gpu_backend))
        if self.config.scale.name:
            from dsagent.actions.actuators.scale import KubernetesScaleActuator

            try:
                self.registry.register(KubernetesScaleActuator(self.config.scale))
            except Exception as exc:  # no kubeconfig: scale actions fail with this reason, the rest works
                log.warning("scale actions unavailable: %s", exc)
                self.registry.missing_hints["scale"] = f"the Kubernetes client could not be set up: {exc}"
        for actuator in extra_actuators or []:
            self.registry.register(actuator)
        self.dispatcher.signal_for = signal_for
        log.info("actions: %s%s", ", ".join(self.registry.kinds()),
                 " (global dry-run)" if self.config.dry_run else "")

    def attach_to_agent(self, agent: Any) -> None:
        """Wire into a started Agent: its supervisor's restart, its GPU backend, its evaluate job, its rules."""
        from dsagent.sources.gpu import GpuSource

        gpu_backend = next((getattr(s, "_backend", None) for s in agent.sources if isinstance(s, GpuSource)), None)
        restart = getattr(agent.supervisor, "restart_with_command", None)
        self._agent = agent
        rules_config = getattr(agent.config, "rules", None)
        self.dispatcher.rules_dry_run = bool(getattr(rules_config, "dry_run", False))
        self.attach(restart=restart, gpu_backend=gpu_backend, signal_for=self._rule_signal_factory(agent))
        agent.evaluate_hooks.append(self.tick)
        self._connect_rules()
        self.add_schedules(agent.scheduler, list(getattr(agent.config, "schedules", []) or []),
                           lambda: getattr(agent, "rule_manager", None))

    def add_schedules(self, scheduler: Any, policies: list[Any], rule_manager: Callable[[], Any]) -> None:
        """One cron job per policy on the agent's scheduler; each change it makes is a Decision."""
        from dsagent.actions.schedules import RuleGroupActuator, run_policy

        if not policies:
            return
        self.registry.register(RuleGroupActuator(rule_manager))
        for policy in policies:
            scheduler.add_cron_job(f"schedule:{policy.name}", lambda p=policy: run_policy(p, self.dispatcher), policy.cron)
        log.info("schedules: %s", ", ".join(f"{p.name} ({p.cron} UTC)" for p in policies))

    def _connect_rules(self) -> None:
        """Register the dispatcher as the rule manager's event sink once the rules runtime has set one up."""
        agent = getattr(self, "_agent", None)
        manager = getattr(agent, "rule_manager", None) if agent is not None else None
        if manager is None or getattr(self, "_rules_connected", None) is manager:
            return
        manager.add_event_sink(self.on_rule_events)
        self._rules_connected = manager
        log.info("actions: listening to rule events")

    def _rule_signal_factory(self, agent: Any) -> SignalFactory:
        """verify-after-apply re-reads the rule's signal: verify.expr, else the rule's own expression."""
        from dsagent.actions.signal import rule_signal

        def factory(event: Any, spec: Any) -> Callable[[], float | None] | None:
            expr = (spec.verify.expr if spec.verify is not None and spec.verify.expr else None) or getattr(event, "expr", None)
            if not expr:
                return None
            return rule_signal(agent.store, str(expr), getattr(event, "labels", None) or {})

        return factory

    def on_rule_events(self, events: list[Any]) -> None:
        if self.config.enabled:
            self.dispatcher.on_rule_events(events)

    def tick(self, now: float) -> None:
        """Run due verify-after-apply checks (the agent's evaluate job calls this)."""
        self._connect_rules()
        self.guard.tick(now)

    def samples(self, now_seconds: float) -> list[Sample]:
        return self.guard.samples(now_seconds)

    def stop(self) -> None:
        self.dispatcher.stop()

    # ---- operator decisions (`dsagent act`) ----------------------------------------------------------

    def authorized(self, header: str | None) -> bool:
        """Is `Authorization: Bearer <token>` the agent's control token (constant-time compare)?"""
        import hmac

        scheme, _, presented = (header or "").partition(" ")
        return bool(self.api_token) and scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode(), str(self.api_token).encode())

    def submit_operator(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST /api/actions: {"actions": [<rule-file action items>], "dry_run": bool, "reason": str}."""
        if not isinstance(body, dict):
            return 422, {"error": "body must be a JSON object with an 'actions' list"}
        try:
            specs = parse_actions(body.get("actions"), "request")
        except ActionSpecError as exc:
            return 422, {"error": str(exc)}
        if not specs:
            return 422, {"error": "request: no actions given"}
        reason = Reason("operator", rule="operator", detail=str(body.get("reason") or "dsagent act"))
        outcomes = []
        for spec in specs:
            # an operator's explicit request is not held back by the rules' cooldown unless asked
            cooldown = spec.cooldown_seconds if spec.cooldown_seconds is not None else 0.0
            outcome = self.dispatcher.submit_spec(spec, reason, dry_run=bool(body.get("dry_run")),
                                                  cooldown_seconds=cooldown)
            outcomes.append({"status": outcome.status, "reason": outcome.reason, "event": outcome.event})
        failed = any(o["status"] == "failed" for o in outcomes)
        return (200 if not failed else 502), {"outcomes": outcomes}

    def record_external_audit(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST /api/actions/audit: {"events": [<audit event>...]} from a Decision path that ran outside this
        process (`dsagent tune apply` drives its own guard so a stage rollback never waits for the rules'
        cooldown). The events join this agent's audit trail: `dsagent status`, logs-dsagent.actions (their
        deterministic `decision_id` keeps a resend from duplicating) and /metrics."""
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list) or not events:
            return 422, {"error": "body must be {\"events\": [<audit event>, ...]}"}
        for index, event in enumerate(events):
            if not isinstance(event, dict) or not isinstance(event.get("outcome"), str) \
                    or not isinstance(event.get("decision_id"), str):
                return 422, {"error": f"events[{index}]: an audit event needs string 'outcome' and 'decision_id'"}
        for event in events:
            self.audit(event)
            self.guard.count_external(event)
        return 200, {"recorded": len(events)}

    def router(self) -> APIRouter:
        router = APIRouter()

        @router.post("/api/actions")
        async def post_actions(body: dict[str, Any], request: Request) -> JSONResponse:
            import anyio

            if not self.authorized(request.headers.get("authorization")):
                return JSONResponse({"error": f"send 'Authorization: Bearer <token>' with the token in "
                                              f"{self.data_dir / CONTROL_TOKEN_FILE_NAME}"}, status_code=401)
            status, answer = await anyio.to_thread.run_sync(self.submit_operator, body)
            return JSONResponse(answer, status_code=status)

        @router.post("/api/actions/audit")
        def post_audit(body: dict[str, Any], request: Request) -> JSONResponse:
            if not self.authorized(request.headers.get("authorization")):
                return JSONResponse({"error": f"send 'Authorization: Bearer <token>' with the token in "
                                              f"{self.data_dir / CONTROL_TOKEN_FILE_NAME}"}, status_code=401)
            status, answer = self.record_external_audit(body)
            return JSONResponse(answer, status_code=status)

        @router.get("/api/actions")
        def get_actions() -> dict[str, Any]:
            return {"actuators": self.registry.kinds(), "dry_run": self.config.dry_run,
                    "engine_kind": self.engine.kind,
                    "knob_modes": self.adapter.knob_modes() if self.adapter is not None else {},
                    "pending_verifies": self.guard.pending_verifies()}

        return router
