"""Fixtures of the sources' unit tests: fixture file paths and a scripted stand-in for the pynvml module."""

from __future__ import annotations

from pathlib import Path

import pytest
from scripted_nvml import ScriptedNvml

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TWO_GPU_TRACE = FIXTURES / "nvml" / "two_gpu_trace.jsonl"
REAL_H100_TRACE = FIXTURES / "nvml" / "real_h100_trace.jsonl"
VLLM_METRICS = FIXTURES / "engine" / "vllm_metrics.txt"


@pytest.fixture
def two_gpu_trace() -> Path:
    return TWO_GPU_TRACE


@pytest.fixture
def real_h100_trace() -> Path:
    return REAL_H100_TRACE


@pytest.fixture
def vllm_metrics_text() -> str:
    return VLLM_METRICS.read_text(encoding="utf-8")


@pytest.fixture
def scripted_nvml() -> type[ScriptedNvml]:
    return ScriptedNvml
