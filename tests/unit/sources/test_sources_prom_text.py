"""The line-caching parser must give exactly what prometheus_client's text_string_to_metric_families gives
(families, documentation, types, samples, values' int/float type, errors), first time and from its cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from dsagent.sources.prom_text import HELPERS_AVAILABLE, LineCachingParser, parse_plain_sample
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "engine"


def normal(families: object) -> list[object]:
    """Comparable form (NaN != NaN, and 1 == 1.0 would hide an int/float difference)."""
    return [(m.name, m.documentation, m.type, m.unit,  # type: ignore[attr-defined]
             [(s.name, s.labels, repr(s.value), type(s.value).__name__, s.timestamp, s.exemplar) for s in m.samples])  # type: ignore[attr-defined]
            for m in families]  # type: ignore[attr-defined]


def assert_same_as_library(text: str, parser: LineCachingParser | None = None) -> None:
    parser = parser or LineCachingParser()
    try:
        expected = normal(list(text_string_to_metric_families(text)))
    except Exception as error:
        with pytest.raises(type(error)):
            list(parser.families(text))
        return
    assert normal(list(parser.families(text))) == expected
    parser.end_scrape()
    assert normal(list(parser.families(text))) == expected  # every sample line now from the cache


def test_library_helpers_are_importable_here() -> None:
    assert HELPERS_AVAILABLE  # else the fast path silently is the library's parser: say so in CI


HEADERS = ["# HELP a Doc of a.", "# TYPE a counter", "# TYPE a gauge", "# TYPE a histogram", "# TYPE a summary",
           "# HELP b Doc \\n with escapes \\\\.", "# TYPE b histogram", "# a free comment", "#", "# TYPE a",
           "# TYPE a untyped", "# TYPE a bogus", "", "  ", "# HELP \"quoted.name\" doc", "# TYPE \"quoted.name\" gauge"]
NAMES = ["a", "a_total", "a_bucket", "a_count", "a_sum", "a_created", "b_bucket", "b_sum", "c", "c:d", "_x",
         "1bad", "quoted.name"]
LABEL_VALUES = st.one_of(st.text(alphabet=st.sampled_from(list('ab "\\{},=#\t\n') + ["é", "0"]), max_size=6), st.just("+Inf"))
VALUES = st.one_of(st.integers(-10**20, 10**20).map(str), st.floats(allow_nan=True).map(repr),
                   st.sampled_from(["+Inf", "-Inf", "NaN", "1e3", "1_000", "0x10", "", " 1", "1 ", "1.5e-07", "-0"]))


@st.composite
def sample_lines(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(NAMES))
    labels = draw(st.lists(st.tuples(st.sampled_from(["le", "x", "model_name", "__name__", "x"]), LABEL_VALUES),
                           max_size=3))
    escaped = [(k, v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")) for k, v in labels]
    raw = draw(st.sampled_from([False] * 4 + [True]))  # sometimes leave the value unescaped (invalid for the library too)
    body = ",".join(f'{k}="{v if raw else e}"' for (k, v), (_, e) in zip(labels, escaped, strict=True))
    label_part = draw(st.sampled_from(["{" + body + "}", "{" + body + ",}", "{" + body + "}" if body else "", "{}"]))
    separator = draw(st.sampled_from([" "] * 4 + ["  ", "\t"]))  # mostly the plain form
    tail = draw(st.sampled_from([""] * 6 + [" 1700000000000", ' # {trace_id="x"} 1', " 12 13"]))
    return f"{name}{label_part}{separator}{draw(VALUES)}{tail}"


@settings(max_examples=600, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(HEADERS), sample_lines()), max_size=12), st.booleans())
def test_any_exposition_parses_like_the_library(lines: list[str], trailing_newline: bool) -> None:
    assert_same_as_library("\n".join(lines) + ("\n" if trailing_newline else ""))


def test_real_expositions_parse_like_the_library_across_scrapes() -> None:
    registry = CollectorRegistry()
    latency = Histogram("vllm:e2e_request_latency_seconds", "e2e", ["model_name"], registry=registry)
    finished = Counter("vllm:request_success", "done", ["model_name", "finished_reason"], registry=registry)
    Gauge("dssidecar_knob_value", "knob", ["knob"], registry=registry).labels("max_batch_size").set(8)
    parser = LineCachingParser()
    for index in range(5):  # buckets change between scrapes, the rest does not
        latency.labels("m").observe(0.01 * index)
        finished.labels("m", "length").inc()
        text = generate_latest(registry).decode()
        assert normal(list(parser.families(text))) == normal(list(text_string_to_metric_families(text)))
        parser.end_scrape()
    assert_same_as_library((FIXTURES / "vllm_metrics.txt").read_text())


def test_plain_lines_take_the_fast_path_and_unusual_ones_do_not() -> None:
    sample = parse_plain_sample('vllm:num_requests_running{model_name="m",x="1"} 3')
    assert sample is not None and sample.labels == {"model_name": "m", "x": "1"} and sample.value == 3
    assert isinstance(sample.value, int)
    for line in ('a{x="with \\" quote"} 1', "a 1 1700000000000", 'a{x="1"} 1 # {t="1"} 2', 'a{x="1",x="2"} 1',
                 'a{__name__="b"} 1', "a  1", "a 1_0"):
        assert parse_plain_sample(line) is None, line
