"""The knob space a tune searches, derived from the engine's own `GET /control/knobs` description.

Why from the engine: the engine knows its knobs, their ranges on this device and whether a change is live
or a runner swap; the tuner must not hard-code them. Numeric knobs become an ordered list of levels (powers
of two inside the engine's range by default) so the grid, random, TPE and NSGA-II samplers all search the
same finite set, and TPE can still use the order (it samples the level index as an integer). Choice knobs
stay categorical. `--knob NAME=V1,V2` replaces the levels of one knob.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

# Knobs searched when the operator names none, with the levels to try (clipped to the engine's range).
DEFAULT_LEVELS: dict[str, list[Any]] = {
    "max_batch_size": [1, 2, 4, 8, 16, 32, 64],
    "max_num_batched_tokens": [256, 512, 1024, 2048, 4096],
}
DEFAULT_PRECISIONS_CPU = ["fp32", "bf16"]
SKIPPED_KNOBS = {"require_accuracy_check", "kv_cache_memory_fraction"}


class SpaceError(ValueError):
    """A --knob specification the engine cannot take (named in the message)."""


class ControlError(RuntimeError):
    """The engine's /control API could not be read (unreachable, no token, refused)."""


@dataclass(frozen=True)
class Dimension:
    """One knob of the space: the levels tried, in order for numeric knobs."""

    name: str
    levels: tuple[Any, ...]
    ordered: bool
    apply: str = "live"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "levels": list(self.levels), "ordered": self.ordered, "apply": self.apply}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Dimension:
        return cls(str(raw["name"]), tuple(raw["levels"]), bool(raw["ordered"]), str(raw.get("apply", "live")))


def read_knob_description(engine_url: str, token: str | None, timeout_seconds: float = 30.0) -> dict[str, Any]:
    """The engine's GET /control/knobs body ({"knobs": {name: {value, type, min, max, choices, apply}}})."""
    if not token:
        raise ControlError("no control token for the engine's /control: pass --control-token or "
                           "--control-token-file (the sidecar's DSSIDECAR_CONTROL_TOKEN)")
    try:
        response = httpx.get(f"{engine_url.rstrip('/')}/control/knobs",
                             headers={"Authorization": f"Bearer {token}"}, timeout=timeout_seconds)
    except httpx.HTTPError as exc:
        raise ControlError(f"engine /control unreachable at {engine_url}: {type(exc).__name__}: {exc}") from exc
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise ControlError(f"{engine_url}/control/knobs answered {response.status_code}: {message}")
    body = response.json()
    if not isinstance(body.get("knobs"), dict):
        raise ControlError(f"{engine_url}/control/knobs did not describe any knobs")
    return dict(body)


def _within(spec: Mapping[str, Any], value: float) -> bool:
    low, high = spec.get("min"), spec.get("max")
    return (low is None or value >= low) and (high is None or value <= high)


def _parse_level(spec: Mapping[str, Any], name: str, raw: str) -> Any:
    kind = spec.get("type")
    if kind == "choice":
        if raw not in (spec.get("choices") or []):
            raise SpaceError(f"--knob {name}: {raw!r} is not one of {', '.join(spec.get('choices') or [])}")
        return raw
    if kind == "bool":
        if raw.lower() not in ("true", "false"):
            raise SpaceError(f"--knob {name}: expected true or false, got {raw!r}")
        return raw.lower() == "true"
    try:
        value: float = int(raw) if kind == "int" else float(raw)
    except ValueError:
        raise SpaceError(f"--knob {name}: {raw!r} is not {'an integer' if kind == 'int' else 'a number'}") from None
    if not _within(spec, value):
        raise SpaceError(f"--knob {name}: {raw} is outside the engine's range {spec.get('min')}..{spec.get('max')}")
    return value


