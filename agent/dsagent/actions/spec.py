"""The `actions:` block of a rule file: what a firing (or resolved) rule may change, and within what bounds.

Why a module of its own: the rule loader (dsagent.rules), `dsagent act` and the schedules all describe a
change the same way, and an operator must get a one-line error naming the rule and the bad key
("rules/slo.yaml:14 rule HighP99: set_knob: unknown knob 'max_batch'; known: ...") before the agent runs
anything. Nothing here talks to the world: these are validated descriptions, turned into `Decision`s by
the planner and executed by the actuators behind the guard.

YAML shape: each list item is a mapping with exactly one action key plus optional common keys
(`cooldown`, `dry_run`, `verify`, `on`), which may also be written inside the action's own mapping:

    actions:
      - set_knob: {knob: max_batch_size, factor: 0.5, min: 1, max: 64}
        cooldown: 2m
        verify: {settle: 30s, direction: lower}
      - scale: {replicas: "+1", min: 4, max: 20}
      - notify: {}
      - scale_out              # short forms: scale_out, scale_in, notify, reset_gpu_clocks, reset_power_limit
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ActionSpecError(ValueError):
    """An `actions:` entry is wrong; the message starts with where it was found and names the key."""


# ---- knobs ------------------------------------------------------------------------------------------------

KnobType = Literal["int", "float", "choice"]


class KnobInfo(BaseModel):
    """What the spec checks about a knob before any engine is asked (the engine validates again)."""

    model_config = ConfigDict(frozen=True)

    name: str
    type: KnobType
    choices: tuple[str, ...] = ()
    engines: tuple[str, ...] = ("builtin",)
    description: str = ""


# The sidecar's live/swap knobs (dssidecar.knobs) and the vLLM engine arguments a drained restart applies.
KNOWN_KNOBS: dict[str, KnobInfo] = {
    info.name: info
    for info in (
        KnobInfo(name="max_batch_size", type="int", engines=("builtin",),
                 description="sequences decoded together (live)"),
        KnobInfo(name="max_num_batched_tokens", type="int", engines=("builtin", "vllm"),
                 description="tokens per step (builtin: live; vLLM: drained restart)"),
        KnobInfo(name="kv_cache_blocks", type="int", engines=("builtin",), description="KV cache pool size (live)"),
        KnobInfo(name="precision", type="choice", choices=("fp32", "bf16", "fp16", "int8", "int8_weight_only", "fp8"),
                 engines=("builtin",), description="weight/compute precision (runner swap)"),
        KnobInfo(name="backend", type="choice", choices=("eager", "torch.compile", "tensorrt"),
                 engines=("builtin",), description="execution backend (runner swap)"),
        KnobInfo(name="max_num_seqs", type="int", engines=("vllm",), description="vLLM --max-num-seqs (restart)"),
        KnobInfo(name="gpu_memory_utilization", type="float", engines=("vllm",),
                 description="vLLM --gpu-memory-utilization (restart)"),
        KnobInfo(name="tensor_parallel_size", type="int", engines=("vllm",),
                 description="vLLM --tensor-parallel-size (restart)"),
        KnobInfo(name="dtype", type="choice", choices=("auto", "half", "float16", "bfloat16", "float", "float32"),
                 engines=("vllm",), description="vLLM --dtype (restart)"),
        KnobInfo(name="quantization", type="choice",
                 choices=("awq", "gptq", "fp8", "bitsandbytes", "marlin", "squeezellm", "none"),
                 engines=("vllm",), description="vLLM --quantization (restart)"),
    )
}


# ---- durations --------------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|y|w|d|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}


def parse_duration_seconds(raw: Any) -> float:
    """A Prometheus duration ("30s", "2m", "1h30m", "500ms") or a plain number of seconds -> seconds."""
    if isinstance(raw, bool):
        raise ValueError(f"expected a duration like 30s or 2m, got {raw!r}")
    if isinstance(raw, int | float):
        if raw < 0 or not math.isfinite(raw):
            raise ValueError(f"duration must be a finite number of seconds >= 0, got {raw!r}")
        return float(raw)
    text = str(raw).strip()
    if not text:
        raise ValueError("empty duration; write e.g. 30s or 2m")
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(text):
        raise ValueError(f"bad duration {text!r}; write e.g. 500ms, 30s, 2m or 1h30m")
    return total


# ---- action bodies ----------------------------------------------------------------------------------------

class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SetKnob(_Body):
    """Change one engine knob: to `value`, by `step` (added) or by `factor` (multiplied), clamped to min/max."""

    kind: Literal["set_knob"] = "set_knob"
    knob: str
    value: int | float | str | None = None
    step: float | None = None
    factor: float | None = None
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SetKnob:
        info = KNOWN_KNOBS.get(self.knob)
        if info is None:
            raise ValueError(f"unknown knob {self.knob!r}; known: {', '.join(sorted(KNOWN_KNOBS))}")
        given = [name for name in ("value", "step", "factor") if getattr(self, name) is not None]
        if len(given) != 1:
            both = " and ".join(given) if given else "none of them"
            raise ValueError(f"give exactly one of value, step or factor for knob {self.knob!r} (got {both})")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"bounds inverted for knob {self.knob!r}: min {self.min:g} > max {self.max:g}")
        if info.type == "choice":
            if self.value is None:
                raise ValueError(f"knob {self.knob!r} takes a value (one of {', '.join(info.choices)}), not step/factor")
            if str(self.value) not in info.choices:
                raise ValueError(f"knob {self.knob!r}: {self.value!r} is not one of {', '.join(info.choices)}")
            if self.min is not None or self.max is not None:
                raise ValueError(f"knob {self.knob!r} is a choice; min/max do not apply")
        else:
            if self.value is not None and (isinstance(self.value, str) or isinstance(self.value, bool)):
                raise ValueError(f"knob {self.knob!r} takes a number, got {self.value!r}")
            if self.factor is not None and (self.factor <= 0 or not math.isfinite(self.factor)):
                raise ValueError(f"factor for knob {self.knob!r} must be > 0, got {self.factor:g}")
            if self.step is not None and (self.step == 0 or not math.isfinite(self.step)):
                raise ValueError(f"step for knob {self.knob!r} must be a non-zero number, got {self.step:g}")
            if info.type == "int" and isinstance(self.value, float) and not self.value.is_integer():
                raise ValueError(f"knob {self.knob!r} takes a whole number, got {self.value:g}")
        return self

    @property
    def info(self) -> KnobInfo:
        return KNOWN_KNOBS[self.knob]


class SetGpuClocks(_Body):
    """Lock GPU clocks (NVML locked graphics clocks / application memory clock), MHz."""

    kind: Literal["set_gpu_clocks"] = "set_gpu_clocks"
    graphics_mhz: int | None = Field(default=None, gt=0)
    memory_mhz: int | None = Field(default=None, gt=0)
    gpu: int | None = Field(default=None, ge=0, description="GPU index; all GPUs when absent")

    @model_validator(mode="after")
    def _something(self) -> SetGpuClocks:
        if self.graphics_mhz is None and self.memory_mhz is None:
            raise ValueError("set_gpu_clocks needs graphics_mhz and/or memory_mhz")
        return self


class ResetGpuClocks(_Body):
    kind: Literal["reset_gpu_clocks"] = "reset_gpu_clocks"
    gpu: int | None = Field(default=None, ge=0)


class SetPowerLimit(_Body):
    """Set the power management limit: absolute watts or a fraction of the default limit."""

    kind: Literal["set_power_limit"] = "set_power_limit"
    watts: float | None = Field(default=None, gt=0)
    fraction_of_default: float | None = Field(default=None, gt=0, le=1.5)
    gpu: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one(self) -> SetPowerLimit:
        if (self.watts is None) == (self.fraction_of_default is None):
            raise ValueError("set_power_limit needs exactly one of watts or fraction_of_default")
        return self


class ResetPowerLimit(_Body):
    kind: Literal["reset_power_limit"] = "reset_power_limit"
    gpu: int | None = Field(default=None, ge=0)


_REPLICAS = re.compile(r"^(?:([+-])(\d+)|x(\d+(?:\.\d+)?)|(\d+))$")


class Scale(_Body):
    """Change the replica count of the configured Deployment/StatefulSet: "+1", "-1", "x1.5" or N."""

    kind: Literal["scale"] = "scale"
    replicas: str
    min: int = Field(default=4, ge=0)
    max: int = Field(default=20, ge=1)

    @field_validator("replicas", mode="before")
    @classmethod
    def _replicas_text(cls, raw: Any) -> str:
        if isinstance(raw, bool):
            raise ValueError(f"replicas must be \"+1\", \"-1\", \"x1.5\" or a number, got {raw!r}")
        if isinstance(raw, int):
            if raw < 0:
                return f"-{-raw}"  # YAML `replicas: -1` is a step down, as the operator meant
            return str(raw)
        text = str(raw).strip().replace(" ", "")
        if not _REPLICAS.match(text):
            raise ValueError(f"replicas must be \"+1\", \"-1\", \"x1.5\" or a number, got {raw!r}")
        if text.startswith("x") and float(text[1:]) <= 0:
            raise ValueError(f"replicas factor must be > 0, got {raw!r}")
        return text

    @model_validator(mode="after")
    def _bounds(self) -> Scale:
        if self.min > self.max:
            raise ValueError(f"bounds inverted: min {self.min} > max {self.max} replicas")
        return self

    def target_replicas(self, current: int) -> int:
        """The replica count this asks for from `current`, clamped to [min, max]."""
        match = _REPLICAS.match(self.replicas)
        assert match is not None  # validated
        sign, delta, factor, absolute = match.groups()
        if sign:
            wanted = current + int(delta) if sign == "+" else current - int(delta)
        elif factor:
            wanted = math.ceil(current * float(factor) - 1e-9) if float(factor) >= 1 else math.floor(current * float(factor) + 1e-9)
        else:
            wanted = int(absolute)
        return max(self.min, min(self.max, wanted))


class Webhook(_Body):
    """POST a JSON body to a URL (the rule's event is sent when `body` is absent)."""

    kind: Literal["webhook"] = "webhook"
    url: str
    body: dict[str, Any] | list[Any] | str | None = None
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"webhook url must be http(s)://host/..., got {url!r}")
        return url


