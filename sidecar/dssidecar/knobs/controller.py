"""Runtime knobs of the engine: what each one accepts, and applying a partial update atomically.

Why this exists: the agent's rules and the tuner retune a running engine over /control. Every change must
be validated before anything moves (all or nothing), refused with a reason when the device cannot do it,
applied without failing a request (live knobs from the next step; precision/backend by building a new
runner beside the old one and switching between steps), and leave a trace: a change log, counters and
gauges for /metrics.

The controller talks to the engine through `KnobTarget` (a small protocol), so it is tested against a fake
and bound to the real engine by `dssidecar.knobs.engine_target.EngineKnobTarget`.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

logger = logging.getLogger("dssidecar.knobs")

KnobKind = Literal["int", "float", "choice", "bool"]
ApplyMode = Literal["live", "swap"]
ChangeResult = Literal["applied", "invalid", "unsupported", "refused", "failed"]


@dataclass(frozen=True)
class KnobSpec:
    """One knob: its type, allowed values and how a change takes effect."""

    name: str
    kind: KnobKind
    apply: ApplyMode
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    unit: str = ""

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"type": self.kind, "apply": self.apply, "description": self.description}
        if self.kind in ("int", "float"):
            described["min"] = self.minimum
            described["max"] = self.maximum
        if self.kind == "choice":
            described["choices"] = list(self.choices)
        if self.unit:
            described["unit"] = self.unit
        return described


class KnobError(Exception):
    """Base of the errors a knob update can raise; `details` is JSON for the API answer."""

    def __init__(self, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})


class KnobValidationError(KnobError):
    """Unknown knob, wrong type or out of range (HTTP 422). `details["errors"]` lists each bad knob."""


class KnobUnsupportedError(KnobError):
    """Valid value that this device/engine cannot do, or a failed accuracy check (HTTP 409)."""


class KnobApplyError(KnobError):
    """Applying failed part way; everything was rolled back (HTTP 500)."""


def validate_value(spec: KnobSpec, raw: Any) -> Any:
    """`raw` converted to the knob's type, or KnobValidationError naming the knob and what is allowed."""
    name = spec.name
    if spec.kind == "bool":
        if isinstance(raw, bool):
            return raw
        raise KnobValidationError(f"{name}: expected true or false, got {raw!r}")
    if spec.kind == "choice":
        if isinstance(raw, str) and raw in spec.choices:
            return raw
        raise KnobValidationError(f"{name}: expected one of {', '.join(spec.choices)}, got {raw!r}")
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise KnobValidationError(f"{name}: expected a number, got {raw!r}")
    if spec.kind == "int":
        if isinstance(raw, float) and not raw.is_integer():
            raise KnobValidationError(f"{name}: expected an integer, got {raw!r}")
        value: float = int(raw)
    else:
        value = float(raw)
        if not math.isfinite(value):
            raise KnobValidationError(f"{name}: expected a finite number, got {raw!r}")
    if spec.minimum is not None and value < spec.minimum or spec.maximum is not None and value > spec.maximum:
        raise KnobValidationError(f"{name}: {raw!r} is out of range; allowed {spec.minimum}..{spec.maximum}")
    return value


class KnobTarget(Protocol):
    """What the controller needs from an engine. Implemented by dssidecar.knobs.engine_target.EngineKnobTarget."""

    def knob_specs(self) -> dict[str, KnobSpec]:
        """The knobs this engine has, with ranges for this device and model."""
        ...

    def current_values(self) -> dict[str, Any]: ...

    def unsupported_reason(self, name: str, value: Any) -> str | None:
        """Why `value` cannot be used on this device (None when it can)."""
        ...

    def build_runner(self, precision: str, backend: str) -> Any:
        """Build and warm a runner for (precision, backend) beside the running one; slow; may raise."""
        ...

    def accuracy_check(self, precision: str) -> tuple[bool, dict[str, Any]]:
        """(passed, figures) of the check-precision comparison against fp32."""
        ...

    def install(self, live_values: Mapping[str, Any], runner: Any | None, swap_values: Mapping[str, Any]) -> None:
        """Apply live values and (if given) switch to `runner`, between two engine steps; blocks until done."""
        ...

    def status(self) -> dict[str, Any]:
        """Read-only figures next to the knobs (effective batch size, pending KV release, OOM events)."""
        ...


