"""Resize the KV block pool of a running engine, and measure how well the pool is used.

Why this exists: `kv_cache_blocks` is a live knob. Growing allocates a larger pool tensor, copies the old
blocks into it and hands the new block ids to the block manager. Shrinking never touches a block a
sequence holds: free blocks above the new size are retired at once; blocks still held are "pending" and
retired as their sequences finish; when none is pending the tensor is cut to the new size. Everything
here runs on the engine thread between two steps (`LLMEngine` calls `on_step` before scheduling), so no
step ever sees a half-resized pool.

Memory figures (all bytes, ratios 0..1), from the block manager's accounting:
- reserved: KV blocks held by sequences; allocated: their slots that hold a token;
- kv fragmentation = 1 - allocated/reserved (unused slots in the last block of each sequence);
- on CUDA the process-wide figures come from the caching allocator (memory_reserved/allocated).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from dssidecar.engine.block_manager import Block

logger = logging.getLogger("dssidecar.kv_pool")


class KVPoolResizer:
    """Grows and shrinks `engine.runner.kv_cache` together with `engine.block_manager`."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.target_blocks: int | None = None  # set while a shrink waits for held blocks
        self.resizes_total = 0

    @property
    def num_blocks(self) -> int:
        """The pool size the engine works towards (the knob's value)."""
        return self.target_blocks if self.target_blocks is not None else int(self.engine.runner.num_blocks)

    @property
    def pending_release(self) -> int:
        """Blocks above the target that sequences still hold."""
        if self.target_blocks is None:
            return 0
        return sum(1 for block_id in self.engine.block_manager.used_block_ids if block_id >= self.target_blocks)

    def resize(self, num_blocks: int) -> int:
        """Start resizing to `num_blocks` (call between steps). Returns the blocks still pending release."""
        if num_blocks < 1:
            raise ValueError(f"kv_cache_blocks must be >= 1, got {num_blocks}")
        current = int(self.engine.runner.num_blocks)
        self.resizes_total += 1
        if self.target_blocks is not None:  # a shrink was pending: blocks it retired below the new size return
            self._restore_retired(min(num_blocks, current))
        if num_blocks >= current:
            self.target_blocks = None
            if num_blocks > current:
                self._grow(num_blocks)
            return 0
        self.target_blocks = num_blocks
        self.on_step()
        return self.pending_release

    def _restore_retired(self, limit: int) -> None:
        manager = self.engine.block_manager
        free = set(manager.free_block_ids)
        for block_id in range(limit):
            if block_id not in free and block_id not in manager.used_block_ids:
                manager.free_block_ids.append(block_id)

    def on_step(self) -> None:
        """Retire freed blocks above the target; finish the shrink when none is held any more."""
        target = self.target_blocks
        if target is None:
            return
        manager = self.engine.block_manager
        if any(block_id >= target for block_id in manager.free_block_ids):
            for block_id in [b for b in manager.free_block_ids if b >= target]:
                manager.free_block_ids.remove(block_id)
                block = manager.blocks[block_id]
                if block.hash is not None and manager.hash_to_block_id.get(block.hash) == block_id:
                    del manager.hash_to_block_id[block.hash]
                block.hash = None
                block.token_ids = ()
        if self.pending_release == 0:
            self._cut(target)
            self.target_blocks = None

    def _grow(self, num_blocks: int) -> None:
        engine = self.engine
        runner = engine.runner
        old = runner.kv_cache
        shape = list(old.shape)
        old_blocks = shape[2]
        shape[2] = num_blocks
        grown = torch.zeros(shape, dtype=old.dtype, device=old.device)
        grown[:, :, :old_blocks].copy_(old)
        runner.kv_cache = grown
        runner.num_blocks = num_blocks
        manager = engine.block_manager
        manager.blocks.extend(Block(i) for i in range(old_blocks, num_blocks))
        manager.free_block_ids.extend(range(old_blocks, num_blocks))
        logger.info("KV pool grown from %d to %d blocks", old_blocks, num_blocks)

    def _cut(self, num_blocks: int) -> None:
        engine = self.engine
        runner = engine.runner
        old_blocks = int(runner.num_blocks)
        if num_blocks >= old_blocks:
            return
        # clone so the memory of the cut blocks is really released
        runner.kv_cache = runner.kv_cache[:, :, :num_blocks].clone()
        runner.num_blocks = num_blocks
        manager = engine.block_manager
        del manager.blocks[num_blocks:]
        logger.info("KV pool shrunk from %d to %d blocks", old_blocks, num_blocks)


def kv_block_bytes(engine: Any) -> int:
    kv_cache = engine.runner.kv_cache
    return int(kv_cache[0, 0, 0].numel() * kv_cache.element_size() * kv_cache.shape[0] * 2)


def kv_memory_figures(engine: Any) -> dict[str, float]:
    """KV pool bytes, bytes held by sequences (reserved) and holding tokens (allocated), fragmentation."""
    manager = engine.block_manager
    block_size = int(manager.block_size)
    block_bytes = kv_block_bytes(engine)
    used_blocks = len(manager.used_block_ids)
    unused_slots = 0
    for seq in list(engine.scheduler.running) + list(engine.scheduler.waiting):
        table_len = len(seq.block_table)
        if table_len:
            filled = min(block_size, max(0, seq.num_tokens - (table_len - 1) * block_size))
            unused_slots += block_size - filled
    reserved_slots = used_blocks * block_size
    allocated_slots = max(0, reserved_slots - unused_slots)
    fragmentation = 0.0 if reserved_slots == 0 else 1.0 - allocated_slots / reserved_slots
    return {
        "kv_cache_pool_bytes": float(block_bytes * int(engine.runner.num_blocks)),
        "kv_cache_reserved_bytes": float(used_blocks * block_bytes),
        "kv_cache_allocated_bytes": float(allocated_slots * block_bytes // block_size),
        "kv_cache_fragmentation_ratio": min(1.0, max(0.0, fragmentation)),
    }


def memory_figures(engine: Any) -> dict[str, float]:
    """reserved/allocated bytes and 1 - allocated/reserved: CUDA allocator on GPU, KV pool on CPU."""
    figures = kv_memory_figures(engine)
    device = engine.runner.device
    if device.type == "cuda":
        reserved = float(torch.cuda.memory_reserved(device))
        allocated = float(torch.cuda.memory_allocated(device))
    else:
        reserved = figures["kv_cache_reserved_bytes"]
        allocated = figures["kv_cache_allocated_bytes"]
    figures["memory_reserved_bytes"] = reserved
    figures["memory_allocated_bytes"] = allocated
    figures["memory_fragmentation_ratio"] = 0.0 if reserved <= 0 else min(1.0, max(0.0, 1.0 - allocated / reserved))
    return figures
