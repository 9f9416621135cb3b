"""One thread per destination that empties its spool in order, with jittered exponential backoff.

Entries leave the spool only when the destination acknowledged them (or refused them for good, then
they go to the dead-letter file first). A failing destination makes the thread wait longer and longer
(capped), never spin, and never drop anything.

A refusal (bad credentials, no rights, a missing endpoint) is retried the same way and counted apart
(`refused_retries`, `state` "refused"), so an operator sees why nothing arrives. A document that keeps
failing with a retryable per-item error at the head of the queue is moved aside after
`move_aside_after_attempts` tries (appended again at the tail, counted in `moved_aside_documents`): it is
retried later and cannot block the documents behind it.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from dsagent.export.destination import DeadLetterFile, Destination, SendOutcome
from dsagent.export.spool import Spool, SpoolEntry, SpoolRecord

log = logging.getLogger(__name__)


class Backoff:
    """Exponential delays with jitter: attempt n waits uniformly in [d/2, d], d = min(cap, initial * 2^n)."""

    def __init__(self, initial_seconds: float, max_seconds: float, rng: random.Random | None = None) -> None:
        if initial_seconds <= 0 or max_seconds < initial_seconds:
            raise ValueError(
                f"backoff needs 0 < initial_seconds <= max_seconds, got {initial_seconds} and {max_seconds}"
            )
        self.initial_seconds = initial_seconds
        self.max_seconds = max_seconds
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay_seconds(self) -> float:
        ceiling = min(self.max_seconds, self.initial_seconds * (2 ** min(self.attempt, 62)))
        self.attempt += 1
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.attempt = 0


class SpoolDrainer:
    def __init__(
        self,
        destination: Destination,
        spool: Spool,
        dead_letters: DeadLetterFile,
        batch_documents: int,
        backoff: Backoff,
        idle_poll_seconds: float = 1.0,
        move_aside_after_attempts: int = 5,
    ) -> None:
        self.destination = destination
        self.spool = spool
        self.dead_letters = dead_letters
        self.batch_documents = batch_documents
        self.backoff = backoff
        self.idle_poll_seconds = idle_poll_seconds
        self.sent_documents = 0
        self.dead_lettered_documents = 0
        self.retries = 0
        self.refused_retries = 0
        self.moved_aside_documents = 0
        self.move_aside_after_attempts = move_aside_after_attempts
        self.last_error = ""
        self.refused = False
        self._attempts: dict[int, int] = {}  # seq -> failed sends, for the documents at the head
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name=f"dsagent-export-{self.destination.name}", daemon=True
        )
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout_seconds: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_seconds)

    def wait_empty(self, timeout_seconds: float) -> bool:
        """True once the spool is empty; False when the timeout passed first."""
        deadline = time.monotonic() + timeout_seconds
        self.wake()
        while self.spool.depth_documents > 0:
            if time.monotonic() >= deadline or self._stop.is_set():
                return self.spool.depth_documents == 0
            time.sleep(0.01)
        return True

    def drain_once(self) -> bool:
        """Send one batch; True when something was sent or acknowledged, False when idle or failing."""
        reason = self.destination.prepare()
        if reason is not None:
            self._failed(reason)
            return False
        entries = self.spool.peek(self.batch_documents)
        if not entries:
            return False
        try:
            outcome = self.destination.send(entries)
        except Exception as error:  # noqa: BLE001 - a destination must not kill its drainer
            outcome = SendOutcome.retry_all(entries, f"{type(error).__name__}: {error}")
        if outcome.dead:
            self.dead_letters.write(self.destination.name, outcome.dead)
            self.dead_lettered_documents += len(outcome.dead)
            for entry, reason in outcome.dead[:3]:
                log.warning("%s refused document %s for good: %s", self.destination.name, entry.doc_id, reason)
        done = outcome.acked + [entry.seq for entry, _ in outcome.dead]
        # counters and state before the spool shrinks: whoever sees it empty sees them up to date
        self.sent_documents += len(outcome.acked)
        if not outcome.retry:
            self._attempts.clear()
            self.backoff.reset()
            self.last_error = ""
            self.refused = False
        self.spool.ack(done)
        if outcome.retry:
            self._move_aside_stuck(entries, outcome)
            if outcome.refused:
                self.refused_retries += 1
            self.refused = outcome.refused
            self._failed(outcome.retry_reason or "destination asked to retry")
            return bool(done)
        return True

    @property
    def state(self) -> str:
        """ok | retrying | refused (an operator must fix credentials, rights or the endpoint)."""
        if not self.last_error:
            return "ok"
        return "refused" if self.refused else "retrying"

    def _move_aside_stuck(self, entries: list[SpoolEntry], outcome: SendOutcome) -> None:
        """Per-item failures only (a whole request failing says nothing about its documents): a document
        failing at the head `move_aside_after_attempts` times goes to the tail."""
        retried = set(outcome.retry)
        self._attempts = {seq: self._attempts.get(seq, 0) + 1 for seq in retried}
        if not outcome.item_level:
            return
        stuck = [entry for entry in entries if self._attempts.get(entry.seq, 0) >= self.move_aside_after_attempts]
        if not stuck:
            return
        self.spool.append([SpoolRecord(entry.kind, entry.stream, entry.doc_id, entry.payload) for entry in stuck])
        self.spool.ack(entry.seq for entry in stuck)
        self.moved_aside_documents += len(stuck)
        for entry in stuck:
            self._attempts.pop(entry.seq, None)
        log.warning("%s: moved %d document(s) failing at the head of the queue aside (%s); they are retried "
                    "after the ones behind them", self.destination.name, len(stuck), outcome.retry_reason)

    def _failed(self, reason: str) -> None:
        self.retries += 1
        if reason != self.last_error:
            log.warning("%s export %s, will retry: %s", self.destination.name,
                        "refused" if self.refused else "failed", reason)
        self.last_error = reason
        self._stop.wait(self.backoff.next_delay_seconds())

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                progressed = self.drain_once()
            except Exception:  # noqa: BLE001 - e.g. spool I/O error; keep the thread alive
                log.exception("%s drainer failed; retrying", self.destination.name)
                self._stop.wait(self.backoff.next_delay_seconds())
                continue
            if not progressed and self.spool.depth_documents == 0:
                self._wake.wait(self.idle_poll_seconds)
