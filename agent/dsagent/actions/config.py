"""The `actions:` section of the agent config: the guard's limits, the scale target and notify receivers.

Why its own module: the guard, the actuators and `dsagent act` read it, and AgentConfig hooks it in with
one field. Defaults are safe for the embedded default: actions on, one change per target per minute, at
most 10 changes in 10 minutes, scale-in waits 5 minutes (scale-out 1), verify settles 30 s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dsagent.actions.spec import KNOWN_KNOBS, parse_duration_seconds


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KnobBounds(_Strict):
    """Operator-wide limits for one knob; a rule's own min/max must stay inside them."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> KnobBounds:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} > max {self.max:g}")
        return self


class ScaleTargetConfig(_Strict):
    """The Deployment or StatefulSet whose scale subresource `scale` actions change."""

    kind: Literal["Deployment", "StatefulSet"] = "Deployment"
    name: str | None = Field(default=None, description="the Deployment/StatefulSet; empty = scale actions are skipped")
    namespace: str = "default"
    kubeconfig: Path | None = Field(default=None, description="default: $KUBECONFIG or ~/.kube/config")
    context: str | None = None
    in_cluster: bool | None = Field(default=None, description="None: in-cluster config when inside a pod, else kubeconfig")
    api_url: str | None = Field(default=None, description="API server URL without auth (tests, kubectl proxy)")
    min_replicas: int = Field(default=4, ge=0)
    max_replicas: int = Field(default=20, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> ScaleTargetConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        return self


class NotifyConfig(_Strict):
    """Where `notify` actions send Alertmanager webhook payloads (version 4) when the rule names no url."""

    url: str | None = Field(default=None, description="Alertmanager-compatible webhook receiver for notify actions")
    timeout_seconds: float = Field(default=5.0, gt=0)
    external_url: str = Field(default="http://127.0.0.1", description="externalURL in the payload (the agent's page)")


class ActionsConfig(_Strict):
    """The guard every Decision passes: global dry-run, cooldowns, rate limit, hysteresis, verify defaults."""

    enabled: bool = Field(default=True, description="rules' actions run (false: rules only alert)")
    dry_run: bool = Field(default=False, description="every Decision is recorded as dry_run and nothing changes")
    cooldown_seconds: float = Field(default=60.0, ge=0, description="per target: no second change sooner")
    scale_out_cooldown_seconds: float = Field(default=60.0, ge=0, description="after a replica change, before a scale-out")
    scale_in_cooldown_seconds: float = Field(default=300.0, ge=0, description="after a replica change, before a scale-in")
    hysteresis_seconds: float = Field(default=120.0, ge=0,
                                      description="a change reversing the target's last change waits this long")
    max_changes: int = Field(default=10, ge=1, description="rate limit: changes over all targets per window")
    window_seconds: float = Field(default=600.0, gt=0, description="rate-limit window")
    verify_settle_seconds: float = Field(default=30.0, ge=0, description="verify-after-apply waits this long, then "
                                         "re-reads the rule's signal and rolls back a change that made it worse")
    verify_tolerance_ratio: float = Field(default=0.05, ge=0, description="how much worse (share of the value at "
                                          "decision time) still counts as no worse")
    knob_bounds: dict[str, KnobBounds] = Field(default_factory=dict, description="operator limits per knob, "
                                               "e.g. {max_batch_size: {min: 4, max: 64}}")
    scale: ScaleTargetConfig = Field(default_factory=ScaleTargetConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    control_token_file: Path | None = Field(
        default=None, description="bearer token for the engine's /control; default data_dir/control.token (created)")
    control_timeout_seconds: float = Field(default=120.0, gt=0,
                                           description="a precision/backend swap builds a new runner: allow time")

    @field_validator("cooldown_seconds", "scale_out_cooldown_seconds", "scale_in_cooldown_seconds",
                     "hysteresis_seconds", "window_seconds", "verify_settle_seconds", mode="before")
    @classmethod
    def _duration(cls, raw: object) -> float:
        return parse_duration_seconds(raw)

    @field_validator("knob_bounds")
    @classmethod
    def _known_knobs(cls, bounds: dict[str, KnobBounds]) -> dict[str, KnobBounds]:
        for name in bounds:
            if name not in KNOWN_KNOBS:
                raise ValueError(f"unknown knob {name!r}; known: {', '.join(sorted(KNOWN_KNOBS))}")
        return bounds
