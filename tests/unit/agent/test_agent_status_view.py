"""`dsagent status` rendering: engine, GPUs (or why none), SLO signals, actions; unknown values show '-'."""

from __future__ import annotations

from dsagent.status_view import render_status
from rich.console import Console

STATUS = {
    "agent": {"version": "0.1.0", "pid": 1, "api_url": "http://127.0.0.1:9464", "uptime_seconds": 5,
              "data_dir": "/tmp/x", "telemetry_destinations": "NDJSON files in /tmp/x/export"},
    "engine": {"kind": "builtin", "url": "http://127.0.0.1:8000", "state": "ready", "restarts_total": 2,
               "requests_running": 3, "requests_waiting": 1, "kv_cache_usage_ratio": 0.42, "pid": 42},
    "slo": {"window_seconds": 60, "qps": 1.5, "latency_p50_seconds": 0.2, "latency_p99_seconds": None,
            "ttft_p50_seconds": 0.01, "requests_total": 9},
    "export": {"sent_documents": 10.0},
    "actions": [],
}


def render(status: dict) -> str:
    console = Console(width=200, record=True)
    console.print(render_status(status))
    return console.export_text()


def test_status_shows_engine_slo_and_no_gpu_reason() -> None:
    text = render({**STATUS, "gpus": {"devices": [], "none_reason": "NVML library not found"}})
    assert "ready" in text and "42.0%" in text and "restarts" in text
    assert "no GPU: NVML library not found" in text
    assert "1.50" in text and "0.200 s" in text
    assert "(none yet)" in text


def test_status_lists_gpus_and_never_turns_missing_values_into_zero() -> None:
    gpus = {"devices": [{"index": "0", "name": "H100", "utilization_ratio": 0.9, "memory_used_bytes": 2**31,
                         "memory_total_bytes": 2**33, "temperature_celsius": None}], "none_reason": None}
    text = render({**STATUS, "gpus": gpus})
    assert "H100" in text and "90%" in text and "2.00 GiB / 8.00 GiB" in text
    assert "0 C" not in text  # unknown temperature shows as '-'
    row = [line for line in text.splitlines() if "H100" in line][0]
    assert "-" in row
