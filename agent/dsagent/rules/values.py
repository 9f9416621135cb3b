"""The values a PromQL expression evaluates to (instant vectors, range vectors, scalars, strings).

Why a module of its own: the evaluator, the aggregations and the test runner share them, and Points keeps
a range vector's samples as the store's arrays, so the hot path never builds a tuple per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class PromQLError(ValueError):
    """The expression cannot be parsed, is outside the supported subset, or failed to evaluate."""


Labels = dict[str, str]


Point = tuple[int, float]  # (timestamp ms, value)


NAME = "__name__"


@dataclass
class Sample:
    """One element of an instant vector; t is the sample's own time (for timestamp())."""

    labels: Labels
    value: float
    t: int = 0


class Points(Sequence[Point]):
    """A series' samples in a range: `values` as stored (an array from the agent's store, no copy) and the
    times read lazily as integer ms, so functions that need only values (avg_over_time, ...) or the ends
    (rate, irate) never build a tuple per sample - the rules' hot path over hour-long 1 Hz windows."""

    __slots__ = ("_times", "_seconds", "values")

    def __init__(self, times: Sequence[float] | Sequence[int], values: Sequence[float], seconds: bool) -> None:
        self._times = times
        self._seconds = seconds  # times are float seconds (agent store) rather than integer ms
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def time_ms(self, index: int) -> int:
        t = self._times[index]
        return round(t * 1000) if self._seconds else int(t)

    def __getitem__(self, index):  # type: ignore[no-untyped-def, override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.time_ms(index), self.values[index]

    def __iter__(self):  # type: ignore[no-untyped-def]
        times, values = self._times, self.values
        if self._seconds:
            return zip([round(t * 1000) for t in times], values, strict=True)
        return zip(times, values, strict=True)


@dataclass
class Scalar:
    value: float


@dataclass
class String:
    value: str


Vector = list[Sample]


Matrix = list[tuple[Labels, Points]]


Value = Vector | Matrix | Scalar | String


def labels_key(labels: Labels) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def drop_name(labels: Labels) -> Labels:
    if NAME not in labels:
        return labels
    out = dict(labels)
    del out[NAME]
    return out
