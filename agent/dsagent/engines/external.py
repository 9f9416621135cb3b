"""An engine the agent only observes (a pod's sidecar container it did not start): no knob changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsagent.engines.base import EngineKnobRefused, KnobMode


class ExternalLauncher:
    """Nothing to run: the supervisor only probes the engine's readiness at its URL."""

    kind = "external"
    owns_process = False
    prepares_demo_model = False

    def command(self, model_path: Path | None, otlp_endpoint: str | None) -> list[str]:
        raise RuntimeError("an external engine is not started by the agent")

    def environment(self, otlp_endpoint: str | None) -> dict[str, str]:
        return {}


class ExternalEngineAdapter:
    kind = "external"

    def __init__(self, url: str) -> None:
        self.url = url

    def knob_modes(self) -> dict[str, KnobMode]:
        return {}

    def read_knobs(self) -> dict[str, Any]:
        return {}

    def apply_knobs(self, update: dict[str, Any]) -> dict[str, Any]:
        raise EngineKnobRefused(
            f"engine.kind is external: the agent only observes {self.url} and changes none of its knobs "
            f"({', '.join(sorted(update))}); run it as engine.kind builtin or vllm to let rules retune it")
