"""Scheduler admission limits, chunking, mixed prefill+decode steps and preemption, without a model.

`simulate_step` stands in for the runner + postprocess: it marks scheduled tokens computed and appends
one token to sequences that completed their prompt, as LLMEngine does.
"""

from __future__ import annotations

from dssidecar.engine.block_manager import BlockManager
from dssidecar.engine.protocol import SamplingParams
from dssidecar.engine.scheduler import ScheduledBatch, Scheduler
from dssidecar.engine.sequence import Sequence, SequenceStatus
from hypothesis import given, settings
from hypothesis import strategies as st

BLOCK = 4


def make_seq(num_tokens: int, request_id: str, max_tokens: int = 8) -> Sequence:
    return Sequence(request_id, list(range(1, num_tokens + 1)), SamplingParams(max_tokens=max_tokens), 0.0, block_size=BLOCK)


def simulate_step(scheduler: Scheduler, batch: ScheduledBatch) -> list[Sequence]:
    """Mark work done; finish sequences that reached max_tokens. Returns finished ones."""
    finished = []
    for seq in batch.seqs:
        seq.num_cached_tokens += seq.num_scheduled_tokens
        seq.num_scheduled_tokens = 0
        scheduler.block_manager.register_full_blocks(seq)
        if seq.num_cached_tokens < seq.num_tokens:
            continue  # a prompt chunk that does not end the prompt: no token yet
        seq.token_ids.append(7)
        if seq.num_completion_tokens >= seq.params.max_tokens:
            scheduler.finish(seq)
            finished.append(seq)
    return finished


def test_never_more_than_max_batch_size_running() -> None:
    scheduler = Scheduler(BlockManager(1000, BLOCK), max_batch_size=3, max_num_batched_tokens=10_000)
    for i in range(10):
        scheduler.add(make_seq(5, f"r{i}"))
    batch = scheduler.schedule()
    assert batch is not None and batch.is_prefill and len(batch.seqs) == 3
    assert len(scheduler.running) == 3 and len(scheduler.waiting) == 7
    simulate_step(scheduler, batch)
    batch = scheduler.schedule()  # no room: a decode of the 3
    assert batch is not None and not batch.is_prefill and len(batch.seqs) == 3


def test_prefill_tokens_per_step_stay_within_budget() -> None:
    scheduler = Scheduler(BlockManager(1000, BLOCK), max_batch_size=64, max_num_batched_tokens=20)
    for i in range(6):
        scheduler.add(make_seq(8, f"r{i}"))
    batch = scheduler.schedule()
    assert batch is not None and batch.is_prefill
    # two whole prompts and a chunk of the third fill the budget exactly; the rest wait
    assert batch.num_tokens == 20 and [s.num_scheduled_tokens for s in batch.seqs] == [8, 8, 4]
    assert len(scheduler.waiting) == 3


def test_a_prompt_longer_than_the_budget_is_prefilled_in_chunks() -> None:
    scheduler = Scheduler(BlockManager(1000, BLOCK), max_batch_size=4, max_num_batched_tokens=16)
    seq = make_seq(40, "long")
    scheduler.add(seq)
    chunks = []
    while seq.num_completion_tokens == 0:
        batch = scheduler.schedule()
        assert batch is not None and batch.is_prefill and batch.num_tokens <= 16
        chunks.append(batch.num_tokens)
        simulate_step(scheduler, batch)
    assert chunks == [16, 16, 8]
    assert seq.num_completion_tokens == 1


def test_knob_changes_apply_on_the_next_step() -> None:
    scheduler = Scheduler(BlockManager(1000, BLOCK), max_batch_size=1, max_num_batched_tokens=100)
    for i in range(4):
        scheduler.add(make_seq(4, f"r{i}"))
    first = scheduler.schedule()
    assert first is not None and len(first.seqs) == 1
    simulate_step(scheduler, first)
    scheduler.max_batch_size = 4
    second = scheduler.schedule()  # one mixed step: r0's decode token and the three waiting prompts
    assert second is not None and second.is_prefill and [s.request_id for s in second.seqs] == ["r0", "r1", "r2", "r3"]
    assert [s.num_scheduled_tokens for s in second.seqs] == [1, 4, 4, 4]


