"""Periodic jobs of the agent (collect, evaluate, export, cron policies) on one APScheduler.

Why a wrapper: every job must follow the same rules so a slow tick never piles up behind itself:
`max_instances=1` (a job never runs concurrently with itself), `coalesce=True` (runs missed while it was
busy collapse into one) and a short `misfire_grace_time` (a run that is very late is skipped, not replayed).
A job that raises is logged with its name and the scheduler keeps going.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

log = logging.getLogger(__name__)
# APScheduler warns on every skipped/missed run; the agent counts those (JobCounters) and logs them itself.
logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
logging.getLogger("apscheduler.executors.default").setLevel(logging.ERROR)


@dataclass
class JobCounters:
    """How often each job ran late, was skipped because still running, or failed."""

    missed: dict[str, int] = field(default_factory=dict)
    skipped_still_running: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)


class AgentScheduler:
    """BackgroundScheduler with the agent's job rules; jobs run on a small thread pool."""

    def __init__(self, max_workers: int = 4, misfire_grace_seconds: float = 1.0, timezone: str = "UTC") -> None:
        self.misfire_grace_seconds = misfire_grace_seconds
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers)},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": max(1, int(round(misfire_grace_seconds))),
            },
            timezone=timezone,
        )
        self.counters = JobCounters()
        self._counter_lock = threading.Lock()
        self._scheduler.add_listener(
            self._on_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES
        )

    def _on_event(self, event: JobExecutionEvent) -> None:
        with self._counter_lock:
            if event.code == EVENT_JOB_ERROR:
                bucket = self.counters.failed
                log.error("job %s failed: %r\n%s", event.job_id, event.exception, event.traceback or "")
            elif event.code == EVENT_JOB_MISSED:
                bucket = self.counters.missed
                log.debug("job %s missed its run time; coalesced", event.job_id)
            else:
                bucket = self.counters.skipped_still_running
                log.debug("job %s still running; this run skipped", event.job_id)
            bucket[event.job_id] = bucket.get(event.job_id, 0) + 1

    def add_interval_job(self, name: str, func: Callable[[], object], interval_seconds: float,
                         run_immediately: bool = False) -> None:
        """Run `func` every interval; replaces a job of the same name."""
        if interval_seconds <= 0:
            raise ValueError(f"job {name!r}: interval_seconds must be > 0, got {interval_seconds}")
        kwargs = {}
        if run_immediately:
            from datetime import datetime, timezone

            kwargs["next_run_time"] = datetime.now(timezone.utc)
        self._scheduler.add_job(
            func, IntervalTrigger(seconds=interval_seconds), id=name, name=name, replace_existing=True, **kwargs
        )

    def add_cron_job(self, name: str, func: Callable[[], object], crontab: str) -> None:
        """Run `func` on a 5-field crontab expression ('*/5 * * * *'); a bad expression names itself."""
        try:
            trigger = CronTrigger.from_crontab(crontab, timezone=self._scheduler.timezone)
        except ValueError as exc:
            raise ValueError(f"job {name!r}: bad cron expression {crontab!r} "
                             f"(want 5 fields: minute hour day month weekday): {exc}") from exc
        self._scheduler.add_job(func, trigger, id=name, name=name, replace_existing=True)

    def remove_job(self, name: str) -> None:
        self._scheduler.remove_job(name)

    def job_names(self) -> list[str]:
        return sorted(job.id for job in self._scheduler.get_jobs())

    def start(self) -> None:
        if not self._scheduler.running:
            self._scheduler.start()

    def shutdown(self, wait: bool = True) -> None:
        """Stop scheduling; with wait=True, running jobs finish first. Idempotent."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)
