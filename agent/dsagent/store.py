"""The one in-memory time-series store every reader shares (rules, status, the agent's /metrics).

Why it exists: sources are read once per tick and their samples land here; the rules engine evaluates
PromQL over it, `dsagent status` shows the latest values, and nothing reads a source twice. Memory is
bounded twice per series: a fixed-capacity ring buffer (max samples) and a retention age.

Series are keyed by (name, labels). Range queries (samples in [t - window, t]) and instant queries (the
latest sample within a lookback) are binary searches over the ring, so they cost O(log n) per series plus
the samples returned. Timestamps within a series are kept non-decreasing: an out-of-order sample (older
than the series' newest) is dropped and counted, which is what Prometheus does too.
"""

from __future__ import annotations

import bisect
import math
import re
import struct
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from dsagent.samples import Labels, Sample

MatchOp = Literal["=", "!=", "=~", "!~"]
SeriesKey = tuple[str, Labels]


@dataclass(frozen=True)
class LabelMatcher:
    """One PromQL label matcher: label op value, with regexes fully anchored like PromQL's."""

    label: str
    op: MatchOp
    value: str

    def __post_init__(self) -> None:
        if self.op not in ("=", "!=", "=~", "!~"):
            raise ValueError(f"label matcher op {self.op!r} for {self.label!r}: use one of =, !=, =~, !~")
        if self.op in ("=~", "!~"):
            try:
                object.__setattr__(self, "_regex", re.compile(f"(?:{self.value})\\Z"))
            except re.error as exc:
                raise ValueError(f"label matcher {self.label}{self.op}{self.value!r}: bad regex: {exc}") from exc

    def matches(self, labels: dict[str, str]) -> bool:
        actual = labels.get(self.label, "")  # a missing label matches "" (PromQL semantics)
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        matched = self._regex.match(actual) is not None  # type: ignore[attr-defined]
        return matched if self.op == "=~" else not matched


class RingSeries:
    """Fixed-capacity ring of (timestamp_seconds, value) in two float arrays, oldest first when read."""

    __slots__ = ("_times", "_values", "_start", "_count", "capacity", "kind", "unit")

    def __init__(self, capacity: int, kind: str = "gauge", unit: str = "") -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._times = array("d")
        self._values = array("d")
        self._start = 0
        self._count = 0
        self.kind = kind
        self.unit = unit

    def __len__(self) -> int:
        return self._count

    def _physical(self, logical: int) -> int:
        return (self._start + logical) % self.capacity

    def time_at(self, logical: int) -> float:
        return self._times[self._physical(logical)]

    def value_at(self, logical: int) -> float:
        return self._values[self._physical(logical)]

    def newest_time(self) -> float | None:
        return self.time_at(self._count - 1) if self._count else None

    def append(self, timestamp_seconds: float, value: float) -> None:
        if self._count < self.capacity:
            if len(self._times) < self.capacity:  # still growing: arrays hold exactly _count items
                self._times.append(timestamp_seconds)
                self._values.append(value)
            else:
                index = self._physical(self._count)
                self._times[index] = timestamp_seconds
                self._values[index] = value
            self._count += 1
            return
        self._times[self._start] = timestamp_seconds  # full: overwrite the oldest
        self._values[self._start] = value
        self._start = (self._start + 1) % self.capacity

    def drop_older_than(self, cutoff_seconds: float) -> int:
        """Forget samples with timestamp < cutoff; returns how many were dropped."""
        if not self._count or self._times[self._start] >= cutoff_seconds:
            return 0  # the common case every tick: nothing old enough, O(1)
        keep_from = self.index_at_or_after(cutoff_seconds)
        if keep_from:
            self._start = self._physical(keep_from)
            self._count -= keep_from
        return keep_from

    def index_at_or_after(self, timestamp_seconds: float) -> int:
        """Logical index of the first sample with time >= timestamp (len if none)."""
        return self._bisect(timestamp_seconds, bisect.bisect_left)

    def index_after(self, timestamp_seconds: float) -> int:
        """Logical index of the first sample with time > timestamp (len if none)."""
        return self._bisect(timestamp_seconds, bisect.bisect_right)

    def _bisect(self, timestamp_seconds: float, search: Callable[..., int]) -> int:
        """C bisect over the one or two physical runs the ring's samples occupy (no per-probe Python calls:
        every query, rule and /metrics render does this per series)."""
        start, end = self._start, self._start + self._count
        if end <= self.capacity:  # one run: [start, end)
            return search(self._times, timestamp_seconds, start, end) - start
        last_of_first_run = self._times[self.capacity - 1]  # runs: [start, capacity) then [0, end - capacity)
        in_first_run = timestamp_seconds <= last_of_first_run if search is bisect.bisect_left \
            else timestamp_seconds < last_of_first_run
        if in_first_run:
            return search(self._times, timestamp_seconds, start, self.capacity) - start
        return self.capacity - start + search(self._times, timestamp_seconds, 0, end - self.capacity)

    def window(self, start_seconds: float, end_seconds: float) -> list[tuple[float, float]]:
        """Samples with start <= time <= end, oldest first."""
        times, values = self.window_columns(start_seconds, end_seconds)
        return list(zip(times, values, strict=True))

    def window_columns(self, start_seconds: float, end_seconds: float) -> tuple[array, array]:
        """The samples with start <= time <= end as (times, values) arrays, oldest first, staleness markers
        left out. Slices of the ring (C speed): rules read windows of thousands of samples every tick."""
        first = self.index_at_or_after(start_seconds)
        last = self.index_after(end_seconds)
        if first >= last:
            return array("d"), array("d")
        begin, end = self._physical(first), self._physical(last - 1) + 1
        if begin < end:
            times, values = self._times[begin:end], self._values[begin:end]
        else:  # the window wraps around the end of the ring
            times = self._times[begin:] + self._times[:end]
            values = self._values[begin:] + self._values[:end]
        if any(map(math.isnan, values)):  # NaN: maybe staleness markers, which are not samples
            kept = [i for i, value in enumerate(values) if not is_stale_marker(value)]
            times, values = array("d", (times[i] for i in kept)), array("d", (values[i] for i in kept))
        return times, values

    def latest_at(self, at_seconds: float, lookback_seconds: float) -> tuple[float, float] | None:
        """The newest sample with at - lookback <= time <= at, or None."""
        if self._count:  # the common case (a query for now): the newest sample is the one, O(1)
            newest = (self._start + self._count - 1) % self.capacity
            timestamp = self._times[newest]
            if timestamp <= at_seconds:
                value = self._values[newest]
                if timestamp < at_seconds - lookback_seconds or (value != value and is_stale_marker(value)):
                    return None
                return timestamp, value
        index = self.index_after(at_seconds) - 1
        if index < 0:
            return None
        timestamp = self.time_at(index)
        if timestamp < at_seconds - lookback_seconds:
            return None
        value = self.value_at(index)
        if value != value and is_stale_marker(value):
            return None  # the series stopped at `timestamp`
        return timestamp, value