@dataclass
class KnobChange:
    """One entry of the change log."""

    time_unix_seconds: float
    requested: dict[str, Any]
    previous: dict[str, Any]
    applied: dict[str, Any]
    result: ChangeResult
    apply_seconds: float
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class KnobController:
    """Validates and applies partial knob updates to one engine, one update at a time, all or nothing."""

    def __init__(self, target: KnobTarget, *, require_accuracy_check: bool = False, log_size: int = 200) -> None:
        self.target = target
        self.require_accuracy_check = require_accuracy_check
        self._lock = threading.Lock()
        self._changes: deque[KnobChange] = deque(maxlen=log_size)
        self.change_counts: Counter[tuple[str, str]] = Counter()
        self.last_swap_seconds: float | None = None

    # ---- reading

    def specs(self) -> dict[str, KnobSpec]:
        specs = dict(self.target.knob_specs())
        specs["require_accuracy_check"] = KnobSpec(
            "require_accuracy_check", "bool", "live", "run check-precision before a live precision switch"
        )
        return specs

    def values(self) -> dict[str, Any]:
        values = dict(self.target.current_values())
        values["require_accuracy_check"] = self.require_accuracy_check
        return values

    def describe(self) -> dict[str, Any]:
        """The GET /control/knobs body: every knob's value, type, range and apply mode, plus status."""
        values = self.values()
        knobs = {name: {"value": values.get(name), **spec.describe()} for name, spec in self.specs().items()}
        return {"knobs": knobs, "status": self.target.status()}

    def change_log(self) -> list[dict[str, Any]]:
        return [asdict(change) for change in self._changes]

    # ---- changing

    def validate(self, update: Mapping[str, Any]) -> dict[str, Any]:
        """Every value of `update` converted, or KnobValidationError listing every bad knob."""
        if not isinstance(update, Mapping) or not update:
            raise KnobValidationError("expected a JSON object with at least one knob", {"errors": []})
        specs = self.specs()
        cleaned: dict[str, Any] = {}
        errors: list[dict[str, str]] = []
        for name, raw in update.items():
            spec = specs.get(name)
            if spec is None:
                errors.append({"knob": str(name), "message": f"unknown knob {name!r}; known: {', '.join(sorted(specs))}"})
                continue
            try:
                cleaned[name] = validate_value(spec, raw)
            except KnobValidationError as exc:
                errors.append({"knob": name, "message": exc.message})
        if errors:
            raise KnobValidationError("; ".join(e["message"] for e in errors), {"errors": errors})
        return cleaned

    def apply(self, update: Mapping[str, Any]) -> dict[str, Any]:
        """Validate then apply `update` atomically. Returns {"applied", "previous", "apply_seconds"}.

        Raises KnobValidationError (nothing changed), KnobUnsupportedError (nothing changed) or
        KnobApplyError (rolled back). Concurrent callers are serialized.
        """
        requested = dict(update) if isinstance(update, Mapping) else {"<body>": update}
        with self._lock:
            started = time.perf_counter()
            previous = self.values()
            try:
                cleaned = self.validate(update)
                self._check_supported(cleaned, previous)
                changed = {k: v for k, v in cleaned.items() if previous.get(k) != v}
                self._apply_changed(changed, previous)
            except KnobError as exc:
                result: ChangeResult = (
                    "invalid"
                    if isinstance(exc, KnobValidationError)
                    else "refused"
                    if exc.details.get("accuracy_check")
                    else "unsupported"
                    if isinstance(exc, KnobUnsupportedError)
                    else "failed"
                )
                self._record(requested, previous, {}, result, time.perf_counter() - started, exc.message, exc.details)
                raise
            apply_seconds = time.perf_counter() - started
            applied = {name: self.values().get(name) for name in cleaned}
            self._record(requested, previous, applied, "applied", apply_seconds)
            return {"applied": applied, "previous": {k: previous.get(k) for k in cleaned}, "apply_seconds": apply_seconds}

    def _check_supported(self, cleaned: Mapping[str, Any], previous: Mapping[str, Any]) -> None:
        for name, value in cleaned.items():
            if previous.get(name) == value:
                continue
            reason = self.target.unsupported_reason(name, value)
            if reason is not None:
                raise KnobUnsupportedError(f"{name}={value!r} is not supported here: {reason}", {"knob": name, "reason": reason})

    def _apply_changed(self, changed: dict[str, Any], previous: Mapping[str, Any]) -> None:
        if "require_accuracy_check" in changed:
            self.require_accuracy_check = bool(changed.pop("require_accuracy_check"))
        specs = self.specs()
        swap_values = {k: v for k, v in changed.items() if specs[k].apply == "swap"}
        live_values = {k: v for k, v in changed.items() if specs[k].apply == "live"}
        runner = None
        swap_started = time.perf_counter()
        if swap_values:
            precision = str(swap_values.get("precision", previous.get("precision")))
            backend = str(swap_values.get("backend", previous.get("backend")))
            if "precision" in swap_values and self.require_accuracy_check:
                passed, figures = self.target.accuracy_check(precision)
                if not passed:
                    raise KnobUnsupportedError(
                        f"precision={precision} refused: the accuracy check against fp32 failed",
                        {"knob": "precision", "accuracy_check": figures},
                    )
            try:
                runner = self.target.build_runner(precision, backend)
            except KnobError:
                raise
            except Exception as exc:  # building is beside the running engine: nothing changed yet
                logger.exception("building a runner for precision=%s backend=%s failed", precision, backend)
                raise KnobApplyError(f"building the new runner failed: {exc}", {"precision": precision, "backend": backend}) from exc
        try:
            self.target.install(live_values, runner, swap_values)
        except Exception as exc:
            logger.exception("installing knob values %s failed; rolling back", changed)
            self._roll_back(live_values, previous)
            raise KnobApplyError(f"applying {sorted(changed)} failed and was rolled back: {exc}") from exc
        if runner is not None:
            self.last_swap_seconds = time.perf_counter() - swap_started

    def _roll_back(self, live_values: Mapping[str, Any], previous: Mapping[str, Any]) -> None:
        try:
            self.target.install({k: previous[k] for k in live_values if k in previous}, None, {})
        except Exception:  # pragma: no cover - best effort; the original error is what the caller sees
            logger.exception("rolling back %s failed", sorted(live_values))

    def _record(
        self,
        requested: dict[str, Any],
        previous: Mapping[str, Any],
        applied: dict[str, Any],
        result: ChangeResult,
        apply_seconds: float,
        reason: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> None:
        knob_names = [k for k in requested if k in self.specs()] or ["<none>"]
        for name in knob_names:
            self.change_counts[(name, result)] += 1
        change = KnobChange(
            time_unix_seconds=time.time(),
            requested=requested,
            previous={k: previous.get(k) for k in requested},
            applied=applied,
            result=result,
            apply_seconds=apply_seconds,
            reason=reason,
            details=dict(details or {}),
        )
        self._changes.append(change)
        logger.log(
            logging.INFO if result == "applied" else logging.WARNING,
            "knob change %s",
            json.dumps(asdict(change), default=str, sort_keys=True),
        )
