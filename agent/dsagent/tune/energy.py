"""Joules per output token over a trial window, from NVML's total-energy counter.

Why a counter and not power samples: `nvmlDeviceGetTotalEnergyConsumption` integrates on the GPU, so the
difference over a window is exact where sampled watts would alias. The backend is the agent's one NVML
module (or a scripted fake in tests); on a machine without a GPU, or one whose driver has no energy counter,
the energy objective is refused with that reason instead of being measured as 0.
"""

from __future__ import annotations

from typing import Any

from dsagent.sources.gpu_backend import GpuUnavailable


class EnergyUnavailable(RuntimeError):
    """The energy objective cannot be measured here; the message says why."""


class EnergyMeter:
    """Sum of every GPU's energy counter (joules), read at the start and end of each trial window."""

    def __init__(self, backend: Any = None) -> None:
        if backend is None:
            try:
                from dsagent.sources.nvml_backend import NvmlBackend

                backend = NvmlBackend(collect_processes=False, watch_xid=False)
            except Exception as exc:  # pynvml missing or broken
                raise EnergyUnavailable(f"the energy objective needs NVML (nvidia-ml-py): {exc}") from exc
        self._backend = backend
        try:
            backend.open()
        except GpuUnavailable as exc:
            raise EnergyUnavailable(f"the energy objective needs an NVIDIA GPU with NVML: {exc}") from exc
        except Exception as exc:
            raise EnergyUnavailable(f"the energy objective needs an NVIDIA GPU with NVML: "
                                    f"{type(exc).__name__}: {exc}") from exc
        if self.read_joules() is None:
            raise EnergyUnavailable("no GPU here reports NVML's total energy counter "
                                    "(nvmlDeviceGetTotalEnergyConsumption, Volta or newer)")

    def read_joules(self) -> float | None:
        refresh = getattr(self._backend, "refresh_slow_fields", None)
        if refresh is not None:
            refresh()
        readings = self._backend.read_all()
        values = [reading.energy_joules_total for reading in readings if reading.energy_joules_total is not None]
        return float(sum(values)) if values else None

    def close(self) -> None:
        self._backend.close()


def joules_per_token(start_joules: float | None, end_joules: float | None, output_tokens: int) -> float | None:
    if start_joules is None or end_joules is None or output_tokens <= 0:
        return None
    return max(end_joules - start_joules, 0.0) / output_tokens