class Notify(_Body):
    """Send an Alertmanager webhook (payload version 4) to `url`, or to notify.url from the config."""

    kind: Literal["notify"] = "notify"
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"notify url must be http(s)://host/..., got {url!r}")
        return url


ActionBody = Annotated[
    SetKnob | SetGpuClocks | ResetGpuClocks | SetPowerLimit | ResetPowerLimit | Scale | Webhook | Notify,
    Field(discriminator="kind"),
]
ACTION_KINDS: dict[str, type[_Body]] = {
    "set_knob": SetKnob, "set_gpu_clocks": SetGpuClocks, "reset_gpu_clocks": ResetGpuClocks,
    "set_power_limit": SetPowerLimit, "reset_power_limit": ResetPowerLimit, "scale": Scale,
    "webhook": Webhook, "notify": Notify,
}
SHORT_FORMS: dict[str, tuple[str, dict[str, Any]]] = {
    "scale_out": ("scale", {"replicas": "+1"}),
    "scale_in": ("scale", {"replicas": "-1"}),
    "notify": ("notify", {}),
    "reset_gpu_clocks": ("reset_gpu_clocks", {}),
    "reset_power_limit": ("reset_power_limit", {}),
}


# ---- common keys ------------------------------------------------------------------------------------------

class VerifySpec(BaseModel):
    """Verify-after-apply: after `settle_seconds` re-read `expr` (default: the rule's own expression).

    `direction` says which way is better for that signal ("lower": latency, "higher": throughput); the
    change is rolled back when the signal moved the wrong way by more than `tolerance_ratio` of its value
    at decision time.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    settle_seconds: float = Field(default=30.0, alias="settle")
    expr: str | None = None
    direction: Literal["lower", "higher"] = "lower"
    tolerance_ratio: float = Field(default=0.05, ge=0, alias="tolerance")
    enabled: bool = True

    @field_validator("settle_seconds", mode="before")
    @classmethod
    def _duration(cls, raw: Any) -> float:
        return parse_duration_seconds(raw)


COMMON_KEYS = ("cooldown", "dry_run", "verify", "on")


class ActionSpec(BaseModel):
    """One validated entry of an `actions:` list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: ActionBody
    cooldown_seconds: float | None = None
    dry_run: bool = False
    verify: VerifySpec | None = None
    on: Literal["firing", "resolved"] = "firing"

    @property
    def kind(self) -> str:
        return self.action.kind

    def describe(self) -> dict[str, Any]:
        """A JSON-able form for audit events and `rules check` output."""
        described: dict[str, Any] = {self.kind: self.action.model_dump(exclude={"kind"}, exclude_none=True)}
        if self.cooldown_seconds is not None:
            described["cooldown_seconds"] = self.cooldown_seconds
        if self.dry_run:
            described["dry_run"] = True
        if self.verify is not None:
            described["verify"] = self.verify.model_dump(exclude_none=True)
        if self.on != "firing":
            described["on"] = self.on
        return described


