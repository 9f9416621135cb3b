"""Owns the KV pool's block ids: who holds which block, which are free, which can be reused.

Fixed-size blocks, a free list, and reference counts. With prefix caching on, every full block is
registered under a hash chained over all tokens up to and including it, so a new prompt starting with
the same tokens (a shared system prompt) takes those blocks instead of recomputing them. A freed block
keeps its hash until it is handed out again, so a prefix can be reused after its first owner finished.
The tensor itself lives in the model runner; this class only does the accounting.
"""

from __future__ import annotations

from collections import deque

from dssidecar.engine.sequence import Sequence


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.token_ids: tuple[int, ...] = ()


def chain_hash(token_ids: tuple[int, ...], prefix_hash: int | None) -> int:
    """Hash of one full block given the hash of everything before it (ints hash deterministically)."""
    return hash((prefix_hash, token_ids))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"BlockManager needs num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks: list[Block] = [Block(i) for i in range(num_blocks)]
        self.hash_to_block_id: dict[int, int] = {}
        self.free_block_ids: deque[int] = deque(range(num_blocks))
        self.used_block_ids: set[int] = set()
        self.prefix_cache_hit_tokens_total = 0
        self.prefix_cache_query_tokens_total = 0

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    @property
    def usage_ratio(self) -> float:
        return len(self.used_block_ids) / len(self.blocks)

    # ---- allocation -----------------------------------------------------------------------------
    def _take_free_block(self) -> int:
        block_id = self.free_block_ids.popleft()
        block = self.blocks[block_id]
        self._forget_hash(block)
        block.ref_count = 1
        self.used_block_ids.add(block_id)
        return block_id

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            self.used_block_ids.discard(block_id)
            self.free_block_ids.append(block_id)

    def _cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids holding this sequence's leading full blocks, as far as they match. The block that
        holds the last token is never taken from the cache, so at least one token is computed."""
        if not self.enable_prefix_caching:
            return []
        found: list[int] = []
        prefix_hash: int | None = None
        for index in range((seq.num_tokens - 1) // self.block_size):
            tokens = tuple(seq.block_tokens(index))
            prefix_hash = chain_hash(tokens, prefix_hash)
            block_id = self.hash_to_block_id.get(prefix_hash)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            found.append(block_id)
        return found

    def can_allocate(self, seq: Sequence) -> bool:
        cached = self._cached_prefix(seq)
        reused_free = sum(1 for block_id in cached if self.blocks[block_id].ref_count == 0)
        needed_new = seq.num_blocks - len(cached)
        return needed_new + reused_free <= len(self.free_block_ids)

    def allocate(self, seq: Sequence) -> None:
        """Give a waiting sequence blocks for all its tokens, reusing cached prefix blocks."""
        if seq.block_table:
            raise RuntimeError(f"sequence {seq.request_id} already holds blocks {seq.block_table}")
        cached = self._cached_prefix(seq)
        for block_id in cached:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                self.free_block_ids.remove(block_id)
                self.used_block_ids.add(block_id)
            block.ref_count += 1
            seq.block_table.append(block_id)
        for _ in range(len(cached), seq.num_blocks):
            seq.block_table.append(self._take_free_block())
        seq.num_cached_tokens = len(cached) * self.block_size
        seq.num_hashed_blocks = len(cached)
        self.prefix_cache_hit_tokens_total += seq.num_cached_tokens
        self.prefix_cache_query_tokens_total += seq.num_tokens

    def deallocate(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):
            self._release(block_id)
        seq.block_table.clear()
        seq.num_cached_tokens = 0
        seq.num_hashed_blocks = 0

    def needs_new_block(self, seq: Sequence) -> bool:
        """Decoding the last token needs one more block when that token opens a new block."""
        return len(seq.block_table) < seq.num_blocks

    def can_append(self, seq: Sequence) -> bool:
        return not self.needs_new_block(seq) or bool(self.free_block_ids)

    def append_slot(self, seq: Sequence) -> None:
        if self.needs_new_block(seq):
            seq.block_table.append(self._take_free_block())

    # ---- pool size (the kv_cache_blocks knob; LLMEngine.resize_kv_pool drives these) --------------
    def grow(self, num_blocks: int) -> None:
        """Add free blocks up to `num_blocks` in all."""
        old_blocks = len(self.blocks)
        self.blocks.extend(Block(i) for i in range(old_blocks, num_blocks))
        self.free_block_ids.extend(range(old_blocks, num_blocks))

    def retire_free_blocks_from(self, first_retired: int) -> None:
        """Take free blocks with id >= first_retired out of circulation (a shrink in progress); their
        cached prefixes are forgotten. Held blocks are left to their owners."""
        retired = [block_id for block_id in self.free_block_ids if block_id >= first_retired]
        for block_id in retired:
            self.free_block_ids.remove(block_id)
            self._forget_hash(self.blocks[block_id])

    def restore_retired_below(self, limit: int) -> None:
        """Put retired blocks with id < limit back into the free list (a pending shrink was replaced)."""
        free = set(self.free_block_ids)
        for block_id in range(min(limit, len(self.blocks))):
            if block_id not in free and block_id not in self.used_block_ids:
                self.free_block_ids.append(block_id)

    def num_held_from(self, first_block: int) -> int:
        """Blocks with id >= first_block that sequences still hold."""
        return sum(1 for block_id in self.used_block_ids if block_id >= first_block)

    def truncate(self, num_blocks: int) -> None:
        """Drop blocks >= num_blocks; they must all be retired (neither free nor held)."""
        if self.num_held_from(num_blocks) or any(block_id >= num_blocks for block_id in self.free_block_ids):
            raise RuntimeError(f"cannot cut the pool to {num_blocks} blocks: higher blocks are still free or held")
        del self.blocks[num_blocks:]

    def forget_cached_prefixes(self) -> None:
        """Every cached prefix refers to a pool that is gone (a runner with another KV dtype)."""
        self.hash_to_block_id.clear()
        for block in self.blocks:
            block.hash = None
            block.token_ids = ()

    def _forget_hash(self, block: Block) -> None:
        if block.hash is not None and self.hash_to_block_id.get(block.hash) == block.block_id:
            del self.hash_to_block_id[block.hash]
        block.hash = None
        block.token_ids = ()

    # ---- prefix registration --------------------------------------------------------------------
    def register_full_blocks(self, seq: Sequence) -> None:
        """Make this sequence's newly completed (computed) full blocks reusable by later prompts."""
        if not self.enable_prefix_caching:
            return
        num_full = seq.num_cached_tokens // self.block_size
        if num_full <= seq.num_hashed_blocks:
            return
        index = seq.num_hashed_blocks
        prefix_hash = self.blocks[seq.block_table[index - 1]].hash if index > 0 else None
        for index in range(seq.num_hashed_blocks, num_full):
            block = self.blocks[seq.block_table[index]]
            tokens = tuple(seq.block_tokens(index))
            prefix_hash = chain_hash(tokens, prefix_hash)
            if block.hash is None:
                block.hash = prefix_hash
                block.token_ids = tokens
                self.hash_to_block_id.setdefault(prefix_hash, block.block_id)
        seq.num_hashed_blocks = num_full

    def check_invariants(self, owners: list[Sequence]) -> None:
        """Raise AssertionError if the accounting is inconsistent (tests and debugging)."""
        counts: dict[int, int] = {}
        for seq in owners:
            for block_id in seq.block_table:
                counts[block_id] = counts.get(block_id, 0) + 1
        free = set(self.free_block_ids)
        assert len(free) == len(self.free_block_ids), "a block is twice in the free list"
        assert not (free & self.used_block_ids), "a block is both free and used"
        assert len(free) + len(self.used_block_ids) == len(self.blocks), "free + used != total"
        for block in self.blocks:
            assert block.ref_count == counts.get(block.block_id, 0), (
                f"block {block.block_id}: ref_count {block.ref_count} != owners {counts.get(block.block_id, 0)}"
            )
            assert (block.ref_count > 0) == (block.block_id in self.used_block_ids)
