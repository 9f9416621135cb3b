"""The `actions:` block: valid items parse into ActionSpecs, bad ones raise one line naming where and why."""

from __future__ import annotations

import pytest
from dsagent.actions.spec import (
    ActionSpecError,
    Scale,
    SetKnob,
    parse_actions,
    parse_duration_seconds,
)
from hypothesis import given
from hypothesis import strategies as st

WHERE = "rules/slo.yaml:14 rule HighP99"


def test_set_knob_with_common_keys_beside_and_inside_the_action() -> None:
    specs = parse_actions([
        {"set_knob": {"knob": "max_batch_size", "factor": 0.5, "min": 1, "max": 64}, "cooldown": "2m",
         "verify": {"settle": "30s", "direction": "lower"}},
        {"set_knob": {"knob": "precision", "value": "int8", "dry_run": True, "on": "resolved"}},
    ], WHERE)
    first, second = specs
    assert isinstance(first.action, SetKnob) and first.action.factor == 0.5
    assert first.cooldown_seconds == 120.0
    assert first.verify is not None and first.verify.settle_seconds == 30.0
    assert second.dry_run and second.on == "resolved" and second.kind == "set_knob"


def test_short_forms_and_empty_bodies() -> None:
    specs = parse_actions(["scale_out", "scale_in", {"notify": None}, {"reset_power_limit": {}}], WHERE)
    assert [s.kind for s in specs] == ["scale", "scale", "notify", "reset_power_limit"]
    assert isinstance(specs[0].action, Scale) and specs[0].action.replicas == "+1"
    assert specs[0].action.min == 4 and specs[0].action.max == 20  # the guides' defaults


@pytest.mark.parametrize(("item", "expected"), [
    ({"set_knob": {"knob": "max_batch", "value": 8}}, "unknown knob 'max_batch'"),
    ({"set_knob": {"knob": "max_batch_size", "value": 8, "factor": 2}}, "exactly one of value, step or factor"),
    ({"set_knob": {"knob": "max_batch_size", "step": -1, "min": 9, "max": 2}}, "bounds inverted"),
    ({"set_knob": {"knob": "precision", "factor": 2}}, "takes a value"),
    ({"set_knob": {"knob": "precision", "value": "int4"}}, "'int4' is not one of"),
    ({"set_knob": {"knob": "max_batch_size", "value": 8, "colour": "red"}}, "colour: unknown key"),
    ({"reboot": {}}, "unknown action 'reboot'"),
    ("explode", "unknown action 'explode'"),
    ({"scale": {"replicas": "+1"}, "notify": {}}, "several action keys"),
    ({"cooldown": "1m"}, "no action key"),
    ({"scale": {"replicas": "lots"}}, "replicas must be"),
    ({"scale": {"replicas": 2, "min": 5, "max": 3}}, "bounds inverted"),
    ({"set_power_limit": {"watts": 200, "fraction_of_default": 0.8}}, "exactly one of watts"),
    ({"set_gpu_clocks": {}}, "graphics_mhz and/or memory_mhz"),
    ({"webhook": {"url": "ftp://x"}}, "http(s)"),
    ({"notify": {}, "cooldown": "soon"}, "bad duration 'soon'"),
    ({"notify": {}, "dry_run": "yes"}, "dry_run must be true or false"),
    ({"notify": {"cooldown": "1m"}, "cooldown": "2m"}, "both inside and beside"),
    ({"set_knob": {"knob": "max_batch_size", "value": 1}, "on": "pending"}, "on:"),
])
def test_bad_items_name_the_place_and_the_problem(item: object, expected: str) -> None:
    with pytest.raises(ActionSpecError) as caught:
        parse_actions([{"notify": {}}, item], WHERE)
    message = str(caught.value)
    assert message.startswith(f"{WHERE}: actions[1]")
    assert expected in message
    assert "\n" not in message


def test_actions_must_be_a_list() -> None:
    with pytest.raises(ActionSpecError, match="must be a list"):
        parse_actions({"notify": {}}, WHERE)
    assert parse_actions(None, WHERE) == []


@pytest.mark.parametrize(("replicas", "current", "expected"), [
    ("+1", 5, 6), ("-1", 5, 4), ("-1", 4, 4), ("+1", 20, 20), ("x1.5", 6, 9), ("x0.5", 10, 5), ("x0.5", 6, 4),
    (12, 5, 12), (99, 5, 20), (-2, 9, 7),
])
def test_scale_target_is_clamped_to_min_and_max(replicas: object, current: int, expected: int) -> None:
    spec = parse_actions([{"scale": {"replicas": replicas}}], WHERE)[0]
    assert isinstance(spec.action, Scale)
    assert spec.action.target_replicas(current) == expected


@given(st.lists(st.tuples(st.integers(0, 500), st.sampled_from(["ms", "s", "m", "h", "d"])), min_size=1, max_size=4))
def test_duration_parts_add_up(parts: list[tuple[int, str]]) -> None:
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    text = "".join(f"{n}{u}" for n, u in parts)
    assert parse_duration_seconds(text) == pytest.approx(sum(n * unit[u] for n, u in parts))


@given(st.text(max_size=8))
def test_duration_parser_never_crashes(text: str) -> None:
    try:
        assert parse_duration_seconds(text) >= 0
    except ValueError:
        pass