def default_levels(name: str, spec: Mapping[str, Any]) -> list[Any]:
    if spec.get("type") == "choice":
        return list(spec.get("choices") or [])
    candidates = DEFAULT_LEVELS.get(name)
    if candidates is None:
        low = int(spec.get("min") or 1)
        high = int(spec.get("max") or max(low * 16, 1))
        candidates = sorted({2 ** k for k in range(int(math.log2(max(low, 1))), int(math.log2(high)) + 1)})[:8]
    return [value for value in candidates if _within(spec, value)]


def build_space(description: Mapping[str, Any], knob_args: Sequence[str] = ()) -> list[Dimension]:
    """Dimensions from the engine description; `knob_args` ("name=v1,v2" or "name") choose and override."""
    knobs: Mapping[str, Any] = description.get("knobs", {})
    device = str((description.get("status") or {}).get("device") or "")
    chosen: dict[str, list[Any] | None] = {}
    levels: list[Any] | None
    for arg in knob_args:
        name, sep, raw_values = arg.partition("=")
        name = name.strip()
        if name not in knobs or name in SKIPPED_KNOBS:
            tunable = sorted(set(knobs) - SKIPPED_KNOBS)
            raise SpaceError(f"--knob {name!r}: the engine has no such tunable knob; it has {', '.join(tunable)}")
        spec = knobs[name]
        if spec.get("type") == "bool":
            raise SpaceError(f"--knob {name}: boolean knobs are not searched")
        if sep:
            levels = [_parse_level(spec, name, part.strip()) for part in raw_values.split(",") if part.strip()]
            if not levels:
                raise SpaceError(f"--knob {name}=: give at least one value")
            chosen[name] = list(dict.fromkeys(levels))
        else:
            chosen[name] = None
    if not chosen:
        chosen = {name: None for name in DEFAULT_LEVELS if name in knobs}
        if "precision" in knobs:
            chosen["precision"] = DEFAULT_PRECISIONS_CPU if device in ("cpu", "") else None
    dimensions = []
    for name, chosen_levels in chosen.items():
        spec = knobs[name]
        levels = chosen_levels
        if levels is None:
            levels = default_levels(name, spec)
            if name == "precision" and "cuda" not in device:
                levels = [level for level in levels if level != "fp8"]  # Hopper only; the engine says 409
        if not levels:
            raise SpaceError(f"knob {name}: no level fits the engine's range {spec.get('min')}..{spec.get('max')}")
        ordered = spec.get("type") in ("int", "float")
        if ordered:
            levels = sorted(levels)
        dimensions.append(Dimension(name, tuple(levels), ordered, str(spec.get("apply", "live"))))
    return dimensions


def grid_size(dimensions: Sequence[Dimension]) -> int:
    return math.prod(len(dimension.levels) for dimension in dimensions)


def grid_search_space(dimensions: Sequence[Dimension]) -> dict[str, list[Any]]:
    """optuna GridSampler's search space: level indexes for ordered knobs, values for choices."""
    return {dimension.name: list(range(len(dimension.levels))) if dimension.ordered else list(dimension.levels)
            for dimension in dimensions}


def suggest_knobs(trial: Any, dimensions: Sequence[Dimension]) -> dict[str, Any]:
    """Ask an optuna trial for one point; returns the knob values (not the level indexes)."""
    knobs: dict[str, Any] = {}
    for dimension in dimensions:
        if dimension.ordered:
            level = trial.suggest_int(dimension.name, 0, len(dimension.levels) - 1)
            knobs[dimension.name] = dimension.levels[level]
        else:
            knobs[dimension.name] = trial.suggest_categorical(dimension.name, list(dimension.levels))
    return knobs


def knobs_from_params(params: Mapping[str, Any], dimensions: Sequence[Dimension]) -> dict[str, Any]:
    by_name = {dimension.name: dimension for dimension in dimensions}
    knobs = {}
    for name, value in params.items():
        dimension = by_name.get(name)
        if dimension is None:
            continue
        knobs[name] = dimension.levels[int(value)] if dimension.ordered else value
    return knobs
