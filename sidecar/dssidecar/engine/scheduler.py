"""Continuous batching: decides, before every step, which sequences run and whether it is a prefill.

Policy (same shape as nano-vllm): a step is either a prefill of waiting prompts or one decode token
for every running sequence. Waiting prompts go first (they are admitted while running + admitted <
`max_batch_size` and their tokens fit in `max_num_batched_tokens`; the first prompt of a step may be
split into chunks when it alone is larger than the budget), so time to first token stays short.
When a decode needs a block and none is free, the newest running sequence is preempted: its blocks
are freed and it goes back to the front of the waiting queue to be recomputed later. Nothing crashes.

`max_batch_size` and `max_num_batched_tokens` are plain attributes read every step: the knob
controller may change them at any time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from dssidecar.engine.block_manager import BlockManager
from dssidecar.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]
    is_prefill: bool

    @property
    def num_tokens(self) -> int:
        return sum(seq.num_scheduled_tokens for seq in self.seqs)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_batch_size: int, max_num_batched_tokens: int) -> None:
        self.block_manager = block_manager
        self.max_batch_size = max_batch_size
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()
        self.num_preemptions_total = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch | None:
        batch = self._schedule_prefill()
        if batch is not None:
            return batch
        return self._schedule_decode()

    def _schedule_prefill(self) -> ScheduledBatch | None:
        scheduled: list[Sequence] = []
        budget = max(1, int(self.max_num_batched_tokens))
        max_running = max(1, int(self.max_batch_size))
        num_batched_tokens = 0
        while self.waiting:
            seq = self.waiting[0]
            partially_prefilled = bool(seq.block_table)
            if not partially_prefilled and len(self.running) >= max_running:  # admitted ones are in running
                break
            remaining = budget - num_batched_tokens
            if remaining <= 0:
                break
            if not partially_prefilled:
                if not self.block_manager.can_allocate(seq):
                    break
                num_uncached = seq.num_tokens - len(self.block_manager._cached_prefix(seq)) * self.block_manager.block_size
                if num_uncached > remaining and scheduled:
                    break  # only the first prompt of a step is chunked
                self.block_manager.allocate(seq)
            num_tokens = seq.num_tokens - seq.num_cached_tokens
            if num_tokens > remaining and scheduled:
                break
            seq.num_scheduled_tokens = min(num_tokens, remaining)
            num_batched_tokens += seq.num_scheduled_tokens
            scheduled.append(seq)
            if seq.num_cached_tokens + seq.num_scheduled_tokens < seq.num_tokens:
                break  # a chunked prompt stays at the head of the queue
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
        return ScheduledBatch(scheduled, is_prefill=True) if scheduled else None

    def _schedule_decode(self) -> ScheduledBatch | None:
        scheduled: list[Sequence] = []
        max_running = max(1, int(self.max_batch_size))
        while self.running and len(scheduled) < max_running:
            seq = self.running.popleft()
            while not self.block_manager.can_append(seq):
                if self.running:
                    self.preempt(self.running.pop())  # the newest one
                else:
                    self.preempt(seq)
                    break
            else:
                seq.num_scheduled_tokens = 1
                self.block_manager.append_slot(seq)
                scheduled.append(seq)
        self.running.extendleft(reversed(scheduled))
        return ScheduledBatch(scheduled, is_prefill=False) if scheduled else None

    def preempt(self, seq: Sequence) -> None:
        """Free the sequence's blocks and requeue it at the front; it is recomputed when readmitted."""
        seq.status = SequenceStatus.WAITING
        seq.num_scheduled_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions_total += 1
        self.block_manager.deallocate(seq)
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence from its queue and free its blocks."""
        seq.status = SequenceStatus.FINISHED
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.deallocate(seq)
