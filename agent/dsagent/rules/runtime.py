"""Wires the rule manager into a running Agent: built from config.rules, loaded once, evaluated on the
agent's evaluate job (each group at its own interval), reloaded on SIGHUP and on file change.

Why a function beside the Agent: app.py stays the composition root with one line for rules; everything
about rules lives in this package.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from dsagent.rules.config import RulesConfig
from dsagent.rules.manager import RuleManager

log = logging.getLogger(__name__)


def attach_rules(agent: Any) -> RuleManager | None:
    """Build, load and schedule the agent's rules; None when rules are disabled."""
    config: RulesConfig = getattr(agent.config, "rules", None) or RulesConfig()
    if not config.enabled:
        log.info("rules: disabled (rules.enabled: false)")
        return None
    manager = RuleManager(agent.store, config)
    manager.load()
    agent.evaluate_hooks.append(manager.evaluate_due)
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP"):
        try:
            signal.signal(signal.SIGHUP, lambda _signum, _frame: manager.request_reload())
        except ValueError:  # not the main interpreter thread after all
            pass
    if config.dry_run:
        log.info("rules: dry-run: every rule is evaluated, what it would do is recorded, nothing is changed")
    return manager
