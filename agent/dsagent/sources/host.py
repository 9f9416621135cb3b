"""Host telemetry through psutil (the only module of the agent importing it): CPU, memory, load, processes.

CPU ratios are deltas between two collects, so the first collect after start (or after the sidecar got a
new pid) omits them instead of reporting psutil's meaningless first 0.0. The sidecar's pid comes from a
getter (the supervisor knows it); no pid or a process that is gone -> its samples are omitted.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import psutil

from dsagent.samples import Sample, make_labels
from dsagent.sources.metric_metadata import METRICS_BY_NAME

log = logging.getLogger(__name__)


class _ProcessWatch:
    """A psutil.Process kept between collects so cpu_percent() has a previous reading to diff against."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.process = psutil.Process(pid)
        self.process.cpu_percent(None)  # prime; the first value psutil returns is always 0.0

    def read(self, cpu_count: int, primed: bool) -> dict[str, float]:
        with self.process.oneshot():
            cpu_times = self.process.cpu_times()
            values = {
                "cpu_seconds_total": float(cpu_times.user + cpu_times.system),
                "resident_memory_bytes": float(self.process.memory_info().rss),
                "threads": float(self.process.num_threads()),
            }
            percent = self.process.cpu_percent(None)
        if primed:
            values["cpu_ratio"] = percent / 100.0 / max(1, cpu_count)
        return values


def _busy_and_total_cpu_seconds() -> tuple[float, float]:
    """CPU seconds spent busy and in total over all CPUs since boot (iowait counts as idle, as in top)."""
    times = psutil.cpu_times()
    total = sum(times)
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)  # already inside user/nice
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


class HostSource:
    """psutil readings of the host, the engine process (pid from `sidecar_pid_getter`) and the agent itself."""

    name = "host"

    def __init__(
        self,
        sidecar_pid_getter: Callable[[], int | None] | None = None,
        clock: Callable[[], float] = time.time,
        include_agent_process: bool = True,
    ) -> None:
        self._sidecar_pid_getter = sidecar_pid_getter or (lambda: None)
        self._clock = clock
        self._cpu_count = psutil.cpu_count(logical=True) or 1
        self._host_cpu_times = _busy_and_total_cpu_seconds()  # own delta state, not psutil's module-global one
        self._sidecar: _ProcessWatch | None = None
        self._sidecar_collects = 0
        self._agent = psutil.Process(os.getpid()) if include_agent_process else None

    def collect(self) -> list[Sample]:
        now = self._clock()
        samples: list[Sample] = []

        def add(name: str, value: float) -> None:
            meta = METRICS_BY_NAME[name]
            samples.append(Sample(name, make_labels(), float(value), now, meta.kind, meta.unit))

        (busy_before, total_before), self._host_cpu_times = self._host_cpu_times, _busy_and_total_cpu_seconds()
        total_delta = self._host_cpu_times[1] - total_before
        if total_delta > 0.05 * self._cpu_count:  # over a near-zero interval the ratio means nothing
            busy_ratio = (self._host_cpu_times[0] - busy_before) / total_delta
            add("dsagent_host_cpu_ratio", min(1.0, max(0.0, busy_ratio)))
        add("dsagent_host_cpu_cores", self._cpu_count)
        memory = psutil.virtual_memory()
        add("dsagent_host_memory_used_bytes", memory.used)
        add("dsagent_host_memory_available_bytes", memory.available)
        add("dsagent_host_memory_total_bytes", memory.total)
        try:
            load1, load5, load15 = psutil.getloadavg()
        except (OSError, AttributeError):
            pass
        else:
            add("dsagent_host_load1", load1)
            add("dsagent_host_load5", load5)
            add("dsagent_host_load15", load15)

        for key, value in self._read_sidecar().items():
            add(f"dsagent_sidecar_{key}", value)

        if self._agent is not None:
            try:
                with self._agent.oneshot():
                    cpu_times = self._agent.cpu_times()
                    add("dsagent_agent_cpu_seconds_total", cpu_times.user + cpu_times.system)
                    add("dsagent_agent_resident_memory_bytes", self._agent.memory_info().rss)
            except psutil.Error as error:  # should not happen for ourselves; never fail the tick for it
                log.debug("reading the agent's own process failed: %s", error)
        return samples

    def _read_sidecar(self) -> dict[str, float]:
        pid = self._sidecar_pid_getter()
        if pid is None:
            self._sidecar = None
            return {}
        try:
            if self._sidecar is None or self._sidecar.pid != pid:
                self._sidecar = _ProcessWatch(pid)
                self._sidecar_collects = 0
            values = self._sidecar.read(self._cpu_count, primed=self._sidecar_collects > 0)
            self._sidecar_collects += 1
            return values
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            self._sidecar = None
            return {}
        except psutil.AccessDenied as error:
            log.debug("no permission to read sidecar pid %d: %s", pid, error)
            self._sidecar = None
            return {}

    def close(self) -> None:
        self._sidecar = None
