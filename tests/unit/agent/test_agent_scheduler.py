"""Scheduler: a slow job never overlaps itself and missed runs coalesce instead of piling up."""

from __future__ import annotations

import threading
import time

import pytest
from dsagent.scheduler import AgentScheduler


def test_slow_job_never_runs_concurrently_and_missed_runs_do_not_pile_up() -> None:
    scheduler = AgentScheduler(misfire_grace_seconds=1)
    lock = threading.Lock()
    running = 0
    max_running = 0
    runs = 0
    job_seconds = 0.4

    def slow_job() -> None:
        nonlocal running, max_running, runs
        with lock:
            running += 1
            max_running = max(max_running, running)
            runs += 1
        time.sleep(job_seconds)
        with lock:
            running -= 1

    scheduler.add_interval_job("slow", slow_job, 0.05, run_immediately=True)
    started = time.monotonic()
    scheduler.start()
    time.sleep(1.5)
    scheduler.shutdown(wait=True)
    elapsed = time.monotonic() - started
    assert max_running == 1
    # At most one run per job duration (+1 for the one in flight); 0.05 s ticks would give ~30 if they piled up.
    assert 1 <= runs <= int(elapsed / job_seconds) + 1
    skipped = scheduler.counters.skipped_still_running.get("slow", 0)
    assert skipped > 0


def test_failing_job_is_counted_and_the_scheduler_keeps_running() -> None:
    scheduler = AgentScheduler()
    ran = threading.Event()
    calls = 0

    def failing() -> None:
        nonlocal calls
        calls += 1
        if calls >= 2:
            ran.set()
        raise RuntimeError("boom")

    scheduler.add_interval_job("failing", failing, 0.05, run_immediately=True)
    scheduler.start()
    try:
        assert ran.wait(5)
    finally:
        scheduler.shutdown()
    assert scheduler.counters.failed["failing"] >= 2


def test_cron_job_is_registered_and_bad_cron_names_itself() -> None:
    scheduler = AgentScheduler()
    scheduler.add_cron_job("nightly", lambda: None, "0 3 * * *")
    assert scheduler.job_names() == ["nightly"]
    with pytest.raises(ValueError, match=r"job 'bad': bad cron expression '61 \* \* \* \*'"):
        scheduler.add_cron_job("bad", lambda: None, "61 * * * *")


def test_non_positive_interval_is_rejected() -> None:
    with pytest.raises(ValueError, match="interval_seconds must be > 0"):
        AgentScheduler().add_interval_job("x", lambda: None, 0)


def test_shutdown_is_idempotent() -> None:
    scheduler = AgentScheduler()
    scheduler.start()
    scheduler.shutdown()
    scheduler.shutdown()
    assert not scheduler.running
