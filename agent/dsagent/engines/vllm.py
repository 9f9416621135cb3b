"""vLLM: knobs it reads only at start-up are applied by a drained restart with new command-line arguments.

Why: vLLM has no live control API; max_num_seqs, max_num_batched_tokens, dtype, quantization,
gpu_memory_utilization and tensor_parallel_size are engine arguments. The adapter rewrites the command line
(`--max-num-seqs 64`) and asks the supervisor to drain the running engine (SIGTERM, grace) and start the
new command; the change counts as applied once the new process answers /readyz.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsagent.engines.base import EngineKnobRefused, KnobMode

# vLLM's Prometheus families (as prometheus_client names them: counters without _total) -> the agent's
# stable names. The builtin sidecar exports the same vLLM names, so this one table serves both engines
# (dsagent.sources.engine_scrape reads it); rules and `dsagent status` only see the stable names.
VLLM_FAMILY_MAP: dict[str, str] = {
    "vllm:num_requests_running": "dsagent_engine_requests_running",
    "vllm:num_requests_waiting": "dsagent_engine_requests_waiting",
    "vllm:kv_cache_usage_perc": "dsagent_engine_kv_cache_usage_ratio",
    "vllm:gpu_cache_usage_perc": "dsagent_engine_kv_cache_usage_ratio",
    "vllm:prompt_tokens": "dsagent_engine_prompt_tokens",
    "vllm:generation_tokens": "dsagent_engine_generation_tokens",
    "vllm:num_preemptions": "dsagent_engine_preemptions",
    "vllm:request_success": "dsagent_engine_requests_finished",
    "vllm:time_to_first_token_seconds": "dsagent_engine_time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds": "dsagent_engine_inter_token_latency_seconds",
    "vllm:time_per_output_token_seconds": "dsagent_engine_time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds": "dsagent_engine_e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds": "dsagent_engine_request_queue_time_seconds",
    "vllm:request_prompt_tokens": "dsagent_engine_request_prompt_tokens",
    "vllm:request_generation_tokens": "dsagent_engine_request_generation_tokens",
}
VLLM_COUNTER_FAMILIES = ("vllm:prompt_tokens", "vllm:generation_tokens", "vllm:num_preemptions", "vllm:request_success")
# When an engine exposes both, the first name wins (vLLM renamed gpu_cache_usage_perc to kv_cache_usage_perc).
VLLM_FALLBACK_FAMILIES: dict[str, str] = {"vllm:gpu_cache_usage_perc": "vllm:kv_cache_usage_perc"}


class VllmLauncher:
    """How the supervisor runs vLLM: the operator's command line (rewritten by knob restarts), OTLP env."""

    kind = "vllm"
    owns_process = True
    prepares_demo_model = False

    def __init__(self, command: list[str]) -> None:
        self.base_command = list(command)

    def command(self, model_path: Path | None, otlp_endpoint: str | None) -> list[str]:
        return list(self.base_command)

    def environment(self, otlp_endpoint: str | None) -> dict[str, str]:
        if otlp_endpoint and "OTEL_EXPORTER_OTLP_ENDPOINT" not in os.environ:
            return {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint}
        return {}

RESTART_KNOBS: dict[str, str] = {
    "max_num_seqs": "--max-num-seqs",
    "max_num_batched_tokens": "--max-num-batched-tokens",
    "dtype": "--dtype",
    "quantization": "--quantization",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "tensor_parallel_size": "--tensor-parallel-size",
}
_PARSERS: dict[str, Callable[[str], Any]] = {
    "max_num_seqs": int, "max_num_batched_tokens": int, "tensor_parallel_size": int,
    "gpu_memory_utilization": float, "dtype": str, "quantization": str,
}


def command_knobs(command: list[str]) -> dict[str, Any]:
    """The restart knobs set on a vLLM command line (`--flag value` or `--flag=value`)."""
    by_flag = {flag: name for name, flag in RESTART_KNOBS.items()}
    values: dict[str, Any] = {}
    index = 0
    while index < len(command):
        part = command[index]
        flag, equals, inline = part.partition("=")
        if flag in by_flag:
            raw = inline if equals else (command[index + 1] if index + 1 < len(command) else "")
            try:
                values[by_flag[flag]] = _PARSERS[by_flag[flag]](raw)
            except ValueError:
                values[by_flag[flag]] = raw
            index += 1 if equals else 2
            continue
        index += 1
    return values


def with_knobs(command: list[str], update: dict[str, Any]) -> list[str]:
    """`command` with each knob's flag set to the new value (replaced in place, else appended)."""
    result: list[str] = []
    pending = {RESTART_KNOBS[name]: value for name, value in update.items()}
    index = 0
    while index < len(command):
        part = command[index]
        flag, equals, _ = part.partition("=")
        if flag in pending:
            result += [flag, str(pending.pop(flag))]
            index += 1 if equals else 2
            continue
        result.append(part)
        index += 1
    for flag, value in pending.items():
        result += [flag, str(value)]
    return result


class VllmEngineAdapter:
    kind = "vllm"

    def __init__(self, command: list[str], restart: Callable[[list[str], str], bool] | None) -> None:
        self.command = list(command)
        self.restart = restart

    def knob_modes(self) -> dict[str, KnobMode]:
        return {name: "restart" for name in RESTART_KNOBS}

    def read_knobs(self) -> dict[str, Any]:
        return command_knobs(self.command)

    def apply_knobs(self, update: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(update) - set(RESTART_KNOBS))
        if unknown:
            raise EngineKnobRefused(f"vLLM cannot change {', '.join(unknown)}; it takes "
                                    f"{', '.join(sorted(RESTART_KNOBS))} (each by a drained restart)")
        if self.restart is None:
            raise EngineKnobRefused("no supervisor to restart vLLM with new arguments")
        new_command = with_knobs(self.command, update)
        reason = "knob change " + ", ".join(f"{k}={v}" for k, v in sorted(update.items()))
        if not self.restart(new_command, reason):
            raise EngineKnobRefused(f"vLLM did not come back ready after the restart with {reason}; "
                                    f"the previous arguments were restored", {"command": new_command})
        self.command = new_command
        return {"command": " ".join(new_command)}