def _format_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        loc = [str(p) for p in error["loc"] if not str(p).startswith("function-")]
        if loc[:1] == ["action"]:
            loc = loc[2:] if len(loc) > 1 and loc[1] in ACTION_KINDS else loc[1:]  # drop the union's tag
        location = ".".join(loc)
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)


def parse_action(raw: Any, where: str) -> ActionSpec:
    """One `actions:` item -> ActionSpec, or ActionSpecError naming `where` and the problem."""
    if isinstance(raw, str):
        if raw not in SHORT_FORMS:
            known = ", ".join(sorted(set(ACTION_KINDS) | set(SHORT_FORMS)))
            raise ActionSpecError(f"{where}: unknown action {raw!r}; known: {known}")
        kind, body = SHORT_FORMS[raw]
        raw = {kind: dict(body)}
    if not isinstance(raw, dict):
        raise ActionSpecError(f"{where}: an action must be a mapping like {{set_knob: {{knob: ..., value: ...}}}}, "
                              f"got {type(raw).__name__}")
    kinds = [key for key in raw if key in ACTION_KINDS]
    unknown = [key for key in raw if key not in ACTION_KINDS and key not in COMMON_KEYS]
    if unknown:
        known = ", ".join(sorted(ACTION_KINDS))
        raise ActionSpecError(f"{where}: unknown action {unknown[0]!r}; known: {known} "
                              f"(common keys: {', '.join(COMMON_KEYS)})")
    if len(kinds) != 1:
        problem = "no action key" if not kinds else f"several action keys ({', '.join(kinds)})"
        raise ActionSpecError(f"{where}: each action item needs exactly one action key, found {problem}")
    kind = kinds[0]
    body = raw[kind]
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ActionSpecError(f"{where}: {kind}: expected a mapping of options, got {body!r}")
    body = dict(body)
    common: dict[str, Any] = {key: raw[key] for key in COMMON_KEYS if key in raw}
    for key in COMMON_KEYS:
        if key in body:
            if key in common:
                raise ActionSpecError(f"{where}: {kind}: {key!r} given both inside and beside the action; keep one")
            common[key] = body.pop(key)
    fields: dict[str, Any] = {"action": {"kind": kind, **body}}
    try:
        if "cooldown" in common:
            fields["cooldown_seconds"] = parse_duration_seconds(common["cooldown"])
        if "dry_run" in common:
            if not isinstance(common["dry_run"], bool):
                raise ValueError(f"dry_run must be true or false, got {common['dry_run']!r}")
            fields["dry_run"] = common["dry_run"]
        if "verify" in common:
            verify = common["verify"]
            if verify is False:
                fields["verify"] = {"enabled": False}
            elif verify is True or verify is None:
                fields["verify"] = {}
            elif isinstance(verify, dict):
                fields["verify"] = verify
            else:
                raise ValueError(f"verify must be a mapping (settle, expr, direction, tolerance) or false, got {verify!r}")
        if "on" in common:
            fields["on"] = common["on"]
    except ValueError as exc:
        raise ActionSpecError(f"{where}: {kind}: {exc}") from None
    try:
        return ActionSpec.model_validate(fields)
    except ValidationError as exc:
        raise ActionSpecError(f"{where}: {kind}: {_format_error(exc)}") from None


def parse_actions(raw: Any, where: str) -> list[ActionSpec]:
    """A rule's `actions:` list -> ActionSpecs; the first bad item raises ActionSpecError (`where` #index).

    `where` is how the caller names the place (e.g. "rules/slo.yaml:14 rule HighP99"); each item's error
    adds its position in the list: "...: actions[1]: set_knob: ...".
    """
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ActionSpecError(f"{where}: actions must be a list of action items, got {type(raw).__name__}")
    return [parse_action(item, f"{where}: actions[{index}]") for index, item in enumerate(raw)]
