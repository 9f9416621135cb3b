"""Scrape of the engine's Prometheus /metrics (builtin sidecar or vLLM) into stable dsagent_engine_* Samples.

The text is parsed with prometheus_client's own parser (`text_string_to_metric_families`). vLLM's names
(which the builtin sidecar also uses) and our dssidecar_* gauges map onto one stable set documented in
metric_metadata.ENGINE_METRICS, so rules read the same names for every engine; anything else is kept as
`engine_<name with ':' -> '_'>`. Histograms keep their `le` labels for histogram_quantile. Every scrape
also yields dsagent_engine_up (1 or 0); an unreachable engine raises SourceError carrying `up 0`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from dsagent.engines.vllm import VLLM_COUNTER_FAMILIES, VLLM_FALLBACK_FAMILIES, VLLM_FAMILY_MAP
from dsagent.samples import Labels, Sample, make_labels
from dsagent.sources.base import SourceError
from dsagent.sources.metric_metadata import METRICS_BY_NAME, metadata_for
from dsagent.sources.prom_text import LineCachingParser

# Engine family name (as prometheus_client reports it: counters without _total) -> stable name. vLLM's
# names are written once, in dsagent.engines.vllm; the sidecar's own dssidecar_* gauges are added here.
ENGINE_FAMILY_MAP: dict[str, str] = {
    **VLLM_FAMILY_MAP,
    "dssidecar_knob_value": "dsagent_engine_knob_value",
    "dssidecar_knob_info": "dsagent_engine_knob_info",
    "dssidecar_kv_cache_blocks": "dsagent_engine_kv_cache_blocks",
    "dssidecar_kv_cache_free_blocks": "dsagent_engine_kv_cache_free_blocks",
    "dssidecar_engine_loop_alive": "dsagent_engine_loop_alive",
    "dssidecar_draining": "dsagent_engine_draining",
}
# An exposition without "# TYPE ... counter" lines names counters with their _total; map those too.
ENGINE_FAMILY_MAP.update({f"{engine}_total": f"{ENGINE_FAMILY_MAP[engine]}_total" for engine in VLLM_COUNTER_FAMILIES})

# When an engine exposes both, the first name wins (vLLM and the sidecar export the KV ratio twice).
_FALLBACK_FAMILIES: dict[str, str] = dict(VLLM_FALLBACK_FAMILIES)

_INVALID_NAME_CHARACTERS = re.compile(r"[^a-zA-Z0-9_]")


def passthrough_name(engine_family: str) -> str:
    """`engine_` + the engine's name with every character Prometheus forbids (':' too) turned into '_'."""
    return "engine_" + _INVALID_NAME_CHARACTERS.sub("_", engine_family)


def families_to_samples(
    families: Iterable[Metric], timestamp_seconds: float, keep_unmapped: bool = True
) -> list[Sample]:
    """Map parsed metric families to Samples (see module docstring). NaN values are omitted."""
    families = list(families)
    present = {family.name for family in families}
    samples: list[Sample] = []
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for family in families:
        if family.name.endswith("_created") and family.name[: -len("_created")] in present:
            continue  # prometheus_client's creation timestamps of counters/histograms: not telemetry
        preferred = _FALLBACK_FAMILIES.get(family.name)
        if preferred is not None and preferred in present:
            continue
        stable = ENGINE_FAMILY_MAP.get(family.name)
        if stable is None and not keep_unmapped:
            continue
        base = stable or passthrough_name(family.name)
        for sample in family.samples:
            if not sample.name.startswith(family.name):
                continue  # the parser never does this; guard so a suffix is always well defined
            suffix = sample.name[len(family.name) :]
            if suffix == "_created" or math.isnan(sample.value):
                continue
            cache_key = (base, family.type, suffix, tuple(sample.labels.items()))
            series = _SERIES_CACHE.get(cache_key)
            if series is None:
                series = _series_for(base + suffix, family.type, suffix, sample.labels)
                if len(_SERIES_CACHE) >= _MAX_CACHED_SERIES:
                    _SERIES_CACHE.clear()  # label churn: start over rather than grow without bound
                _SERIES_CACHE[cache_key] = series
            name, labels, kind, unit = series
            if (name, labels) in seen:
                continue
            seen.add((name, labels))
            samples.append(Sample(name, labels, float(sample.value), timestamp_seconds, kind, unit))
    return samples


# (stable base name, family type, suffix, parsed label items) -> (name, labels, kind, unit): the same few
# hundred series come back every scrape, so their names, sorted label tuples and metadata are built once.
_SeriesKey = tuple[str, str, str, tuple[tuple[str, str], ...]]
_SERIES_CACHE: dict[_SeriesKey, tuple[str, Labels, str, str]] = {}
_MAX_CACHED_SERIES = 20_000


def _series_for(name: str, family_type: str, suffix: str, labels: dict[str, str]) -> tuple[str, Labels, str, str]:
    return name, make_labels(labels), _kind(family_type, name, suffix), _unit(name)


def _kind(family_type: str, name: str, suffix: str) -> str:
    if family_type == "counter" or name.endswith("_total") or (family_type in ("histogram", "summary") and suffix in ("_sum", "_count", "_bucket")):
        return "counter"
    return "gauge"


def _unit(name: str) -> str:
    if name.endswith(("_bucket", "_count")):
        return ""  # observation counts; only _sum carries the histogram's unit
    meta = metadata_for(name)
    return meta.unit if meta is not None else ""


