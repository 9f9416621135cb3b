"""Actuators: one per kind of change (engine knobs, NVML clocks/power, Kubernetes scale, notify/webhook)."""

from dsagent.actions.actuators.base import Actuator, ActuatorError, ActuatorRegistry, RecordingActuator

__all__ = ["Actuator", "ActuatorError", "ActuatorRegistry", "RecordingActuator"]
