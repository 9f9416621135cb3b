"""Expiry skips its walk over every series when nothing is old enough; it must still drop exactly what a
full walk would, whatever order appends (new series with old samples too) and expiries come in."""

from __future__ import annotations

from dsagent.samples import Sample, make_labels
from dsagent.store import TimeSeriesStore
from hypothesis import given, settings
from hypothesis import strategies as st

RETENTION_SECONDS = 10.0

operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 3), st.integers(0, 60)),
        st.tuples(st.just("expire"), st.integers(0, 80), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(operations)
def test_expiry_matches_a_full_walk(ops: list[tuple[str, int, int]]) -> None:
    store = TimeSeriesStore(RETENTION_SECONDS, 1000)
    model: dict[str, list[float]] = {}  # series -> kept timestamps, the naive reference

    def expire_model(cutoff: float) -> None:
        for name in list(model):
            model[name] = [t for t in model[name] if t >= cutoff]
            if not model[name]:
                del model[name]

    for op, a, b in ops:
        if op == "append":
            name, timestamp = f"m{a}", float(b)
            stored = store.append([Sample(name, make_labels(), 1.0, timestamp)])
            kept = model.get(name, [])
            if not kept or timestamp >= kept[-1]:
                model[name] = [*kept, timestamp]
                assert stored == 1
                expire_model(timestamp - RETENTION_SECONDS)
            else:
                assert stored == 0
        else:
            store.expire(float(a))
            expire_model(a - RETENTION_SECONDS)
        got = {key[0]: [t for t, _ in store.range_query(key[0], (), -1e9, 1e9)[0].points]
               for key in store.series()}
        assert got == model


def test_an_old_sample_added_after_a_pass_is_still_expired() -> None:
    store = TimeSeriesStore(RETENTION_SECONDS, 1000)
    store.append([Sample("a", (), 1.0, 100.0)])
    store.expire(100.0)  # cutoff 90: nothing to drop
    store.append([Sample("b", (), 1.0, 95.0)])  # new series, older than a's sample, inside retention of 100
    store.expire(106.0)  # cutoff 96: b must go, a stays
    assert [key[0] for key in store.series()] == ["a"]
    store.expire(111.0)
    assert store.series() == []