def test_preempts_the_newest_running_sequence_when_blocks_run_out_and_all_finish() -> None:
    # 6 blocks of 4 tokens; three prompts of 4 tokens each grow to 12 tokens: they cannot all fit
    scheduler = Scheduler(BlockManager(6, BLOCK, enable_prefix_caching=False), max_batch_size=8, max_num_batched_tokens=100)
    seqs = [make_seq(4, f"r{i}", max_tokens=8) for i in range(3)]
    for seq in seqs:
        scheduler.add(seq)
    finished: list[Sequence] = []
    for _ in range(200):
        batch = scheduler.schedule()
        if batch is None:
            break
        finished += simulate_step(scheduler, batch)
        scheduler.block_manager.check_invariants(list(scheduler.running) + list(scheduler.waiting))
    assert {s.request_id for s in finished} == {"r0", "r1", "r2"}
    assert scheduler.num_preemptions_total >= 1
    assert any(s.num_preemptions for s in seqs)
    assert seqs[0].num_preemptions == 0  # the oldest is never the victim while others run
    assert scheduler.block_manager.num_free_blocks == 6


def test_a_preempted_sequence_is_requeued_at_the_front() -> None:
    scheduler = Scheduler(BlockManager(3, BLOCK, enable_prefix_caching=False), max_batch_size=8, max_num_batched_tokens=100)
    a, b, c = make_seq(4, "a"), make_seq(4, "b"), make_seq(4, "c")
    for seq in (a, b):
        scheduler.add(seq)
    batch = scheduler.schedule()
    assert batch is not None
    simulate_step(scheduler, batch)  # a, b hold 1 block each and now need a second
    scheduler.add(c)
    batch = scheduler.schedule()  # running first: a takes the last block, b finds none and is preempted
    assert batch is not None and not batch.is_prefill and batch.seqs == [a]
    assert b.status is SequenceStatus.WAITING and not b.block_table
    assert list(scheduler.waiting) == [b, c]  # requeued at the front, before the newer prompt
    assert b.num_preemptions == 1 and a.num_preemptions == 0 and c.num_preemptions == 0


def test_running_decodes_and_a_new_prompt_share_one_step() -> None:
    """A prompt arriving while others decode is computed in the same step (chunked to the budget that
    the decodes leave), so it neither waits for them nor stalls them."""
    scheduler = Scheduler(BlockManager(1000, BLOCK, enable_prefix_caching=False), max_batch_size=8, max_num_batched_tokens=12)
    running = [make_seq(4, f"d{i}", max_tokens=50) for i in range(3)]
    for seq in running:
        scheduler.add(seq)
    simulate_step(scheduler, scheduler.schedule())  # type: ignore[arg-type]
    long_prompt = make_seq(30, "long")
    scheduler.add(long_prompt)
    steps = []
    while long_prompt.num_completion_tokens == 0:
        batch = scheduler.schedule()
        assert batch is not None
        steps.append([(s.request_id, s.num_scheduled_tokens) for s in batch.seqs])
        simulate_step(scheduler, batch)
    decodes = [("d0", 1), ("d1", 1), ("d2", 1)]
    assert steps == [decodes + [("long", 9)], decodes + [("long", 9)], decodes + [("long", 9)], decodes + [("long", 3)]]


@settings(max_examples=60, deadline=None)
@given(
    prompt_lengths=st.lists(st.integers(1, 30), min_size=1, max_size=12),
    max_tokens=st.integers(1, 10),
    max_batch_size=st.integers(1, 6),
    budget=st.integers(1, 40),
    num_blocks=st.integers(10, 40),
)
def test_random_workloads_respect_limits_and_finish(
    prompt_lengths: list[int], max_tokens: int, max_batch_size: int, budget: int, num_blocks: int
) -> None:
    manager = BlockManager(num_blocks, BLOCK)
    scheduler = Scheduler(manager, max_batch_size=max_batch_size, max_num_batched_tokens=budget)
    seqs = []
    for i, length in enumerate(prompt_lengths):
        if (length + max_tokens + BLOCK - 1) // BLOCK > num_blocks:
            continue  # the engine rejects these at admission
        seq = make_seq(length, f"r{i}", max_tokens=max_tokens)
        seqs.append(seq)
        scheduler.add(seq)
    done: list[Sequence] = []
    for _ in range(5000):
        batch = scheduler.schedule()
        if batch is None:
            break
        assert len(scheduler.running) <= max_batch_size
        assert len(batch.seqs) <= max_batch_size
        # decode tokens always run; prompt tokens only fill what the budget leaves
        assert batch.num_tokens <= max(budget, len(batch.seqs))
        done += simulate_step(scheduler, batch)
        manager.check_invariants(list(scheduler.running) + [s for s in scheduler.waiting if s.block_table])
    assert len(done) == len(seqs)
    assert all(s.num_completion_tokens == max_tokens for s in seqs)
    assert manager.num_free_blocks == num_blocks
