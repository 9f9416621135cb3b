"""Every metric the agent's sources emit, as data: name, kind, unit, description, labels.

integrations-core's habit: the list of names is a table, not something scattered through code, and a test
(tests/unit/sources/test_metric_metadata.py) checks that every Sample a source emits is described here.
Exporters and dashboards can read units and descriptions from this table too.

Engine metrics: the names the builtin sidecar and vLLM expose (vllm:*, dssidecar_*) are mapped onto one
stable `dsagent_engine_*` set below, so rules and dashboards read the same names whatever the engine is.
A scraped metric with no mapping is kept as `engine_<its name with ':' -> '_'>` (PASSTHROUGH_PREFIXES), so
nothing the engine says is lost; those names follow the engine, not this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricKind = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True)
class MetricMetadata:
    name: str
    kind: MetricKind
    unit: str
    description: str
    labels: tuple[str, ...] = ()


_GPU = ("gpu_index", "gpu_uuid", "gpu_name")


def _m(name: str, kind: MetricKind, unit: str, description: str, labels: tuple[str, ...] = ()) -> MetricMetadata:
    return MetricMetadata(name, kind, unit, description, labels)


GPU_METRICS: tuple[MetricMetadata, ...] = (
    _m("dsagent_gpu_utilization_ratio", "gauge", "ratio", "Fraction of the last sample period a kernel ran (NVML utilization.gpu / 100).", _GPU),
    _m("dsagent_gpu_memory_utilization_ratio", "gauge", "ratio", "Fraction of the last sample period device memory was read or written.", _GPU),
    _m("dsagent_gpu_memory_used_bytes", "gauge", "bytes", "Device memory in use.", _GPU),
    _m("dsagent_gpu_memory_total_bytes", "gauge", "bytes", "Device memory installed.", _GPU),
    _m("dsagent_gpu_memory_used_ratio", "gauge", "ratio", "memory_used_bytes / memory_total_bytes (only when both were read).", _GPU),
    _m("dsagent_gpu_temperature_celsius", "gauge", "celsius", "GPU core temperature.", _GPU),
    _m("dsagent_gpu_power_draw_watts", "gauge", "watts", "Power drawn by the board.", _GPU),
    _m("dsagent_gpu_power_limit_watts", "gauge", "watts", "Enforced power limit.", _GPU),
    _m("dsagent_gpu_energy_joules_total", "counter", "joules", "Energy consumed since the driver loaded.", _GPU),
    _m("dsagent_gpu_sm_clock_hertz", "gauge", "hertz", "Current SM clock.", _GPU),
    _m("dsagent_gpu_memory_clock_hertz", "gauge", "hertz", "Current memory clock.", _GPU),
    _m("dsagent_gpu_sm_clock_max_hertz", "gauge", "hertz", "Highest SM clock the GPU supports.", _GPU),
    _m("dsagent_gpu_applications_sm_clock_hertz", "gauge", "hertz", "Application (target) graphics/SM clock.", _GPU),
    _m("dsagent_gpu_applications_memory_clock_hertz", "gauge", "hertz", "Application (target) memory clock.", _GPU),
    _m("dsagent_gpu_performance_state", "gauge", "", "Performance state P0 (0, fastest) to P15.", _GPU),
    _m("dsagent_gpu_fan_speed_ratio", "gauge", "ratio", "Fan speed as a fraction of its maximum (absent on passively cooled GPUs).", _GPU),
    _m("dsagent_gpu_clock_throttle_reasons_bitmask", "gauge", "", "NVML clock event (throttle) reasons bitmask.", _GPU),
    _m("dsagent_gpu_clock_throttle_active", "gauge", "", "1 while the named clock throttle reason is active, else 0.", (*_GPU, "reason")),
    _m("dsagent_gpu_xid_errors_total", "counter", "", "XID critical errors seen since the agent started watching (only where NVML events work); label xid = the code where NVML reports it. Each new error is also an event in logs-dsagent.events.", (*_GPU, "xid")),
    _m("dsagent_gpu_ecc_errors_total", "counter", "", "ECC memory errors; error_type corrected|uncorrected, counter volatile|aggregate.", (*_GPU, "error_type", "counter")),
    _m("dsagent_gpu_process_memory_used_bytes", "gauge", "bytes", "Device memory used by one process.", (*_GPU, "pid")),
)

HOST_METRICS: tuple[MetricMetadata, ...] = (
    _m("dsagent_host_cpu_ratio", "gauge", "ratio", "Busy fraction of all logical CPUs since the previous collect."),
    _m("dsagent_host_cpu_cores", "gauge", "", "Logical CPUs."),
    _m("dsagent_host_memory_used_bytes", "gauge", "bytes", "Memory in use (psutil's used)."),
    _m("dsagent_host_memory_available_bytes", "gauge", "bytes", "Memory available to new processes without swapping."),
    _m("dsagent_host_memory_total_bytes", "gauge", "bytes", "Physical memory."),
    _m("dsagent_host_load1", "gauge", "", "1-minute load average."),
    _m("dsagent_host_load5", "gauge", "", "5-minute load average."),
    _m("dsagent_host_load15", "gauge", "", "15-minute load average."),
    _m("dsagent_sidecar_cpu_ratio", "gauge", "ratio", "The engine process's CPU use as a fraction of all logical CPUs, since the previous collect."),
    _m("dsagent_sidecar_cpu_seconds_total", "counter", "seconds", "CPU time (user + system) of the engine process."),
    _m("dsagent_sidecar_resident_memory_bytes", "gauge", "bytes", "Resident set size of the engine process."),
    _m("dsagent_sidecar_threads", "gauge", "", "Threads of the engine process."),
    _m("dsagent_agent_cpu_seconds_total", "counter", "seconds", "CPU time (user + system) of the agent process itself."),
    _m("dsagent_agent_resident_memory_bytes", "gauge", "bytes", "Resident set size of the agent process itself."),
)

# Engine series keep every label the engine sent; these are the ones vLLM and the sidecar use.
_ENGINE_LATENCY = ("model_name", "engine")

ENGINE_METRICS: tuple[MetricMetadata, ...] = (
    _m("dsagent_engine_up", "gauge", "", "1 when the last scrape of the engine's /metrics succeeded, else 0."),
    _m("dsagent_engine_scrape_duration_seconds", "gauge", "seconds", "How long the last successful scrape took."),
    _m("dsagent_engine_requests_running", "gauge", "", "Requests in the running batch (vllm:num_requests_running).", _ENGINE_LATENCY),
    _m("dsagent_engine_requests_waiting", "gauge", "", "Requests queued (vllm:num_requests_waiting).", _ENGINE_LATENCY),
    _m("dsagent_engine_kv_cache_usage_ratio", "gauge", "ratio", "KV-cache blocks in use, 0-1 (vllm:kv_cache_usage_perc, or the older vllm:gpu_cache_usage_perc).", _ENGINE_LATENCY),
    _m("dsagent_engine_prompt_tokens_total", "counter", "", "Prompt tokens processed (vllm:prompt_tokens_total).", _ENGINE_LATENCY),
    _m("dsagent_engine_generation_tokens_total", "counter", "", "Tokens generated (vllm:generation_tokens_total).", _ENGINE_LATENCY),
    _m("dsagent_engine_preemptions_total", "counter", "", "Sequences preempted (vllm:num_preemptions_total).", _ENGINE_LATENCY),
    _m("dsagent_engine_requests_finished_total", "counter", "", "Finished requests by finished_reason (vllm:request_success_total).", (*_ENGINE_LATENCY, "finished_reason")),
    _m("dsagent_engine_time_to_first_token_seconds", "histogram", "seconds", "Time to first token (vllm:time_to_first_token_seconds); _bucket{le}/_sum/_count.", _ENGINE_LATENCY),
    _m("dsagent_engine_inter_token_latency_seconds", "histogram", "seconds", "Time between output tokens (vllm:inter_token_latency_seconds).", _ENGINE_LATENCY),
    _m("dsagent_engine_time_per_output_token_seconds", "histogram", "seconds", "Older vLLM name of the inter-token latency (vllm:time_per_output_token_seconds).", _ENGINE_LATENCY),
    _m("dsagent_engine_e2e_request_latency_seconds", "histogram", "seconds", "Request latency from arrival to last token (vllm:e2e_request_latency_seconds).", _ENGINE_LATENCY),
    _m("dsagent_engine_request_queue_time_seconds", "histogram", "seconds", "Time requests waited before running (vllm:request_queue_time_seconds).", _ENGINE_LATENCY),
    _m("dsagent_engine_request_prompt_tokens", "histogram", "", "Prompt length of finished requests (vllm:request_prompt_tokens).", _ENGINE_LATENCY),
    _m("dsagent_engine_request_generation_tokens", "histogram", "", "Generated tokens of finished requests (vllm:request_generation_tokens).", _ENGINE_LATENCY),
    _m("dsagent_engine_knob_value", "gauge", "", "Current value of a numeric engine knob (dssidecar_knob_value).", ("knob",)),
    _m("dsagent_engine_knob_info", "gauge", "", "Current value of a textual engine knob as a label, always 1 (dssidecar_knob_info).", ("knob", "value")),
    _m("dsagent_engine_kv_cache_blocks", "gauge", "", "KV-cache pool size in blocks (dssidecar_kv_cache_blocks)."),
    _m("dsagent_engine_kv_cache_free_blocks", "gauge", "", "KV-cache blocks free (dssidecar_kv_cache_free_blocks)."),
    _m("dsagent_engine_loop_alive", "gauge", "", "1 while the engine's step loop runs (dssidecar_engine_loop_alive)."),
    _m("dsagent_engine_draining", "gauge", "", "1 while the engine refuses new requests (dssidecar_draining)."),
)

ALL_METRICS: tuple[MetricMetadata, ...] = GPU_METRICS + HOST_METRICS + ENGINE_METRICS
METRICS_BY_NAME: dict[str, MetricMetadata] = {m.name: m for m in ALL_METRICS}

# Scraped engine metrics with no mapping keep the engine's name behind this prefix.
PASSTHROUGH_PREFIXES: tuple[str, ...] = ("engine_",)

_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metadata_for(sample_name: str) -> MetricMetadata | None:
    """The table entry of a sample name; histogram series (_bucket/_sum/_count) resolve to their family."""
    entry = METRICS_BY_NAME.get(sample_name)
    if entry is not None:
        return entry
    for suffix in _HISTOGRAM_SUFFIXES:
        if sample_name.endswith(suffix):
            family = METRICS_BY_NAME.get(sample_name[: -len(suffix)])
            if family is not None and family.kind == "histogram":
                return family
    return None


def is_described(sample_name: str) -> bool:
    """True when the name is in the table or is an engine pass-through name."""
    return metadata_for(sample_name) is not None or sample_name.startswith(PASSTHROUGH_PREFIXES)
