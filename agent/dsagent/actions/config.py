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
    name: str | None = None
    namespace: str = "default"
    kubeconfig: Path | None = None
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

    url: str | None = None
    timeout_seconds: float = Field(default=5.0, gt=0)
    external_url: str = "http://127.0.0.1"


class ActionsConfig(_Strict):
    """The guard every Decision passes: global dry-run, cooldowns, rate limit, hysteresis, verify defaults."""

    enabled: bool = True
    dry_run: bool = False
    cooldown_seconds: float = Field(default=60.0, ge=0)
    scale_out_cooldown_seconds: float = Field(default=60.0, ge=0)
    scale_in_cooldown_seconds: float = Field(default=300.0, ge=0)
    hysteresis_seconds: float = Field(default=120.0, ge=0,
                                      description="a change reversing the target's last change waits this long")
    max_changes: int = Field(default=10, ge=1)
    window_seconds: float = Field(default=600.0, gt=0)
    verify_settle_seconds: float = Field(default=30.0, ge=0)
    verify_tolerance_ratio: float = Field(default=0.05, ge=0)
    knob_bounds: dict[str, KnobBounds] = Field(default_factory=dict)
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
