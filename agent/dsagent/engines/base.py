"""The engine adapter interface and the factory that picks one per `engine.kind`.

Why: how a knob reaches an engine differs (the sidecar's /control changes it live; vLLM needs a drained
restart with new arguments; an external engine is not ours to change), but a Decision must not care.
Every adapter answers the same three questions and refuses with a reason an operator can act on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from dsagent.config import EngineConfig

KnobMode = Literal["live", "swap", "restart"]


class EngineKnobRefused(Exception):
    """The engine cannot make this knob change; `reason` says why (and what would work)."""

    def __init__(self, reason: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = dict(detail or {})


class EngineAdapter(Protocol):
    kind: str

    def knob_modes(self) -> dict[str, KnobMode]:
        """knob name -> how a change takes effect on this engine (absent: cannot be changed)."""

    def read_knobs(self) -> dict[str, Any]:
        """The knobs' current values (raises EngineKnobRefused when they cannot be read)."""

    def apply_knobs(self, update: dict[str, Any]) -> dict[str, Any]:
        """Apply `update` all-or-nothing; returns details for the audit; raises EngineKnobRefused."""


class EngineLauncher(Protocol):
    """How the supervisor runs (or only watches) an engine of one kind."""

    kind: str
    owns_process: bool  # False: attach to engine.url and probe it, never spawn
    prepares_demo_model: bool  # True: generate the demo checkpoint into the data dir before the first start

    def command(self, model_path: Path | None, otlp_endpoint: str | None) -> list[str]: ...

    def environment(self, otlp_endpoint: str | None) -> dict[str, str]:
        """Variables added to the agent's environment for the engine (engine.environment still wins)."""


def launcher_for(engine: EngineConfig) -> EngineLauncher:
    """The launcher for `engine.kind` (the supervisor's one place that depends on the kind)."""
    from dsagent.engines.builtin import BuiltinLauncher
    from dsagent.engines.external import ExternalLauncher
    from dsagent.engines.vllm import VllmLauncher

    if engine.kind == "builtin":
        return BuiltinLauncher(engine)
    if engine.kind == "vllm":
        return VllmLauncher(list(engine.command))
    return ExternalLauncher()


def adapter_for(engine: EngineConfig, data_dir: Path, *, control_token: str | None = None,
                restart: Callable[[list[str], str], bool] | None = None,
                control_timeout_seconds: float = 120.0) -> EngineAdapter:
    """The adapter for `engine.kind`; `restart(command, reason)` is the supervisor's drained restart (vLLM)."""
    from dsagent.engines.builtin import BuiltinEngineAdapter
    from dsagent.engines.external import ExternalEngineAdapter
    from dsagent.engines.vllm import VllmEngineAdapter

    if engine.kind == "builtin":
        return BuiltinEngineAdapter(engine.base_url(), control_token, timeout_seconds=control_timeout_seconds)
    if engine.kind == "vllm":
        return VllmEngineAdapter(list(engine.command), restart)
    return ExternalEngineAdapter(engine.base_url())
