"""The family-block cache must give exactly what one parse of the whole text gives, for any exposition:
blocks are cut only where prometheus_client's parser resets its state anyway."""

from __future__ import annotations

import pytest
from dsagent.sources.engine_scrape import FamilyBlockCache, parse_prometheus_text, split_family_blocks
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

TRICKY_LINES = [
    "# HELP a Doc of a.",
    "# HELP a Another doc of a.",
    "# TYPE a counter",
    "# TYPE a gauge",
    "a 1",
    "a_total 2",
    'a{x="1"} 3',
    "# HELP b Doc of b.",
    "# TYPE b histogram",
    'b_bucket{le="1.0"} 1',
    'b_bucket{le="+Inf"} 2',
    "b_count 2",
    "b_sum 0.5",
    "# HELP b_created Created.",
    "# TYPE b_created gauge",
    "b_created 1.7e9",
    "# a free comment",
    "#\tTYPE a\tcounter",
    "  # TYPE b summary",
    "# HELP a\tDoc with a tab.",
    "c 4",
    "",
    "# HELP c",
    'a{x="# HELP c"} 5',
]


def whole(text: str) -> list[object]:
    return list(text_string_to_metric_families(text))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TRICKY_LINES), max_size=14), st.booleans())
def test_blocks_parse_like_the_whole_text(lines: list[str], trailing_newline: bool) -> None:
    text = "\n".join(lines) + ("\n" if trailing_newline else "")
    assert "".join(split_family_blocks(text)) == text
    try:
        expected = whole(text)
    except Exception:
        with pytest.raises(Exception):  # noqa: B017 - whatever the parser raises for the whole text
            FamilyBlockCache().parse(text)
        return
    cache = FamilyBlockCache()
    assert cache.parse(text) == expected
    assert cache.parse(text) == expected  # second time from the cache


def registry_text(observations: int) -> str:
    registry = CollectorRegistry()
    latency = Histogram("vllm:e2e_request_latency_seconds", "e2e", ["model_name"], registry=registry)
    finished = Counter("vllm:request_success", "done", ["model_name", "finished_reason"], registry=registry)
    Gauge("dssidecar_knob_value", "knob", ["knob"], registry=registry).labels("max_batch_size").set(8)
    for index in range(observations):
        latency.labels("m").observe(0.01 * index)
        finished.labels("m", "length").inc()
    return generate_latest(registry).decode()


def test_unchanged_blocks_are_not_parsed_again_and_samples_match() -> None:
    cache = FamilyBlockCache()
    first, second = registry_text(1), registry_text(2)
    parse_prometheus_text(first, 1.0, cache=cache)
    reused = {block: families for block, families in cache._families_by_block.items() if block in second}
    assert any("dssidecar_knob_value" in block for block in reused)  # the knob block did not change
    got = parse_prometheus_text(second, 2.0, cache=cache)
    for block, families in reused.items():
        assert cache._families_by_block[block] is families  # same objects: not parsed again
    assert got == parse_prometheus_text(second, 2.0)
    assert split_family_blocks(second)[0].startswith("# HELP vllm:e2e_request_latency_seconds ")
