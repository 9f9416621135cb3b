"""Continuous batching: decides, before every step, which tokens of which sequences the step computes.

Policy (vLLM V1's, nano-vllm's shape): one step carries a decode token for every running sequence plus
chunks of prompts, in one forward pass, within `max_num_batched_tokens` (chunked prefill), so an arriving
prompt never stalls the running streams for a whole prefill and a long prompt never blocks a step.
Order: running sequences first, oldest first (a decode token each, or the next chunk of a prompt that
is being prefilled), then waiting prompts, admitted while running < `max_batch_size` and budget is
left; the last one admitted is cut to the budget that remains. Decode tokens are always scheduled
(they are one token each; a budget smaller than the running batch only holds prompts back).
When a decode needs a block and none is free, the newest running sequence is preempted: its blocks
are freed and it goes back to the front of the waiting queue to be recomputed later. Nothing crashes.

`max_batch_size` and `max_num_batched_tokens` are plain attributes read every step: the knob
controller (through LLMEngine.set_limits) and the OOM guard change them between steps.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from dssidecar.engine.block_manager import BlockManager
from dssidecar.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """The sequences of one step; each computes token_ids[num_cached_tokens : + num_scheduled_tokens]."""

    seqs: list[Sequence]

    @property
    def num_tokens(self) -> int:
        return sum(seq.num_scheduled_tokens for seq in self.seqs)

    @property
    def is_prefill(self) -> bool:
        """Some sequence computes prompt tokens (more than one token, or none cached yet)."""
        return any(seq.num_scheduled_tokens > 1 or seq.num_cached_tokens == 0 for seq in self.seqs)


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
        budget = max(1, int(self.max_num_batched_tokens))
        max_running = max(1, int(self.max_batch_size))
        scheduled: list[Sequence] = []
        num_batched_tokens = 0
        kept: list[Sequence] = []  # running sequences in their order, scheduled or waiting for budget
        # 1. running sequences, oldest first
        while self.running and len(scheduled) < max_running:
            seq = self.running.popleft()
            num_new = seq.num_tokens - seq.num_cached_tokens
            if num_new > 1:  # a prompt being prefilled: its next chunk, if budget is left
                chunk = min(num_new, budget - num_batched_tokens)
                if chunk > 0:
                    seq.num_scheduled_tokens = chunk
                    num_batched_tokens += chunk
                    scheduled.append(seq)
                kept.append(seq)
                continue
            while not self.block_manager.can_append(seq):
                if self.running:
                    self.preempt(self.running.pop())  # the newest one
                else:
                    self.preempt(seq)
                    break
            else:
                self.block_manager.append_slot(seq)
                seq.num_scheduled_tokens = 1
                num_batched_tokens += 1
                scheduled.append(seq)
                kept.append(seq)
        self.running.extendleft(reversed(kept))
        # 2. waiting prompts (preempted ones first: they sit at the front)
        while self.waiting and len(self.running) < max_running:
            remaining = budget - num_batched_tokens
            if remaining <= 0:
                break
            seq = self.waiting[0]
            if not self.block_manager.can_allocate(seq):
                break
            self.block_manager.allocate(seq)
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            seq.num_scheduled_tokens = min(seq.num_tokens - seq.num_cached_tokens, remaining)
            num_batched_tokens += seq.num_scheduled_tokens
            scheduled.append(seq)
        return ScheduledBatch(scheduled) if scheduled else None

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
