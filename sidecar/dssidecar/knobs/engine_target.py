"""Bind the KnobController to the real engine: ranges for this device, runner builds, between-step apply.

Why this exists: the controller knows nothing about torch or the engine; this adapter does. It builds a new
runner for a precision/backend change beside the running one (converted copy of the fp32 weights, warmed
up on a private scratch pool so the live KV cache is never touched), then hands the switch, live values
and KV pool resizes to the engine thread through `AsyncLLMEngine.run_between_steps`, so a step never sees
half a change. Sequences in flight continue; when the KV dtype changes the engine re-prefills them.
It uses only the engine's public operations (set_limits, resize_kv_pool, replace_runner, warm_up,
memory_figures and read-only attributes).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dssidecar.backends.registry import BACKENDS, apply_backend, supported_backends
from dssidecar.check_precision import Thresholds, check_precision, fixed_prompt_texts, tokenize_texts
from dssidecar.device import device_memory_available_bytes
from dssidecar.knobs.controller import KnobSpec, KnobUnsupportedError
from dssidecar.precision import PRECISIONS, convert_model, precision_plan, supported_precisions

logger = logging.getLogger("dssidecar.knobs")

MAX_BATCH_SIZE_LIMIT = 1024
MAX_NUM_BATCHED_TOKENS_LIMIT = 1 << 20
INSTALL_TIMEOUT_SECONDS = 120.0


class EngineKnobTarget:
    """KnobTarget over an AsyncLLMEngine (anything with `.engine: LLMEngine` and `run_between_steps`)."""

    def __init__(
        self,
        async_engine: Any,
        *,
        model_path: str | Path | None = None,
        thresholds: Thresholds | None = None,
        accuracy_prompts: int = 8,
    ) -> None:
        self.async_engine = async_engine
        self.engine = async_engine.engine
        self.model_path = Path(model_path) if model_path is not None else None
        self.thresholds = thresholds or Thresholds()
        self.accuracy_prompts = accuracy_prompts
        self.device: torch.device = self.engine.runner.device
        self.runner_swaps_total = 0
        self.last_warmup_seconds: float | None = None
        self._base_model: nn.Module | None = self.engine.runner.model if self.engine.runner.precision == "fp32" else None
        self._base_lock = threading.Lock()
        self._accuracy_cache: dict[str, tuple[bool, dict[str, Any]]] = {}

    # ---- ranges and values

    def _kv_blocks_range(self) -> tuple[int, int]:
        engine = self.engine
        block_size = int(engine.config.block_size)
        minimum = math.ceil(engine.max_model_len / block_size) + 1
        block_bytes = max(1, engine.runner.kv_block_bytes)
        pool_bytes = block_bytes * int(engine.runner.num_blocks)
        available_bytes = device_memory_available_bytes(self.device)
        if self.device.type == "cuda":
            budget = int((available_bytes + pool_bytes) * 0.95)
        else:
            budget = int(available_bytes * 0.5) + pool_bytes
        maximum = max(minimum, budget // block_bytes, int(engine.runner.num_blocks))
        return minimum, maximum

    def knob_specs(self) -> dict[str, KnobSpec]:
        kv_min, kv_max = self._kv_blocks_range()
        specs = {
            "max_batch_size": KnobSpec(
                "max_batch_size", "int", "live", "most sequences in one step (from the next step)", 1, MAX_BATCH_SIZE_LIMIT
            ),
            "max_num_batched_tokens": KnobSpec(
                "max_num_batched_tokens", "int", "live", "most tokens in one step; longer prompts are chunked",
                1, MAX_NUM_BATCHED_TOKENS_LIMIT, unit="tokens",
            ),
            "kv_cache_blocks": KnobSpec(
                "kv_cache_blocks", "int", "live",
                "KV pool size; grows at once, shrinks as far as free blocks allow and the rest as sequences finish",
                kv_min, kv_max, unit="blocks",
            ),
            "kv_cache_memory_fraction": KnobSpec(
                "kv_cache_memory_fraction", "float", "live",
                "KV pool size as a fraction of the GPU's total memory (GPU only; sets kv_cache_blocks)", 0.001, 0.95,
                unit="ratio",
            ),
            "precision": KnobSpec(
                "precision", "choice", "swap", "weights/compute precision (new runner built beside the old one)",
                choices=PRECISIONS,
            ),
            "backend": KnobSpec(
                "backend", "choice", "swap", "execution backend (new runner, warmed up before the switch)",
                choices=BACKENDS,
            ),
        }
        return specs

    def current_values(self) -> dict[str, Any]:
        engine = self.engine
        values: dict[str, Any] = {
            "max_batch_size": int(engine.config.max_batch_size),
            "max_num_batched_tokens": int(engine.config.max_num_batched_tokens),
            "kv_cache_blocks": engine.kv_cache_blocks,
            "precision": engine.runner.precision,
            "backend": engine.runner.backend,
        }
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            values["kv_cache_memory_fraction"] = round(engine.runner.kv_block_bytes * engine.kv_cache_blocks / total, 6)
        return values

    def unsupported_reason(self, name: str, value: Any) -> str | None:
        if name == "precision":
            return supported_precisions(self.device)[str(value)]
        if name == "backend":
            return supported_backends(self.device)[str(value)]
        if name == "kv_cache_memory_fraction" and self.device.type != "cuda":
            return "kv_cache_memory_fraction applies to GPU memory; on the CPU set kv_cache_blocks"
        return None

    def status(self) -> dict[str, Any]:
        engine = self.engine
        status: dict[str, Any] = {
            "device": str(self.device),
            "effective_max_batch_size": engine.effective_max_batch_size,
            "kv_cache_blocks_allocated": int(engine.runner.num_blocks),
            "kv_cache_blocks_pending_release": engine.kv_cache_blocks_pending_release,
            "oom_events_total": engine.oom_events_total,
            "runner_swaps_total": self.runner_swaps_total,
            "last_warmup_seconds": self.last_warmup_seconds,
        }
        for _attempt in range(3):  # the engine thread may change a queue while we read it
            try:
                status.update(engine.memory_figures())
                break
            except (RuntimeError, IndexError):
                continue
        return status

    # ---- precision / backend

    def _fp32_base(self) -> nn.Module:
        with self._base_lock:
            if self._base_model is None:
                if self.model_path is None:
                    raise KnobUnsupportedError(
                        "the engine was started in a reduced precision and no checkpoint path is known to reload fp32",
                        {"knob": "precision"},
                    )
                from dssidecar.models.loader import load_checkpoint

                self._base_model = load_checkpoint(self.model_path, device=self.device, dtype=torch.float32).model
            return self._base_model

    def build_runner(self, precision: str, backend: str) -> Any:
        engine = self.engine
        current = engine.runner
        if precision == current.precision:
            model = current.model
        elif precision == "fp32":
            model = self._fp32_base()
        else:
            model = convert_model(self._fp32_base(), precision, self.device)
        forward = None if backend == "eager" else apply_backend(model, backend, self.device)
        plan = precision_plan(precision, self.device)
        runner = engine.build_runner(model, precision=precision, backend=backend, forward=forward, kv_dtype=plan.kv_dtype)
        self.last_warmup_seconds = engine.warm_up(runner)
        logger.info("built runner precision=%s backend=%s (warm-up %.2f s)", precision, backend, self.last_warmup_seconds)
        return runner

    def accuracy_check(self, precision: str) -> tuple[bool, dict[str, Any]]:
        if precision == "fp32":
            return True, {"precision": "fp32", "passed": True}
        cached = self._accuracy_cache.get(precision)
        if cached is not None:
            return cached
        tokenizer = self.engine.tokenizer
        if tokenizer is None:
            return False, {"error": "the engine has no tokenizer to build the prompt set"}
        sequences = tokenize_texts(tokenizer, fixed_prompt_texts(self.accuracy_prompts), 128)
        report = check_precision(self._fp32_base(), sequences, precision, self.device, self.thresholds)
        result = (report.passed, report.to_dict())
        self._accuracy_cache[precision] = result
        return result

    # ---- applying (on the engine thread)

    def install(self, live_values: Mapping[str, Any], runner: Any | None, swap_values: Mapping[str, Any]) -> None:
        def apply_between_steps() -> None:
            engine = self.engine
            if runner is not None:
                engine.replace_runner(runner)
                self.runner_swaps_total += 1
            engine.set_limits(
                max_batch_size=live_values.get("max_batch_size"),
                max_num_batched_tokens=live_values.get("max_num_batched_tokens"),
            )
            blocks = live_values.get("kv_cache_blocks")
            if "kv_cache_memory_fraction" in live_values and self.device.type == "cuda":
                total = torch.cuda.get_device_properties(self.device).total_memory
                fraction = float(live_values["kv_cache_memory_fraction"])
                blocks = max(1, int(fraction * total) // engine.runner.kv_block_bytes)
            if blocks is not None:
                engine.resize_kv_pool(int(blocks))

        future = self.async_engine.run_between_steps(apply_between_steps)
        future.result(timeout=INSTALL_TIMEOUT_SECONDS)
