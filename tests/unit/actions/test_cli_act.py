"""`dsagent act` words -> rule-file action items, and one-line refusals (exit 2) for bad words."""

from __future__ import annotations

from pathlib import Path

import pytest
from dsagent.actions.cli_act import parse_words
from dsagent.actions.spec import parse_actions
from dsagent.cli import app
from typer.testing import CliRunner


@pytest.mark.parametrize(("words", "items"), [
    (["max_batch_size=16"], [{"set_knob": {"knob": "max_batch_size", "value": 16}}]),
    (["max_batch_size=x0.5", "precision=int8"], [{"set_knob": {"knob": "max_batch_size", "factor": 0.5}},
                                                 {"set_knob": {"knob": "precision", "value": "int8"}}]),
    (["kv_cache_blocks=+64"], [{"set_knob": {"knob": "kv_cache_blocks", "step": 64.0}}]),
    (["scale", "+1"], [{"scale": {"replicas": "+1", "min": 0, "max": 10_000}}]),
    (["power", "80%"], [{"set_power_limit": {"fraction_of_default": 0.8}}]),
    (["power", "250", "clocks", "reset"], [{"set_power_limit": {"watts": 250.0}}, {"reset_gpu_clocks": {}}]),
    (["clocks", "1410:2619"], [{"set_gpu_clocks": {"graphics_mhz": 1410, "memory_mhz": 2619}}]),
    (["notify", "http://am:9093/hook"], [{"notify": {"url": "http://am:9093/hook"}}]),
])
def test_words_become_valid_action_items(words: list[str], items: list[dict[str, object]]) -> None:
    assert parse_words(words) == items
    assert parse_actions(items, "act")  # what the agent will accept


@pytest.mark.parametrize(("words", "message"), [
    (["max_batch=4"], "unknown knob 'max_batch'"),
    (["scale"], "'scale' needs a value"),
    (["power", "lots"], "power 'lots'"),
    (["clocks", "fast"], "clocks 'fast'"),
    (["reboot"], "don't know 'reboot'"),
])
def test_bad_words_are_refused_in_one_line(words: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        parse_words(words)
    result = CliRunner().invoke(app, ["act", *words, "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output


def test_no_running_agent_is_a_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["act", "max_batch_size=4", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "control token" in result.output and "dsagent run" in result.output
