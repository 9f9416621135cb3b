"""The tuning profile (`profile.yaml`): what to set, for which workload and SLO, and what it measured where.

Why a schema: a profile outlives the tune that made it. `tune apply` reads it on another day (maybe on
another node), so it must say what it was measured on (machine, engine, model) and with what figures, and
a hand-edited file with a typo must be refused with the file and line, not half-applied.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PROFILE_KIND = "dsagent-tune-profile"


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file (and line) and the problem."""


class ProfileSlo(BaseModel):
    """p99 limits in seconds (None: not part of the objective)."""

    model_config = ConfigDict(extra="forbid")
    p99_e2el_seconds: float | None = Field(default=None, gt=0)
    p99_ttft_seconds: float | None = Field(default=None, gt=0)
    p99_tpot_seconds: float | None = Field(default=None, gt=0)

    def limits_ms(self) -> dict[str, float]:
        pairs = {"p99_e2el_ms": self.p99_e2el_seconds, "p99_ttft_ms": self.p99_ttft_seconds,
                 "p99_tpot_ms": self.p99_tpot_seconds}
        return {key: value * 1000.0 for key, value in pairs.items() if value is not None}


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["dsagent-tune-profile"] = "dsagent-tune-profile"
    version: Literal[1] = 1
    knobs: dict[str, Any] = Field(min_length=1)
    workload: dict[str, Any] = Field(default_factory=dict)
    slo: ProfileSlo = Field(default_factory=ProfileSlo)
    objective: str = "goodput"
    figures: dict[str, float | int | None] = Field(default_factory=dict)
    load: dict[str, Any] = Field(default_factory=dict)
    machine: dict[str, Any] = Field(default_factory=dict)
    engine: dict[str, Any] = Field(default_factory=dict)
    study: dict[str, Any] = Field(default_factory=dict)
    created_utc: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @field_validator("knobs")
    @classmethod
    def _plain_values(cls, knobs: dict[str, Any]) -> dict[str, Any]:
        for name, value in knobs.items():
            if not isinstance(value, (int, float, str, bool)):
                raise ValueError(f"knob {name}: expected a number, string or boolean, got {value!r}")
        return knobs

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml(), encoding="utf-8")


def machine_description(engine_status: dict[str, Any] | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {"hostname": socket.gethostname(), "platform": platform.platform(),
                            "machine": platform.machine(), "cpu_count": os.cpu_count(),
                            "python": platform.python_version()}
    if engine_status:
        info["device"] = engine_status.get("device")
    return info


def _line_of(text: str, location: tuple[Any, ...]) -> int:
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return 1
    line = 1
    for key in location:
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == str(key):
                line, node = key_node.start_mark.line + 1, value_node
                break
        else:
            break
    return line


def load_profile(path: Path) -> Profile:
    """Read and validate a profile file; ProfileError names file:line and the key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ProfileError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}:1: a profile is a YAML mapping with at least `knobs:`")
    try:
        return Profile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = tuple(first["loc"])
        key = ".".join(str(part) for part in location) or "(top level)"
        raise ProfileError(f"{path}:{_line_of(text, location)}: {key}: {first['msg']}") from None
