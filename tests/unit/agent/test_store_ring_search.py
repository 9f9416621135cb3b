"""The ring's binary searches and latest-sample lookup agree with a plain list of its samples, whatever
the wrap-around, growth and expiry history (they run on every query, rule evaluation and /metrics render)."""

from __future__ import annotations

import bisect

from dsagent.store import RingSeries
from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 9), steps=st.lists(st.one_of(st.integers(0, 3).map(lambda n: ("append", n)),
                                                            st.integers(0, 40).map(lambda t: ("expire", t))),
                                                  max_size=40),
       probes=st.lists(st.floats(-2, 45, allow_nan=False), min_size=1, max_size=8),
       lookback=st.floats(0, 20))
def test_searches_match_a_plain_list(capacity: int, steps: list[tuple[str, int]], probes: list[float],
                                     lookback: float) -> None:
    ring = RingSeries(capacity)
    plain: list[tuple[float, float]] = []
    clock = 0.0
    for action, amount in steps:
        if action == "append":
            for _ in range(amount):
                clock += 1.0 if len(plain) % 3 else 0.0  # repeated timestamps too
                ring.append(clock, clock * 10)
                plain = (plain + [(clock, clock * 10)])[-capacity:]
        else:
            ring.drop_older_than(float(amount))
            plain = [p for p in plain if p[0] >= amount]
    times = [t for t, _ in plain]
    assert [ring.time_at(i) for i in range(len(ring))] == times
    for probe in probes:
        assert ring.index_at_or_after(probe) == bisect.bisect_left(times, probe)
        assert ring.index_after(probe) == bisect.bisect_right(times, probe)
        index = bisect.bisect_right(times, probe) - 1
        expected = plain[index] if index >= 0 and plain[index][0] >= probe - lookback else None
        assert ring.latest_at(probe, lookback) == expected


def test_latest_is_absent_after_a_staleness_marker_and_present_before_it() -> None:
    from dsagent.store import STALE_MARKER

    ring = RingSeries(4)
    for t in (1.0, 2.0, 3.0, 4.0, 5.0):  # wraps once
        ring.append(t, t)
    ring.append(6.0, STALE_MARKER)
    assert ring.latest_at(6.5, 300) is None  # the newest sample says the series stopped
    assert ring.latest_at(5.5, 300) == (5.0, 5.0)  # before the marker it was there
    assert ring.latest_at(2.9, 300) is None  # older than what the ring still holds
