"""KnobController: validation, atomicity, swaps, accuracy gate, change log and counters."""

from __future__ import annotations

import pytest
from dssidecar.knobs import (
    KnobApplyError,
    KnobController,
    KnobSpec,
    KnobUnsupportedError,
    KnobValidationError,
    validate_value,
)
from hypothesis import given
from hypothesis import strategies as st
from knob_fakes import FakeKnobTarget

INT_SPEC = KnobSpec("max_batch_size", "int", "live", "", 1, 1024)


@given(st.integers(min_value=1, max_value=1024))
def test_int_in_range_is_accepted_unchanged(value: int) -> None:
    assert validate_value(INT_SPEC, value) == value


@given(st.one_of(st.integers(max_value=0), st.integers(min_value=1025)))
def test_int_out_of_range_is_rejected_naming_the_range(value: int) -> None:
    with pytest.raises(KnobValidationError, match=r"max_batch_size.*1\.\.1024"):
        validate_value(INT_SPEC, value)


@pytest.mark.parametrize("raw", ["16", 3.5, None, True, [1], float("nan")])
def test_int_knob_rejects_wrong_types(raw: object) -> None:
    with pytest.raises(KnobValidationError, match="max_batch_size"):
        validate_value(INT_SPEC, raw)


def test_integral_float_is_accepted_for_int_knob() -> None:
    assert validate_value(INT_SPEC, 16.0) == 16


def test_choice_knob_lists_choices_on_bad_value() -> None:
    spec = KnobSpec("precision", "choice", "swap", "", choices=("fp32", "bf16"))
    with pytest.raises(KnobValidationError, match="fp32, bf16"):
        validate_value(spec, "fp64")


def test_live_update_applies_and_reports_values(controller: KnobController, fake_target: FakeKnobTarget) -> None:
    answer = controller.apply({"max_batch_size": 8, "max_num_batched_tokens": 512})
    assert answer["applied"] == {"max_batch_size": 8, "max_num_batched_tokens": 512}
    assert answer["previous"] == {"max_batch_size": 32, "max_num_batched_tokens": 2048}
    assert answer["apply_seconds"] >= 0
    assert fake_target.values["max_batch_size"] == 8
    assert fake_target.built == []  # live knobs never build a runner


def test_one_bad_knob_rejects_the_whole_update(controller: KnobController, fake_target: FakeKnobTarget) -> None:
    with pytest.raises(KnobValidationError) as caught:
        controller.apply({"max_batch_size": 8, "kv_cache_blocks": 0, "nonsense": 1})
    knobs = {error["knob"] for error in caught.value.details["errors"]}
    assert knobs == {"kv_cache_blocks", "nonsense"}
    assert fake_target.values["max_batch_size"] == 32
    assert fake_target.installs == []


def test_unsupported_value_is_refused_before_anything_changes(controller: KnobController, fake_target: FakeKnobTarget) -> None:
    with pytest.raises(KnobUnsupportedError, match="fp8 needs a GPU"):
        controller.apply({"max_batch_size": 4, "precision": "fp8"})
    assert fake_target.values["max_batch_size"] == 32
    assert fake_target.built == []


def test_swap_builds_runner_then_installs_with_live_values(controller: KnobController, fake_target: FakeKnobTarget) -> None:
    controller.apply({"precision": "int8", "max_batch_size": 16})
    assert fake_target.built == [("int8", "eager")]
    live, runner, swap = fake_target.installs[-1]
    assert runner == ("runner", "int8", "eager")
    assert live == {"max_batch_size": 16} and swap == {"precision": "int8"}
    assert controller.last_swap_seconds is not None


def test_unchanged_values_do_not_swap(controller: KnobController, fake_target: FakeKnobTarget) -> None:
    controller.apply({"precision": "fp32", "backend": "eager"})
    assert fake_target.built == []


def test_failed_build_leaves_engine_untouched(controller: KnobController, fake_target: FakeKnobTarget) -> None:
    fake_target.fail_build = True
    with pytest.raises(KnobApplyError, match="out of memory"):
        controller.apply({"precision": "bf16", "max_batch_size": 4})
    assert fake_target.values["precision"] == "fp32"
    assert fake_target.values["max_batch_size"] == 32
    assert controller.change_counts[("precision", "failed")] == 1


def test_failed_install_rolls_back_live_values(controller: KnobController, fake_target: FakeKnobTarget) -> None:
    fake_target.fail_install_once = True
    with pytest.raises(KnobApplyError, match="rolled back"):
        controller.apply({"max_batch_size": 4})
    assert fake_target.values["max_batch_size"] == 32
    assert fake_target.installs[-1][0] == {"max_batch_size": 32}


def test_accuracy_gate_refuses_precision_with_figures(fake_target: FakeKnobTarget) -> None:
    fake_target.accuracy_passes = False
    controller = KnobController(fake_target, require_accuracy_check=True)
    with pytest.raises(KnobUnsupportedError) as caught:
        controller.apply({"precision": "int8"})
    assert caught.value.details["accuracy_check"]["agreement"] == 0.5
    assert fake_target.values["precision"] == "fp32" and fake_target.built == []
    assert controller.change_counts[("precision", "refused")] == 1


def test_accuracy_gate_is_a_knob(controller: KnobController, fake_target: FakeKnobTarget) -> None:
    controller.apply({"require_accuracy_check": True})
    controller.apply({"precision": "bf16"})
    assert fake_target.accuracy_checks == ["bf16"]
    assert controller.values()["require_accuracy_check"] is True


def test_change_log_and_counters_record_every_outcome(controller: KnobController) -> None:
    controller.apply({"max_batch_size": 8})
    with pytest.raises(KnobValidationError):
        controller.apply({"max_batch_size": -1})
    with pytest.raises(KnobUnsupportedError):
        controller.apply({"backend": "tensorrt"})
    results = [change["result"] for change in controller.change_log()]
    assert results == ["applied", "invalid", "unsupported"]
    assert controller.change_counts[("max_batch_size", "applied")] == 1
    assert controller.change_counts[("max_batch_size", "invalid")] == 1
    assert controller.change_counts[("backend", "unsupported")] == 1


def test_describe_lists_value_range_and_mode(controller: KnobController) -> None:
    described = controller.describe()
    knobs = described["knobs"]
    assert knobs["max_batch_size"] == {
        "value": 32, "type": "int", "apply": "live", "description": "seqs per step", "min": 1, "max": 1024,
    }
    assert knobs["precision"]["apply"] == "swap" and "int8" in knobs["precision"]["choices"]
    assert described["status"]["oom_events_total"] == 2


def test_empty_update_is_invalid(controller: KnobController) -> None:
    with pytest.raises(KnobValidationError):
        controller.apply({})
