"""GPU power and clocks: the simulated GPU records NVML's calls and responds (power and temperature follow a
lower limit); NVML's refusals become failed Decisions with NVML's reason; the NVML backend makes the real
calls (milliwatts, locked clocks) on a scripted pynvml."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pynvml
from dsagent.actions import ActionsConfig, ActuatorRegistry, Guard
from dsagent.actions.actuators.gpu import GpuActuator, supports_gpu_control
from dsagent.actions.decision import Reason
from dsagent.actions.dispatcher import Dispatcher
from dsagent.actions.spec import parse_actions
from dsagent.sources.gpu_fake import GpuLoad, SimulatedGpuBackend
from dsagent.sources.nvml_backend import NvmlBackend

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sources"))
from scripted_nvml import ScriptedNvml, full_h100_values  # noqa: E402


def make(backend: Any) -> tuple[Dispatcher, list[dict[str, Any]]]:
    audit: list[dict[str, Any]] = []
    guard = Guard(ActionsConfig(cooldown_seconds=0, hysteresis_seconds=0), ActuatorRegistry([GpuActuator(backend)]),
                  audit=audit.append)
    return Dispatcher(guard), audit


def submit(dispatcher: Dispatcher, item: dict[str, Any]) -> Any:
    [spec] = parse_actions([item], "test")
    return dispatcher.submit_spec(spec, Reason("operator"))


def simulated(now: list[float]) -> SimulatedGpuBackend:
    return SimulatedGpuBackend(2, load=lambda: GpuLoad(1.0, 0.5), clock=lambda: now[0])


def test_lower_power_limit_lowers_power_and_temperature() -> None:
    now = [0.0]
    hot, cool = simulated(now), simulated(now)
    dispatcher, audit = make(cool)
    outcome = submit(dispatcher, {"set_power_limit": {"fraction_of_default": 0.5}})
    assert outcome.status == "applied"
    assert (outcome.decision.old_value, outcome.decision.new_value) == ({"0": 700.0, "1": 700.0}, {"0": 350.0, "1": 350.0})
    assert cool.control_calls == [("nvmlDeviceSetPowerManagementLimit", 0, 350.0),
                                  ("nvmlDeviceSetPowerManagementLimit", 1, 350.0)]
    for step in range(1, 120):
        now[0] = float(step)
        hot_reading, cool_reading = hot.read_all()[0], cool.read_all()[0]
    assert cool_reading.power_limit_watts == 350.0 and cool_reading.power_draw_watts == 350.0
    assert hot_reading.power_draw_watts is not None and hot_reading.power_draw_watts > 650
    assert cool_reading.temperature_celsius < hot_reading.temperature_celsius - 5  # type: ignore[operator]
    assert audit[-1]["new"] == '{"0":350.0,"1":350.0}'  # keyword-friendly text in the audit document


def test_reset_power_limit_returns_to_the_default() -> None:
    backend = simulated([0.0])
    dispatcher, _ = make(backend)
    submit(dispatcher, {"set_power_limit": {"watts": 300, "gpu": 1}})
    outcome = submit(dispatcher, {"reset_power_limit": {"gpu": 1}})
    assert outcome.status == "applied" and backend.power_limit_watts(1) == 700.0


def test_limit_outside_nvml_constraints_is_refused_before_the_driver() -> None:
    backend = simulated([0.0])
    dispatcher, audit = make(backend)
    outcome = submit(dispatcher, {"set_power_limit": {"watts": 150}})
    assert outcome.status == "failed" and "outside what NVML allows (200-700 W" in outcome.reason
    assert backend.control_calls == [] and audit[-1]["outcome"] == "failed"


def test_no_permission_is_a_failed_decision_with_nvmls_reason() -> None:
    backend = simulated([0.0])
    backend.control_refusal = "Insufficient Permissions"
    dispatcher, _ = make(backend)
    outcome = submit(dispatcher, {"set_gpu_clocks": {"graphics_mhz": 1410}})
    assert outcome.status == "failed" and outcome.reason.endswith("Insufficient Permissions")
    backend.control_refusal = None
    assert backend.read_all()[0].sm_clock_hertz is not None  # telemetry unaffected


def test_locked_clocks_slow_the_simulated_gpu_and_reset_restores() -> None:
    backend = simulated([0.0])
    dispatcher, _ = make(backend)
    assert submit(dispatcher, {"set_gpu_clocks": {"graphics_mhz": 1005, "gpu": 0}}).status == "applied"
    assert backend.read_all()[0].applications_sm_clock_hertz == 1.005e9
    outcome = submit(dispatcher, {"reset_gpu_clocks": {"gpu": 0}})
    assert outcome.status == "applied" and outcome.decision.old_value == {"0": {"graphics_mhz": 1005}}
    assert backend.read_all()[0].applications_sm_clock_hertz == 1.98e9


def scripted(values: dict[str, Any]) -> tuple[NvmlBackend, ScriptedNvml]:
    nvml = ScriptedNvml({**full_h100_values(), **values})
    return NvmlBackend(nvml=nvml, watch_xid=False), nvml


def test_nvml_backend_sets_the_limit_in_milliwatts() -> None:
    state = {"limit": 700_000}
    set_calls: list[tuple[Any, int]] = []

    def set_limit(handle: Any, milliwatts: int) -> None:
        set_calls.append((handle.index, milliwatts))
        state["limit"] = milliwatts

    backend, _ = scripted({
        "nvmlDeviceGetPowerManagementLimit": lambda h: state["limit"],
        "nvmlDeviceGetPowerManagementLimitConstraints": (200_000, 700_000),
        "nvmlDeviceGetPowerManagementDefaultLimit": 700_000,
        "nvmlDeviceSetPowerManagementLimit": set_limit,
    })
    assert supports_gpu_control(backend)
    dispatcher, _ = make(backend)
    outcome = submit(dispatcher, {"set_power_limit": {"watts": 450}})
    assert outcome.status == "applied" and set_calls == [(0, 450_000)]
    assert backend.power_limit_watts(0) == 450.0


def test_nvml_not_supported_carries_nvmls_message() -> None:
    backend, _ = scripted({"nvmlDeviceSetGpuLockedClocks": pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED),
                           "nvmlDeviceResetGpuLockedClocks": None, "nvmlDeviceResetApplicationsClocks": None})
    dispatcher, _ = make(backend)
    outcome = submit(dispatcher, {"set_gpu_clocks": {"graphics_mhz": 1410}})
    assert outcome.status == "failed" and "nvmlDeviceSetGpuLockedClocks: Not Supported" in outcome.reason


def test_nvml_locked_clocks_and_reset_calls() -> None:
    backend, nvml = scripted({"nvmlDeviceSetGpuLockedClocks": None, "nvmlDeviceSetApplicationsClocks": None,
                              "nvmlDeviceResetGpuLockedClocks": None, "nvmlDeviceResetApplicationsClocks": None})
    dispatcher, _ = make(backend)
    assert submit(dispatcher, {"set_gpu_clocks": {"graphics_mhz": 1410, "memory_mhz": 2619}}).status == "applied"
    assert submit(dispatcher, {"reset_gpu_clocks": {}}).status == "applied"
    assert [c for c in nvml.calls if "Set" in c or "Reset" in c] == [
        "nvmlDeviceSetGpuLockedClocks", "nvmlDeviceSetApplicationsClocks",
        "nvmlDeviceResetGpuLockedClocks", "nvmlDeviceResetApplicationsClocks"]


def test_a_per_gpu_alert_acts_on_its_own_gpu() -> None:
    from dsagent.rules.events import RuleEvent

    backend = simulated([0.0])
    dispatcher, _ = make(backend)
    events = [RuleEvent(rule="Hot", group="gpu", state="firing", labels={"gpu_index": str(i)}, annotations={},
                        value=90.0, expr="dsagent_gpu_temperature_celsius > 85", active_since_seconds=0.0,
                        at_seconds=1.0, actions=parse_actions([{"set_power_limit": {"watts": 400}}], "t"))
              for i in (1, 0)]
    dispatcher.on_rule_events(events)  # two alert instances: both queued, each on its own GPU
    assert dispatcher.wait_idle(5)
    assert sorted(index for _, index, _ in backend.control_calls) == [0, 1]
    assert backend.power_limit_watts(0) == backend.power_limit_watts(1) == 400.0
