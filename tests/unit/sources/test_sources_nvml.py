"""NVML backend: absent fields are omitted (never 0), no driver is said once, units are converted."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from dsagent.sources.gpu import GpuSource
from dsagent.sources.gpu_backend import GpuUnavailable
from dsagent.sources.nvml_backend import NA, NvmlBackend, nvml_error
from scripted_nvml import ScriptedNvml, full_h100_values


def nvml_has_a_gpu() -> bool:
    backend = NvmlBackend()
    try:
        backend.open()
    except GpuUnavailable:
        return False
    backend.close()
    return True


def test_na_sentinel_refuses_ordering_and_is_falsy() -> None:
    with pytest.raises(TypeError):
        _ = NA > 90  # type: ignore[operator]
    with pytest.raises(TypeError):
        _ = NA <= 0  # type: ignore[operator]
    assert not NA
    assert NA != 0
    assert NA == NA


def test_full_reading_converts_nvml_units_to_base_units() -> None:
    backend = NvmlBackend(nvml=ScriptedNvml(full_h100_values()))
    (reading,) = backend.read_all()
    assert reading.uuid == "GPU-test-0" and reading.name == "NVIDIA H100 80GB HBM3"
    assert reading.utilization_ratio == pytest.approx(0.99)
    assert reading.memory_utilization_ratio == pytest.approx(0.33)
    assert reading.power_draw_watts == pytest.approx(698.46)
    assert reading.power_limit_watts == pytest.approx(700.0)
    assert reading.energy_joules_total == pytest.approx(9038.074)
    assert reading.sm_clock_hertz == pytest.approx(1.38e9)
    assert reading.memory_clock_hertz == pytest.approx(2.619e9)
    assert reading.applications_sm_clock_hertz == pytest.approx(1.98e9)
    assert reading.fan_speed_ratio == pytest.approx(0.4)
    assert reading.throttle_reasons_bitmask == 0x4
    assert reading.ecc_errors == {
        "corrected_volatile": 0,
        "corrected_aggregate": 1,
        "uncorrected_volatile": 10,
        "uncorrected_aggregate": 11,
    }
    # a process whose memory NVML cannot give (usedGpuMemory None) is omitted, not 0
    assert reading.process_memory_bytes == {406: 22_525_509_632}
    assert reading.xid_errors_total == 0


@pytest.mark.parametrize(
    "code_name", ["NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_NO_PERMISSION", "NVML_ERROR_UNKNOWN", "NVML_ERROR_GPU_IS_LOST"]
)
def test_unreadable_fields_are_omitted_not_zero(code_name: str) -> None:
    import pynvml

    values = full_h100_values()
    error = nvml_error(getattr(pynvml, code_name))
    for name in ("nvmlDeviceGetFanSpeed", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetUtilizationRates"):
        values[name] = error
    backend = NvmlBackend(nvml=ScriptedNvml(values))
    (reading,) = backend.read_all()
    assert reading.fan_speed_ratio is None
    assert reading.power_draw_watts is None
    assert reading.utilization_ratio is None and reading.memory_utilization_ratio is None
    assert reading.ecc_errors == {}
    assert reading.power_limit_watts == pytest.approx(700.0)  # the rest still read

    samples = GpuSource(NvmlBackend(nvml=ScriptedNvml(values))).collect()
    names = {s.name for s in samples}
    assert "dsagent_gpu_fan_speed_ratio" not in names
    assert "dsagent_gpu_power_draw_watts" not in names
    assert "dsagent_gpu_utilization_ratio" not in names
    assert "dsagent_gpu_ecc_errors_total" not in names
    assert "dsagent_gpu_power_limit_watts" in names


def test_driver_without_a_function_omits_that_field() -> None:
    values = full_h100_values()
    del values["nvmlDeviceGetCurrentClocksEventReasons"]  # older pynvml: only the Throttle name
    values["nvmlDeviceGetCurrentClocksThrottleReasons"] = 0x1
    (reading,) = NvmlBackend(nvml=ScriptedNvml(values)).read_all()
    assert reading.throttle_reasons_bitmask == 0x1
    del values["nvmlDeviceGetCurrentClocksThrottleReasons"]
    (reading,) = NvmlBackend(nvml=ScriptedNvml(values)).read_all()
    assert reading.throttle_reasons_bitmask is None


def test_unknown_pstate_is_omitted() -> None:
    values = full_h100_values()
    values["nvmlDeviceGetPerformanceState"] = 32  # NVML_PSTATE_UNKNOWN
    (reading,) = NvmlBackend(nvml=ScriptedNvml(values)).read_all()
    assert reading.performance_state is None


@pytest.mark.parametrize(
    ("code_name", "reason_part"),
    [
        ("NVML_ERROR_LIBRARY_NOT_FOUND", "library"),
        ("NVML_ERROR_DRIVER_NOT_LOADED", "driver is not loaded"),
        ("NVML_ERROR_NO_PERMISSION", "permission"),
    ],
)
def test_no_driver_is_said_once_and_the_source_yields_nothing(
    code_name: str, reason_part: str, caplog: pytest.LogCaptureFixture
) -> None:
    import pynvml

    nvml = ScriptedNvml({}, init_error=nvml_error(getattr(pynvml, code_name)))
    source = GpuSource(NvmlBackend(nvml=nvml))
    with caplog.at_level(logging.WARNING):
        results = [source.collect() for _ in range(5)]
    assert results == [[]] * 5
    warnings = [r for r in caplog.records if "no GPU telemetry" in r.getMessage()]
    assert len(warnings) == 1
    assert reason_part in warnings[0].getMessage()
    assert source.unavailable_reason is not None and reason_part in source.unavailable_reason


def test_zero_gpus_is_unavailable() -> None:
    backend = NvmlBackend(nvml=ScriptedNvml(full_h100_values(), device_count=0))
    with pytest.raises(GpuUnavailable, match="0 GPUs"):
        backend.open()


def test_this_machine_without_nvidia_driver_yields_nothing() -> None:
    if nvml_has_a_gpu():
        pytest.skip("this machine has an NVIDIA GPU; the no-driver path is covered by the scripted tests")
    source = GpuSource(NvmlBackend())
    assert source.collect() == []
    assert source.unavailable_reason


@pytest.mark.gpu
def test_real_nvml_reads_every_gpu() -> None:
    if not nvml_has_a_gpu():
        pytest.skip("no NVIDIA GPU/driver on this machine (NVML cannot initialize); the scripted NVML tests cover the logic")
    samples = GpuSource(NvmlBackend()).collect()
    names = {s.name for s in samples}
    assert {"dsagent_gpu_memory_total_bytes", "dsagent_gpu_temperature_celsius"} <= names
    assert all(s.label("gpu_uuid") for s in samples)


def test_xid_events_are_counted_per_gpu() -> None:
    nvml = ScriptedNvml(full_h100_values(), device_count=2)
    backend = NvmlBackend(nvml=nvml)
    backend.open()
    nvml.events = [SimpleNamespace(device=SimpleNamespace(index=1), eventData=79)]
    first, second = backend.read_all()
    assert first.xid_errors_total == 0 and first.last_xid is None
    assert second.xid_errors_total == 1 and second.last_xid == 79
    nvml.events = [SimpleNamespace(device=SimpleNamespace(index=1), eventData=13)] * 2
    _, second = backend.read_all()
    assert second.xid_errors_total == 3 and second.last_xid == 13


def test_xid_not_supported_omits_the_xid_counter() -> None:
    import pynvml

    values = full_h100_values()
    values["nvmlDeviceRegisterEvents"] = nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
    (reading,) = NvmlBackend(nvml=ScriptedNvml(values)).read_all()
    assert reading.xid_errors_total is None


def test_close_is_idempotent_and_shuts_nvml_down_once() -> None:
    nvml = ScriptedNvml(full_h100_values())
    backend = NvmlBackend(nvml=nvml)
    backend.open()
    backend.close()
    backend.close()
    assert nvml.shutdowns == 1


def test_gpu_failure_mid_run_is_a_source_error() -> None:
    import pynvml
    from dsagent.sources.base import SourceError

    values = full_h100_values()
    nvml = ScriptedNvml(values)
    source = GpuSource(NvmlBackend(nvml=nvml))
    assert source.collect()
    nvml.values["nvmlDeviceGetUtilizationRates"] = nvml_error(pynvml.NVML_ERROR_UNINITIALIZED)
    with pytest.raises(SourceError, match="nvml"):
        source.collect()
    assert nvml.shutdowns == 1  # closed, to be opened again
    nvml.values["nvmlDeviceGetUtilizationRates"] = SimpleNamespace(gpu=50, memory=10)
    recovered = source.collect()
    assert [s.value for s in recovered if s.name == "dsagent_gpu_utilization_ratio"] == [0.5]


def test_not_supported_is_asked_once_then_remembered() -> None:
    import pynvml

    values = full_h100_values()
    values["nvmlDeviceGetFanSpeed"] = nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
    values["nvmlDeviceGetPowerUsage"] = nvml_error(pynvml.NVML_ERROR_UNKNOWN)  # transient: asked every time
    nvml = ScriptedNvml(values)
    backend = NvmlBackend(nvml=nvml)
    for _ in range(3):
        (reading,) = backend.read_all()
        assert reading.fan_speed_ratio is None
    assert nvml.calls.count("nvmlDeviceGetFanSpeed") == 1
    assert nvml.calls.count("nvmlDeviceGetPowerUsage") == 3


def test_static_and_slow_fields_are_not_read_every_tick() -> None:
    now = [0.0]
    nvml = ScriptedNvml(full_h100_values())
    backend = NvmlBackend(nvml=nvml, slow_field_interval_seconds=5.0, clock=lambda: now[0])
    readings = []
    for second in range(7):
        now[0] = float(second)
        (reading,) = backend.read_all()
        readings.append(reading)
    assert nvml.calls.count("nvmlDeviceGetMaxClockInfo") == 1  # read once at open
    assert nvml.calls.count("nvmlDeviceGetTotalEnergyConsumption") == 2  # at 0 s and 5 s
    assert nvml.calls.count("nvmlDeviceGetApplicationsClock") == 4  # two clocks, at 0 s and 5 s
    # the energy counter appears only on ticks it was read; application clocks are reused between reads
    assert [r.energy_joules_total is not None for r in readings] == [True, False, False, False, False, True, False]
    assert all(r.applications_sm_clock_hertz == pytest.approx(1.98e9) for r in readings)
    assert all(r.sm_clock_max_hertz == pytest.approx(1.98e9) for r in readings)
    backend.refresh_slow_fields()
    (reading,) = backend.read_all()
    assert reading.energy_joules_total is not None
