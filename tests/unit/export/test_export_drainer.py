"""The drainer empties its spool in order, backs off with jitter while the destination fails, never drops."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from dsagent.export.destination import DeadLetterFile, Destination, SendOutcome
from dsagent.export.drainer import Backoff, SpoolDrainer
from dsagent.export.spool import REQUEST, Spool, SpoolEntry, SpoolRecord
from hypothesis import given
from hypothesis import strategies as st


class FlakyDestination(Destination):
    """Fails the first `failures` sends, then acknowledges; remembers what it received, in order."""

    def __init__(self, failures: int, not_ready: int = 0) -> None:
        self.name = "flaky"
        self.failures = failures
        self.not_ready = not_ready
        self.received: list[str] = []

    def prepare(self) -> str | None:
        if self.not_ready > 0:
            self.not_ready -= 1
            return "templates not installed yet"
        return None

    def send(self, entries: Sequence[SpoolEntry]) -> SendOutcome:
        if self.failures > 0:
            self.failures -= 1
            return SendOutcome.retry_all(entries, "503 from the fake")
        self.received.extend(entry.doc_id for entry in entries)
        return SendOutcome(acked=[entry.seq for entry in entries])


class RaisingDestination(Destination):
    name = "raising"

    def send(self, entries: Sequence[SpoolEntry]) -> SendOutcome:
        raise RuntimeError("bug in a destination")


def make_drainer(tmp_path: Path, destination: Destination, documents: int = 10, batch: int = 3) -> SpoolDrainer:
    spool = Spool(tmp_path / "spool.sqlite3", max_bytes=10**9)
    spool.append([SpoolRecord(REQUEST, "s", f"id-{i:03d}", b"{}") for i in range(documents)])
    return SpoolDrainer(destination, spool, DeadLetterFile(tmp_path / "dead.ndjson"), batch, Backoff(0.001, 0.004))


def test_failures_are_retried_until_everything_arrives_in_order(tmp_path: Path) -> None:
    destination = FlakyDestination(failures=3, not_ready=2)
    drainer = make_drainer(tmp_path, destination)
    for _ in range(50):
        drainer.drain_once()
    assert destination.received == [f"id-{i:03d}" for i in range(10)]
    assert drainer.spool.depth_documents == 0
    assert drainer.retries == 5
    assert drainer.sent_documents == 10


def test_a_raising_destination_keeps_documents_and_counts_a_retry(tmp_path: Path) -> None:
    drainer = make_drainer(tmp_path, RaisingDestination())
    assert drainer.drain_once() is False
    assert drainer.spool.depth_documents == 10
    assert "bug in a destination" in drainer.last_error


def test_thread_drains_then_wait_empty_returns_true(tmp_path: Path) -> None:
    destination = FlakyDestination(failures=2)
    drainer = make_drainer(tmp_path, destination, documents=100, batch=7)
    drainer.start()
    try:
        assert drainer.wait_empty(10)
    finally:
        drainer.stop()
    assert destination.received == [f"id-{i:03d}" for i in range(100)]


def test_wait_empty_times_out_while_the_destination_is_down(tmp_path: Path) -> None:
    drainer = make_drainer(tmp_path, FlakyDestination(failures=10**6))
    drainer.start()
    try:
        assert drainer.wait_empty(0.2) is False
    finally:
        drainer.stop()
    assert drainer.spool.depth_documents == 10


@given(st.floats(0.001, 5), st.floats(1, 100), st.integers(0, 80), st.integers(0, 2**32))
def test_backoff_grows_exponentially_with_jitter_and_is_capped(
    initial: float, cap_factor: float, attempts: int, seed: int
) -> None:
    backoff = Backoff(initial, initial * cap_factor, random.Random(seed))
    for attempt in range(attempts + 1):
        ceiling = min(initial * cap_factor, initial * 2**attempt)
        delay = backoff.next_delay_seconds()
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay_seconds() <= initial


def test_backoff_rejects_a_cap_below_the_start() -> None:
    with pytest.raises(ValueError, match="initial_seconds <= max_seconds"):
        Backoff(2.0, 1.0)
