"""A fake engine behind the KnobTarget protocol, so controller and API logic are tested without torch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dssidecar.knobs import KnobSpec


class FakeKnobTarget:
    """Holds knob values in a dict; records every install; can be told to fail builds or installs."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {
            "max_batch_size": 32,
            "max_num_batched_tokens": 2048,
            "kv_cache_blocks": 512,
            "precision": "fp32",
            "backend": "eager",
        }
        self.installs: list[tuple[dict[str, Any], Any, dict[str, Any]]] = []
        self.built: list[tuple[str, str]] = []
        self.fail_build = False
        self.fail_install_once = False
        self.accuracy_passes = True
        self.accuracy_checks: list[str] = []

    def knob_specs(self) -> dict[str, KnobSpec]:
        return {
            "max_batch_size": KnobSpec("max_batch_size", "int", "live", "seqs per step", 1, 1024),
            "max_num_batched_tokens": KnobSpec("max_num_batched_tokens", "int", "live", "tokens per step", 16, 65536),
            "kv_cache_blocks": KnobSpec("kv_cache_blocks", "int", "live", "KV pool", 1, 4096),
            "precision": KnobSpec("precision", "choice", "swap", "weights", choices=("fp32", "bf16", "int8", "fp8")),
            "backend": KnobSpec("backend", "choice", "swap", "exec", choices=("eager", "torch.compile", "tensorrt")),
        }

    def current_values(self) -> dict[str, Any]:
        return dict(self.values)

    def unsupported_reason(self, name: str, value: Any) -> str | None:
        if name == "precision" and value == "fp8":
            return "fp8 needs a GPU"
        if name == "backend" and value == "tensorrt":
            return "torch_tensorrt is not installed"
        return None

    def build_runner(self, precision: str, backend: str) -> Any:
        if self.fail_build:
            raise RuntimeError("out of memory while converting")
        self.built.append((precision, backend))
        return ("runner", precision, backend)

    def accuracy_check(self, precision: str) -> tuple[bool, dict[str, Any]]:
        self.accuracy_checks.append(precision)
        return self.accuracy_passes, {"agreement": 0.5 if not self.accuracy_passes else 0.99, "min_agreement": 0.9}

    def install(self, live_values: Mapping[str, Any], runner: Any | None, swap_values: Mapping[str, Any]) -> None:
        if self.fail_install_once:
            self.fail_install_once = False
            raise RuntimeError("install exploded")
        self.installs.append((dict(live_values), runner, dict(swap_values)))
        self.values.update(live_values)
        self.values.update(swap_values)

    def status(self) -> dict[str, Any]:
        return {
            "effective_max_batch_size": self.values["max_batch_size"],
            "oom_events_total": 2,
            "memory_reserved_bytes": 1000,
            "memory_allocated_bytes": 750,
            "memory_fragmentation_ratio": 0.25,
            "kv_cache_blocks_pending_release": 0,
        }
