"""GPU control through the real NVML on a machine with an NVIDIA GPU (skipped with the reason elsewhere; the
simulated GPU and a scripted pynvml cover the same code in tests/unit/actions/test_gpu_actuator.py).

It sets the power limit to the value it already has: applied when the agent may change it, else a failed
Decision carrying NVML's own reason ("Insufficient Permissions") - and telemetry keeps working either way.
"""

from __future__ import annotations

import pytest
from dsagent.actions import ActuatorError, Decision, Reason
from dsagent.actions.actuators.gpu import GpuActuator
from dsagent.sources.gpu_backend import GpuUnavailable
from dsagent.sources.nvml_backend import NvmlBackend

pytestmark = pytest.mark.gpu


@pytest.fixture
def backend() -> NvmlBackend:
    nvml = NvmlBackend(watch_xid=False)
    try:
        nvml.open()
    except GpuUnavailable as exc:
        pytest.skip(f"no NVIDIA GPU to control here: {exc}")
    return nvml


def test_same_value_power_limit_is_applied_or_refused_with_nvmls_reason(backend: NvmlBackend) -> None:
    low, high, default = backend.power_limit_constraints_watts(0)
    assert 0 < low <= default <= high
    current = backend.power_limit_watts(0)
    actuator = GpuActuator(backend)
    decision = Decision(action="set_power_limit", target="gpu:0:power_limit", new_value={"0": current},
                        params={"gpu": 0}, reason=Reason("operator", detail="live NVML test"))
    assert actuator.current(decision) == {"0": current}
    try:
        detail = actuator.apply(decision)  # the real nvmlDeviceSetPowerManagementLimit, same value
    except ActuatorError as exc:
        assert "nvmlDeviceSetPowerManagementLimit" in exc.reason  # NVML's reason, e.g. Insufficient Permissions
    else:
        assert detail == {"power_limit_watts": {"0": current}}
    assert backend.read_all()[0].power_limit_watts is not None  # telemetry unaffected
    backend.close()
