"""Documents get deterministic ids, the right stream and base-unit fields."""

from __future__ import annotations

from dsagent.export.documents import deterministic_id, iso_timestamp, metric_dataset
from hypothesis import given
from hypothesis import strategies as st


def test_same_parts_give_the_same_id_and_any_change_gives_another() -> None:
    base = deterministic_id("metrics", "gpu", "util", "1000", '[["gpu","0"]]')
    assert base == deterministic_id("metrics", "gpu", "util", "1000", '[["gpu","0"]]')
    assert base != deterministic_id("metrics", "gpu", "util", "1001", '[["gpu","0"]]')
    assert base != deterministic_id("metrics", "gpu", "util", "1000", '[["gpu","1"]]')
    assert len(base) == 32


@given(st.lists(st.text(max_size=10), min_size=1, max_size=5), st.lists(st.text(max_size=10), min_size=1, max_size=5))
def test_ids_do_not_collide_by_shifting_text_between_parts(a: list[str], b: list[str]) -> None:
    if a != b:  # whatever the parts hold (separators included), different parts give different ids
        assert deterministic_id(*a) != deterministic_id(*b)


def test_ids_with_separator_characters_in_parts_are_distinct() -> None:
    assert deterministic_id("a\x1fb", "c") != deterministic_id("a", "b\x1fc")
    assert deterministic_id("a", "") != deterministic_id("a")


def test_label_values_holding_the_old_separators_give_distinct_series() -> None:
    from dsagent.export.documents import _series_key

    assert _series_key({"a": "1\x1eb\x1d2"}) != _series_key({"a": "1", "b": "2"})


def test_iso_timestamp_keeps_microseconds_in_utc() -> None:
    assert iso_timestamp(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456Z"


def test_metric_dataset_from_name() -> None:
    assert metric_dataset("dsagent_gpu_memory_used_bytes") == "gpu"
    assert metric_dataset("dsagent_host_cpu_utilization_ratio") == "host"
    assert metric_dataset("vllm:num_requests_running") == "engine"
    assert metric_dataset("gen_ai.server.request.duration") == "requests"
    assert metric_dataset("dsagent_actions_total") == "agent"