def parse_prometheus_text(
    text: str, timestamp_seconds: float, keep_unmapped: bool = True, cache: FamilyBlockCache | None = None
) -> list[Sample]:
    """Parse one scrape body. Raises ValueError naming the problem when the text is not Prometheus format.

    With `cache`, family blocks unchanged since the previous scrape are not parsed again (same result)."""
    try:
        families = cache.parse(text) if cache is not None else list(text_string_to_metric_families(text))
    except Exception as error:  # the parser raises ValueError/IndexError/TypeError on malformed lines
        raise ValueError(f"engine /metrics is not valid Prometheus text: {error}") from error
    return families_to_samples(families, timestamp_seconds, keep_unmapped)


_HELP_LINE = re.compile(r"# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*)(?: |$)")


def split_family_blocks(text: str) -> list[str]:
    """Cut the text before each `# HELP X` line whose X was not named by a HELP/TYPE line of the current block.

    prometheus_client's parser resets its whole state on a HELP line for a name other than the family it
    is in, and that family can only be one named in the current block, so parsing the blocks one by one
    yields exactly the families of parsing the whole text. Lines are split on "\\n" only, as the parser does.
    """
    blocks: list[str] = []
    block_start = 0
    names: set[str] = set()
    position = 0
    length = len(text)
    while position < length:
        end = text.find("\n", position)
        end = length if end < 0 else end + 1
        line = text[position:end]
        if line.lstrip().startswith("#"):
            match = _HELP_LINE.match(line)
            if match is not None and match.group(1) not in names:
                if position > block_start:
                    blocks.append(text[block_start:position])
                block_start = position
                names = {match.group(1)}
            else:  # any other comment may name the family the parser is in: every word counts (never cut wrongly)
                names.update(word.strip('"') for word in line.split())
        position = end
    if block_start < length:
        blocks.append(text[block_start:])
    return blocks


class FamilyBlockCache:
    """The parsed families of each family block of the previous scrape, keyed by the block's exact text.

    Between two scrapes most blocks (knobs, KV pool, creation times, histograms no request touched) are
    byte-identical; only the changed ones go through prometheus_client's parser again. Holds one scrape's
    blocks, so its size follows the exposition's.
    """

    def __init__(self) -> None:
        self._families_by_block: dict[str, list[Metric]] = {}
        self._lines = LineCachingParser()  # changed blocks: unchanged lines are not parsed again either

    def parse(self, text: str) -> list[Metric]:
        previous = self._families_by_block
        current: dict[str, list[Metric]] = {}
        families: list[Metric] = []
        for block in split_family_blocks(text):
            parsed = current.get(block)
            if parsed is None:
                parsed = previous.get(block)
                if parsed is None:
                    parsed = list(self._lines.families(block))
                current[block] = parsed
            families.extend(parsed)
        self._families_by_block = current
        self._lines.end_scrape()
        return families


@dataclass(frozen=True)
class EngineLoadSnapshot:
    """What the last good scrape said about load, for the simulated GPU (None where not exposed)."""

    requests_running: float | None
    kv_cache_usage_ratio: float | None
    max_batch_size: float | None


class EngineScrapeSource:
    """GET engine_url + metrics_path each tick; pass `transport` (httpx.MockTransport) in tests."""

    name = "engine"

    def __init__(
        self,
        engine_url: str,
        metrics_path: str = "/metrics",
        timeout_seconds: float = 2.0,
        keep_unmapped: bool = True,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not engine_url.startswith(("http://", "https://")):
            raise ValueError(f"engine_url {engine_url!r} must be an http(s) URL such as http://127.0.0.1:8000")
        self.url = engine_url.rstrip("/") + metrics_path
        self._keep_unmapped = keep_unmapped
        self._clock = clock
        self._client = httpx.Client(timeout=timeout_seconds, transport=transport)
        self._last_load = EngineLoadSnapshot(None, None, None)
        self._block_cache = FamilyBlockCache()

    def collect(self) -> list[Sample]:
        started = time.monotonic()
        try:
            response = self._client.get(self.url, headers={"Accept": "text/plain;version=0.0.4"})
            response.raise_for_status()
            now = self._clock()
            samples = parse_prometheus_text(response.text, now, self._keep_unmapped, self._block_cache)
        except (httpx.HTTPError, ValueError) as error:
            raise SourceError(f"engine metrics at {self.url} unreadable: {error}", [self._up(0.0)]) from error
        duration = time.monotonic() - started
        self._last_load = _load_snapshot(samples)
        meta = METRICS_BY_NAME["dsagent_engine_scrape_duration_seconds"]
        samples.append(self._up(1.0, now))
        samples.append(Sample(meta.name, make_labels(), duration, now, meta.kind, meta.unit))
        return samples

    def _up(self, value: float, now: float | None = None) -> Sample:
        return Sample("dsagent_engine_up", make_labels(), value, self._clock() if now is None else now, "gauge", "")

    def last_load(self) -> EngineLoadSnapshot:
        return self._last_load

    def close(self) -> None:
        self._client.close()


def _load_snapshot(samples: list[Sample]) -> EngineLoadSnapshot:
    running: float | None = None
    kv_usage: float | None = None
    max_batch: float | None = None
    for sample in samples:
        if sample.name == "dsagent_engine_requests_running":
            running = (running or 0.0) + sample.value
        elif sample.name == "dsagent_engine_kv_cache_usage_ratio":
            kv_usage = max(kv_usage or 0.0, sample.value)
        elif sample.name == "dsagent_engine_knob_value" and sample.label("knob") == "max_batch_size":
            max_batch = sample.value
    return EngineLoadSnapshot(running, kv_usage, max_batch)
