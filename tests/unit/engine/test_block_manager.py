"""BlockManager invariants: no block has two owners unless shared by prefix reuse, free + used == total,
reference counts equal owners, prefix blocks are reused only for identical leading tokens."""

from __future__ import annotations

from dssidecar.engine.block_manager import BlockManager
from dssidecar.engine.protocol import SamplingParams
from dssidecar.engine.sequence import Sequence
from hypothesis import given, settings
from hypothesis import strategies as st

BLOCK = 4


def make_seq(tokens: list[int], request_id: str = "r") -> Sequence:
    return Sequence(request_id, list(tokens), SamplingParams(), 0.0, block_size=BLOCK)


def test_allocate_gives_enough_blocks_and_deallocate_returns_them() -> None:
    manager = BlockManager(num_blocks=8, block_size=BLOCK, enable_prefix_caching=False)
    seq = make_seq(list(range(10)))
    assert manager.can_allocate(seq)
    manager.allocate(seq)
    assert len(seq.block_table) == 3
    assert manager.num_free_blocks == 5
    manager.check_invariants([seq])
    manager.deallocate(seq)
    assert manager.num_free_blocks == 8 and not seq.block_table
    manager.check_invariants([])


def test_can_allocate_is_false_when_blocks_run_out() -> None:
    manager = BlockManager(num_blocks=2, block_size=BLOCK, enable_prefix_caching=False)
    assert not manager.can_allocate(make_seq(list(range(9))))  # needs 3
    assert manager.can_allocate(make_seq(list(range(8))))


def test_append_slot_takes_a_block_only_when_the_last_block_is_full() -> None:
    manager = BlockManager(num_blocks=4, block_size=BLOCK, enable_prefix_caching=False)
    seq = make_seq([1, 2, 3, 4])
    manager.allocate(seq)
    seq.num_cached_tokens = 4
    seq.token_ids.append(5)  # token 5 opens block 2
    assert manager.needs_new_block(seq)
    manager.append_slot(seq)
    assert len(seq.block_table) == 2
    seq.token_ids.append(6)
    assert not manager.needs_new_block(seq)


def test_prefix_blocks_are_shared_between_identical_prompts() -> None:
    manager = BlockManager(num_blocks=16, block_size=BLOCK)
    first = make_seq(list(range(10)), "a")
    manager.allocate(first)
    first.num_cached_tokens = first.num_tokens  # as if prefilled
    manager.register_full_blocks(first)
    second = make_seq(list(range(10)) + [99], "b")
    manager.allocate(second)
    assert second.block_table[:2] == first.block_table[:2]
    assert second.num_cached_tokens == 2 * BLOCK
    assert manager.blocks[first.block_table[0]].ref_count == 2
    manager.check_invariants([first, second])


def test_prefix_reuse_needs_identical_leading_tokens() -> None:
    manager = BlockManager(num_blocks=16, block_size=BLOCK)
    first = make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9], "a")
    manager.allocate(first)
    first.num_cached_tokens = first.num_tokens
    manager.register_full_blocks(first)
    other = make_seq([0, 2, 3, 4, 5, 6, 7, 8, 9], "b")  # first block differs -> nothing reused
    manager.allocate(other)
    assert other.num_cached_tokens == 0
    assert not set(other.block_table) & set(first.block_table)


def test_a_freed_prefix_is_still_reusable_until_its_block_is_handed_out() -> None:
    manager = BlockManager(num_blocks=4, block_size=BLOCK)
    first = make_seq(list(range(9)), "a")
    manager.allocate(first)
    first.num_cached_tokens = first.num_tokens
    manager.register_full_blocks(first)
    kept = first.block_table[:2]
    manager.deallocate(first)
    again = make_seq(list(range(9)), "b")
    assert manager.can_allocate(again)
    manager.allocate(again)
    assert again.block_table[:2] == kept
    manager.check_invariants([again])


def test_the_block_holding_the_last_token_is_never_reused_from_cache() -> None:
    manager = BlockManager(num_blocks=8, block_size=BLOCK)
    first = make_seq(list(range(8)), "a")
    manager.allocate(first)
    first.num_cached_tokens = 8
    manager.register_full_blocks(first)
    same = make_seq(list(range(8)), "b")
    manager.allocate(same)
    assert same.num_cached_tokens == BLOCK  # one token block must still be computed


operations = st.lists(
    st.tuples(
        st.sampled_from(["add", "grow", "free"]),
        st.integers(min_value=0, max_value=7),  # which sequence
        st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=14),  # tokens (small alphabet -> prefix hits)
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(operations, st.booleans())
def test_invariants_hold_under_random_operations(ops: list[tuple[str, int, list[int]]], prefix_caching: bool) -> None:
    manager = BlockManager(num_blocks=12, block_size=BLOCK, enable_prefix_caching=prefix_caching)
    live: dict[int, Sequence] = {}
    for op, slot, tokens in ops:
        seq = live.get(slot)
        if op == "add" and seq is None:
            candidate = make_seq(tokens, str(slot))
            if manager.can_allocate(candidate):
                manager.allocate(candidate)
                assert len(candidate.block_table) == candidate.num_blocks
                candidate.num_cached_tokens = candidate.num_tokens
                manager.register_full_blocks(candidate)
                live[slot] = candidate
        elif op == "grow" and seq is not None:
            seq.token_ids.append(tokens[0])
            if manager.can_append(seq):
                manager.append_slot(seq)
                seq.num_cached_tokens = seq.num_tokens
                manager.register_full_blocks(seq)
            else:
                seq.token_ids.pop()
        elif op == "free" and seq is not None:
            manager.deallocate(seq)
            del live[slot]
        manager.check_invariants(list(live.values()))
        # a block shared by two sequences must hold the same tokens for both (full, reused prefix)
        owners: dict[int, list[tuple[Sequence, int]]] = {}
        for owner in live.values():
            for index, block_id in enumerate(owner.block_table):
                owners.setdefault(block_id, []).append((owner, index))
        for block_id, holders in owners.items():
            if len(holders) > 1:
                contents = {tuple(owner.block_tokens(index)) for owner, index in holders}
                assert len(contents) == 1, f"block {block_id} shared by sequences with different tokens"
                assert all(len(owner.block_tokens(index)) == BLOCK for owner, index in holders)
