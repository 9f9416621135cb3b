"""Host source: host CPU/memory/load, the sidecar process (by pid getter), the agent itself."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from dsagent.samples import Sample
from dsagent.sources.host import HostSource


def values(samples: list[Sample]) -> dict[str, float]:
    return {s.name: s.value for s in samples}


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(32 * 2**20); time.sleep(60)"])
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


def test_host_memory_and_cores_are_positive_and_consistent() -> None:
    got = values(HostSource().collect())
    assert got["dsagent_host_cpu_cores"] >= 1
    assert 0 < got["dsagent_host_memory_available_bytes"] <= got["dsagent_host_memory_total_bytes"]
    assert 0 < got["dsagent_host_memory_used_bytes"] <= got["dsagent_host_memory_total_bytes"]
    assert got["dsagent_host_load1"] >= 0
    assert got["dsagent_agent_resident_memory_bytes"] > 10 * 2**20


def test_cpu_ratio_is_omitted_until_there_is_an_interval_then_in_range() -> None:
    source = HostSource()
    first = values(source.collect())  # collected right after construction: no meaningful interval
    assert "dsagent_host_cpu_ratio" not in first
    time.sleep(0.2)
    second = values(source.collect())
    assert 0.0 <= second["dsagent_host_cpu_ratio"] <= 1.0


def test_sidecar_process_rss_threads_and_cpu(child: subprocess.Popen[bytes]) -> None:
    source = HostSource(lambda: child.pid)
    time.sleep(0.5)  # let the child allocate
    first = values(source.collect())
    assert first["dsagent_sidecar_resident_memory_bytes"] > 32 * 2**20
    assert first["dsagent_sidecar_threads"] >= 1
    assert first["dsagent_sidecar_cpu_seconds_total"] >= 0
    assert "dsagent_sidecar_cpu_ratio" not in first  # first look at this pid: no interval yet
    second = values(source.collect())
    assert 0.0 <= second["dsagent_sidecar_cpu_ratio"] <= 1.0
    kinds = {s.name: s.kind for s in source.collect()}
    assert kinds["dsagent_sidecar_cpu_seconds_total"] == "counter"


def test_sidecar_gone_or_unknown_is_omitted(child: subprocess.Popen[bytes]) -> None:
    pid: list[int | None] = [child.pid]
    source = HostSource(lambda: pid[0])
    assert "dsagent_sidecar_resident_memory_bytes" in values(source.collect())
    child.kill()
    child.wait(timeout=10)
    after_exit = values(source.collect())
    assert not any(name.startswith("dsagent_sidecar_") for name in after_exit)
    assert "dsagent_host_memory_total_bytes" in after_exit
    pid[0] = None
    assert not any(name.startswith("dsagent_sidecar_") for name in values(source.collect()))
