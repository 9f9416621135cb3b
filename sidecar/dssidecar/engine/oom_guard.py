"""Survive an out-of-memory during a step: retry with a smaller batch and lower the batch limit.

Why this exists: a CUDA OOM (or a failed KV-pool allocation) in the middle of serving must not kill the
server or fail the whole batch. The guard catches it, drops the second half of the batch (those
sequences are simply not advanced this step: they stay running with their blocks and are scheduled
again next step), retries, and lowers the scheduler's effective `max_batch_size` to the size
that worked. Each event is counted (`dssidecar_oom_events_total`) so a rule can react. A single
sequence that still does not fit is failed with an error instead of retrying forever.

`FaultInjector` makes the path testable without a GPU: it raises `KVPoolAllocationError` for a step
whose batch is larger than a threshold, a bounded number of times. The server enables it from the
environment (DSSIDECAR_INJECT_OOM_ABOVE_BATCH, DSSIDECAR_INJECT_OOM_COUNT) for integration tests.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import torch

logger = logging.getLogger("dssidecar.oom")  # the name operators grep for; unchanged by the move


class KVPoolAllocationError(MemoryError):
    """The engine could not allocate memory for a step (real or injected)."""


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (KVPoolAllocationError, MemoryError)):
        return True
    cuda_oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if cuda_oom is not None and isinstance(exc, cuda_oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class FaultInjector:
    """Raise KVPoolAllocationError for steps with more than `above_batch` sequences, `count` times."""

    def __init__(self, above_batch: int, count: int = 1) -> None:
        self.above_batch = above_batch
        self.remaining = count
        self.injected_total = 0
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> FaultInjector | None:
        env = os.environ if environ is None else environ
        raw = env.get("DSSIDECAR_INJECT_OOM_ABOVE_BATCH", "").strip()
        if not raw:
            return None
        try:
            above_batch = int(raw)
            count = int(env.get("DSSIDECAR_INJECT_OOM_COUNT", "1"))
        except ValueError as exc:
            raise ValueError(
                f"DSSIDECAR_INJECT_OOM_ABOVE_BATCH/COUNT must be integers, got {raw!r} / "
                f"{env.get('DSSIDECAR_INJECT_OOM_COUNT')!r}"
            ) from exc
        return cls(above_batch, count)

    def check(self, batch_size: int) -> None:
        with self._lock:
            if self.remaining > 0 and batch_size > self.above_batch:
                self.remaining -= 1
                self.injected_total += 1
                raise KVPoolAllocationError(
                    f"injected KV pool allocation failure for a batch of {batch_size} (> {self.above_batch})"
                )


class OomGuard:
    """Runs a scheduled batch through `engine.runner.run`, shrinking it on out-of-memory. LLMEngine owns
    one (`engine.oom_guard`) and calls it from step()."""

    def __init__(self, injector: FaultInjector | None = None) -> None:
        self.injector = injector
        self.oom_events_total = 0
        self.last_error: str | None = None

    def run(self, engine: Any, batch: Any) -> tuple[Any, list[int]]:
        """Returns (the batch that ran, its token ids). The batch may have fewer sequences than given."""
        while True:
            try:
                if self.injector is not None:
                    self.injector.check(len(batch.seqs))
                return batch, engine.runner.run(batch.seqs, batch.is_prefill)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                self.oom_events_total += 1
                self.last_error = str(exc)
                _release_cached_memory(engine)
                if len(batch.seqs) <= 1:
                    logger.error("out of memory with a batch of one sequence; failing it: %s", exc)
                    raise
                keep = len(batch.seqs) // 2
                dropped = batch.seqs[keep:]
                batch.seqs = batch.seqs[:keep]
                _set_back(dropped)
                scheduler = engine.scheduler
                scheduler.max_batch_size = max(1, min(int(scheduler.max_batch_size), keep))
                logger.warning(
                    "out of memory during a %s step (%s); retrying with %d sequences, effective max_batch_size=%d",
                    "mixed" if batch.is_prefill else "decode", exc, keep, scheduler.max_batch_size,
                )


def _release_cached_memory(engine: Any) -> None:
    device = getattr(engine.runner, "device", None)
    if device is not None and getattr(device, "type", "") == "cuda":
        torch.cuda.empty_cache()


def _set_back(dropped: list[Any]) -> None:
    """Sequences left out of the retried step are not advanced: they stay where they are (running, with
    their blocks) and are scheduled again next step, a decode or the same prompt chunk."""
    for seq in dropped:
        seq.num_scheduled_tokens = 0
