"""Rules that act: every change goes Decision -> guard -> actuator, and every outcome is audited.

`spec` holds the validated `actions:` block of rule files (parse_actions); the Decision path lands next.
"""

from dsagent.actions.spec import ActionSpec, ActionSpecError, parse_actions

__all__ = ["ActionSpec", "ActionSpecError", "parse_actions"]
