"""Rules that act: every change goes Decision -> guard -> actuator, and every outcome is audited.

The public API (rules, schedules, `dsagent act` and the tuner's staged roll-out all use it):

    from dsagent.actions import Decision, Reason, Guard, ActuatorRegistry, ActionsConfig

    guard = Guard(ActionsConfig(), ActuatorRegistry([EngineKnobActuator(adapter)]), audit=agent.record_action)
    outcome = guard.submit(Decision(action="set_knob", target="knob:max_batch_size", new_value=16,
                                    params={"knob": "max_batch_size"}, reason=Reason("tuner", detail="trial 7"),
                                    signal=read_p99, signal_before=read_p99()))
    outcome.status        # applied | skipped | dry_run | failed (then .reason says why)
    final = guard.wait_verified(outcome)   # after the settle time: verified | rolled_back

A running agent holds its guard at `agent.actions.guard` (dsagent.actions.runtime.ActionRuntime), with the
actuators it built from the config (`agent.actions.registry`). `spec.parse_actions` validates a rule file's
`actions:` block; `planner` turns a spec plus the current value into a Decision.
"""

from dsagent.actions.actuators.base import Actuator, ActuatorError, ActuatorRegistry, RecordingActuator
from dsagent.actions.config import ActionsConfig
from dsagent.actions.decision import Decision, Outcome, Reason
from dsagent.actions.guard import Guard, audit_event
from dsagent.actions.spec import ActionSpec, ActionSpecError, parse_actions

__all__ = [
    "ActionSpec", "ActionSpecError", "ActionsConfig", "Actuator", "ActuatorError", "ActuatorRegistry",
    "Decision", "Guard", "Outcome", "Reason", "RecordingActuator", "audit_event", "parse_actions",
]