#: Prometheus's staleness marker (its StaleNaN bit pattern): "this series stopped". A NaN, so arithmetic on
#: it cannot pass for a reading; `window` and `latest_at` leave it out, so the series reads as absent.
STALE_MARKER: float = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
_STALE_BITS = 0x7FF0000000000002


def is_stale_marker(value: float) -> bool:
    return value != value and struct.unpack("<Q", struct.pack("<d", value))[0] == _STALE_BITS


@dataclass(frozen=True)
class SeriesWindow:
    """A selected series with its samples (oldest first) for a range query."""

    name: str
    labels: Labels
    points: list[tuple[float, float]]
    kind: str = "gauge"


class TimeSeriesStore:
    """Thread-safe store of bounded series; writers are the collection job and the OTLP receiver."""

    def __init__(self, retention_seconds: float = 900.0, max_samples_per_series: int = 1000) -> None:
        if retention_seconds <= 0:
            raise ValueError(f"retention_seconds must be > 0, got {retention_seconds}")
        if max_samples_per_series < 1:
            raise ValueError(f"max_samples_per_series must be >= 1, got {max_samples_per_series}")
        self.retention_seconds = retention_seconds
        self.max_samples_per_series = max_samples_per_series
        self._series: dict[SeriesKey, RingSeries] = {}
        self._by_name: dict[str, set[Labels]] = {}
        self._lock = threading.RLock()
        self.out_of_order_dropped = 0
        self.samples_appended = 0
        # No stored sample is older than this (the oldest ring head seen by the last expiry pass, lowered by
        # appends of older samples), so an expiry whose cutoff is not past it has nothing to drop and skips
        # the walk over every series (the collection job expires twice per tick; retention is minutes).
        self._oldest_floor_seconds = math.inf

    def append(self, samples: Iterable[Sample]) -> int:
        """Add samples; returns how many were stored (out-of-order ones are dropped and counted)."""
        stored = 0
        newest_seen = -math.inf
        series = self._series  # hot path (hundreds of samples per second): locals, no per-sample calls
        with self._lock:
            for sample in samples:
                key = (sample.name, sample.labels)
                ring = series.get(key)
                if ring is None:
                    ring = RingSeries(self.max_samples_per_series, sample.kind, sample.unit)
                    series[key] = ring
                    self._by_name.setdefault(sample.name, set()).add(sample.labels)
                timestamp = sample.timestamp_seconds
                if ring._count and timestamp < ring._times[(ring._start + ring._count - 1) % ring.capacity]:
                    self.out_of_order_dropped += 1
                    continue
                ring.append(timestamp, float(sample.value))
                if timestamp > newest_seen:
                    newest_seen = timestamp
                if timestamp < self._oldest_floor_seconds:
                    self._oldest_floor_seconds = timestamp
                stored += 1
            self.samples_appended += stored
            if stored:
                self._expire(newest_seen - self.retention_seconds)
        return stored

    def _expire(self, cutoff_seconds: float) -> None:
        if cutoff_seconds <= self._oldest_floor_seconds:
            return  # nothing stored is older than the cutoff
        empty = []
        oldest = math.inf
        for key, ring in self._series.items():
            ring.drop_older_than(cutoff_seconds)
            if ring._count:
                head = ring._times[ring._start]
                if head < oldest:
                    oldest = head
            else:
                empty.append(key)
        self._oldest_floor_seconds = oldest
        for name, labels in empty:
            del self._series[(name, labels)]
            names = self._by_name.get(name)
            if names is not None:
                names.discard(labels)
                if not names:
                    del self._by_name[name]

    def expire(self, now_seconds: float) -> None:
        """Drop everything older than now - retention (the collection job calls this every tick)."""
        with self._lock:
            self._expire(now_seconds - self.retention_seconds)

    # ---- selection -----------------------------------------------------------------------------------

    def _select_keys(self, name: str | None, matchers: Sequence[LabelMatcher]) -> list[SeriesKey]:
        if name is not None:
            candidates: Iterator[SeriesKey] = ((name, labels) for labels in self._by_name.get(name, ()))
        else:
            candidates = iter(self._series.keys())
        selected = []
        for key in candidates:
            labels = dict(key[1])
            labels["__name__"] = key[0]
            if all(matcher.matches(labels) for matcher in matchers):
                selected.append(key)
        return sorted(selected)

    def series(self, name: str | None = None, matchers: Sequence[LabelMatcher] = ()) -> list[SeriesKey]:
        """Keys of the series with this name (None = any; a __name__ matcher works too) and matchers."""
        with self._lock:
            return self._select_keys(name, matchers)

    def range_query(
        self, name: str | None, matchers: Sequence[LabelMatcher], start_seconds: float, end_seconds: float
    ) -> list[SeriesWindow]:
        """Every selected series' samples in [start, end]; series with none in range are left out."""
        with self._lock:
            result = []
            for key in self._select_keys(name, matchers):
                ring = self._series[key]
                points = ring.window(start_seconds, end_seconds)
                if points:
                    result.append(SeriesWindow(key[0], key[1], points, ring.kind))
            return result

    def range_columns(
        self, name: str | None, matchers: Sequence[LabelMatcher], start_seconds: float, end_seconds: float
    ) -> list[tuple[str, Labels, array, array]]:
        """range_query as (name, labels, times, values) arrays: the rules evaluator's fast path."""
        with self._lock:
            result = []
            for key in self._select_keys(name, matchers):
                times, values = self._series[key].window_columns(start_seconds, end_seconds)
                if times:
                    result.append((key[0], key[1], times, values))
            return result

    def instant_query(
        self, name: str | None, matchers: Sequence[LabelMatcher], at_seconds: float, lookback_seconds: float = 300.0
    ) -> list[Sample]:
        """The latest sample of each selected series within [at - lookback, at] (PromQL instant vector)."""
        with self._lock:
            result = []
            for key in self._select_keys(name, matchers):
                ring = self._series[key]
                latest = ring.latest_at(at_seconds, lookback_seconds)
                if latest is not None:
                    result.append(Sample(key[0], key[1], latest[1], latest[0], ring.kind, ring.unit))
            return result

    def latest(self, name: str, matchers: Sequence[LabelMatcher] = ()) -> list[Sample]:
        """The newest sample of every matching series regardless of age (for status views)."""
        with self._lock:
            result = []
            for key in self._select_keys(name, matchers):
                ring = self._series[key]
                if len(ring) and not is_stale_marker(ring.value_at(len(ring) - 1)):
                    index = len(ring) - 1
                    result.append(
                        Sample(key[0], key[1], ring.value_at(index), ring.time_at(index), ring.kind, ring.unit)
                    )
            return result

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._by_name)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "series": len(self._series),
                "samples": sum(len(ring) for ring in self._series.values()),
                "samples_appended": self.samples_appended,
                "out_of_order_dropped": self.out_of_order_dropped,
            }
